// One mbox mailbox (one file): scanning, bodies, saving, flag changes, expunges.
//
// Reading takes no lock (a read-only store writes nothing, not even a lock file). It waits while
// another process holds the dotlock or a kernel write lock on the file (Dovecot's in-place
// rewrites pass through states that never held as a whole), and is repeated until the file's
// identity (inode, size, mtime, ctime) is the same before and after it, so a write that starts
// meanwhile (an MDA appending, a rewrite) is noticed.
// Every change takes the dotlock "<mbox>.lock" (see lock.ts in ../maildir) and works on a fresh
// parse made under the lock:
//  * new mail is appended (O_APPEND) after the last UID in X-IMAPbase/X-IMAP was raised in place
//    (exactly its 10 digits, nothing moves: a crash in between only leaves a UID gap); a failed
//    append is cut off again, and one a crash interrupted is hidden from readers and cut off by
//    the next writer (append-intent.ts);
//  * everything else (flags, keywords, expunges, UIDs given by scan, UIDVALIDITY, new keywords in
//    X-IMAPbase) writes a complete new file next to the old one, fsyncs it, gives it the old one's
//    mode and owner and renames it over the old one. A failure at any point leaves the original as
//    it was. A 1 GB mbox is rewritten in full for a single flag change: simple and crash-safe.
//
// Memory does not depend on the size of the file or of its messages: the file is parsed through
// one reused window into a few hundred bytes per message (parse.ts), and concurrent readers share
// one parse; bodies over WHOLE_BODY_MAX are streamed; a save reads its bodies (a few ahead)
// before taking the lock, keeping up to SAVE_MEMORY_BUDGET of them in memory and the rest in a
// spool file next to the mbox, and copies them into the file in pieces.
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { buffersBody, generatorBody, type BodyStream } from '../../util/body-stream.js';
import { createHash } from '../../util/builtin.js';
import { hostname } from 'node:os';
import { Flag } from '../../model/flags.js';
import {
  StorageError,
  type FlagUpdate,
  type MailboxName,
  type SaveRequest,
  type StoreMailbox,
  type StoreMailboxStatus,
  type StoreMessage,
} from '../types.js';
import { assertWritable, closeQuietly, errCode, fsyncDir, isNotFound, randomHex, readFullyAt, sleep, syncHandle, toStorageError, type FsContext } from '../maildir/io.js';
import { DotLock, holderIsDead } from '../maildir/lock.js';
import { lockIdentity, otherLockHolders, otherWriteLockHolders, type LockedFile } from './file-locks.js';
import { INTENT_HEAD_BYTES, judgeIntent, readAppendIntent, removeAppendIntent, settleAppendIntent, writeAppendIntent } from './append-intent.js';
import { invalidKeywordReason } from '../maildir/keywords.js';
import {
  identityOf,
  isMetadataHeader,
  LineFilter,
  MAX_UID,
  parseMbox,
  quoteFromLines,
  sameIdentity,
  servedRanges,
  unquoteFromLines,
  type ByteRange,
  type FileIdentity,
  type MboxMessage,
  type MboxQuoting,
  type ParsedMbox,
} from './parse.js';
import { layoutMessage, metaHeaders, padUid, pseudoMessage, type MessageShape, type Piece } from './compose.js';
import { formatFromLine, parseFromLine } from './from-line.js';
import { FileShrank, WindowReader } from './reader.js';
import { traceState } from './trace.js';
import type { DovecotIndexUids } from './dovecot-index.js';

/** What a mailbox needs from its store. */
export interface MboxEnv {
  ctx: FsContext;
  quoting: MboxQuoting;
  lockTimeoutMs: number;
  lockStaleMs: number;
  /** The mailbox GUID for this name and UIDVALIDITY (see guids.ts). */
  guidFor(name: MailboxName, uidValidity: number): Promise<string>;
  setGuid(name: MailboxName, uidValidity: number, guid: string): Promise<void>;
  /** Serialises work on one file within this process (dotlocks are per process). */
  exclusive<T>(file: string, fn: () => Promise<T>): Promise<T>;
  /** Removes Dovecot's index of the mailbox (its ".imap/<name>" directory), if any. */
  dropDovecotIndex(name: MailboxName): Promise<void>;
  /** UIDVALIDITY / next UID in Dovecot's index of the mailbox, if it has a usable one (never throws). */
  dovecotIndexUids(name: MailboxName): Promise<DovecotIndexUids | null>;
  /**
   * Tests only: called by a rewrite between its last look for other lock holders and the rename,
   * with the path of the new file about to replace the mailbox.
   */
  beforeReplace?: (newFile: string) => Promise<void>;
}

/** A message to append, prepared outside the lock. */
interface NewMessage {
  uid: number;
  flags: number;
  keywords: string[];
  internalDate: number;
  /** The header and the blank line after it (the whole message when it has no blank line). */
  head: Buffer;
  /** The rest: in memory, or a range of the save's spool file. */
  body: Buffer[] | ByteRange;
  eol: string;
  /** Ranges in the message's bytes: head, then body. */
  shape: MessageShape;
}

/** Where a message of the new file comes from, with its new metadata. */
interface OutMessage {
  src: MboxMessage | NewMessage;
  uid: number;
  flags: number;
  keywords: string[];
}

interface RewritePlan {
  uidValidity: number;
  lastUid: number;
  keywordList: string[];
  messages: OutMessage[];
}

const COPY_CHUNK = 1 << 20;
/** Bodies a save keeps in memory; beyond this they wait in a spool file (see Spool). */
const SAVE_MEMORY_BUDGET = 8 << 20;
/** How many bodies a save asks for ahead of the one it reads. */
const BODY_READ_AHEAD = 16;
/** Messages up to this size are read in one piece by openBody; bigger ones are streamed. */
const WHOLE_BODY_MAX = 1 << 20;
/** Piece size of streamed messages. */
const STREAM_CHUNK = 256 * 1024;
/** What separates messages in files we write (see compose.ts). */
const LF_SEPARATOR = Buffer.from('\n');
const TOUCH_EVERY_MS = 30_000;
const READ_ATTEMPTS = 5;
/** Rewrites given up for another process's lock on the file (see withLock) before failing. */
const GIVE_WAY_ATTEMPTS = 20;

/**
 * How long after replacing an mbox we look again for a process that locked the old file (see
 * rewrite): long enough for one that was between its look at the path and its lock.
 */
const LATE_LOCK_GRACE_MS = 3;


/**
 * Calls attempt until it gives a value (not undefined), pausing first ms, then twice as long each
 * time up to max ms; undefined once the deadline (Date.now() ms) has passed.
 */
async function retryUntil<T>(deadline: number, first: number, max: number, attempt: () => Promise<T | undefined> | T | undefined): Promise<T | undefined> {
  for (let delay = first; ; delay = Math.min(delay * 2, max)) {
    const v = await attempt();
    if (v !== undefined) return v;
    if (Date.now() >= deadline) return undefined;
    await sleep(delay);
  }
}

/** A rewrite found another process holding a lock on the file; nothing was written. */
class GiveWay extends Error {
  constructor(
    readonly file: LockedFile,
    readonly holders: number[],
  ) {
    super('another process holds a lock on the file');
  }
}

function isNew(m: MboxMessage | NewMessage): m is NewMessage {
  return (m as NewMessage).head !== undefined;
}

/**
 * UIDVALIDITY for a file that holds none (empty, never seen by Dovecot, or a bad X-IMAPbase) and
 * has no Dovecot index that knows one (see MboxMailbox.uidValidityOf): derived from the file's
 * identity, so a read-only look and the first writing one agree; the first writing look puts it
 * into the file (see MboxMailbox.mustPersist).
 */
export function derivedUidValidity(id: FileIdentity): number {
  const h = createHash('md5').update(`dsync-mbox-uidvalidity\0${id.dev}\0${id.ino}`).digest();
  return (h.readUInt32BE(0) % 0xfffffffe) + 1;
}

/** Splits a new message into the pieces we keep and the metadata headers it carried. */
export function shapeOf(bytes: Buffer): { shape: MessageShape; eol: string } {
  const firstLf = bytes.indexOf(0x0a);
  const eol = firstLf > 0 && bytes[firstLf - 1] === 0x0d ? '\r\n' : '\n';
  // The header: lines up to the first empty line.
  let pos = 0;
  let blank = -1;
  let bodyStart = bytes.length;
  while (pos < bytes.length) {
    let nl = bytes.indexOf(0x0a, pos);
    if (nl < 0) nl = bytes.length;
    const len = nl - pos;
    if (nl < bytes.length && (len === 0 || (len === 1 && bytes[pos] === 0x0d))) {
      blank = pos;
      bodyStart = nl + 1;
      break;
    }
    pos = nl + 1;
  }
  const hdrEnd = blank >= 0 ? blank : bytes.length;
  // Header fields, dropping metadata ones (with their continuation lines).
  const keep: ByteRange[] = [];
  let p = 0;
  let fieldStart = 0;
  let dropping = false;
  let leadingContinuation = false;
  const close = (end: number): void => {
    if (!dropping && end > fieldStart) keep.push({ start: fieldStart, end });
  };
  while (p < hdrEnd) {
    let nl = bytes.indexOf(0x0a, p);
    if (nl < 0 || nl >= hdrEnd) nl = hdrEnd - 1;
    const c0 = bytes[p];
    const continuation = c0 === 0x20 || c0 === 0x09;
    if (p === 0 && continuation) leadingContinuation = true;
    if (!continuation || p === 0) {
      close(p);
      fieldStart = p;
      let n = p;
      while (n < hdrEnd && bytes[n] !== 0x3a && bytes[n] !== 0x20 && bytes[n] !== 0x09 && bytes[n] !== 0x0a) n++;
      let c = n;
      while (c < hdrEnd && (bytes[c] === 0x20 || bytes[c] === 0x09)) c++;
      dropping = bytes[c] === 0x3a && isMetadataHeader(bytes.toString('latin1', p, n).toLowerCase());
    }
    p = nl + 1;
  }
  close(hdrEnd);
  const merged: ByteRange[] = [];
  for (const r of keep) {
    const last = merged[merged.length - 1];
    if (last && last.end === r.start) last.end = r.end;
    else merged.push({ ...r });
  }
  const shape: MessageShape = {
    header: merged,
    headerEndsWithLf: hdrEnd === 0 || bytes[hdrEnd - 1] === 0x0a,
    leadingContinuation,
    rest: blank >= 0 ? { start: blank, end: bytes.length } : null,
    bodyLength: blank >= 0 ? bytes.length - bodyStart : 0,
  };
  return { shape, eol };
}

