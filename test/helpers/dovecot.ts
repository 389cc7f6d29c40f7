// A real Dovecot as the test oracle: private, standalone instances (one config dir each,
// IMAP on a free 127.0.0.1 port, no TLS, passwd-file auth), doveadm, and "what does an
// IMAP client see in this maildir" in one call.
//
// Running standalone needs root (dovecot's master sets up login chroots and drops
// privileges); mail access runs as nobody (mail_uid/mail_gid), so every mail tree shown
// to Dovecot must be owned by that uid: see chownTree/prepareOracleCopy.
//
// Typical use:
//   test('sync is invisible to IMAP clients', { skip: dovecotSkipReason() }, async () => {
//     ... run our sync between maildirs a and b ...
//     const [va, vb] = await viewMaildirs([a, b]);      // one server start, copies only
//     assert.deepEqual(diffViews(va, vb, { names: ['a', 'b'] }), []);
//   });
// A maildir that has no dovecot-uidlist yet gets a time-based UIDVALIDITY on every view:
// compare such views with normalizeView(v, { uidValidity: false }).
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { ImapFlow } from 'imapflow';
import { imapSession } from './imap-session.js';
import { imapView, type ImapView } from './imap-view.js';
import { copyTree, makeTempDir, removeTree } from './tmp.js';

export { imapSession } from './imap-session.js';
export { imapView, diffViews, findMailbox, normalizeView } from './imap-view.js';
export type { ImapView, ViewMailbox, ViewMessage, ViewMailboxStatus, NormalizeOptions } from './imap-view.js';

/** Every oracle user's password. */
export const ORACLE_PASSWORD = 'pass';
/** Default user name of the one-user helpers. */
export const ORACLE_USER = 'oracle';

function lookupId(file: string, name: string, field: number, fallback: number): number {
  try {
    for (const line of fs.readFileSync(file, 'utf8').split('\n')) {
      const parts = line.split(':');
      if (parts[0] === name && parts[field] !== undefined && /^\d+$/.test(parts[field])) return Number(parts[field]);
    }
  } catch {
    // fall through
  }
  return fallback;
}

/** uid of "nobody" (65534 on Debian): Dovecot accesses mail as this user. */
export const MAIL_UID = lookupId('/etc/passwd', 'nobody', 2, 65534);
/** gid of "nogroup" (65534 on Debian). */
export const MAIL_GID = lookupId('/etc/group', 'nogroup', 2, 65534);

const SBIN_DIRS = ['/usr/sbin', '/usr/local/sbin', '/sbin'];

function findBinary(name: string): string | undefined {
  const dirs = [...(process.env.PATH ?? '').split(':').filter(Boolean), ...SBIN_DIRS];
  for (const d of dirs) {
    const p = path.join(d, name);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return p;
    } catch {
      // next
    }
  }
  return undefined;
}

let skipReasonCache: { reason: string | undefined } | undefined;

/**
 * Why Dovecot-backed tests can't run here, or undefined when they can. Use as
 * `test('...', { skip: dovecotSkipReason() }, async () => ...)` so the reason shows in the output.
 * Set DSYNC_NO_DOVECOT=1 to skip them on purpose.
 */
export function dovecotSkipReason(): string | undefined {
  if (skipReasonCache) return skipReasonCache.reason;
  let reason: string | undefined;
  const missing = ['dovecot', 'doveadm'].filter((b) => !findBinary(b));
  if (process.env.DSYNC_NO_DOVECOT) {
    reason = 'Dovecot oracle disabled by DSYNC_NO_DOVECOT';
  } else if (missing.length > 0) {
    reason = `Dovecot oracle unavailable: ${missing.join(' and ')} not found (apt-get install dovecot-core dovecot-imapd)`;
  } else if (typeof process.getuid !== 'function' || process.getuid() !== 0) {
    reason = 'Dovecot oracle unavailable: tests must run as root to start a standalone dovecot';
  } else {
    const r = spawnSync(findBinary('dovecot')!, ['--version'], { encoding: 'utf8', timeout: 10_000 });
    if (r.status !== 0) reason = `Dovecot oracle unavailable: dovecot --version failed: ${(r.stderr || r.error?.message || '').trim()}`;
  }
  skipReasonCache = { reason };
  return reason;
}

