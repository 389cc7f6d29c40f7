// A private sshd on 127.0.0.1 for tests that need a real ssh transport: its own config, host key,
// client key and authorized_keys in a temp dir, listening on a free port, run in the foreground
// (-D) so that stop() can end it with SIGTERM. Needs root (it logs in as root with a key).
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { makeTempDir, removeTree } from './tmp.js';

const SSHD = '/usr/sbin/sshd';

export interface Sshd {
  port: number;
  dir: string;
  /** The ssh command line (without the remote command) that logs in to this sshd as root. */
  sshArgv: string[];
  stop(): Promise<void>;
}

/** Finds a command on PATH (or an absolute path); undefined when it is missing. */
function which(cmd: string): string | undefined {
  if (path.isAbsolute(cmd)) return fs.existsSync(cmd) ? cmd : undefined;
  for (const d of (process.env.PATH ?? '/usr/bin:/bin').split(':')) {
    const p = path.join(d, cmd);
    if (d && fs.existsSync(p)) return p;
  }
  return undefined;
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port });
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Starts the sshd. Resolves to the running server or to a reason string why ssh tests must be
 * skipped (not root, a tool missing, or sshd not accepting logins within `timeoutMs`).
 */
export async function startSshd(timeoutMs = 5000): Promise<Sshd | string> {
  if (process.getuid?.() !== 0) return 'needs root (sshd logs in as root with a key)';
  const ssh = which('ssh');
  const keygen = which('ssh-keygen');
  const missing = [!fs.existsSync(SSHD) && SSHD, !ssh && 'ssh', !keygen && 'ssh-keygen'].filter(Boolean);
  if (missing.length > 0 || !ssh || !keygen) return `missing: ${missing.join(', ')} (install openssh-server/openssh-client)`;

  const dir = makeTempDir('dsync-sshd-');
  const keys = ['host_key', 'client_key'].map((k) =>
    spawnSync(keygen, ['-t', 'ed25519', '-N', '', '-f', path.join(dir, k), '-q'], { encoding: 'utf8' }),
  );
  const badKey = keys.find((r) => r.status !== 0);
  if (badKey) {
    removeTree(dir);
    return `ssh-keygen failed: ${(badKey.stderr || String(badKey.error)).trim()}`;
  }
  fs.copyFileSync(path.join(dir, 'client_key.pub'), path.join(dir, 'authorized_keys'));
  fs.mkdirSync('/run/sshd', { recursive: true, mode: 0o755 }); // privilege separation directory

  const port = await freePort();
  const config = [
    `ListenAddress 127.0.0.1`,
    `Port ${port}`,
    `HostKey ${path.join(dir, 'host_key')}`,
    `PidFile ${path.join(dir, 'sshd.pid')}`,
    `AuthorizedKeysFile ${path.join(dir, 'authorized_keys')}`,
    `PermitRootLogin prohibit-password`,
    `PasswordAuthentication no`,
    `KbdInteractiveAuthentication no`,
    `StrictModes no`,
    `UsePAM no`,
    `LogLevel ERROR`,
  ];
  const configPath = path.join(dir, 'sshd_config');
  fs.writeFileSync(configPath, config.join('\n') + '\n');

  let stderr = '';
  const child: ChildProcess = spawn(SSHD, ['-D', '-e', '-f', configPath], { stdio: ['ignore', 'ignore', 'pipe'] });
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (d: string) => {
    stderr = (stderr + d).slice(-4000);
  });
  let exited: string | undefined;
  const exitedP = new Promise<void>((resolve) => {
    child.once('error', (e) => {
      exited = `could not run sshd: ${e.message}`;
      resolve();
    });
    child.once('exit', (code, signal) => {
      exited ??= `sshd exited with ${signal ?? `code ${code}`}`;
      resolve();
    });
  });
  const stop = async () => {
    if (exited === undefined) {
      child.kill('SIGTERM');
      await Promise.race([exitedP, sleep(3000)]);
      if (exited === undefined) child.kill('SIGKILL');
    }
    removeTree(dir);
  };
  const sshArgv = [
    ssh,
    '-i', path.join(dir, 'client_key'),
    '-p', String(port),
    '-o', 'StrictHostKeyChecking=no',
    '-o', 'UserKnownHostsFile=/dev/null',
    '-o', 'BatchMode=yes',
    '-o', 'LogLevel=ERROR',
    '-o', 'ConnectTimeout=5',
    'root@127.0.0.1',
  ];

  // Ready when the port accepts connections, and a login actually works.
  const deadline = Date.now() + timeoutMs;
  let lastLogin = '';
  while (Date.now() < deadline && exited === undefined) {
    if (await canConnect(port)) {
      const r = spawnSync(sshArgv[0], [...sshArgv.slice(1), 'true'], { encoding: 'utf8', timeout: Math.max(1000, deadline - Date.now()) });
      if (r.status === 0) return { port, dir, sshArgv, stop };
      lastLogin = (r.stderr || String(r.error ?? `ssh exited with ${r.status}`)).trim();
    }
    await sleep(100);
  }
  const why = exited ?? `sshd did not accept a login within ${timeoutMs} ms${lastLogin ? ` (ssh: ${lastLogin.slice(-500)})` : ''}`;
  await stop();
  return `${why}; sshd stderr: ${stderr.trim().slice(-1000) || '(empty)'}`;
}