export class MboxMailbox implements StoreMailbox {
  private parsed: ParsedMbox | null = null;
  /** The parse in progress, if any (see load). */
  private parsing: { identity: FileIdentity; done: Promise<ParsedMbox | null> } | null = null;
  /** What Dovecot's index says, for parses of a file without UIDVALIDITY (see uidValidityOf). */
  private readonly fromIndex = new WeakMap<ParsedMbox, DovecotIndexUids | null>();
  private queue: Promise<unknown> = Promise.resolve();
  private closed = false;
  /** A save looked for spool and temp files of dead processes (once per mailbox object). */
  private tempsChecked = false;
  /** The latest mtime, in whole seconds, of the file's states we saw or made; see stampWrite. */
  private latestSecond = -1;

  constructor(
    private readonly env: MboxEnv,
    readonly name: MailboxName,
    readonly file: string,
  ) {}

  private get ctx(): FsContext {
    return this.env.ctx;
  }

  private get label(): string {
    return `mailbox ${this.name.join('/')} (${this.file})`;
  }

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    if (this.closed) return Promise.reject(new Error(`${this.label} is closed`));
    const run = this.queue.then(
      () => fn(),
      () => fn(),
    );
    this.queue = run.catch(() => undefined);
    return run;
  }

  // ---------------------------------------------------------------- reading

  private async openFile(): Promise<fsp.FileHandle> {
    try {
      return await fsp.open(this.file, 'r');
    } catch (e) {
      throw this.openError(e);
    }
  }

  /** The file opened for reading by a plain descriptor (open(2) is cheap: from this thread). */
  private openFd(): number {
    try {
      return fs.openSync(this.file, 'r');
    } catch (e) {
      throw this.openError(e);
    }
  }

  private openError(e: unknown): Error {
    if (isNotFound(e)) return new StorageError(`${this.label} does not exist`, 'NOTFOUND');
    if (errCode(e) === 'EISDIR') return new StorageError(`${this.label} is a directory, not an mbox file`, 'NOTFOUND');
    return toStorageError(e, 'open', this.file);
  }

  /**
   * The current parse of the file (cached while the file's identity is unchanged). Callers that
   * come while the same file is being parsed (the many openBody calls a sync makes at once) wait
   * for that parse instead of starting their own.
   */
  private async load(): Promise<ParsedMbox> {
    const p = await this.tryLoad(READ_ATTEMPTS);
    if (p) return p;
    const fail = (): never => {
      throw new StorageError(`${this.label} kept changing while it was being read (another program is writing it); try again later`, 'LOCKED');
    };
    if (DotLock.heldHere(this.file)) fail();
    // Another process keeps writing it, one change right after the other (a busy IMAP user): a
    // store that may write takes the dotlock, which keeps Dovecot's writes out while we read; a
    // read-only one waits for a pause.
    if (!this.ctx.readOnly) return this.withLock(async () => (await this.tryLoad(READ_ATTEMPTS)) ?? fail());
    const again = await retryUntil(Date.now() + this.env.lockTimeoutMs, 5, 200, async () => (await this.tryLoad(1)) ?? undefined);
    return again ?? fail();
  }

  /** load(), giving up (null) when the file changed during each of `attempts` reads. */
  private async tryLoad(attempts: number): Promise<ParsedMbox | null> {
    for (let attempt = 0; attempt < attempts; attempt++) {
      const fh = await this.openFile();
      let parsing: { identity: FileIdentity; done: Promise<ParsedMbox | null> } | null = null;
      let settle: ((p: ParsedMbox | null) => void) | undefined;
      try {
        const st = await fh.stat();
        if (!st.isFile()) throw new StorageError(`${this.label} is not a regular file`, 'NOTFOUND');
        const id = identityOf(st);
        if (this.parsed && sameIdentity(this.parsed.identity, id)) return this.parsed;
        const other = this.parsing;
        if (other && sameIdentity(other.identity, id)) {
          await fh.close().catch(() => undefined);
          const p = await other.done;
          if (p && sameIdentity(p.identity, id)) return p;
          continue;
        }
        // Under our own dotlock nobody else writes; Dovecot may hold its fcntl lock meanwhile,
        // waiting for our dotlock, and waiting for it here would never end.
        if (!DotLock.heldHere(this.file) && (await this.waitWhileWritten(id))) {
          attempt--; // waited for another process's rewrite: look at the file afresh
          continue;
        }
        parsing = { identity: id, done: new Promise<ParsedMbox | null>((resolve) => (settle = resolve)) };
        this.parsing = parsing;
        this.latestSecond = Math.max(this.latestSecond, Math.floor(id.mtimeMs / 1000));
        const end = await this.visibleEnd(fh, id);
        const parsed = await parseMbox(fh, id, { warn: this.ctx.warn, label: this.file, quoting: this.env.quoting, end });
        const after = identityOf(await fh.stat());
        const onPath = await fsp.stat(this.file).catch(() => null);
        if (sameIdentity(after, id) && onPath && onPath.ino === id.ino && onPath.dev === id.dev) {
          this.fromIndex.set(parsed, await this.env.dovecotIndexUids(this.name));
          this.parsed = parsed;
          settle?.(parsed);
          return parsed;
        }
      } catch (e) {
        if (e instanceof FileShrank) continue; // truncated while we read it: read it again
        throw toStorageError(e, 'read', this.file);
      } finally {
        if (parsing) {
          settle?.(null);
          if (this.parsing === parsing) this.parsing = null;
        }
        await fh.close().catch(() => undefined);
      }
    }
    return null;
  }

  /**
   * Waits while another process is writing the file, and says whether it had to. A program that
   * rewrites an mbox in place (Dovecot moves every message after an expunged one) passes through
   * states that never held as a whole, and a parse made between two of its writes would take
   * them for the mailbox (messages missing, or seen twice under new UIDs). Such a writer holds
   * the dotlock, or a kernel write lock (fcntl, flock), for the whole rewrite; one that starts
   * after this look changes the file's identity before the parse ends (kernels with multigrain
   * timestamps give a file written after a stat a newer time; docs/architecture.md), which
   * load() checks.
   */
  private async waitWhileWritten(id: FileIdentity): Promise<boolean> {
    let looks = 0;
    let writers = '';
    const free = await retryUntil(Date.now() + this.env.lockTimeoutMs, 2, 50, async () => {
      looks++;
      writers = await this.otherWriter(id);
      return writers === '' ? true : undefined;
    });
    if (!free) throw new StorageError(`${this.label} is being written by another program (${writers}); gave up waiting after ${Math.round(this.env.lockTimeoutMs / 1000)} s`, 'LOCKED');
    return looks > 1;
  }

  /** Who is writing the file now, in words, or '' (see waitWhileWritten). */
  private async otherWriter(id: FileIdentity): Promise<string> {
    const dotlock = `${this.file}.lock`;
    let st: fs.Stats | undefined;
    try {
      st = fs.statSync(dotlock);
    } catch {
      // no dotlock
    }
    // One left by a crash does not count (writers override it; an unfinished append it guarded
    // is hidden from readers, see append-intent.ts).
    if (st && Date.now() - st.mtimeMs < this.env.lockStaleMs && !(await holderIsDead(dotlock))) return `${dotlock} exists`;
    const locked = lockIdentity(this.file);
    if (!locked || locked.ino !== BigInt(id.ino)) return '';
    const pids = otherWriteLockHolders(locked);
    return pids && pids.length > 0 ? `process ${pids.join(', ')} holds a write lock on it` : '';
  }

  /**
   * Where the mailbox ends for readers: before the tail of an unfinished append, if a record
   * says there is one (see append-intent.ts; a writer cuts it off under the lock).
   */
  private async visibleEnd(fh: fsp.FileHandle, id: FileIdentity): Promise<number | undefined> {
    const intent = await readAppendIntent(this.file);
    if (intent === null || intent === 'invalid') return undefined;
    const state = await judgeIntent(intent, fh.fd, id);
    return state.kind === 'torn' ? state.keep : undefined;
  }

  /**
   * The file's UIDVALIDITY; for a file without one (an empty mailbox created through Dovecot is
   * an empty file), the one in Dovecot's index of the mailbox, which is what Dovecot shows and
   * keeps (checked with 2.3.19, also after the file was emptied or rewritten by another program);
   * only without either a derived one. The value goes into the file on the first writing look
   * (see mustPersist), except that an empty file with an index stays empty (as Dovecot keeps it)
   * until the first mail is saved.
   */
  private uidValidityOf(p: ParsedMbox): number {
    return p.uidValidity || this.fromIndex.get(p)?.uidValidity || derivedUidValidity(p.identity);
  }

  /**
   * With the UIDVALIDITY of Dovecot's index (taken for a file without one, see uidValidityOf), its
   * next UID counts too: Dovecot may have given out UIDs the file does not show (its X-IMAPbase is
   * written lazily; a mail appended and expunged through it, or a state of ours it read between
   * two of our writes), and it takes a mail below its next UID that it does not know for "inserted
   * in the middle" (its sync fails or renumbers; a garbled mail was seen after that).
   */
  private uidNextOf(p: ParsedMbox): number {
    const idx = this.fromIndex.get(p);
    const indexNext = idx && (p.uidValidity === 0 || idx.uidValidity === p.uidValidity) ? idx.nextUid : 0;
    return Math.max(p.nextUid, p.lastUid + 1, indexNext);
  }

  // ---------------------------------------------------------------- locking

  /**
   * Runs fn holding the mbox's dotlock. A rewrite that finds another process holding a kernel
   * lock on the file (GiveWay, see rewrite) leaves it to that process first: the dotlock is
   * released, and fn runs again from the start once the other process is done with the file.
   */
  private async withLock<T>(fn: (lock: DotLock) => Promise<T>): Promise<T> {
    assertWritable(this.ctx, `change ${this.label}`);
    return this.env.exclusive(this.file, async () => {
      for (let attempt = 1; ; attempt++) {
        let lock: DotLock;
        try {
          lock = await DotLock.acquire(this.ctx, this.file, { staleMs: this.env.lockStaleMs, timeoutMs: this.env.lockTimeoutMs });
        } catch (e) {
          if (e instanceof StorageError && e.code === 'LOCKED') {
            const holder = await fsp.readFile(`${this.file}.lock`, 'utf8').catch(() => '');
            throw new StorageError(
              `${this.label} is locked by another program (${this.file}.lock${holder ? `, held by ${holder.trim().slice(0, 80)}` : ''}); ` +
                `gave up after ${Math.round(this.env.lockTimeoutMs / 1000)} s`,
              'LOCKED',
            );
          }
          throw e;
        }
        let gaveWay: GiveWay;
        try {
          // An append interrupted by a crash is cut off before anything reads the file.
          if (await settleAppendIntent(this.ctx, this.file)) {
            this.parsed = null;
            await this.stampWrite();
          }
          return await fn(lock);
        } catch (e) {
          if (!(e instanceof GiveWay)) throw e;
          gaveWay = e;
        } finally {
          await lock.release();
        }
        if (attempt >= GIVE_WAY_ATTEMPTS || !(await this.waitUntilUnlocked(gaveWay.file))) {
          throw new StorageError(
            `${this.label} is kept busy by another program (process ${gaveWay.holders.join(', ')} holds a lock on it); nothing written, try again later`,
            'LOCKED',
          );
        }
        this.parsed = null;
      }
    });
  }

  /** Waits (up to the lock timeout) until no other process holds a kernel lock on the file. */
  private async waitUntilUnlocked(file: LockedFile): Promise<boolean> {
    const unlocked = await retryUntil(Date.now() + this.env.lockTimeoutMs, 5, 50, () => {
      const holders = otherLockHolders(file);
      return holders === null || holders.length === 0 ? true : undefined;
    });
    return unlocked ?? false;
  }

  /**
   * Temp files of rewrites whose process died ("<mbox>.dsync-<pid>-<hex>.tmp.lock", written under
   * the lock, which we hold: the new file, or the old one's second name), and spool files of
   * saves whose process died on this host ("<mbox>.dsync-spool-<host>-<pid>-<hex>.tmp.lock",
   * written without the lock, so only this host can tell whether their process is gone).
   */
  private async removeStaleTemps(dir: string): Promise<void> {
    const prefix = `${path.basename(this.file)}.dsync-`;
    let names: string[];
    try {
      names = await fsp.readdir(dir);
    } catch {
      return;
    }
    for (const n of names) {
      if (!n.startsWith(prefix) || !n.endsWith('.tmp.lock')) continue;
      const rest = n.slice(prefix.length);
      const spool = /^spool-(.+)-(\d+)-[0-9a-f]+\.tmp\.lock$/.exec(rest);
      const m = spool ? (spool[1] === hostname() ? [spool[0], spool[2]] : null) : /^(\d+)-[0-9a-f]+\.tmp\.lock$/.exec(rest);
      if (!m) continue;
      const pid = Number(m[1]);
      let alive = pid === process.pid;
      if (!alive) {
        try {
          process.kill(pid, 0);
          alive = true;
        } catch (e) {
          alive = errCode(e) === 'EPERM';
        }
      }
      if (alive) continue;
      this.ctx.warn(`${this.label}: removing ${n}, left by an interrupted ${spool ? 'save' : 'rewrite'} (a copy, or a second name of the file as it was; the mailbox itself is whole)`);
      await fsp.unlink(path.join(dir, n)).catch(() => undefined);
    }
  }

  /**
   * Something exists only in memory and must be written to be kept: UIDs or UIDVALIDITY the file
   * lacks, including the UIDVALIDITY of an empty file that nothing else keeps. An empty file
   * whose UIDVALIDITY is in Dovecot's index is left alone, as Dovecot leaves it; without an index
   * Dovecot would make up its own on its first look (never ours), so ours goes into the file
   * (a pseudo message, as Dovecot writes when a mailbox becomes empty).
   */
  private mustPersist(p: ParsedMbox): boolean {
    return p.needsPersist || (p.uidValidity === 0 && p.identity.size === 0 && !this.fromIndex.get(p));
  }

  /** Writes UIDs and UIDVALIDITY that exist only in memory (the way Dovecot does on its first look). */
  private async persist(): Promise<ParsedMbox> {
    return this.withLock(async (lock) => {
      const p = await this.load();
      if (!this.mustPersist(p)) return p;
      const uv = this.uidValidityOf(p);
      await this.rewrite(lock, p, {
        uidValidity: uv,
        lastUid: this.uidNextOf(p) - 1,
        keywordList: p.keywordList,
        messages: p.messages.map((m) => ({ src: m, uid: m.uid, flags: m.flags, keywords: m.keywords })),
      });
      return this.load();
    });
  }

  private async current(): Promise<ParsedMbox> {
    let p = await this.load();
    if (this.mustPersist(p) && !this.ctx.readOnly) p = await this.persist();
    return p;
  }

  // ---------------------------------------------------------------- scan / status

  scan(): Promise<StoreMessage[]> {
    return this.serial(async () => {
      const p = await this.current();
      return p.messages.map((m) => ({
        uid: m.uid,
        guid: m.hdrHash,
        hdrHash: m.hdrHash,
        flags: m.flags,
        keywords: m.keywords,
        internalDate: m.internalDate,
        size: m.size,
      }));
    });
  }

  status(): Promise<StoreMailboxStatus> {
    return this.serial(async () => {
      const p = await this.current();
      const uidValidity = this.uidValidityOf(p);
      return { guid: await this.env.guidFor(this.name, uidValidity), uidValidity, uidNext: this.uidNextOf(p) };
    });
  }

  /** Changes whenever the file does (inode, size, mtime, ctime). */
  async changeToken(): Promise<string> {
    try {
      const st = await fsp.stat(this.file);
      // A change within the same clock tick could leave the times unchanged on coarse file systems.
      if (st.mtimeMs > Date.now() - 2000 || st.ctimeMs > Date.now() - 2000) return `recent-${Math.random()}`;
      return `${st.dev}:${st.ino}:${st.size}:${st.mtimeMs}:${st.ctimeMs}`;
    } catch {
      return '-';
    }
  }

  // ---------------------------------------------------------------- bodies

  /** The message with this UID in the current parse (reparsing once if the cached one lacks it). */
  private async locate(uid: number): Promise<{ p: ParsedMbox; m: MboxMessage }> {
    const p = this.parsed ?? (await this.load());
    let m = findUid(p.messages, uid);
    if (m) return { p, m };
    const fresh = await this.load();
    m = findUid(fresh.messages, uid);
    if (!m) throw new StorageError(`${this.label}: UID ${uid} does not exist (expunged?)`, 'EXPUNGED');
    return { p: fresh, m };
  }

  /** Opens the file and checks that it is still the one the parse p describes (null: it changed). */
  private async openSnapshot(p: ParsedMbox): Promise<fsp.FileHandle | null> {
    const fh = await this.openFile();
    try {
      if (sameIdentity(identityOf(await fh.stat()), p.identity)) return fh;
    } catch (e) {
      await fh.close().catch(() => undefined);
      throw toStorageError(e, 'read', this.file);
    }
    await fh.close().catch(() => undefined);
    return null;
  }

  /**
   * A message's bytes as served, in one buffer; re-read if the file changes meanwhile. The file
   * is opened, checked and closed from this thread; only the reads go to the thread pool (a
   * FileHandle per mail cost more than reading a small mail).
   */
  private async readWhole(uid: number): Promise<Buffer> {
    for (let attempt = 0; attempt < READ_ATTEMPTS; attempt++) {
      const { p, m } = await this.locate(uid);
      const fd = this.openFd();
      try {
        if (!sameIdentity(identityOf(fs.fstatSync(fd)), p.identity)) {
          await this.load();
          continue;
        }
        const ranges = servedRanges(m.hdrStart, m.msgEnd, m.hidden);
        const total = ranges.reduce((n, r) => n + r.end - r.start, 0);
        const buf = Buffer.allocUnsafe(total);
        let at = 0;
        for (const r of ranges) at += await readFullyAt(fd, buf, at, r.end - r.start, r.start);
        if (!sameIdentity(identityOf(fs.fstatSync(fd)), p.identity)) continue;
        return unquoteFromLines(at === total ? buf : buf.subarray(0, at), this.env.quoting);
      } catch (e) {
        throw toStorageError(e, 'read', this.file);
      } finally {
        closeQuietly(fd);
      }
    }
    throw new StorageError(`${this.label} kept changing while UID ${uid} was being read; try again later`, 'LOCKED');
  }

  /** Small messages in one buffer, for the many small mails of a first sync (see StoreMailbox). */
  async readBody(uid: number, maxBytes: number): Promise<Buffer | null> {
    if (this.closed) return null;
    const p = this.parsed ?? (await this.load());
    const m = findUid(p.messages, uid);
    if (!m || m.size > maxBytes) return null;
    return this.readWhole(uid);
  }

  /**
   * Not serialised: a save that reads bodies of this same mailbox must not wait for itself.
   * Messages up to WHOLE_BODY_MAX are read at once (and re-read if the file changes meanwhile);
   * bigger ones are streamed in STREAM_CHUNK pieces from the file as it was parsed: rewrites
   * replace the file (rename), appends do not touch existing messages, so the open file keeps
   * serving the same bytes; a change in place by another program (its size or times change) is
   * an error at the end of the stream rather than wrong bytes handed on silently.
   */
  async openBody(uid: number): Promise<BodyStream> {
    if (this.closed) throw new Error(`${this.label} is closed`);
    for (let attempt = 0; attempt < READ_ATTEMPTS; attempt++) {
      const { p, m } = await this.locate(uid);
      if (m.size <= WHOLE_BODY_MAX) return buffersBody([await this.readWhole(uid)]);
      const fh = await this.openSnapshot(p);
      if (!fh) {
        await this.load();
        continue;
      }
      // fs/promises closes a handle only once its reads are done, and closing twice is harmless.
      return generatorBody(this.streamRanges(fh, p.identity, servedRanges(m.hdrStart, m.msgEnd, m.hidden), uid), () => void fh.close().catch(() => undefined));
    }
    throw new StorageError(`${this.label} kept changing while UID ${uid} was being read; try again later`, 'LOCKED');
  }

  private async *streamRanges(fh: fsp.FileHandle, identity: FileIdentity, ranges: ByteRange[], uid: number): AsyncGenerator<Buffer> {
    try {
      const filter = this.env.quoting === 'none' ? null : new LineFilter((b) => unquoteFromLines(b, this.env.quoting));
      for (const r of ranges) {
        let pos = r.start;
        while (pos < r.end) {
          const buf = Buffer.allocUnsafe(Math.min(STREAM_CHUNK, r.end - pos));
          const { bytesRead } = await readFully(fh, buf, 0, buf.length, pos);
          if (bytesRead < buf.length) throw new StorageError(`${this.label}: UID ${uid}: unexpected end of file at offset ${pos + bytesRead} (the file was cut short meanwhile)`, 'IO');
          pos += bytesRead;
          if (filter) yield* filter.push(buf);
          else yield buf;
        }
      }
      if (filter) yield* filter.end();
      if (!sameIdentity(identityOf(await fh.stat()), identity)) {
        throw new StorageError(`${this.label}: the file was changed in place by another program while UID ${uid} was being read; try again`, 'LOCKED');
      }
    } finally {
      await fh.close().catch(() => undefined);
    }
  }

  // ---------------------------------------------------------------- writing helpers

  /** Valid keywords only (others dropped with a warning), sorted, unique. */
  private cleanKeywords(keywords: string[], uid: number): string[] {
    const out = new Set<string>();
    for (const k of keywords) {
      const bad = invalidKeywordReason(k);
      if (bad) {
        this.ctx.warn(`${this.label}: keyword "${k}" of UID ${uid} cannot be stored (${bad}); dropped`);
        continue;
      }
      out.add(k);
    }
    return [...out].sort();
  }

  private withNewKeywords(list: string[], used: Iterable<string[]>): string[] {
    const out = [...list];
    const have = new Set(list);
    for (const kws of used) {
      for (const k of kws) {
        if (!have.has(k)) {
          have.add(k);
          out.push(k);
        }
      }
    }
    return out;
  }

  /**
   * The pieces of one message of the new file. `base` is set for the message holding X-IMAPbase.
   * sourceByte reads a byte of the old file (to see whether a kept header ends with a newline).
   */
  private async messagePieces(o: OutMessage, base: RewritePlan | null, sourceByte?: (pos: number) => Promise<number>): Promise<OutPiece[]> {
    const src = o.src;
    const baseMeta = base
      ? { header: 'X-IMAPbase' as const, uidValidity: base.uidValidity, lastUid: base.lastUid, keywords: base.keywordList }
      : undefined;
    if (isNew(src)) {
      const meta = metaHeaders(
        {
          base: baseMeta,
          uid: o.uid,
          flags: o.flags,
          keywords: o.keywords,
          statusExtra: 'O',
          xStatusExtra: '',
          contentLength: src.shape.rest ? src.shape.bodyLength : undefined,
          padding: src.shape.rest !== null && src.head[src.shape.rest.start] === 0x0d,
        },
        src.eol,
      );
      // From_ line and separator with "\n" whatever the message uses (see compose.ts).
      const fromLine = Buffer.from(formatFromLine('MAILER-DAEMON', src.internalDate) + '\n', 'latin1');
      return layoutMessage(fromLine, src.shape, meta, src.eol, LF_SEPARATOR).flatMap((pc) => ('range' in pc ? newMessageRange(src, pc.range) : [pc]));
    }
    const meta = metaHeaders(
      {
        base: baseMeta,
        uid: o.uid,
        flags: o.flags,
        keywords: o.keywords,
        statusExtra: src.statusExtra,
        xStatusExtra: src.xStatusExtra,
        contentLength: src.hasBlankLine ? src.msgEnd - src.bodyStart : undefined,
        // A "\r\n" blank line (see compose.ts).
        padding: src.hasBlankLine && src.bodyStart - src.hdrEnd === 2,
      },
      src.eol,
    );
    const header = servedRanges(src.hdrStart, src.hdrEnd, src.hidden);
    const lastHeader = header[header.length - 1];
    // With a blank line the kept header always ends with a line's newline; a header-only message
    // may end without one (its newline was the separator).
    let headerEndsWithLf = true;
    if (lastHeader && !src.hasBlankLine && sourceByte) headerEndsWithLf = (await sourceByte(lastHeader.end - 1)) === 0x0a;
    const shape: MessageShape = {
      header,
      headerEndsWithLf,
      leadingContinuation: src.leadingContinuation,
      rest: src.hasBlankLine ? { start: src.hdrEnd, end: src.msgEnd } : null,
      bodyLength: src.msgEnd - src.bodyStart,
    };
    // The separator becomes "\n" (see compose.ts), also where the message ended the file without one.
    const pieces = layoutMessage(Buffer.alloc(0), shape, meta, src.eol, LF_SEPARATOR);
    pieces[0] = { range: { start: src.start, end: src.hdrStart } };
    return pieces;
  }

  /**
   * Writes the new file (temp + fsync + rename over the original, with the original's mode and
   * owner). The caller holds the lock and p is a parse made under it.
   */
  private async rewrite(lock: DotLock, p: ParsedMbox, plan: RewritePlan, spool: Spool | null = null): Promise<void> {
    const dir = path.dirname(this.file);
    await this.removeStaleTemps(dir);
    const temp = path.join(dir, `${path.basename(this.file)}.dsync-${process.pid}-${randomHex(4)}.tmp.lock`);
    const src = await this.openFile();
    let out: fsp.FileHandle | undefined;
    let w: PieceWriter | undefined;
    let renamed = false;
    /** Bytes appended to the old file during the rename were moved over (the new file changed after its stamp). */
    let moved = false;
    let keep: string | undefined;
    try {
      const st = await src.stat();
      if (!sameIdentity(identityOf(st), p.identity)) {
        throw new StorageError(`${this.label} changed under our lock (another program does not honour ${this.file}.lock); nothing written`, 'LOCKED');
      }
      traceState(this.file, 'rewrite-in', p, src.fd);
      out = await fsp.open(temp, 'wx', 0o600);
      w = new PieceWriter(out, lock, { fh: src, size: p.identity.size }, spool);
      // The header values go into the pseudo message if there is one, else into the first message.
      let firstReal = true;
      if (p.pseudo || plan.messages.length === 0) {
        await w.write(this.pseudoPieces(p, plan));
        firstReal = false;
      }
      for (const o of plan.messages) {
        const writer = w;
        await w.write(await this.messagePieces(o, firstReal ? plan : null, (pos) => writer.sourceByte(pos)));
        firstReal = false;
      }
      let copied = p.identity.size;
      // Mail appended meanwhile by a program that ignores dotlocks: keep it.
      for (;;) {
        await w.flush();
        const now = identityOf(await src.stat());
        if (now.size < copied) {
          throw new StorageError(`${this.label} was truncated by another program while we rewrote it; nothing written`, 'LOCKED');
        }
        if (now.size === copied) break;
        this.ctx.warn(`${this.label}: ${now.size - copied} bytes were appended while we rewrote it (by a program that ignores ${this.file}.lock); kept`);
        await w.write([{ range: { start: copied, end: now.size } }]);
        copied = now.size;
      }
      await w.flush();
      await syncHandle(out);
      // Its time before it is anyone's to see (see stampWrite); still ours to set before the chown.
      const stamp = await this.stampHandle(out);
      await out.chmod(st.mode & 0o7777);
      try {
        if (typeof process.getuid === 'function') await out.chown(st.uid, st.gid);
      } catch (e) {
        const c = errCode(e);
        if ((c === 'EPERM' || c === 'EINVAL') && typeof process.getuid === 'function' && process.getuid() === st.uid) {
          this.ctx.warn(`${this.label}: cannot give the rewritten file group ${st.gid} (not permitted); it keeps our own group`);
        } else {
          throw new StorageError(`${this.label}: cannot rewrite it with its owner ${st.uid}:${st.gid} kept (${(e as Error).message}); nothing written`, 'PERM');
        }
      }
      await out.close();
      out = undefined;
      const onPath = await fsp.stat(this.file);
      if (onPath.ino !== st.ino || onPath.dev !== st.dev) {
        throw new StorageError(`${this.label} was replaced by another program while we rewrote it; nothing written`, 'LOCKED');
      }
      // Another process with a lock on the file (Dovecot waiting for our dotlock, or reading)
      // would go on with the old file once we replaced it: let it finish first (see file-locks).
      const locked = lockIdentity(this.file);
      const holders = locked && otherLockHolders(locked);
      if (locked && holders && holders.length > 0) throw new GiveWay(locked, holders);
      // A second name for the old file, so that it can be put back (below).
      keep = locked ? path.join(dir, `${path.basename(this.file)}.dsync-${process.pid}-${randomHex(4)}.tmp.lock`) : undefined;
      if (keep) {
        try {
          fs.linkSync(this.file, keep);
        } catch {
          keep = undefined; // no hard links here: a late lock (below) can only be reported
        }
      }
      await this.env.beforeReplace?.(temp);
      fs.renameSync(temp, this.file);
      renamed = true;
      this.latestSecond = Math.max(this.latestSecond, stamp);
      const renamedAt = Date.now();
      await fsyncDir(dir).catch(() => undefined);
      if (locked) {
        // Dovecot looks at the path and then locks the file it has open, two system calls apart:
        // one that looked just before the rename and locks just after it would go on with the
        // old file, and what it writes there would be lost. Wait a moment, look again, and if
        // such a process is there, put the old file back (we still hold the dotlock, so it has
        // written nothing yet) and give way to it.
        const wait = renamedAt + LATE_LOCK_GRACE_MS - Date.now();
        if (wait > 0) await sleep(wait);
        const late = otherLockHolders(locked);
        if (late && late.length > 0) {
          if (keep) {
            const replaced = lockIdentity(this.file);
            fs.renameSync(keep, this.file);
            keep = undefined;
            const stranded = replaced && otherLockHolders(replaced);
            if (stranded && stranded.length > 0) this.lateLockWarning(stranded);
            await fsyncDir(dir).catch(() => undefined);
            throw new GiveWay(locked, late);
          }
          this.lateLockWarning(late);
        }
      }
      // Last chance for bytes appended to the old file between the check and the rename.
      const last = await src.stat();
      if (last.size > copied) {
        moved = true;
        this.ctx.warn(`${this.label}: ${last.size - copied} bytes were appended to the old file during the rename; moving them over`);
        const tail = Buffer.allocUnsafe(last.size - copied);
        await src.read(tail, 0, tail.length, copied);
        const fh = await fsp.open(this.file, 'a');
        try {
          await fh.writeFile(tail);
          await syncHandle(fh);
        } finally {
          await fh.close();
        }
      }
      if (moved) await this.stampWrite();
      traceState(this.file, 'rewrite-out');
    } catch (e) {
      if (!renamed) await fsp.unlink(temp).catch(() => undefined);
      throw e instanceof StorageError || e instanceof GiveWay ? e : toStorageError(e, 'rewrite', this.file);
    } finally {
      if (keep) await fsp.unlink(keep).catch(() => undefined);
      w?.release();
      await out?.close().catch(() => undefined);
      await src.close().catch(() => undefined);
    }
    this.parsed = null;
  }

  /** A process locked the file just as we replaced it, and the old one could not be put back. */
  private lateLockWarning(pids: number[]): void {
    this.ctx.warn(`${this.label}: process ${pids.join(', ')} locked the file just as it was replaced; a change it makes now goes to the old copy and is lost (check the mailbox; run dsync again)`);
  }

  /**
   * After each write: Dovecot takes an mbox for unchanged (its own sync and its cached STATUS)
   * while the file's mtime in whole seconds and its size are those it recorded at its last look,
   * and then trusts the message offsets in its index. A write of ours within the second of an
   * earlier state whose size it happens to restore would go unseen ("Next message unexpectedly
   * corrupted" in its log, or stale flags served): same-size changes are common (flags,
   * X-IMAPbase), and what Dovecot recorded may be a state this handle never saw. So every write
   * leaves the file with an mtime second later than that of every state seen, even if that is
   * a second or two ahead of the clock (Dovecot itself waits for the next second instead).
   */
  private async stampWrite(): Promise<void> {
    let st: fs.Stats;
    try {
      st = fs.statSync(this.file);
    } catch {
      return;
    }
    const sec = this.stampSecond(st);
    if (sec !== null) {
      try {
        fs.utimesSync(this.file, st.atime, sec);
      } catch {
        return; // not ours to touch: Dovecot sees the change with the next one
      }
    }
    this.latestSecond = sec ?? Math.floor(st.mtimeMs / 1000);
  }

  /** The mtime second a state with this stat must be given (see stampWrite), or null if it has one. */
  private stampSecond(st: fs.Stats): number | null {
    return Math.floor(st.mtimeMs / 1000) <= this.latestSecond ? this.latestSecond + 1 : null;
  }

  /**
   * stampWrite for the new file of a rewrite, before it replaces the mailbox: stamped only after
   * the rename, it would show for a few milliseconds with the time of its last write, which may
   * be the second of a state of the same size that Dovecot recorded (its reads then use that
   * state's offsets).
   */
  private async stampHandle(fh: fsp.FileHandle): Promise<number> {
    const st = await fh.stat();
    const sec = this.stampSecond(st);
    if (sec !== null) await fh.utimes(st.atime, sec);
    return sec ?? Math.floor(st.mtimeMs / 1000); // latestSecond once the file is in place (a rewrite that gives way never shows it)
  }

  private pseudoPieces(p: ParsedMbox, plan: RewritePlan): Piece[] {
    const ps = p.pseudo;
    if (!ps) {
      const text = pseudoMessage(
        plan.uidValidity,
        plan.lastUid,
        plan.keywordList,
        Math.floor(Date.now() / 1000),
        hostname(),
        formatFromLine('MAILER_DAEMON', Math.floor(Date.now() / 1000)),
      );
      return [{ bytes: Buffer.from(text, 'latin1') }];
    }
    // Keep the pseudo message, with a new X-IMAP and Status.
    const kw = plan.keywordList.length > 0 ? ' ' + plan.keywordList.join(' ') : '';
    const meta = `X-IMAP: ${plan.uidValidity} ${padUid(plan.lastUid)}${kw}${ps.eol}Status: RO${ps.eol}`;
    const shape: MessageShape = {
      header: servedRanges(ps.hdrStart, ps.hdrEnd, ps.hidden),
      headerEndsWithLf: true,
      leadingContinuation: false,
      rest: ps.hasBlankLine ? { start: ps.hdrEnd, end: ps.msgEnd } : null,
      bodyLength: ps.msgEnd - ps.bodyStart,
    };
    const pieces = layoutMessage(Buffer.alloc(0), shape, meta, ps.eol, LF_SEPARATOR);
    pieces[0] = { range: { start: ps.start, end: ps.hdrStart } };
    return pieces;
  }

  private keptPlan(p: ParsedMbox, changes?: Map<number, { flags: number; keywords: string[] }>, drop?: Set<number>): OutMessage[] {
    const out: OutMessage[] = [];
    for (const m of p.messages) {
      if (drop?.has(m.uid)) continue;
      const c = changes?.get(m.uid);
      out.push({ src: m, uid: m.uid, flags: c ? c.flags : m.flags, keywords: c ? c.keywords : m.keywords });
    }
    return out;
  }

  // ---------------------------------------------------------------- save

  save(requests: SaveRequest[]): Promise<void> {
    return this.serial(() => this.doSave(requests));
  }

  /**
   * Reads one new message from its source: the header (and the blank line after it) in memory,
   * the body in memory while the batch stays within the spool's budget, else into the spool file.
   * So a save holds at most SAVE_MEMORY_BUDGET bytes of bodies whatever the size and number of
   * its messages.
   */
  private async prepare(req: SaveRequest, body: Buffer | BodyStream, spool: Spool): Promise<NewMessage> {
    const source: Iterable<Buffer> | AsyncIterable<Buffer | string> = Buffer.isBuffer(body) ? [body] : body;
    const quoting = this.env.quoting;
    const filter = quoting === 'none' ? null : new LineFilter((b) => quoteFromLines(b, quoting));
    let head: Buffer = Buffer.alloc(0);
    let headDone = false;
    let firstLineDone = false;
    let scanFrom = 0;
    // A body handed over as a buffer is in memory anyway: it never goes to the spool.
    const stored = spool.begin(Buffer.isBuffer(req.body));
    const addBody = async (b: Buffer): Promise<void> => {
      if (filter) for (const q of filter.push(b)) await stored.add(q);
      else await stored.add(b);
    };
    /** Drops a leading From_ line: mbox envelope, not message (Dovecot drops it too). */
    const firstLine = (atEnd: boolean): boolean => {
      if (firstLineDone) return true;
      if (head.length < 5 && !atEnd) return false;
      if (head.subarray(0, 5).toString('latin1') !== 'From ') return (firstLineDone = true);
      const nl = head.indexOf(0x0a);
      if (nl < 0 && !atEnd) return false;
      firstLineDone = true;
      if (parseFromLine(head.toString('latin1', 0, nl < 0 ? head.length : nl))) {
        this.ctx.warn(`${this.label}: UID ${req.uid} starts with an mbox "From " line; it is dropped (as Dovecot does)`);
        head = nl < 0 ? Buffer.alloc(0) : head.subarray(nl + 1);
      }
      return true;
    };
    try {
      for await (const chunk of source) {
        const c = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
        if (headDone) {
          await addBody(c);
          continue;
        }
        head = head.length > 0 ? Buffer.concat([head, c]) : c;
        if (!firstLine(false)) continue;
        const h = headerEnd(head, scanFrom);
        if (h.end < 0) {
          scanFrom = h.resume;
          continue;
        }
        headDone = true;
        const rest = head.subarray(h.end);
        head = head.subarray(0, h.end);
        if (rest.length > 0) await addBody(rest);
      }
      firstLine(true);
      if (!headDone) {
        const h = headerEnd(head, scanFrom);
        if (h.end >= 0) {
          headDone = true;
          const rest = head.subarray(h.end);
          head = head.subarray(0, h.end);
          if (rest.length > 0) await addBody(rest);
        }
      }
      if (filter) for (const q of filter.end()) await stored.add(q);
    } catch (e) {
      stored.abandon();
      throw e;
    }
    const bodyStore = await stored.done();
    // Without a blank line the whole message is header (and nothing went to the body).
    head = quoteFromLines(head, quoting);
    head = this.quoteHeaderFromLines(head, req.uid);
    const { shape, eol } = shapeOf(head);
    if (shape.rest) {
      shape.rest = { start: shape.rest.start, end: head.length + bodyStore.length };
      shape.bodyLength = bodyStore.length;
    }
    const headerLen = shape.header.reduce((n, r) => n + r.end - r.start, 0);
    const hdrEnd = shape.rest ? shape.rest.start : head.length;
    if (headerLen !== hdrEnd) {
      this.ctx.warn(`${this.label}: UID ${req.uid} carries mbox metadata headers (Status, X-UID, Content-Length, ...); they are replaced, as Dovecot does`);
    }
    return {
      uid: req.uid,
      flags: req.flags & (Flag.Answered | Flag.Flagged | Flag.Deleted | Flag.Seen | Flag.Draft),
      keywords: this.cleanKeywords(req.keywords, req.uid),
      internalDate: req.internalDate,
      head,
      body: bodyStore.body,
      eol,
      shape,
    };
  }

  /**
   * A From_ line inside the header would start a new message when the file is read (Content-Length
   * only protects the body): such lines get a '>' so that no message can forge another one.
   */
  private quoteHeaderFromLines(bytes: Buffer, uid: number): Buffer {
    const parts: Buffer[] = [];
    let last = 0;
    let pos = 0;
    while (pos < bytes.length) {
      let nl = bytes.indexOf(0x0a, pos);
      if (nl < 0) nl = bytes.length;
      const len = nl - pos;
      if (len === 0 || (len === 1 && bytes[pos] === 0x0d)) break; // end of the header
      if (bytes[pos] === 0x46 && parseFromLine(bytes.toString('latin1', pos, nl))) {
        parts.push(bytes.subarray(last, pos), Buffer.from('>'));
        last = pos;
      }
      pos = nl + 1;
    }
    if (parts.length === 0) return bytes;
    this.ctx.warn(`${this.label}: UID ${uid} has "From " lines in its header; they are quoted with ">" so that they cannot start a message`);
    parts.push(bytes.subarray(last));
    return Buffer.concat(parts);
  }

  private async doSave(requests: SaveRequest[]): Promise<void> {
    if (requests.length === 0) return;
    assertWritable(this.ctx, `save to ${this.label}`);
    let prevUid = 0;
    for (const r of requests) {
      if (!Number.isInteger(r.uid) || r.uid <= prevUid || r.uid > MAX_UID) {
        throw new Error(`${this.label}: save requests need ascending UIDs in 1..${MAX_UID} (got ${r.uid} after ${prevUid})`);
      }
      if (!Number.isFinite(r.internalDate)) throw new Error(`${this.label}: bad internalDate for UID ${r.uid}`);
      prevUid = r.uid;
    }
    // Bodies first, without the lock: they may come from a peer, or from this very mailbox; a
    // body that cannot be read fails the save before anything is written.
    const spool = new Spool(this.file, SAVE_MEMORY_BUDGET);
    // Bodies are asked for a few ahead (each is a file read or a peer's answer away: one at a
    // time the sync would mostly wait), and consumed in order. A body given as a function
    // yields a buffer (small mails, at most a few hundred KB) or a stream that reads only when
    // consumed, so the read-ahead holds little memory.
    const sources = new Map<number, Promise<Buffer | BodyStream>>();
    const ask = (i: number): void => {
      const r = requests[i];
      if (!r || sources.has(i)) return;
      const body = r.body;
      const b = typeof body === 'function' ? Promise.resolve().then(body) : Promise.resolve(body);
      b.catch(() => undefined); // handled when its turn comes
      sources.set(i, b);
    };
    try {
      const prepared: NewMessage[] = [];
      for (let i = 0; i < requests.length; i++) {
        for (let j = i; j < i + BODY_READ_AHEAD; j++) ask(j);
        const body = await sources.get(i)!;
        sources.delete(i);
        prepared.push(await this.prepare(requests[i]!, body, spool));
      }

      await this.withLock(async (lock) => {
        if (!this.tempsChecked) {
          this.tempsChecked = true;
          await this.removeStaleTemps(path.dirname(this.file));
        }
        const p = await this.load();
        const uidNext = this.uidNextOf(p);
        if (requests[0]!.uid < uidNext) {
          throw new StorageError(`${this.label}: cannot save UID ${requests[0]!.uid}: the mailbox's next UID is already ${uidNext}`, 'UIDTAKEN');
        }
        const lastUid = prepared[prepared.length - 1]!.uid;
        const keywordList = this.withNewKeywords(p.keywordList, prepared.map((m) => m.keywords));
        const baseField = p.pseudo ? p.pseudo.lastUidField : p.messages[0]?.lastUidField;
        // An empty file is written whole (renamed into place): appended, its X-IMAPbase would name
        // UIDs before their messages are there (see append).
        const canAppend = p.identity.size > 0 && !p.needsPersist && keywordList.length === p.keywordList.length && baseField !== undefined && p.base !== 'bad';
        if (!canAppend || !baseField) {
          const uv = this.uidValidityOf(p);
          await this.rewrite(
            lock,
            p,
            {
              uidValidity: uv,
              lastUid,
              keywordList,
              messages: [...this.keptPlan(p), ...prepared.map((m) => ({ src: m, uid: m.uid, flags: m.flags, keywords: m.keywords }))],
            },
            spool,
          );
          await this.load();
          return;
        }
        await this.append(lock, p, prepared, lastUid, baseField, spool);
      });
    } finally {
      // Streams asked for but not read (the save failed): let go of what they hold.
      for (const b of sources.values()) void b.then((s) => (Buffer.isBuffer(s) ? undefined : s.destroy()), () => undefined);
      await spool.close();
    }
  }

  /**
   * Appends new messages to a file that has some (see the file comment). Dovecot reads the file
   * under an fcntl lock that we cannot take (Node has no fcntl), so it may look between any two of
   * our writes. It takes a message whose X-UID is the next one it expects (one above X-IMAPbase's
   * last UID, or above the message before) for new; one below that which its index does not know
   * for "inserted in the middle" (its sync then fails or renumbers, and was seen to leave a
   * message garbled); one above it for broken (renumbered). So the last UID is never raised past
   * a message that is not there yet: runs of consecutive UIDs are appended as they are, and
   * before a run that does not follow on, the last UID is raised to just below it (in place,
   * exactly its 10 digits, nothing moves; fsynced first, so that a crash leaves at most unused
   * UIDs). Our parser reads every intermediate state the same way (parse.ts).
   */
  private async append(lock: DotLock, p: ParsedMbox, prepared: NewMessage[], lastUid: number, baseField: ByteRange, spool: Spool): Promise<void> {
    const firstFrom = p.identity.size + (!p.endsWithNewline ? 1 : 0);
    // All pieces first: the record of the append (append-intent.ts) names where it will end.
    const runs: { firstUid: number; lastUid: number; pieces: OutPiece[] }[] = [];
    for (const m of prepared) {
      const pieces = await this.messagePieces({ src: m, uid: m.uid, flags: m.flags, keywords: m.keywords }, null);
      const run = runs[runs.length - 1];
      if (run && m.uid === run.lastUid + 1) {
        run.pieces.push(...pieces);
        run.lastUid = m.uid;
      } else runs.push({ firstUid: m.uid, lastUid: m.uid, pieces });
    }
    if (!p.endsWithNewline) runs[0]!.pieces.unshift({ bytes: Buffer.from('\n') });
    const all = runs.flatMap((r) => r.pieces);
    const length = all.reduce((n, pc) => n + piecesLength(pc), 0);

    let fh: fsp.FileHandle | undefined;
    let app: fsp.FileHandle | undefined;
    let w: PieceWriter | undefined;
    let recorded = false;
    let appending = false;
    try {
      fh = await fsp.open(this.file, 'r+');
      traceState(this.file, 'append-in', p, fh.fd);
      const st = identityOf(await fh.stat());
      if (!sameIdentity(st, p.identity)) {
        throw new StorageError(`${this.label} changed under our lock (another program does not honour ${this.file}.lock); nothing written`, 'LOCKED');
      }
      await writeAppendIntent(this.ctx, this.file, { dev: st.dev, ino: st.ino, start: st.size, end: st.size + length, head: await headOf(all, INTENT_HEAD_BYTES, spool) });
      recorded = true;
      const base = fh;
      let last = p.lastUid;
      const raiseLast = async (uid: number): Promise<void> => {
        await writeLastUid(base, baseField, uid);
        last = uid;
      };
      app = await fsp.open(this.file, 'a');
      w = new PieceWriter(app, lock, null, spool);
      appending = true;
      let next = Math.max(p.nextUid, p.lastUid + 1);
      for (const run of runs) {
        if (run.firstUid > next) await raiseLast(run.firstUid - 1); // (never below: save checked UIDNEXT)
        await w.write(run.pieces);
        await w.flush();
        next = run.lastUid + 1;
      }
      await syncHandle(app);
      // Tidy, and what a reader expects anyway: X-IMAPbase names the last UID.
      if (lastUid > last) await raiseLast(lastUid);
      // Left behind, the record would only be judged complete and dropped by the next writer.
      await removeAppendIntent(this.file).catch((e: Error) => this.ctx.warn(e.message));
    } catch (e) {
      // Cut our partial append off again, but only if nobody else wrote after it (raised last
      // UIDs stay: unused UIDs).
      const written = w?.written ?? 0;
      if (app && appending) {
        try {
          const now = await app.stat();
          if (now.size === p.identity.size + written) {
            await app.truncate(p.identity.size);
            await syncHandle(app);
            await removeAppendIntent(this.file);
          } else {
            this.ctx.warn(`${this.label}: could not undo a partial append (the file grew meanwhile); the last message may be incomplete`);
          }
        } catch {
          // keep the original error
        }
      } else if (recorded) {
        await removeAppendIntent(this.file).catch(() => undefined); // nothing was appended
      }
      throw toStorageError(e, appending ? 'append to' : 'update', this.file);
    } finally {
      w?.release();
      await app?.close().catch(() => undefined);
      await fh?.close().catch(() => undefined);
    }
    await this.stampWrite();
    traceState(this.file, 'append-out');
    // Parse just what we appended.
    const fh2 = await this.openFile();
    try {
      const id = identityOf(await fh2.stat());
      const parsed = await parseMbox(fh2, id, {
        warn: this.ctx.warn,
        label: this.file,
        quoting: this.env.quoting,
        resume: { prev: p, offset: firstFrom, lastUid: Math.max(lastUid, p.lastUid) },
      });
      this.fromIndex.set(parsed, this.fromIndex.get(p) ?? null); // Dovecot's next UID only grows
      this.parsed = parsed;
    } finally {
      await fh2.close().catch(() => undefined);
    }
  }

  // ---------------------------------------------------------------- flags / expunge / renumber

  updateFlags(updates: FlagUpdate[]): Promise<void> {
    return this.serial(async () => {
      if (updates.length === 0) return;
      assertWritable(this.ctx, `change flags in ${this.label}`);
      await this.withLock(async (lock) => {
        const p = await this.load();
        const byUid = new Map(p.messages.map((m) => [m.uid, m]));
        const changes = new Map<number, { flags: number; keywords: string[] }>();
        for (const u of updates) {
          const m = byUid.get(u.uid);
          if (!m) continue;
          const flags = u.flags & (Flag.Answered | Flag.Flagged | Flag.Deleted | Flag.Seen | Flag.Draft);
          const keywords = this.cleanKeywords(u.keywords, u.uid);
          if (flags === m.flags && keywords.join(' ') === m.keywords.join(' ')) continue;
          changes.set(u.uid, { flags, keywords });
        }
        if (changes.size === 0 && !p.needsPersist) return;
        await this.rewrite(lock, p, {
          uidValidity: this.uidValidityOf(p),
          lastUid: this.uidNextOf(p) - 1,
          keywordList: this.withNewKeywords(p.keywordList, [...changes.values()].map((c) => c.keywords)),
          messages: this.keptPlan(p, changes),
        });
        await this.load();
      });
    });
  }

  expunge(uids: number[]): Promise<void> {
    return this.serial(async () => {
      if (uids.length === 0) return;
      assertWritable(this.ctx, `expunge in ${this.label}`);
      await this.withLock(async (lock) => {
        const p = await this.load();
        const drop = new Set(uids.filter((u) => findUid(p.messages, u) !== undefined));
        if (drop.size === 0 && !p.needsPersist) return;
        await this.rewrite(lock, p, {
          uidValidity: this.uidValidityOf(p),
          lastUid: this.uidNextOf(p) - 1,
          keywordList: p.keywordList,
          messages: this.keptPlan(p, undefined, drop),
        });
        await this.load();
      });
    });
  }

  /** New UIDs for existing messages in one rewrite; moved messages go to the end of the file (X-UIDs must ascend). */
  renumber(moves: { from: number; to: number }[]): Promise<void> {
    return this.serial(async () => {
      if (moves.length === 0) return;
      assertWritable(this.ctx, `renumber in ${this.label}`);
      await this.withLock(async (lock) => {
        const p = await this.load();
        const uidNext = this.uidNextOf(p);
        let prev = 0;
        for (const m of moves) {
          if (!Number.isInteger(m.to) || m.to < uidNext || m.to <= prev || m.to > MAX_UID) {
            throw new StorageError(`${this.label}: cannot move UID ${m.from} to ${m.to} (UIDNEXT is ${uidNext})`, Number.isInteger(m.to) && m.to < uidNext ? 'UIDTAKEN' : 'EXISTS');
          }
          prev = m.to;
        }
        const byUid = new Map(p.messages.map((m) => [m.uid, m]));
        const moving = new Set<number>();
        const moved: OutMessage[] = [];
        for (const mv of moves) {
          const m = byUid.get(mv.from);
          if (!m || moving.has(mv.from)) continue;
          moving.add(mv.from);
          moved.push({ src: m, uid: mv.to, flags: m.flags, keywords: m.keywords });
        }
        await this.rewrite(lock, p, {
          uidValidity: this.uidValidityOf(p),
          lastUid: Math.max(uidNext - 1, prev),
          keywordList: p.keywordList,
          messages: [...this.keptPlan(p, undefined, moving), ...moved],
        });
        await this.load();
      });
    });
  }

  /** Removes every message; UIDs restart at 1 under the new UIDVALIDITY (the GUID stays). */
  reset(uidValidity: number): Promise<void> {
    if (!Number.isInteger(uidValidity) || uidValidity < 1 || uidValidity > MAX_UID) {
      return Promise.reject(new Error(`invalid UIDVALIDITY ${uidValidity}`));
    }
    return this.serial(async () => {
      await this.withLock(async (lock) => {
        const p = await this.load();
        const guid = await this.env.guidFor(this.name, this.uidValidityOf(p));
        await this.env.setGuid(this.name, uidValidity, guid);
        // Dovecot's index remembers the old UIDs as expunged: under the same UIDVALIDITY it would
        // renumber the mails saved again under them ("Expunged message reappeared", "UID inserted
        // in the middle of mailbox"). Drop it first, as deleting the mailbox would.
        await this.env.dropDovecotIndex(this.name);
        await this.rewrite(lock, { ...p, pseudo: null }, { uidValidity, lastUid: 0, keywordList: [], messages: [] });
        await this.load();
      });
    });
  }

  // ---------------------------------------------------------------- mailbox header

  setGuid(guid: string): Promise<void> {
    const g = guid.toLowerCase();
    if (!/^[0-9a-f]{32}$/.test(g)) return Promise.reject(new Error(`invalid mailbox GUID "${guid}" (need 32 hex digits)`));
    return this.serial(async () => {
      assertWritable(this.ctx, `set the GUID of ${this.label}`);
      const p = await this.current();
      await this.env.setGuid(this.name, this.uidValidityOf(p), g);
    });
  }

  setUidValidity(uidValidity: number): Promise<void> {
    if (!Number.isInteger(uidValidity) || uidValidity < 1 || uidValidity > MAX_UID) {
      return Promise.reject(new Error(`invalid UIDVALIDITY ${uidValidity}`));
    }
    return this.serial(async () => {
      await this.withLock(async (lock) => {
        const p = await this.load();
        if (p.uidValidity === uidValidity && !p.needsPersist) return;
        // Keep the mailbox's GUID across the change.
        const guid = await this.env.guidFor(this.name, this.uidValidityOf(p));
        await this.env.setGuid(this.name, uidValidity, guid);
        await this.rewrite(lock, p, {
          uidValidity,
          lastUid: this.uidNextOf(p) - 1,
          keywordList: p.keywordList,
          messages: this.keptPlan(p),
        });
        await this.load();
      });
    });
  }

  raiseUidNext(uidNext: number): Promise<void> {
    if (!Number.isInteger(uidNext) || uidNext < 1 || uidNext > MAX_UID + 1) {
      return Promise.reject(new Error(`invalid UIDNEXT ${uidNext}`));
    }
    return this.serial(async () => {
      await this.withLock(async (lock) => {
        const p = await this.load();
        if (uidNext <= this.uidNextOf(p) && !p.needsPersist) return;
        const lastUid = Math.max(this.uidNextOf(p), uidNext) - 1;
        const baseField = p.pseudo ? p.pseudo.lastUidField : p.messages[0]?.lastUidField;
        if (!p.needsPersist && baseField && p.base !== 'bad' && lastUid <= 0xfffffffe) {
          const fh = await fsp.open(this.file, 'r+').catch((e) => {
            throw toStorageError(e, 'open', this.file);
          });
          try {
            if (!sameIdentity(identityOf(await fh.stat()), p.identity)) {
              throw new StorageError(`${this.label} changed under our lock; nothing written`, 'LOCKED');
            }
            await writeLastUid(fh, baseField, lastUid);
          } finally {
            await fh.close().catch(() => undefined);
          }
          this.parsed = null;
          await this.stampWrite();
          traceState(this.file, 'uidnext-out');
          return;
        }
        await this.rewrite(lock, p, {
          uidValidity: p.uidValidity || this.uidValidityOf(p),
          lastUid,
          keywordList: p.keywordList,
          messages: this.keptPlan(p),
        });
        await this.load();
      });
    });
  }

  async close(): Promise<void> {
    await this.queue.catch(() => undefined);
    this.closed = true;
    this.parsed = null;
  }
}

