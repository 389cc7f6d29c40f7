// Dovecot-style dotlocks: "<file>.lock" created with O_EXCL. A lock older than the stale timeout
// (2 minutes, like Dovecot's uidlist lock) is overridden. The lock file may double as the temp file
// of a rewrite: writing the new contents into it and renaming it over the target replaces the file
// and releases the lock in one atomic step (what Dovecot does too).
import * as fsp from 'node:fs/promises';
import { StorageError } from '../types.js';
import { chownIfNeeded, errCode, fsyncDir, isNotFound, sleep, toStorageError, type FsContext } from './io.js';
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

export class DotLock {
  private released = false;

  private constructor(
    readonly target: string,
    readonly lockPath: string,
    private readonly fh: fsp.FileHandle,
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
      const temp = `${lockPath}.${process.pid}.${++tempCounter}.tmp`;
      let fh: fsp.FileHandle | undefined;
      try {
        fh = await fsp.open(temp, 'wx', ctx.fileMode);
        await chownIfNeeded(ctx, temp);
        // Like Dovecot's dotlocks, the lock names its holder, so a crashed holder is seen at once.
        await fh.write(`${process.pid}:${hostname()}`, 0);
        await fsp.link(temp, lockPath);
        await fsp.unlink(temp).catch(() => undefined);
        const st = await fh.stat();
        return new DotLock(target, lockPath, fh, st.ino, ctx, ctx.fileMode);
      } catch (e) {
        await fh?.close().catch(() => undefined);
        await fsp.unlink(temp).catch(() => undefined);
        if (errCode(e) !== 'EEXIST') throw toStorageError(e, 'create lock', lockPath);
      }
      // Someone holds it. Stale?
      try {
        const st = await fsp.stat(lockPath);

        if (Date.now() - st.mtimeMs > staleMs) {
          ctx.warn(`overriding stale lock ${lockPath} (${Math.round((Date.now() - st.mtimeMs) / 1000)} s old)`);
          const again = await fsp.stat(lockPath).catch(() => null);
          if (again && again.ino === st.ino) await fsp.unlink(lockPath).catch(() => undefined);
          continue;
        }
        if (await holderIsDead(lockPath)) {
          ctx.warn(`overriding lock ${lockPath} left by a process that no longer exists`);
          const again = await fsp.stat(lockPath).catch(() => null);
          if (again && again.ino === st.ino) await fsp.unlink(lockPath).catch(() => undefined);
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

  private async stillOurs(): Promise<boolean> {
    try {
      return (await fsp.stat(this.lockPath)).ino === this.ino;
    } catch {
      return false;
    }
  }

  /** Refreshes the lock's mtime so that others do not consider it stale during long work. */
  async touch(): Promise<void> {
    const now = new Date();
    await this.fh.utimes(now, now).catch(() => undefined);
  }

  /**
   * Writes data into the lock file, fsyncs it and renames it over the target: the target is
   * replaced atomically and the lock is released.
   */
  async replaceTarget(data: string | Buffer): Promise<void> {
    if (this.released) throw new Error('lock already released');
    // A temp file of our own (not the lock file, which keeps naming its holder) renamed over the target.
    const temp = `${this.target}.${process.pid}.tmp`;
    try {
      const fh = await fsp.open(temp, 'w', this.mode);
      try {
        await fh.writeFile(data);
        await fh.sync();
      } finally {
        await fh.close().catch(() => undefined);
      }
      await chownIfNeeded(this.ctx, temp);
    } catch (e) {
      await fsp.unlink(temp).catch(() => undefined);
      await this.release();
      throw toStorageError(e, 'write', temp);
    }
    if (!(await this.stillOurs())) {
      await fsp.unlink(temp).catch(() => undefined);
      await this.release();
      throw new StorageError(`lock ${this.lockPath} was taken over by another process; ${this.target} not written`, 'LOCKED');
    }
    try {
      await fsp.rename(temp, this.target);
    } catch (e) {
      await fsp.unlink(temp).catch(() => undefined);
      await this.release();
      throw toStorageError(e, 'rename', this.target);
    }
    await fsyncDir(path.dirname(this.target)).catch(() => undefined);
    await this.release();
  }

  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    await this.fh.close().catch(() => undefined);
    if (await this.stillOurs()) await fsp.unlink(this.lockPath).catch(() => undefined);
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
async function holderIsDead(lockPath: string): Promise<boolean> {
  let content: string;
  try {
    content = await fsp.readFile(lockPath, 'utf8');
  } catch {
    return false;
  }
  if (content === '') {
    // A holder writes its name right after creating the lock; an empty lock that stays empty
    // belonged to a process killed in between.
    const st = await fsp.stat(lockPath).catch(() => null);
    return st !== null && Date.now() - st.mtimeMs > 2000;
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
