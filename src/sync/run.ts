// Engine entry points: wires locations, locks, transports and the two brains together.
import { join } from 'node:path';
import { realpathSync, mkdirSync, statSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { createHash, spawn } from '../util/builtin.js';
import type { MailLocation } from '../storage/location.js';
import { openStore } from '../storage/open.js';
import { setMailFsync, type MailFsync } from '../storage/maildir/io.js';
import { clockMs, msSince, type Logger } from '../util/log.js';
import { Location } from '../location/location.js';
import { acquireLock, createInPlace } from '../location/lock.js';
import { createPipePair } from '../transport/pipe.js';
import type { StreamChannel } from '../transport/stream.js';
import type { Channel } from '../transport/channel.js';
import type { Readable, Writable } from 'node:stream';
import type { SyncRecord } from './records.js';
import { runBrain, type MasterSettings } from './brain.js';

export interface RunSyncOptions {
  mode: 'mirror' | 'backup';
  reverse: boolean;
  full: boolean;
  mailbox?: string;
  altChar: string;
  local: MailLocation;
  remote: RemoteSpec;
  owner?: { uid: number; gid: number };
  log: Logger;
  /** Seconds to wait for another dsync holding a location's lock (default 30). */
  lockTimeout?: number;
  /**
   * dsync_hardlinks: a store that is written gives new mails a hard link to the other side's
   * file where it can (same file system, same owner, the file's time is the mail's date).
   */
  hardLinks?: boolean;
  /** mail_temp_dir: where a remote run spools mail bodies it cannot hold in memory (default the system's). */
  tempDir?: string;
  /** mail_fsync for this process's mail (default optimized; see setMailFsync). A remote side follows its own. */
  mailFsync?: MailFsync;
  /** mbox_lock_timeout of this process's mbox files (default 30 s). A remote side follows its own. */
  mboxLockTimeoutMs?: number;
  /**
   * For tests: the two brains of a local run talk through the byte-stream channel of remote runs
   * (its framing and flow control, with this memory budget) instead of handing records over.
   */
  streamBudget?: number;
}

export type RemoteSpec = { kind: 'location'; location: MailLocation } | { kind: 'command'; argv: string[] };

/** Exit code when mailboxes were left out because the other format cannot hold them (EX_DATAERR). */
export const EXIT_LEFT_OUT = 65;

export interface RunSyncResult {
  /** 0 synced, 2 changes during the sync (run again), 65 mailboxes left out (see the summary). */
  exitCode: 0 | 2 | typeof EXIT_LEFT_OUT;
  summary: string[];
}

export const INDEX_FILE = 'dsync-index.sqlite';
const LOCK_FILE = 'dsync.lock';

export interface OpenedLocation {
  location: Location;
  release: () => Promise<void>;
}

/** Opens a mail location with its change index under the location's lock. */
export async function openLocation(
  spec: MailLocation,
  o: { owner?: { uid: number; gid: number }; log: Logger; readOnly: boolean; lockTimeout?: number; hardLinks?: boolean; mboxLockTimeoutMs?: number },
): Promise<OpenedLocation> {
  const t0 = clockMs();
  const store = await openStore(spec, {
    owner: o.owner,
    readOnly: o.readOnly,
    warn: (m: string) => o.log.warn(m),
    hardLinks: o.hardLinks,
    ...(o.mboxLockTimeoutMs !== undefined ? { lockTimeoutMs: o.mboxLockTimeoutMs } : {}),
  });
  let unlock: (() => void) | undefined;
  try {
    const controlDir = store.controlDir;
    const lockPath = o.readOnly
      ? join(tmpdir(), `dsync-${createHash('sha1').update(realpathSync(spec.path)).digest('hex').slice(0, 16)}.lock`)
      : join(controlDir, LOCK_FILE);
    // Run as root, our own files must belong to the mail's owner like the mail itself, from the
    // moment they exist (a user's own dsync may look at them at any time).
    const owner = process.getuid?.() === 0 && !o.readOnly ? (o.owner ?? ownerOf(controlDir)) : undefined;
    unlock = await acquireLock(lockPath, o.lockTimeout ?? 30, owner);
    let indexPath = ':memory:';
    if (!o.readOnly) {
      const dir = spec.params['DSYNC_INDEX'] ?? controlDir;
      mkdirSync(dir, { recursive: true });
      indexPath = join(dir, INDEX_FILE);
    }
    if (owner && indexPath !== ':memory:') {
      // SQLite creates the database and its -wal as whoever opens them: create them first. A new
      // database is switched to WAL mode through one rollback-journal write. (No -shm: the index
      // is opened in exclusive mode, see ChangeIndex.)
      const suffixes = existsSync(indexPath) ? ['-wal'] : ['', '-journal', '-wal'];
      for (const suffix of suffixes) createOwned(indexPath + suffix, owner);
    }
    let location: Location;
    try {
      location = Location.open(store, { indexPath, log: o.log, readOnly: o.readOnly });
    } catch (err) {
      throw new Error(`change index ${indexPath}: ${(err as Error).message}`, { cause: err });
    }
    o.log.debug(`${spec.path}: store, lock and change index opened in ${msSince(t0)}`);
    return {
      location,
      release: async () => {
        const t1 = clockMs();
        try {
          await location.close();
          o.log.debug(`${spec.path}: change index and store closed in ${msSince(t1)}`);
        } catch (err) {
          const code = (err as { code?: unknown }).code;
          if (typeof code === 'string' && code.startsWith('SQLITE_')) throw new Error(`change index ${indexPath}: ${(err as Error).message}`, { cause: err });
          throw err;
        } finally {
          unlock?.();
        }
      },
    };
  } catch (err) {
    unlock?.();
    await store.close();
    throw err;
  }
}

function ownerOf(dir: string): { uid: number; gid: number } | undefined {
  try {
    const st = statSync(dir);
    return { uid: st.uid, gid: st.gid };
  } catch {
    return undefined;
  }
}

/** Creates p (empty) owned by owner unless it exists; never root-owned, even for a moment. */
function createOwned(p: string, owner: { uid: number; gid: number }): void {
  if (existsSync(p)) return;
  try {
    createInPlace(p, '', owner, 'index file');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  }
}

function canonical(p: string): string {
  try {
    return realpathSync(p);
  } catch {
    return p;
  }
}

function sameDirectory(a: string, b: string): boolean {
  try {
    return realpathSync(a) === realpathSync(b);
  } catch {
    return false;
  }
}

export async function runSync(o: RunSyncOptions): Promise<RunSyncResult> {
  setMailFsync(o.mailFsync ?? 'optimized');
  if (o.remote.kind === 'command') return runRemote(o, o.remote.argv);
  const remote = o.remote.location;
  if (sameDirectory(o.local.path, remote.path)) throw new Error(`both locations point to the same directory (${o.local.path})`);
  const settings = masterSettings(o);
  const backup = settings.backup;
  // The backup source is never written: its store is read-only and its index lives in memory.
  // Locks are taken in one global order (by path) so that "a mirror b" and "b mirror a" started
  // together wait for each other instead of deadlocking.
  const opts = { owner: o.owner, log: o.log, lockTimeout: o.lockTimeout, hardLinks: o.hardLinks, mboxLockTimeoutMs: o.mboxLockTimeoutMs };
  const openA = () => openLocation(o.local, { ...opts, readOnly: backup === 'send' });
  const openB = () => openLocation(remote, { ...opts, readOnly: backup === 'recv' });
  const localFirst = canonical(o.local.path) <= canonical(remote.path);
  let a: OpenedLocation | undefined;
  let b: OpenedLocation | undefined;
  let streams: [StreamChannel, StreamChannel] | undefined;
  try {
    if (localFirst) {
      a = await openA();
      b = await openB();
    } else {
      b = await openB();
      a = await openA();
    }
    if (o.mailbox !== undefined) settings.syncBox = o.mailbox.split(a.location.separator).filter((p) => p !== '');
    const [chA, chB] = o.streamBudget === undefined ? createPipePair() : (streams = await streamPair(o.streamBudget, o.tempDir));
    const [ra, rb] = await bothSettled(
      runBrain({ role: 'master', location: a.location, channel: chA, log: o.log, settings }),
      runBrain({ role: 'slave', location: b.location, channel: chB, log: o.log }),
    );
    const summary = [...ra.summary.map((l) => `${o.local.path}: ${l}`), ...rb.summary.map((l) => `${remote.path}: ${l}`)];
    return { exitCode: ra.leftOut || rb.leftOut ? EXIT_LEFT_OUT : ra.changesDuringSync || rb.changesDuringSync ? 2 : 0, summary };
  } finally {
    for (const ch of streams ?? []) ch.dispose();
    // Both at once: each waits for its index's fsyncs (ChangeIndex.close).
    const released = await Promise.allSettled([b?.release(), a?.release()]);
    for (const r of released) if (r.status === 'rejected') throw r.reason;
  }
}

/**
 * Both brains' results once neither runs any more. A failing brain aborts the channel, but its
 * peer notices only at its next receive and may be in the middle of saving mail until then; the
 * stores are closed and the locks released after this returns, so it must wait for both. The
 * error is the first one raised: the other brain's is the abort it caused ("peer failed: ...").
 */
export async function bothSettled<A, B>(a: Promise<A>, b: Promise<B>): Promise<[A, B]> {
  let first: { error: unknown } | undefined;
  const note = (error: unknown) => {
    first ??= { error };
  };
  const [ra, rb] = await Promise.all([a.catch(note), b.catch(note)]);
  if (first) throw first.error;
  return [ra as A, rb as B];
}

function masterSettings(o: RunSyncOptions): MasterSettings {
  return {
    syncType: o.full ? 'full' : 'changed',
    backup: o.mode === 'backup' ? (o.reverse ? 'recv' : 'send') : 'none',
    altChar: o.altChar,
  };
}

/** Syncs with a `dsync server` started by a command (ssh or anything else) over its stdin/stdout. */
async function runRemote(o: RunSyncOptions, argv: string[]): Promise<RunSyncResult> {
  const settings = masterSettings(o);
  // The remote side is started first: its start takes a while (ssh's connection, a Node start),
  // and it opens nothing before our handshake, so that overlaps with opening ours.
  const Channel = await streamChannel();
  const child = spawn(argv[0], argv.slice(1), { stdio: ['pipe', 'pipe', 'inherit'] });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null; error?: Error }>((resolve) => {
    child.on('error', (error) => resolve({ code: null, signal: null, error }));
    child.on('exit', (code, signal) => resolve({ code, signal }));
  });
  const ch = new Channel(child.stdout!, child.stdin!, { peerName: `the remote dsync (${argv.join(' ')})`, spoolDir: o.tempDir });
  child.stdin!.on('error', () => undefined); // reported through the channel
  let a: OpenedLocation;
  try {
    a = await openLocation(o.local, { owner: o.owner, log: o.log, readOnly: settings.backup === 'send', lockTimeout: o.lockTimeout, mboxLockTimeoutMs: o.mboxLockTimeoutMs });
  } catch (err) {
    // Stopped before it read anything: a signal, not the end of its input, which it would
    // report as an error of its own next to ours.
    ch.dispose();
    if (child.exitCode === null) child.kill('SIGTERM');
    throw err;
  }
  try {
    if (o.mailbox !== undefined) settings.syncBox = o.mailbox.split(a.location.separator).filter((p) => p !== '');
    let result;
    try {
      result = await runBrain({ role: 'master', location: a.location, channel: ch, log: o.log, settings });
    } catch (err) {
      // Say why the remote side went away, if it did.
      const gone = await Promise.race([exited, new Promise<null>((r) => setTimeout(() => r(null), 2000))]);
      if (gone?.error) throw new Error(`could not run ${argv[0]}: ${gone.error.message}`, { cause: err });
      if (gone && gone.code !== 0) throw new Error(`${(err as Error).message} (the remote command exited with ${gone.signal ?? `code ${gone.code}`})`, { cause: err });
      throw err;
    }
    ch.close();
    const end = await exited;
    if (end.code !== 0) o.log.warn(`the remote dsync exited with ${end.signal ?? `code ${end.code}`}`);
    const exitCode = result.leftOut || end.code === EXIT_LEFT_OUT ? EXIT_LEFT_OUT : result.changesDuringSync || end.code === 2 ? 2 : 0;
    return { exitCode, summary: result.summary.map((l) => `${o.local.path}: ${l}`) };
  } finally {
    ch.dispose();
    if (child.exitCode === null) child.kill('SIGTERM');
    await a.release();
  }
}