/** Bytes [r.start, r.end) of a new message (head, then body) as output pieces. */
/** X-IMAPbase's (or X-IMAP's) last UID rewritten in place: exactly its 10 digits, fsynced. */
async function writeLastUid(fh: fsp.FileHandle, field: ByteRange, uid: number): Promise<void> {
  const digits = Buffer.from(padUid(uid), 'latin1');
  if (digits.length !== field.end - field.start) throw new Error('last-UID field width changed');
  await fh.write(digits, 0, digits.length, field.start);
  await syncHandle(fh);
}

function piecesLength(pc: OutPiece): number {
  if ('bytes' in pc) return pc.bytes.length;
  if ('spool' in pc) return pc.spool.end - pc.spool.start;
  return pc.range.end - pc.range.start;
}

/** The first n bytes the pieces make (new messages' pieces: literal bytes and spool ranges). */
async function headOf(pieces: OutPiece[], n: number, spool: Spool): Promise<Buffer> {
  const out: Buffer[] = [];
  let have = 0;
  for (const pc of pieces) {
    if (have >= n) break;
    const want = Math.min(n - have, piecesLength(pc));
    if ('bytes' in pc) out.push(pc.bytes.subarray(0, want));
    else if ('spool' in pc) {
      const buf = Buffer.alloc(want);
      await spool.read(buf, pc.spool.start);
      out.push(buf);
    } else throw new Error('headOf: an append has no ranges of the old file');
    have += want;
  }
  return Buffer.concat(out);
}

