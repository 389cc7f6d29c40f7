// Small filesystem helpers shared by the maildir modules: OS error -> StorageError, ownership,
// directory creation, fsync and atomic file replacement.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { randomBytes } from '../../util/builtin.js';
import { StorageError } from '../types.js';

export type Warn = (msg: string) => void;

/** Per-store I/O settings every write goes through. */
export interface FsContext {
  /** chown every created file/dir to this owner (only set when running as root). */
  owner?: { uid: number; gid: number };
  readOnly: boolean;
  warn: Warn;
  /** Mode for new directories (and, masked with 0o666, for new files). */
  dirMode: number;
  fileMode: number;
}

export function errCode(e: unknown): string | undefined {
  return e && typeof e === 'object' && 'code' in e ? String((e as { code: unknown }).code) : undefined;
}

export function isNotFound(e: unknown): boolean {
  const c = errCode(e);
  return c === 'ENOENT' || c === 'ENOTDIR';
}

/** Converts an OS error into a StorageError naming the path. StorageErrors pass through. */
export function toStorageError(e: unknown, what: string, p: string): StorageError {
  if (e instanceof StorageError) return e;
  const code = errCode(e);
  const msg = e instanceof Error ? e.message : String(e);
  const text = `${what} ${p}: ${msg}`;
  switch (code) {
    case 'EACCES':
    case 'EPERM':
    case 'EROFS':
      return new StorageError(text, 'PERM');
    case 'ENOSPC':
    case 'EDQUOT':
      return new StorageError(text, 'NOSPACE');
    case 'ENOENT':
    case 'ENOTDIR':
      return new StorageError(text, 'NOTFOUND');
    default:
      return new StorageError(text, 'IO');
  }
}

/** Runs fn and converts thrown OS errors with toStorageError. */
export async function io<T>(what: string, p: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    throw toStorageError(e, what, p);
  }
}

export function assertWritable(ctx: FsContext, what: string): void {
  if (ctx.readOnly) throw new StorageError(`cannot ${what}: the mail store is opened read-only`, 'PERM');
}

export function chownIfNeededSync(ctx: FsContext, p: string): void {
  if (!ctx.owner) return;
  try {
    fs.lchownSync(p, ctx.owner.uid, ctx.owner.gid);
  } catch (e) {
    throw toStorageError(e, 'chown', p);
  }
}

/** mkdir -p that chowns every directory it creates. Returns true if the leaf was created. */
export async function mkdirp(ctx: FsContext, dir: string): Promise<boolean> {
  const missing: string[] = [];
  let cur = path.resolve(dir);
  for (;;) {
    try {
      const st = fs.statSync(cur);
      if (!st.isDirectory()) throw new StorageError(`mkdir ${dir}: ${cur} exists and is not a directory`, 'IO');
      break;
    } catch (e) {
      if (e instanceof StorageError) throw e;
      if (!isNotFound(e)) throw toStorageError(e, 'stat', cur);
      missing.push(cur);
      const parent = path.dirname(cur);
      if (parent === cur) break;
      cur = parent;
    }
  }
  for (let i = missing.length - 1; i >= 0; i--) {
    const d = missing[i]!;
    try {
      fs.mkdirSync(d, { mode: ctx.dirMode });
    } catch (e) {
      if (errCode(e) === 'EEXIST') continue;
      throw toStorageError(e, 'mkdir', d);
    }
    chownIfNeededSync(ctx, d);
  }
  return missing.length > 0;
}

/**
 * Dovecot's mail_fsync. 'optimized' (the default) and 'always': mail files, the files that list
 * them (uidlists, mbox files) and their directories are fsynced before anything counts on them.
 * 'never': no fsync of mail at all, the choice Dovecot's documentation suggests for migrations;
 * a crash of the machine (not of dsync) may then lose mail that the next run does not copy again.
 * The change index keeps its own durability. One setting per process, as in Dovecot.
 */
export type MailFsync = 'optimized' | 'always' | 'never';
let syncMail = true;