/** chown -R, not following symlinks. */
export function chownTree(dir: string, uid = MAIL_UID, gid = MAIL_GID): void {
  fs.lchownSync(dir, uid, gid);
  const st = fs.lstatSync(dir);
  if (!st.isDirectory()) return;
  for (const entry of fs.readdirSync(dir)) chownTree(path.join(dir, entry), uid, gid);
}

export interface OracleUser {
  name: string;
  home: string;
  /** e.g. 'maildir:/tmp/x/mail' or 'maildir:/tmp/x/mail:LAYOUT=fs' */
  mailLocation: string;
}

export interface DovecotConfigOptions {
  users: OracleUser[];
  /** IMAP port on 127.0.0.1; 0 or absent: no IMAP listener (a config for doveadm only). */
  port?: number;
}

/**
 * Writes `dir`/dovecot.conf (and `dir`/passwd) for a private standalone instance;
 * returns the config path. Everything Dovecot writes (sockets, state, logs) stays in `dir`.
 */
export function writeDovecotConfig(dir: string, opts: DovecotConfigOptions): string {
  for (const u of opts.users) {
    if (!/^[A-Za-z0-9._-]+$/.test(u.name)) throw new Error(`bad oracle user name ${JSON.stringify(u.name)}`);
    if (/[:\n]/.test(u.home) || /\n/.test(u.mailLocation)) throw new Error(`bad home/mail location for ${u.name}`);
  }
  fs.mkdirSync(dir, { recursive: true });
  fs.chmodSync(dir, 0o755);
  const passwd = path.join(dir, 'passwd');
  const logPath = path.join(dir, 'dovecot.log');
  // passwd-file: user:password:uid:gid:(gecos):home:(shell):extra_fields
  fs.writeFileSync(
    passwd,
    opts.users
      .map((u) => `${u.name}:{PLAIN}${ORACLE_PASSWORD}:${MAIL_UID}:${MAIL_GID}::${u.home}::${u.mailLocation ? `userdb_mail=${u.mailLocation}` : ''}\n`)
      .join(''),
    { mode: 0o644 },
  );
  const port = opts.port ?? 0;
  const conf = `# private test instance, written by test/helpers/dovecot.ts
base_dir = ${dir}/run
state_dir = ${dir}/state
log_path = ${logPath}
info_log_path = ${logPath}
debug_log_path = ${logPath}
listen = 127.0.0.1
ssl = no
protocols = imap
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_uid = ${MAIL_UID}
mail_gid = ${MAIL_GID}
first_valid_uid = 1
first_valid_gid = 1
mail_location =
passdb {
  driver = passwd-file
  args = ${passwd}
}
userdb {
  driver = passwd-file
  args = ${passwd}
}
service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = ${port}
  }
  inet_listener imaps {
    port = 0
  }
}
`;
  const confPath = path.join(dir, 'dovecot.conf');
  fs.writeFileSync(confPath, conf, { mode: 0o644 });
  return confPath;
}

/** A port that was free a moment ago (bind 127.0.0.1:0, read it, close). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => (port ? resolve(port) : reject(new Error('could not get a free port'))));
    });
  });
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port });
    const done = (ok: boolean): void => {
      s.destroy();
      resolve(ok);
    };
    s.once('connect', () => done(true));
    s.once('error', () => done(false));
    s.setTimeout(1000, () => done(false));
  });
}

function tail(file: string, lines = 30): string {
  try {
    return fs.readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log file)';
  }
}

export interface ServerUser {
  name: string;
  mailLocation: string;
  /** Default: <config dir>/home/<name> (created, owned by MAIL_UID). */
  home?: string;
}

export interface StartOptions {
  users: ServerUser[];
  /** Config/state dir; default: a fresh temp dir, removed by stop(). */
  dir?: string;
  /** A test context (or anything with after()): stop() is registered there, so a failing test can't leak a server. */
  t?: { after: (fn: () => unknown) => void };
  /** How long to wait for the port to accept connections (default 10 s). */
  timeoutMs?: number;
}

