// Shared helpers of the robustness suite: temp trees, raw maildir writes, running bin/dsync as a
// real process, and the invariants every case checks (nothing lost, both sides equal, a further
// run changes nothing).
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createHash } from 'node:crypto';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { snapshot, type Snapshot } from '../helpers/snapshot.js';
import { parseMailLocation } from '../../src/storage/location.js';
import { runSync, type RunSyncResult } from '../../src/sync/run.js';
import { Logger } from '../../src/util/log.js';

/** bin/dsync of this checkout (dist/test/robustness/x.js -> project root). */
export const DSYNC = fileURLToPath(new URL('../../../bin/dsync', import.meta.url));

export const sha = (b: Buffer | string): string =>
  createHash('sha256')
    .update(typeof b === 'string' ? Buffer.from(b, 'utf8') : b)
    .digest('hex')
    .slice(0, 16);

/** A fresh 0755 temp directory removed when the test ends (DSYNC_ROBUST_KEEP=1 keeps it). */
export function tempDir(t: { after: (fn: () => void) => void }, prefix = 'dsync-robust-'): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  fs.chmodSync(dir, 0o755);
  t.after(() => {
    if (process.env.DSYNC_ROBUST_KEEP) console.log(`kept ${dir}`);
    else fs.rmSync(dir, { recursive: true, force: true, maxRetries: 3 });
  });
  return dir;
}

/** Creates cur/ new/ tmp/ (and maildirfolder for a ".Sub" Maildir++ folder). */
export function makeMaildir(dir: string): void {
  for (const d of ['cur', 'new', 'tmp']) fs.mkdirSync(path.join(dir, d), { recursive: true });
  if (path.basename(dir).startsWith('.') && !fs.existsSync(path.join(dir, 'maildirfolder'))) {
    fs.writeFileSync(path.join(dir, 'maildirfolder'), '');
  }
}

/**
 * Writes a message file with exactly this name into cur/ (or new/) of a maildir folder, with its
 * mtime (INTERNALDATE) set. Returns the full path.
 */
export function putFile(dir: string, sub: 'cur' | 'new', name: string, body: Buffer | string, mtime = 1_700_000_000): string {
  makeMaildir(dir);
  const p = path.join(dir, sub, name);
  fs.writeFileSync(p, body);
  fs.utimesSync(p, mtime, mtime);
  return p;
}

let seq = 0;
/** Delivers like an MDA: tmp/ then rename into new/. Returns the base name. */
export function deliver(dir: string, body: Buffer | string, tag = `d${seq++}`): string {
  makeMaildir(dir);
  const buf = typeof body === 'string' ? Buffer.from(body) : body;
  const base = `1700000000.M${process.hrtime.bigint() % 1_000_000n}P${process.pid}Q${tag}.robust,S=${buf.length}`;
  const tmp = path.join(dir, 'tmp', base);
  fs.writeFileSync(tmp, buf);
  fs.renameSync(tmp, path.join(dir, 'new', base));
  return base;
}

export interface DsyncResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  ms: number;
}

export function mirrorArgs(a: string, b: string, extra: string[] = []): string[] {
  return [...extra, '-o', `mail_location=${a}`, 'mirror', b];
}

/** A mirror of two Maildirs run in this process (runSync), silently; lockTimeout in seconds. */
export function mirrorInProcess(a: string, b: string, lockTimeout?: number): Promise<RunSyncResult> {
  return runSync({
    mode: 'mirror',
    reverse: false,
    full: false,
    altChar: '_',
    local: parseMailLocation(`maildir:${a}`, {}),
    remote: { kind: 'location', location: parseMailLocation(`maildir:${b}`, {}) },
    log: new Logger({ sink: { write: () => undefined } }),
    lockTimeout,
  });
}

/** Runs bin/dsync to completion (synchronously). */
export function dsync(args: string[], timeoutMs = 60_000): DsyncResult {
  const t0 = Date.now();
  const r = spawnSync(DSYNC, args, { encoding: 'utf8', timeout: timeoutMs });
  if (r.error) throw r.error;
  return { code: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr, ms: Date.now() - t0 };
}

/** Runs bin/dsync and asserts exit 0 (stderr in the failure message). */
export function syncedOk(args: string[]): DsyncResult {
  const r = dsync(args);
  assert.equal(r.code, 0, `dsync ${args.join(' ')} exited ${r.code}:\n${r.stderr}`);
  return r;
}

