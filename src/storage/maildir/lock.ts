// Dovecot-style dotlocks: "<file>.lock" created with O_EXCL. A lock older than the stale timeout
// (2 minutes, like Dovecot's uidlist lock) is overridden. The lock file may double as the temp file
// of a rewrite: writing the new contents into it and renaming it over the target replaces the file
// and releases the lock in one atomic step (what Dovecot does too).
// The file operations here are synchronous: each is one quick system call (a thread-pool round
// trip would cost more), and the caller waits for each in turn anyway. The exceptions wait for
// the disk or the file system's bookkeeping: fsyncs, and the rename that replaces the target.
import * as fs from 'node:fs';
import { StorageError } from '../types.js';
import { chownIfNeededSync, closeQuietly, errCode, fsyncDir, fsyncFd, isNotFound, sleep, toStorageError, unlinkQuietly, type FsContext } from './io.js';
import * as path from 'node:path';
import { hostname } from 'node:os';

export interface DotLockOptions {
  /** A lock whose mtime is older than this is considered stale and overridden. Default 120 s. */
  staleMs?: number;
  /** Give up (StorageError LOCKED) after waiting this long. Default 30 s. */
  timeoutMs?: number;
}

export const DEFAULT_STALE_MS = 120_000;
let tempCounter = 0;
export const DEFAULT_LOCK_TIMEOUT_MS = 30_000;

/**
 * The private name a lock is prepared under before it is linked into place. It ends in ".lock"
 * like the lock: a run killed in between leaves it behind, and next to an mbox file any other
 * name would be listed as a mailbox (by us and by Dovecot, which hide "*.lock").
 */
export function dotLockTempName(target: string): string {
  return `${target}.${process.pid}.${++tempCounter}.tmp.lock`;
}

/** Targets whose dotlock this process holds now, with the number of holders (see heldHere). */
const held = new Map<string, number>();

export class DotLock {
  private released = false;

  /**
   * True while this process holds the dotlock of target (as named when it was taken): no other
   * process that honours it writes the target meanwhile.
   */
  static heldHere(target: string): boolean {
    return held.has(target);
  }

  private constructor(
    readonly target: string,
    readonly lockPath: string,
    private readonly fd: number,
    private readonly ino: number,
    private readonly ctx: FsContext,
    private readonly mode: number | undefined,
  ) {}

  static async acquire(ctx: FsContext, target: string, opts: DotLockOptions = {}): Promise<DotLock> {
    const lockPath = `${target}.lock`;
    const staleMs = opts.staleMs ?? DEFAULT_STALE_MS;
    const deadline = Date.now() + (opts.timeoutMs ?? DEFAULT_LOCK_TIMEOUT_MS);
    let delay = 5;
    for (;;) {
      // Prepared complete under a private name (holder named, owner set), then linked into place:
      // the lock appears at once as it should be, and link() fails if someone else holds it.
      const temp = dotLockTempName(target);
      let fd: number | undefined;
      let linked: number | undefined;
      try {
        fd = fs.openSync(temp, 'wx', ctx.fileMode);
        chownIfNeededSync(ctx, temp);
        // Like Dovecot's dotlocks, the lock names its holder, so a crashed holder is seen at once.
        fs.writeSync(fd, `${process.pid}:${hostname()}`, 0);
        const ino = fs.fstatSync(fd).ino;
        fs.linkSync(temp, lockPath);
        linked = ino;
        unlinkQuietly(temp);
        closeQuietly(fd);
        fd = undefined;
        // Held open under the lock's own name: /proc then tells where it went if the folder is
        // renamed under us (see removeMovedLock).
        fd = openIfPresent(lockPath);
        // Gone or replaced within these microseconds: overridden as stale by someone; try again.
        if (fd === undefined || fs.fstatSync(fd).ino !== ino) throw Object.assign(new Error('lock taken over'), { code: 'EEXIST' });
        sweepAbandonedTemps(target, staleMs);
        held.set(target, (held.get(target) ?? 0) + 1);
        return new DotLock(target, lockPath, fd, ino, ctx, ctx.fileMode);
      } catch (e) {
        if (fd !== undefined) closeQuietly(fd);
        unlinkQuietly(temp);
        if (errCode(e) !== 'EEXIST') {
          // Failed after the lock was ours (EMFILE reopening it...): not left behind for a live pid.
          if (linked !== undefined && inodeOf(lockPath) === linked) unlinkQuietly(lockPath);
          throw toStorageError(e, 'create lock', lockPath);
        }
      }
      // Someone holds it. Stale?
      try {
        const st = fs.statSync(lockPath);

        if (Date.now() - st.mtimeMs > staleMs) {
          ctx.warn(`overriding stale lock ${lockPath} (${Math.round((Date.now() - st.mtimeMs) / 1000)} s old)`);
          if (inodeOf(lockPath) === st.ino) unlinkQuietly(lockPath);
          continue;
        }
        if (await holderIsDead(lockPath)) {
          ctx.warn(`overriding lock ${lockPath} left by a process that no longer exists`);
          if (inodeOf(lockPath) === st.ino) unlinkQuietly(lockPath);
          continue;
        }
      } catch (e) {
        if (isNotFound(e)) continue; // released meanwhile
        throw toStorageError(e, 'stat lock', lockPath);
      }
      if (Date.now() >= deadline) {
        throw new StorageError(`timed out waiting for lock ${lockPath}`, 'LOCKED');
      }
      await sleep(delay);
      delay = Math.min(delay * 2, 100);
    }
  }

  private stillOurs(): boolean {
    return inodeOf(this.lockPath) === this.ino;
  }