export interface StopOptions {
  graceful?: boolean;
}

export interface ImapServer {
  port: number;
  configPath: string;
  dir: string;
  logPath: string;
  users: OracleUser[];
  /** ms from spawn until the port accepted a connection. */
  startupMs: number;
  /** pid of the watchdog shell whose child is the dovecot master. */
  wrapperPid: number | undefined;
  /**
   * Stops dovecot and waits until none of its processes is left; idempotent. Takes ~0.1 s
   * (SIGTERM to the master, then to its children, then SIGKILL); `graceful` waits for the
   * master's own shutdown instead (>= 1.1 s: it sleeps 1 s to drain its log process, and
   * it leaves connected clients' imap processes running).
   */
  stop(opts?: StopOptions): Promise<void>;
}

// The wrapper keeps dovecot tied to this Node process: its stdin is a pipe from us, and
// when that closes (stop(), or this process dying in any way, even SIGKILL) it sends
// dovecot SIGTERM. It exits when dovecot exits, with dovecot's status.
const WATCHDOG = `
exec 3<&0
"$1" -F -c "$2" </dev/null 3<&- &
pid=$!
( read -r _ <&3; kill -TERM "$pid" 2>/dev/null ) &
watcher=$!
exec 3<&-
wait "$pid"
rc=$?
kill "$watcher" 2>/dev/null
exit "$rc"
`;

interface LiveServer {
  wrapper: ChildProcess;
  dir: string;
  ownDir: boolean;
}
const live = new Set<LiveServer>();
let exitHookInstalled = false;
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // A server nobody stopped (a test crashed before its cleanup) must not outlive us. The
  // child handles are unref'd, so such a server doesn't keep the test process alive
  // either; when it exits we kill what is left, synchronously. (If we are SIGKILLed the
  // watchdog still sees its stdin close and stops dovecot.)
  process.on('exit', () => {
    for (const s of live) {
      const master = masterPid(s.dir, s.wrapper.pid);
      const kids = master ? childPids(master) : [];
      if (master) safeKill(master, 'SIGKILL');
      for (const k of kids) safeKill(k, 'SIGKILL');
      s.wrapper.stdin?.destroy();
      if (s.ownDir) removeTree(s.dir);
    }
  });
}

/** The dovecot master's pid: from base_dir/master.pid, or the wrapper's `dovecot` child. */
function masterPid(dir: string, wrapperPid: number | undefined): number | undefined {
  const fromFile = readPid(path.join(dir, 'run', 'master.pid'));
  if (fromFile && isAlive(fromFile)) return fromFile;
  if (!wrapperPid) return undefined;
  return childPids(wrapperPid).find((p) => {
    try {
      return fs.readFileSync(`/proc/${p}/comm`, 'utf8').trim() === 'dovecot';
    } catch {
      return false;
    }
  });
}

function unrefStdio(child: ChildProcess): void {
  child.unref();
  for (const s of [child.stdin, child.stdout, child.stderr]) (s as unknown as net.Socket | null)?.unref?.();
}