function newMessageRange(m: NewMessage, r: ByteRange): OutPiece[] {
  const out: OutPiece[] = [];
  const hl = m.head.length;
  if (r.start < hl) out.push({ bytes: m.head.subarray(r.start, Math.min(r.end, hl)) });
  if (r.end <= hl) return out;
  const a = Math.max(r.start, hl) - hl;
  const b = r.end - hl;
  if (Array.isArray(m.body)) {
    let off = 0;
    for (const c of m.body) {
      const end = off + c.length;
      if (end > a && off < b) out.push({ bytes: c.subarray(Math.max(a, off) - off, Math.min(b, end) - off) });
      off = end;
    }
  } else {
    out.push({ spool: { start: m.body.start + a, end: m.body.start + b } });
  }
  return out;
}

/** Reads len bytes at pos into buf at off (fewer only at the end of the file). */
async function readFully(fh: fsp.FileHandle, buf: Buffer, off: number, len: number, pos: number): Promise<{ bytesRead: number }> {
  let done = 0;
  while (done < len) {
    const { bytesRead } = await fh.read(buf, off + done, len - done, pos + done);
    if (bytesRead === 0) break;
    done += bytesRead;
  }
  return { bytesRead: done };
}

function findUid(messages: MboxMessage[], uid: number): MboxMessage | undefined {
  let lo = 0;
  let hi = messages.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const u = messages[mid]!.uid;
    if (u === uid) return messages[mid];
    if (u < uid) lo = mid + 1;
    else hi = mid - 1;
  }
  return undefined;
}