  /** Refreshes the lock's mtime so that others do not consider it stale during long work. */
  async touch(): Promise<void> {
    const now = new Date();
    try {
      fs.futimesSync(this.fd, now, now);
    } catch {
      // a lock we cannot touch is overridden after the stale timeout, as before
    }
  }

  /**
   * Writes data into the lock file, fsyncs it and renames it over the target: the target is
   * replaced atomically and the lock is released.
   */
  async replaceTarget(data: string | Buffer): Promise<void> {
    if (this.released) throw new Error('lock already released');
    // A temp file of our own (not the lock file, which keeps naming its holder) renamed over the target.
    // Ends in ".lock" for the reasons of dotLockTempName.
    const temp = `${this.target}.${process.pid}.tmp.lock`;
    try {
      const fd = fs.openSync(temp, 'w', this.mode);
      try {
        fs.writeFileSync(fd, data);
        await fsyncFd(fd);
      } finally {
        closeQuietly(fd);
      }
      chownIfNeededSync(this.ctx, temp);
    } catch (e) {
      unlinkQuietly(temp);
      this.releaseSync();
      throw toStorageError(e, 'write', temp);
    }
    if (!this.stillOurs()) {
      unlinkQuietly(temp);
      this.releaseSync();
      throw new StorageError(`lock ${this.lockPath} was taken over by another process; ${this.target} not written`, 'LOCKED');
    }
    try {
      // Through the thread pool, unlike the rest: replacing a file frees the old one's inode,
      // 0.3-0.8 ms here, which the other side's brain can use meanwhile.
      await new Promise<void>((resolve, reject) => fs.rename(temp, this.target, (e) => (e ? reject(e) : resolve())));
    } catch (e) {
      unlinkQuietly(temp);
      this.releaseSync();
      throw toStorageError(e, 'rename', this.target);
    }
    try {
      await fsyncDir(path.dirname(this.target));
    } catch {
      // the new file is in place; only its durability across a crash is in doubt
    }
    this.releaseSync();
  }

  async release(): Promise<void> {
    this.releaseSync();
  }

  private releaseSync(): void {
    if (this.released) return;
    this.released = true;
    const n = held.get(this.target)! - 1;
    if (n > 0) held.set(this.target, n);
    else held.delete(this.target);
    if (this.stillOurs()) unlinkQuietly(this.lockPath);
    else this.removeMovedLock();
    closeQuietly(this.fd);
  }

  /**
   * Another program renamed the folder while we held its lock (an IMAP user's RENAME does not
   * wait for it), so the lock moved with the folder. Left there it would block that program until
   * the stale timeout while we are alive. Linux tells where an open file is now.
   */
  private removeMovedLock(): void {
    let now: string;
    try {
      now = fs.readlinkSync(`/proc/self/fd/${this.fd}`);
    } catch {
      return; // no /proc: the lock is overridden after the stale timeout, as before
    }
    if (now.endsWith(' (deleted)') || !now.endsWith('.lock')) return;
    if (inodeOf(now) === this.ino) unlinkQuietly(now);
  }
}

const swept = new Set<string>();
/** Names of the private files of locks and replaceTarget: "<target>.<pid>.<n>.tmp.lock", "<target>.<pid>.tmp.lock". */
const LOCK_TEMP = /^.+\.\d+(\.\d+)?\.tmp\.lock$/;

/**
 * Removes the private files of locks and replaceTarget that a killed run left behind next to the
 * target: those older than the stale timeout, when any lock would be overridden too. Once per
 * directory and process: they are rare, and the directory may be big (the mbox root, where
 * every mailbox file is a target).
 */
function sweepAbandonedTemps(target: string, staleMs: number): void {
  const dir = path.dirname(target);
  if (swept.has(dir)) return;
  swept.add(dir);
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch {
    return;
  }
  for (const n of names) {
    if (!LOCK_TEMP.test(n)) continue;
    const p = path.join(dir, n);
    try {
      if (Date.now() - fs.lstatSync(p).mtimeMs > staleMs) unlinkQuietly(p);
    } catch {
      // gone meanwhile
    }
  }
}

function openIfPresent(p: string): number | undefined {
  try {
    return fs.openSync(p, 'r');
  } catch (e) {
    if (isNotFound(e)) return undefined;
    throw e;
  }
}

/** The inode number of p, or undefined when it does not exist (or cannot be stat'ed). */
function inodeOf(p: string): number | undefined {
  try {
    return fs.statSync(p).ino;
  } catch {
    return undefined;
  }
}

/** Runs fn while holding the dotlock of target; always releases it. */
export async function withDotLock<T>(
  ctx: FsContext,
  target: string,
  fn: (lock: DotLock) => Promise<T>,
  opts?: DotLockOptions,
): Promise<T> {
  const lock = await DotLock.acquire(ctx, target, opts);
  try {
    return await fn(lock);
  } finally {
    await lock.release();
  }
}

/** True when the lock names a process on this host that no longer exists ("pid:host"). */
export async function holderIsDead(lockPath: string): Promise<boolean> {
  let content: string;
  try {
    content = fs.readFileSync(lockPath, 'utf8');
  } catch {
    return false;
  }
  if (content === '') {
    // A holder writes its name right after creating the lock; an empty lock that stays empty
    // belonged to a process killed in between.
    let mtimeMs: number;
    try {
      mtimeMs = fs.statSync(lockPath).mtimeMs;
    } catch {
      return false;
    }
    return Date.now() - mtimeMs > 2000;
  }
  const m = /^(\d+):(.*)$/.exec(content.split('\n')[0] ?? '');
  if (!m || m[2] !== hostname()) return false;
  const pid = Number(m[1]);
  if (pid === process.pid) return false;
  try {
    process.kill(pid, 0);
    return false;
  } catch (e) {
    return errCode(e) === 'ESRCH';
  }
}