/** Starts a private dovecot serving IMAP for `users` on a free 127.0.0.1 port. */
export async function startImapServer(opts: StartOptions): Promise<ImapServer> {
  const reason = dovecotSkipReason();
  if (reason) throw new Error(reason);
  const ownDir = opts.dir === undefined;
  const dir = opts.dir ?? makeTempDir('dsync-dovecot-');
  const timeoutMs = opts.timeoutMs ?? 10_000;
  const users: OracleUser[] = opts.users.map((u) => ({
    name: u.name,
    mailLocation: u.mailLocation,
    home: u.home ?? path.join(dir, 'home', u.name),
  }));
  for (const u of users) {
    if (!fs.existsSync(u.home)) {
      fs.mkdirSync(u.home, { recursive: true });
      chownTree(u.home);
    }
  }
  const dovecotBin = findBinary('dovecot')!;
  let lastError: Error | undefined;
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freePort();
    const configPath = writeDovecotConfig(dir, { users, port });
    const logPath = path.join(dir, 'dovecot.log');
    const t0 = performance.now();
    const child = spawn('/bin/sh', ['-c', WATCHDOG, 'dovecot-watchdog', dovecotBin, configPath], {
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    installExitHook();
    unrefStdio(child);
    const entry: LiveServer = { wrapper: child, dir, ownDir };
    live.add(entry);
    let output = '';
    child.stdout!.on('data', (d: Buffer) => (output += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (output += d.toString()));
    child.stdin!.on('error', () => undefined);
    let exited = false;
    const exitedPromise = new Promise<void>((resolve) =>
      child.once('exit', () => {
        exited = true;
        live.delete(entry);
        resolve();
      }),
    );
    let up = false;
    while (!exited && performance.now() - t0 < timeoutMs) {
      if (await canConnect(port)) {
        up = true;
        break;
      }
      await sleep(15);
    }
    const startupMs = performance.now() - t0;
    // Ends dovecot: the watchdog sends the master SIGTERM when its stdin closes. A graceful
    // master shutdown leaves client (imap) processes running, then always sleeps 1 s to let
    // its log process drain. Unless asked to be graceful we don't wait for that: after a
    // short grace period its remaining children get SIGTERM (an imap process then says
    // "BYE Server shutting down" and exits), then everything left gets SIGKILL.
    // Waits up to `ms` for the wrapper to exit. The timer also keeps the event loop alive:
    // the child's own handles are unref'd.
    const waitExit = (ms: number): Promise<void> =>
      new Promise((resolve) => {
        const timer = setTimeout(resolve, ms);
        void exitedPromise.then(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    const terminate = async (graceful: boolean): Promise<void> => {
      if (exited) return;
      child.stdin!.end();
      await waitExit(graceful ? 10_000 : 50);
      if (exited) return;
      const master = masterPid(dir, child.pid);
      const kids = master ? childPids(master) : [];
      for (const k of kids) safeKill(k, 'SIGTERM');
      let deadline = performance.now() + 1_000;
      while (kids.some(isAlive) && performance.now() < deadline) await sleep(10);
      if (master) safeKill(master, 'SIGKILL');
      for (const k of kids.filter(isAlive)) safeKill(k, 'SIGKILL');
      await waitExit(10_000);
      if (!exited) child.kill('SIGKILL');
      await waitExit(10_000);
      deadline = performance.now() + 3_000;
      while (kids.some(isAlive) && performance.now() < deadline) await sleep(10);
    };
    let stopped: Promise<void> | undefined;
    const stop = (stopOpts: StopOptions = {}): Promise<void> => {
      stopped ??= (async () => {
        await terminate(!!stopOpts.graceful);
        if (ownDir) removeTree(dir);
      })();
      return stopped;
    };
    if (up && !exited) {
      const server: ImapServer = { port, configPath, dir, logPath, users, startupMs, wrapperPid: child.pid, stop };
      opts.t?.after(() => server.stop());
      return server;
    }
    const diedEarly = exited ? ` (it exited, code ${child.exitCode})` : '';
    await terminate(false);
    const log = tail(logPath);
    lastError = new Error(
      `dovecot did not start listening on 127.0.0.1:${port} within ${timeoutMs} ms${diedEarly}` +
        `\n--- output ---\n${output.trim() || '(none)'}\n--- ${logPath} (tail) ---\n${log}`,
    );
    if (!/address already in use/i.test(output + log)) break;
    try {
      fs.rmSync(logPath, { force: true });
    } catch {
      // ignore
    }
  }
  if (ownDir) removeTree(dir);
  throw lastError ?? new Error('dovecot did not start');
}

function readPid(file: string): number | undefined {
  try {
    const n = Number(fs.readFileSync(file, 'utf8').trim());
    return Number.isInteger(n) && n > 1 ? n : undefined;
  } catch {
    return undefined;
  }
}

/** Pids whose parent is `ppid`, from /proc. */
function childPids(ppid: number): number[] {
  const out: number[] = [];
  let entries: string[] = [];
  try {
    entries = fs.readdirSync('/proc');
  } catch {
    return out;
  }
  for (const e of entries) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${e}/stat`, 'utf8');
      // pid (comm) state ppid ...; comm may contain spaces and parentheses
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(fields[1]) === ppid) out.push(Number(e));
    } catch {
      // raced with exit
    }
  }
  return out;
}

/** True while `pid` exists and is not a zombie. */
export function isAlive(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

function safeKill(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    // already gone
  }
}

/** The running master's pid and its children's (empty once stopped). */
export function dovecotPids(server: Pick<ImapServer, 'dir' | 'wrapperPid'>): number[] {
  const master = masterPid(server.dir, server.wrapperPid);
  if (!master || !isAlive(master)) return [];
  return [master, ...childPids(master).filter(isAlive)];
}

/** Starts a server for `users`, runs `fn`, always stops the server. */
export async function withImapServer<T>(
  users: ServerUser[],
  fn: (server: ImapServer) => Promise<T>,
  opts: Omit<StartOptions, 'users'> = {},
): Promise<T> {
  const server = await startImapServer({ ...opts, users });
  try {
    return await fn(server);
  } finally {
    await server.stop();
  }
}

/**
 * Copies a maildir to a fresh temp dir owned by MAIL_UID and returns the copy's path.
 * Dovecot writes indexes/uidlists and moves new/ to cur/ when it opens a maildir, so it
 * must only ever see copies of the stores under test. Remove with removeOracleCopy().
 */
export function prepareOracleCopy(maildir: string): string {
  const parent = makeTempDir('dsync-oracle-');
  const copy = path.join(parent, 'mail');
  if (fs.existsSync(maildir)) copyTree(maildir, copy);
  else fs.mkdirSync(copy);
  chownTree(parent);
  return copy;
}

/** Removes a copy made by prepareOracleCopy (its temp parent dir). */
export function removeOracleCopy(copy: string): void {
  const parent = path.dirname(copy);
  if (!path.basename(parent).startsWith('dsync-oracle-')) throw new Error(`not an oracle copy: ${copy}`);
  removeTree(parent);
}

export interface MaildirSpec {
  root: string;
  /** Appended to 'maildir:<copy>', e.g. ':LAYOUT=fs'. */
  suffix?: string;
}

/**
 * Views of several maildirs (each as its own user of one server start): copies, serves,
 * views, stops and deletes the copies. The originals are never touched.
 */
export async function viewMaildirs(specs: Array<string | MaildirSpec>): Promise<ImapView[]> {
  const norm = specs.map((s) => (typeof s === 'string' ? { root: s, suffix: '' } : { root: s.root, suffix: s.suffix ?? '' }));
  const copies = norm.map((s) => prepareOracleCopy(s.root));
  try {
    const users = norm.map((s, i) => ({ name: `view${i}`, mailLocation: `maildir:${copies[i]}${s.suffix}` }));
    return await withImapServer(users, async (server) => {
      const views: ImapView[] = [];
      for (const u of users) views.push(await imapView(server.port, u.name, ORACLE_PASSWORD));
      return views;
    });
  } finally {
    for (const c of copies) removeOracleCopy(c);
  }
}

/** What an IMAP client sees in the maildir at `maildirRoot` (a copy is shown to Dovecot). */
export async function viewMaildir(maildirRoot: string, mailLocationSuffix = ''): Promise<ImapView> {
  const [view] = await viewMaildirs([{ root: maildirRoot, suffix: mailLocationSuffix }]);
  return view;
}

export interface CommandResult {
  code: number;
  stdout: string;
  stderr: string;
}

function readPasswdHome(configPath: string, user: string): string | undefined {
  try {
    for (const line of fs.readFileSync(path.join(path.dirname(configPath), 'passwd'), 'utf8').split('\n')) {
      const f = line.split(':');
      if (f[0] === user) return f[5] || undefined;
    }
  } catch {
    // no passwd file next to the config
  }
  return undefined;
}

function firstPasswdUser(configPath: string): string | undefined {
  try {
    return fs.readFileSync(path.join(path.dirname(configPath), 'passwd'), 'utf8').split(':')[0] || undefined;
  } catch {
    return undefined;
  }
}

/**
 * Runs `doveadm -c CONF ...args`. USER and HOME default to the first user of the config's
 * passwd file and its home: mail commands without -u act as $USER with the settings of
 * the config (mail_uid drops root privileges) and need no running auth server.
 */
export function doveadm(configPath: string, args: string[], env: Record<string, string> = {}, timeoutMs = 120_000): Promise<CommandResult> {
  const user = env.USER ?? firstPasswdUser(configPath) ?? ORACLE_USER;
  const home = env.HOME ?? readPasswdHome(configPath, user) ?? path.dirname(configPath);
  const bin = findBinary('doveadm') ?? 'doveadm';
  return new Promise((resolve, reject) => {
    const child = spawn(bin, ['-c', configPath, ...args], {
      env: { ...process.env, ...env, USER: user, HOME: home },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code: code ?? (signal ? 128 : 1), stdout, stderr });
    });
  });
}

export interface DoveadmSyncOptions {
  configPath: string;
  user: string;
  /** The "local" side, e.g. 'maildir:/tmp/a'. */
  locationA: string;
  /** The "remote" side, e.g. 'maildir:/tmp/b'. */
  locationB: string;
  /** 'sync': two-way; 'backup': make B like A (one-way, B's extra changes are reverted). */
  mode: 'sync' | 'backup';
  /** -f: full sync (ignore any state). */
  full?: boolean;
  /** HOME for the run; default the user's home from the config's passwd file. */
  home?: string;
  extraArgs?: string[];
  /** How often to run again while doveadm exits with 2 ("run dsync again"); default 2. */
  rerunOnCode2?: number;
}

export interface DoveadmSyncResult extends CommandResult {
  /** The command line of one run. */
  args: string[];
  /** How many times doveadm ran. */
  runs: number;
}

/**
 * Dovecot's own sync between two locations:
 * `doveadm -c CONF -o mail_location=A sync|backup [-f] B`, run as USER=user without -u
 * (so no auth server is needed). Both trees must be owned by MAIL_UID.
 * Exit codes: 0 ok, 2 "run again" (not everything synced), 75 temporary failure.
 * Dovecot itself asks to be run again (code 2, "Mailbox changes caused a desync") e.g.
 * when both sides had a same-named mailbox with different GUIDs; by default we do so up to
 * twice (`rerunOnCode2`), and return the last run's code with all runs' output.
 */
export async function doveadmSync(opts: DoveadmSyncOptions): Promise<DoveadmSyncResult> {
  const args = [
    '-o',
    `mail_location=${opts.locationA}`,
    opts.mode,
    ...(opts.full ? ['-f'] : []),
    ...(opts.extraArgs ?? []),
    opts.locationB,
  ];
  const env: Record<string, string> = { USER: opts.user };
  const home = opts.home ?? readPasswdHome(opts.configPath, opts.user);
  if (home) env.HOME = home;
  const maxRuns = 1 + (opts.rerunOnCode2 ?? 2);
  let stdout = '';
  let stderr = '';
  let runs = 0;
  let code = 0;
  do {
    const r = await doveadm(opts.configPath, args, env);
    runs++;
    code = r.code;
    stdout += r.stdout;
    stderr += r.stderr;
  } while (code === 2 && runs < maxRuns);
  return { code, stdout, stderr, runs, args: ['doveadm', '-c', opts.configPath, ...args] };
}

/** A config dir for doveadm-only use (no listener) with one user; returns the config path. */
export function writeDoveadmConfig(dir: string, user = ORACLE_USER): string {
  const home = path.join(dir, 'home', user);
  fs.mkdirSync(home, { recursive: true });
  chownTree(path.join(dir, 'home'));
  return writeDovecotConfig(dir, { users: [{ name: user, home, mailLocation: '' }] });
}

/** imapSession for a user of a running server, with the oracle password. */
export function oracleSession(server: ImapServer, user = server.users[0].name): Promise<ImapFlow> {
  return imapSession(server.port, user, ORACLE_PASSWORD);
}