/**
 * Where the header of a new message ends: just after the blank line (end), or -1 when b holds no
 * blank line yet, with the start of the line to look at again once more bytes came (resume).
 * The same rule as shapeOf: the first line that is empty or a lone CR, ended by LF.
 */
function headerEnd(b: Buffer, from: number): { end: number; resume: number } {
  let pos = from;
  while (pos < b.length) {
    const nl = b.indexOf(0x0a, pos);
    if (nl < 0) return { end: -1, resume: pos };
    const len = nl - pos;
    if (len === 0 || (len === 1 && b[pos] === 0x0d)) return { end: nl + 1, resume: pos };
    pos = nl + 1;
  }
  return { end: -1, resume: pos };
}

/** The body of one new message as prepare() collects it (see Spool). */
class SpoolEntry {
  private chunks: Buffer[] = [];
  private inMemory = 0;
  private fileStart = -1;
  length = 0;

  constructor(
    private readonly spool: Spool,
    private readonly unbudgeted: boolean,
  ) {}

  async add(b: Buffer): Promise<void> {
    if (b.length === 0) return;
    this.length += b.length;
    if (this.fileStart < 0) {
      if (this.unbudgeted || this.spool.reserveMemory(b.length)) {
        this.chunks.push(b);
        this.inMemory += b.length;
        return;
      }
      // Over the budget: this body goes to the spool file, with what it had so far.
      this.fileStart = this.spool.fileSize;
      for (const c of this.chunks) await this.spool.write(c);
      this.abandon();
    }
    await this.spool.write(b);
  }