export function setMailFsync(mode: MailFsync): void {
  syncMail = mode !== 'never';
}

/** fsync(2) of an open FileHandle, unless mail_fsync=never. */
export function syncHandle(fh: { sync(): Promise<void> }): Promise<void> {
  return syncMail ? fh.sync() : Promise.resolve();
}

/** fsync(2) of an open file descriptor, synchronously, unless mail_fsync=never. */
export function fsyncFdSync(fd: number): void {
  if (syncMail) fs.fsyncSync(fd);
}

/**
 * fsync(2) of an open file in the thread pool. The small metadata operations of this module are
 * synchronous (a thread-pool round trip costs ~70 us here, more than most of them), but an fsync
 * waits for the disk: off the main thread the other side of a local sync works meanwhile.
 */
export function fsyncFd(fd: number): Promise<void> {
  if (!syncMail) return Promise.resolve();
  return new Promise((resolve, reject) => fs.fsync(fd, (e) => (e ? reject(e) : resolve())));
}

/** pread(2) in the thread pool; resolves to the bytes read (0 at the end of the file). */
export function readAt(fd: number, buf: Buffer, off: number, len: number, position: number): Promise<number> {
  return new Promise((resolve, reject) => fs.read(fd, buf, off, len, position, (e, n) => (e ? reject(e) : resolve(n))));
}

/** Reads len bytes at position into buf[off..] (fewer only at the end of the file); resolves to the bytes read. */
export async function readFullyAt(fd: number, buf: Buffer, off: number, len: number, position: number): Promise<number> {
  let done = 0;
  while (done < len) {
    const n = await readAt(fd, buf, off + done, len - done, position + done);
    if (n === 0) break;
    done += n;
  }
  return done;
}

/** write(2) at the file position in the thread pool (a chunk of a streamed body); resolves to the bytes written. */
export function writeNext(fd: number, buf: Buffer, off: number, len: number): Promise<number> {
  return new Promise((resolve, reject) => fs.write(fd, buf, off, len, null, (e, n) => (e ? reject(e) : resolve(n))));
}

/** fdatasync(2) in the thread pool: the file's data, and only the metadata needed to read it. */
export function fdatasyncFd(fd: number): Promise<void> {
  if (!syncMail) return Promise.resolve();
  return new Promise((resolve, reject) => fs.fdatasync(fd, (e) => (e ? reject(e) : resolve())));
}

export async function fsyncDir(dir: string): Promise<void> {
  if (!syncMail) return;
  let fd: number | undefined;
  try {
    fd = fs.openSync(dir, 'r');
    await fsyncFd(fd);
  } catch (e) {
    const c = errCode(e);
    // Some filesystems cannot fsync a directory; that is not worth failing a save over.
    if (c === 'EINVAL' || c === 'EISDIR' || c === 'EBADF' || c === 'ENOTSUP' || c === 'EPERM') return;
    throw toStorageError(e, 'fsync', dir);
  } finally {
    if (fd !== undefined) closeQuietly(fd);
  }
}

/** Closes fd, ignoring a failure: the data was written and synced already, or another error is being reported. */
export function closeQuietly(fd: number): void {
  try {
    fs.closeSync(fd);
  } catch {
    // see above
  }
}

/** Removes p if it is there; a file that is gone (or was never made) is fine. */
export function unlinkQuietly(p: string): void {
  try {
    fs.unlinkSync(p);
  } catch {
    // see above
  }
}

export function randomHex(bytes: number): string {
  return randomBytes(bytes).toString('hex');
}

let tempCount = 0;

/**
 * A temp name in the same directory that no maildir reader mistakes for mail or a mailbox. Unique
 * by process, time and a counter (created exclusively all the same), not randomness: a run that
 * rewrites a uidlist need not load node:crypto.
 */
export function tempNameFor(target: string): string {
  return path.join(path.dirname(target), `${path.basename(target)}.${process.pid}.${Date.now().toString(36)}${++tempCount}.tmp`);
}