/** Starts bin/dsync; the promise settles when it exits. */
export function dsyncAsync(args: string[], opts: { env?: NodeJS.ProcessEnv } = {}): { child: ChildProcess; done: Promise<DsyncResult> } {
  const t0 = Date.now();
  const child = spawn(DSYNC, args, { stdio: ['ignore', 'pipe', 'pipe'], env: opts.env ?? process.env });
  let stdout = '';
  let stderr = '';
  child.stdout!.setEncoding('utf8').on('data', (s: string) => (stdout += s));
  child.stderr!.setEncoding('utf8').on('data', (s: string) => (stderr += s));
  const done = new Promise<DsyncResult>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr, ms: Date.now() - t0 }));
  });
  return { child, done };
}

/** Runs the mirror until it exits 0 (at most `max` runs); returns every run's result. */
export function converge(args: string[], max = 3): DsyncResult[] {
  const runs: DsyncResult[] = [];
  for (let i = 0; i < max; i++) {
    const r = dsync(args);
    runs.push(r);
    if (r.code !== 2) break;
  }
  return runs;
}

export const snap = (loc: string): Promise<Snapshot> => snapshot(loc);

/** Asserts both sides look the same to a client (folders, UIDs, flags, dates, bytes). */
export async function assertSame(a: string, b: string, why = ''): Promise<Snapshot> {
  const sa = await snap(a);
  const sb = await snap(b);
  assert.deepEqual(sb, sa, `both sides must be equal${why ? ` (${why})` : ''}`);
  return sa;
}

/** sha -> mailbox names it is in (one entry per copy). */
export function whereIs(s: Snapshot): Map<string, string[]> {
  const out = new Map<string, string[]>();
  for (const mb of s.mailboxes) for (const m of mb.messages) out.set(m.sha, [...(out.get(m.sha) ?? []), mb.name]);
  return out;
}

/** Every expected body is present, exactly once, in the named mailbox. */
export function assertContainsOnce(s: Snapshot, expected: Iterable<[string, string]>, side: string): void {
  const where = whereIs(s);
  for (const [digest, mailbox] of expected) {
    const at = where.get(digest) ?? [];
    assert.deepEqual(at, [mailbox], `${side}: mail ${digest} should be in ${mailbox} exactly once, found in [${at.join(', ')}]`);
  }
}

/** No mailbox holds two copies of the same bytes. */
export function assertNoDuplicates(s: Snapshot, side: string): void {
  for (const mb of s.mailboxes) {
    const seen = new Set<string>();
    for (const m of mb.messages) {
      assert.ok(!seen.has(m.sha), `${side}: mailbox ${mb.name} holds mail ${m.sha} twice`);
      seen.add(m.sha);
    }
  }
}

/** A further run exits 0 and changes nothing on either side. */
export async function assertQuiet(args: string[], a: string, b: string): Promise<void> {
  const before = [await snap(a), await snap(b)];
  const r = dsync([...args.slice(0, -2), '-v', ...args.slice(-2)]);
  assert.equal(r.code, 0, `a further run must exit 0:\n${r.stderr}`);
  // With -v every change is an info line; warnings (e.g. about stray files) may repeat.
  const changes = r.stderr.split('\n').filter((l) => l !== '' && !/^dsync: (warning|debug): /.test(l));
  assert.deepEqual(changes, [], 'a further run must change nothing');
  assert.deepEqual([await snap(a), await snap(b)], before);
}

/** Files and directories below root, with their owner uid, relative paths. */
export function walkOwners(root: string): { path: string; uid: number; gid: number }[] {
  const out: { path: string; uid: number; gid: number }[] = [];
  const walk = (dir: string) => {
    for (const name of fs.readdirSync(dir)) {
      const p = path.join(dir, name);
      const st = fs.lstatSync(p);
      out.push({ path: path.relative(root, p), uid: st.uid, gid: st.gid });
      if (st.isDirectory()) walk(p);
    }
  };
  const st = fs.lstatSync(root);
  out.push({ path: '.', uid: st.uid, gid: st.gid });
  walk(root);
  return out;
}

export const isRoot = (): boolean => typeof process.getuid === 'function' && process.getuid() === 0;

/**
 * A passwd-file userdb with one user (no system account needed) and a config reading it, for
 * `-c CONF -u NAME`. Returns the config path.
 */
export function passwdFileConfig(dir: string, user: { name: string; uid: number; gid: number; home: string }): string {
  const users = path.join(dir, 'users');
  fs.writeFileSync(users, `${user.name}:x:${user.uid}:${user.gid}::${user.home}:/bin/false\n`);
  const conf = path.join(dir, 'dovecot.conf');
  fs.writeFileSync(conf, `userdb {\n  driver = passwd-file\n  args = ${users}\n}\n`);
  return conf;
}

export function chownTree(root: string, uid: number, gid: number): void {
  fs.lchownSync(root, uid, gid);
  for (const e of walkOwners(root)) fs.lchownSync(path.join(root, e.path), uid, gid);
}