  /** Gives back the memory of a body that will not be used. */
  abandon(): void {
    if (!this.unbudgeted) this.spool.releaseMemory(this.inMemory);
    this.chunks = [];
    this.inMemory = 0;
  }

  done(): { body: Buffer[] | ByteRange; length: number } {
    if (this.fileStart >= 0) return { body: { start: this.fileStart, end: this.fileStart + this.length }, length: this.length };
    return { body: this.chunks, length: this.length };
  }
}

/**
 * The bodies of one save(): kept in memory up to a budget, beyond it written to a temp file next
 * to the mbox, from where they are copied into the mbox under the lock. The file is removed by
 * close(); one left by a crash is removed by the next save or rewrite (see removeStaleTemps).
 */
class Spool {
  private fh: fsp.FileHandle | null = null;
  private path: string | null = null;
  private memoryUsed = 0;
  fileSize = 0;

  constructor(
    private readonly mbox: string,
    private readonly budget: number,
  ) {}

  begin(unbudgeted = false): SpoolEntry {
    return new SpoolEntry(this, unbudgeted);
  }

  reserveMemory(n: number): boolean {
    if (this.memoryUsed + n > this.budget) return false;
    this.memoryUsed += n;
    return true;
  }

  releaseMemory(n: number): void {
    this.memoryUsed -= n;
  }