/**
 * `dsync server`: the remote side. Speaks the protocol on input/output for the dsync that started
 * it; the master's handshake says whether this side is a backup source (then opened read-only).
 */
export async function runServer(o: {
  local: MailLocation;
  owner?: { uid: number; gid: number };
  log: Logger;
  input: NodeJS.ReadableStream;
  output: NodeJS.WritableStream;
  /** See RunSyncOptions.tempDir. */
  tempDir?: string;
  /** See RunSyncOptions.mailFsync. */
  mailFsync?: MailFsync;
  /** See RunSyncOptions.mboxLockTimeoutMs. */
  mboxLockTimeoutMs?: number;
}): Promise<number> {
  setMailFsync(o.mailFsync ?? 'optimized');
  const ch = new (await streamChannel())(o.input as Readable, o.output as Writable, { peerName: 'the dsync that started this server', spoolDir: o.tempDir });
  let opened: OpenedLocation | undefined;
  try {
    const first = await ch.recv();
    if (first.type !== 'handshake') throw new Error(`expected a handshake from the peer, got ${first.type}`);
    opened = await openLocation(o.local, { owner: o.owner, log: o.log, readOnly: first.backupSend, mboxLockTimeoutMs: o.mboxLockTimeoutMs });
    let replayed = false;
    // The stream channel with the handshake put back in front.
    const channel: Channel = {
      send: (r: SyncRecord) => ch.send(r),
      recv: () => {
        if (replayed) return ch.recv();
        replayed = true;
        return Promise.resolve(first);
      },
      flush: () => ch.flush(),
      abort: (e: Error) => ch.abort(e),
      close: () => ch.close(),
      mailboxDone: () => ch.mailboxDone(),
      waited: ch.waited,
      remote: ch.remote,
    };
    const result = await runBrain({ role: 'slave', location: opened.location, channel, log: o.log });
    await ch.flush();
    ch.close();
    for (const l of result.summary) o.log.info(l);
    return result.leftOut ? EXIT_LEFT_OUT : result.changesDuringSync ? 2 : 0;
  } finally {
    ch.dispose();
    await opened?.release();
  }
}

/** The byte-stream transport, loaded only by runs that talk to another process. */
/** Two stream channels joined back to back in this process (see RunSyncOptions.streamBudget). */
async function streamPair(budget: number, spoolDir: string | undefined): Promise<[StreamChannel, StreamChannel]> {
  const { PassThrough } = await import('node:stream');
  const Channel = await streamChannel();
  const toB = new PassThrough();
  const toA = new PassThrough();
  return [
    new Channel(toA, toB, { peerName: 'side B', memoryBudget: budget, spoolDir }),
    new Channel(toB, toA, { peerName: 'side A', memoryBudget: budget, spoolDir }),
  ];
}

async function streamChannel(): Promise<typeof StreamChannel> {
  return (await import('../transport/stream.js')).StreamChannel;
}