/** Writes data to a new file (O_EXCL), fsyncs it and chowns it. The file must not exist. */
export function writeNewFile(ctx: FsContext, p: string, data: string | Buffer, mode = ctx.fileMode): void {
  let fd: number | undefined;
  try {
    fd = fs.openSync(p, 'wx', mode);
    fs.writeFileSync(fd, data);
    fsyncFdSync(fd);
  } catch (e) {
    throw toStorageError(e, 'write', p);
  } finally {
    if (fd !== undefined) closeQuietly(fd);
  }
  chownIfNeededSync(ctx, p);
}

/** Replaces target atomically: temp file in the same dir, fsync, rename. */
export async function writeFileAtomic(ctx: FsContext, target: string, data: string | Buffer): Promise<void> {
  const tmp = tempNameFor(target);
  try {
    writeNewFile(ctx, tmp, data);
    try {
      fs.renameSync(tmp, target);
    } catch (e) {
      throw toStorageError(e, 'rename', target);
    }
  } catch (e) {
    unlinkQuietly(tmp);
    throw e;
  }
  try {
    await fsyncDir(path.dirname(target));
  } catch {
    // the file is in place; only its durability across a crash is in doubt, as before the rename
  }
}

/** Reads a file as UTF-8, or returns null if it does not exist. */
export async function readFileOrNull(p: string): Promise<string | null> {
  try {
    return fs.readFileSync(p, 'utf8');
  } catch (e) {
    if (isNotFound(e)) return null;
    throw toStorageError(e, 'read', p);
  }
}

export async function exists(p: string): Promise<boolean> {
  try {
    fs.lstatSync(p);
    return true;
  } catch (e) {
    if (isNotFound(e)) return false;
    throw toStorageError(e, 'stat', p);
  }
}

export async function isDir(p: string): Promise<boolean> {
  try {
    return fs.statSync(p).isDirectory();
  } catch (e) {
    if (isNotFound(e)) return false;
    throw toStorageError(e, 'stat', p);
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

let probeCount = 0;

/**
 * The device of dir's file system if it gives a change made after a stat() a timestamp of its own
 * (Linux 6.13+ "multigrain" timestamps: ext4, xfs, btrfs, tmpfs), else null. Elsewhere a change
 * within the same clock tick as an earlier one leaves the mtime as it was, and change tokens need
 * a margin (see MaildirMailbox.changeToken). Found with a temporary file in dir (a maildir's tmp/,
 * where mail is written before delivery; removed at once): two appends with a stat in between
 * that get distinct times less than a tick apart mean fine-grained times; equal times, coarse
 * ones. Null when read-only or when anything fails: the margin is the safe answer.
 */
export function probeDistinctMtimes(ctx: FsContext, dir: string): number | null {
  if (ctx.readOnly) return null;
  // Unique without randomness (a run that changes nothing need not load node:crypto); created
  // exclusively all the same.
  const p = path.join(dir, `${Date.now()}.P${process.pid}Q${++probeCount}.dsync-mtime-probe`);
  let fd: number;
  try {
    fd = fs.openSync(p, 'wx', 0o600);
  } catch {
    return null;
  }
  try {
    // Like everything the store creates, the owner's from its first moment (even for a moment).
    if (ctx.owner) fs.fchownSync(fd, ctx.owner.uid, ctx.owner.gid);
    for (let attempt = 0; attempt < 3; attempt++) {
      fs.writeSync(fd, '.');
      const before = fs.fstatSync(fd).mtimeMs;
      fs.writeSync(fd, '.');
      const st = fs.fstatSync(fd);
      if (st.mtimeMs === before) return null; // same tick, same time: coarse
      // Under a millisecond apart: no clock tick is that short (HZ <= 1000).
      if (st.mtimeMs > before && st.mtimeMs - before < 1) return st.dev;
      // A tick boundary fell between the two writes: try again.
    }
    return null;
  } catch {
    return null;
  } finally {
    closeQuietly(fd);
    unlinkQuietly(p);
  }
}