  async write(b: Buffer): Promise<void> {
    if (!this.fh) {
      // Named for MboxMailbox.removeStaleTemps; "*.lock" is never listed as a mailbox.
      this.path = path.join(path.dirname(this.mbox), `${path.basename(this.mbox)}.dsync-spool-${hostname()}-${process.pid}-${randomHex(4)}.tmp.lock`);
      try {
        this.fh = await fsp.open(this.path, 'wx+', 0o600);
      } catch (e) {
        this.path = null;
        throw toStorageError(e, 'create a temporary file for', this.mbox);
      }
    }
    let off = 0;
    while (off < b.length) {
      const { bytesWritten } = await this.fh.write(b, off, b.length - off, this.fileSize);
      off += bytesWritten;
      this.fileSize += bytesWritten;
    }
  }

  /** Bytes [pos, pos + buf.length) of the spool file into buf. */
  async read(buf: Buffer, pos: number): Promise<void> {
    if (!this.fh) throw new Error('spool: nothing was written');
    const { bytesRead } = await readFully(this.fh, buf, 0, buf.length, pos);
    if (bytesRead !== buf.length) throw new StorageError(`${this.path}: the temporary file is shorter than written`, 'IO');
  }

  async close(): Promise<void> {
    const { fh, path: p } = this;
    this.fh = null;
    this.path = null;
    this.memoryUsed = 0;
    await fh?.close().catch(() => undefined);
    if (p) await fsp.unlink(p).catch(() => undefined);
  }
}

/** Output pieces: compose.ts's (literal bytes, ranges of the old file) or ranges of the save's spool. */
type OutPiece = Piece | { spool: ByteRange };

/** Writes pieces to the new file (or appends them): literal bytes, or ranges copied from the old file or the spool. */
class PieceWriter {
  private pending: Buffer[] = [];
  private pendingLen = 0;
  private lastTouch = Date.now();
  /** Bytes written so far. */
  written = 0;
  /** Read-ahead over the old file as it was when the rewrite started (ranges come mostly in order). */
  private readonly reader: WindowReader | null;

  constructor(
    private readonly out: fsp.FileHandle,
    private readonly lock: DotLock,
    private readonly src: { fh: fsp.FileHandle; size: number } | null,
    private readonly spool: Spool | null,
  ) {
    // One reused window: pending views into it are written out before it moves (see write).
    this.reader = src ? new WindowReader(src.fh, src.size, 4 * COPY_CHUNK, true) : null;
  }

  /** Done: the window buffer may serve other readers (call after the last flush). */
  release(): void {
    this.pending = [];
    this.pendingLen = 0;
    this.reader?.release();
  }

  async sourceByte(pos: number): Promise<number> {
    if (!this.reader) throw new Error('PieceWriter: no source file');
    if (!this.reader.covers(pos, pos + 1)) await this.flush();
    return this.reader.byte(pos);
  }

  private push(b: Buffer): void {
    this.pending.push(b);
    this.pendingLen += b.length;
  }

  async write(pieces: OutPiece[]): Promise<void> {
    for (const pc of pieces) {
      if ('bytes' in pc) {
        if (pc.bytes.length > 0) this.push(pc.bytes);
      } else if ('spool' in pc) {
        if (!this.spool) throw new Error('PieceWriter: no spool');
        for (let pos = pc.spool.start; pos < pc.spool.end; ) {
          const buf = Buffer.allocUnsafe(Math.min(COPY_CHUNK, pc.spool.end - pos));
          await this.spool.read(buf, pos);
          this.push(buf);
          pos += buf.length;
          if (this.pendingLen >= 4 * COPY_CHUNK) await this.flush();
        }
      } else {
        const src = this.src;
        if (!src || !this.reader) throw new Error('PieceWriter: no source file');
        if (pc.range.end <= src.size && pc.range.end - pc.range.start <= COPY_CHUNK) {
          if (!this.reader.covers(pc.range.start, pc.range.end)) await this.flush();
          this.push(await this.reader.slice(pc.range.start, pc.range.end));
        } else {
          // Big ranges, and bytes appended after the rewrite started, straight from the file.
          let pos = pc.range.start;
          while (pos < pc.range.end) {
            const buf = Buffer.allocUnsafe(Math.min(COPY_CHUNK, pc.range.end - pos));
            const { bytesRead } = await src.fh.read(buf, 0, buf.length, pos);
            if (bytesRead === 0) throw new StorageError(`unexpected end of file while copying (offset ${pos})`, 'IO');
            this.push(buf.subarray(0, bytesRead));
            pos += bytesRead;
            if (this.pendingLen >= 4 * COPY_CHUNK) await this.flush();
          }
        }
      }
      if (this.pendingLen >= 4 * COPY_CHUNK) await this.flush();
    }
  }

  async flush(): Promise<void> {
    if (this.pendingLen > 0) {
      const bufs = this.pending;
      const total = this.pendingLen;
      this.pending = [];
      this.pendingLen = 0;
      // One system call for the many small pieces (libuv writes them all, IOV_MAX at a time).
      const { bytesWritten } = await this.out.writev(bufs);
      this.written += bytesWritten;
      if (bytesWritten < total) {
        const rest = Buffer.concat(bufs).subarray(bytesWritten);
        let off = 0;
        while (off < rest.length) {
          const r = await this.out.write(rest, off, rest.length - off);
          off += r.bytesWritten;
          this.written += r.bytesWritten;
        }
      }
    }
    if (Date.now() - this.lastTouch > TOUCH_EVERY_MS) {
      this.lastTouch = Date.now();
      await this.lock.touch();
    }
  }
}
