// One mbox mailbox (one file): scanning, bodies, saving, flag changes, expunges.
//
// Reading takes no lock: a read is repeated until the file's identity (inode, size, mtime, ctime)
// is the same before and after it, so a concurrent in-place rewrite by Dovecot or an MDA appending
// is noticed (and a read-only store writes nothing, not even a lock file).
// Every change takes the dotlock "<mbox>.lock" (see lock.ts in ../maildir) and works on a fresh
// parse made under the lock:
//  * new mail is appended (O_APPEND) after the last UID in X-IMAPbase/X-IMAP was raised in place
//    (exactly its 10 digits, nothing moves: a crash in between only leaves a UID gap); a failed
//    append is cut off again;
//  * everything else (flags, keywords, expunges, UIDs given by scan, UIDVALIDITY, new keywords in
//    X-IMAPbase) writes a complete new file next to the old one, fsyncs it, gives it the old one's
//    mode and owner and renames it over the old one. A failure at any point leaves the original as
//    it was. A 1 GB mbox is rewritten in full for a single flag change: simple and crash-safe.
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { Readable } from 'node:stream';
import { createHash } from 'node:crypto';
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
import { assertWritable, errCode, fsyncDir, isNotFound, randomHex, toStorageError, type FsContext } from '../maildir/io.js';
import { DotLock } from '../maildir/lock.js';
import { invalidKeywordReason } from '../maildir/keywords.js';
import {
  identityOf,
  isMetadataHeader,
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
import { WindowReader } from './reader.js';
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
}

/** A message to append, prepared outside the lock. */
interface NewMessage {
  uid: number;
  flags: number;
  keywords: string[];
  internalDate: number;
  bytes: Buffer;
  eol: string;
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
/** What separates messages in files we write (see compose.ts). */
const LF_SEPARATOR = Buffer.from('\n');
const TOUCH_EVERY_MS = 30_000;
const READ_ATTEMPTS = 5;

function isNew(m: MboxMessage | NewMessage): m is NewMessage {
  return (m as NewMessage).bytes !== undefined;
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
  /** What Dovecot's index says, for parses of a file without UIDVALIDITY (see uidValidityOf). */
  private readonly fromIndex = new WeakMap<ParsedMbox, DovecotIndexUids | null>();
  private queue: Promise<unknown> = Promise.resolve();
  private closed = false;

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
      if (isNotFound(e)) throw new StorageError(`${this.label} does not exist`, 'NOTFOUND');
      if (errCode(e) === 'EISDIR') throw new StorageError(`${this.label} is a directory, not an mbox file`, 'NOTFOUND');
      throw toStorageError(e, 'open', this.file);
    }
  }

  /** The current parse of the file (cached while the file's identity is unchanged). */
  private async load(): Promise<ParsedMbox> {
    for (let attempt = 0; attempt < READ_ATTEMPTS; attempt++) {
      const fh = await this.openFile();
      try {
        const st = await fh.stat();
        if (!st.isFile()) throw new StorageError(`${this.label} is not a regular file`, 'NOTFOUND');
        const id = identityOf(st);
        if (this.parsed && sameIdentity(this.parsed.identity, id)) return this.parsed;
        const parsed = await parseMbox(fh, id, { warn: this.ctx.warn, label: this.file, quoting: this.env.quoting });
        const after = identityOf(await fh.stat());
        const onPath = await fsp.stat(this.file).catch(() => null);
        if (sameIdentity(after, id) && onPath && onPath.ino === id.ino && onPath.dev === id.dev) {
          if (parsed.uidValidity === 0) this.fromIndex.set(parsed, await this.env.dovecotIndexUids(this.name));
          this.parsed = parsed;
          return parsed;
        }
      } catch (e) {
        throw toStorageError(e, 'read', this.file);
      } finally {
        await fh.close().catch(() => undefined);
      }
    }
    throw new StorageError(`${this.label} kept changing while it was being read (another program is writing it); try again later`, 'LOCKED');
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

  /** With the UIDVALIDITY of Dovecot's index, its next UID is kept too (as Dovecot does). */
  private uidNextOf(p: ParsedMbox): number {
    const indexNext = p.uidValidity === 0 ? (this.fromIndex.get(p)?.nextUid ?? 0) : 0;
    return Math.max(p.nextUid, p.lastUid + 1, indexNext);
  }

  // ---------------------------------------------------------------- locking

  private async withLock<T>(fn: (lock: DotLock) => Promise<T>): Promise<T> {
    assertWritable(this.ctx, `change ${this.label}`);
    return this.env.exclusive(this.file, async () => {
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
      try {
        return await fn(lock);
      } finally {
        await lock.release();
      }
    });
  }

  /** Temp files of rewrites whose process died ("<mbox>.dsync-<pid>-<hex>.tmp.lock"); we hold the lock. */
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
      const m = /^(\d+)-[0-9a-f]+\.tmp\.lock$/.exec(n.slice(prefix.length));
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
      this.ctx.warn(`${this.label}: removing ${n}, left by an interrupted rewrite (the mailbox itself was never touched by it)`);
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

  /** Not serialised: a save that reads bodies of this same mailbox must not wait for itself. */
  async openBody(uid: number): Promise<Readable> {
    if (this.closed) throw new Error(`${this.label} is closed`);
    for (let attempt = 0; attempt < READ_ATTEMPTS; attempt++) {
      const p = this.parsed ?? (await this.load());
      let m = findUid(p.messages, uid);
      let snapshot = p;
      if (!m) {
        snapshot = await this.load();
        m = findUid(snapshot.messages, uid);
        if (!m) throw new StorageError(`${this.label}: UID ${uid} does not exist (expunged?)`, 'EXPUNGED');
      }
      const fh = await this.openFile();
      try {
        const before = identityOf(await fh.stat());
        if (!sameIdentity(before, snapshot.identity)) {
          await this.load();
          continue;
        }
        const parts: Buffer[] = [];
        for (const r of servedRanges(m.hdrStart, m.msgEnd, m.hidden)) {
          const buf = Buffer.allocUnsafe(r.end - r.start);
          let off = 0;
          while (off < buf.length) {
            const { bytesRead } = await fh.read(buf, off, buf.length - off, r.start + off);
            if (bytesRead === 0) break;
            off += bytesRead;
          }
          parts.push(buf.subarray(0, off));
        }
        const after = identityOf(await fh.stat());
        if (!sameIdentity(after, before)) continue;
        const body = unquoteFromLines(Buffer.concat(parts), this.env.quoting);
        return Readable.from([body]);
      } catch (e) {
        throw toStorageError(e, 'read', this.file);
      } finally {
        await fh.close().catch(() => undefined);
      }
    }
    throw new StorageError(`${this.label} kept changing while UID ${uid} was being read; try again later`, 'LOCKED');
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
  private async messagePieces(o: OutMessage, base: RewritePlan | null, sourceByte?: (pos: number) => Promise<number>): Promise<Piece[]> {
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
          padding: src.shape.rest !== null && src.bytes[src.shape.rest.start] === 0x0d,
        },
        src.eol,
      );
      // From_ line and separator with "\n" whatever the message uses (see compose.ts).
      const fromLine = Buffer.from(formatFromLine('MAILER-DAEMON', src.internalDate) + '\n', 'latin1');
      return layoutMessage(fromLine, src.shape, meta, src.eol, LF_SEPARATOR).map((pc) =>
        'range' in pc ? { bytes: src.bytes.subarray(pc.range.start, pc.range.end) } : pc,
      );
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
  private async rewrite(lock: DotLock, p: ParsedMbox, plan: RewritePlan): Promise<void> {
    const dir = path.dirname(this.file);
    await this.removeStaleTemps(dir);
    const temp = path.join(dir, `${path.basename(this.file)}.dsync-${process.pid}-${randomHex(4)}.tmp.lock`);
    const src = await this.openFile();
    let out: fsp.FileHandle | undefined;
    let renamed = false;
    try {
      const st = await src.stat();
      if (!sameIdentity(identityOf(st), p.identity)) {
        throw new StorageError(`${this.label} changed under our lock (another program does not honour ${this.file}.lock); nothing written`, 'LOCKED');
      }
      out = await fsp.open(temp, 'wx', 0o600);
      const w = new PieceWriter(src, p.identity.size, out, lock);
      // The header values go into the pseudo message if there is one, else into the first message.
      let firstReal = true;
      if (p.pseudo || plan.messages.length === 0) {
        await w.write(this.pseudoPieces(p, plan));
        firstReal = false;
      }
      for (const o of plan.messages) {
        await w.write(await this.messagePieces(o, firstReal ? plan : null, (pos) => w.sourceByte(pos)));
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
      await out.sync();
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
      await fsp.rename(temp, this.file);
      renamed = true;
      await fsyncDir(dir).catch(() => undefined);
      // Last chance for bytes appended to the old file between the check and the rename.
      const last = await src.stat();
      if (last.size > copied) {
        this.ctx.warn(`${this.label}: ${last.size - copied} bytes were appended to the old file during the rename; moving them over`);
        const tail = Buffer.allocUnsafe(last.size - copied);
        await src.read(tail, 0, tail.length, copied);
        const fh = await fsp.open(this.file, 'a');
        try {
          await fh.writeFile(tail);
          await fh.sync();
        } finally {
          await fh.close();
        }
      }
    } catch (e) {
      if (!renamed) await fsp.unlink(temp).catch(() => undefined);
      throw e instanceof StorageError ? e : toStorageError(e, 'rewrite', this.file);
    } finally {
      await out?.close().catch(() => undefined);
      await src.close().catch(() => undefined);
    }
    this.parsed = null;
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

  private async prepare(req: SaveRequest): Promise<NewMessage> {
    let bytes: Buffer;
    const body = typeof req.body === 'function' ? await req.body() : req.body;
    if (Buffer.isBuffer(body)) bytes = body;
    else {
      const chunks: Buffer[] = [];
      for await (const chunk of body) chunks.push(typeof chunk === 'string' ? Buffer.from(chunk) : (chunk as Buffer));
      bytes = Buffer.concat(chunks);
    }
    // A leading From_ line is mbox envelope, not message (Dovecot drops it too).
    if (bytes.subarray(0, 5).toString('latin1') === 'From ') {
      const nl = bytes.indexOf(0x0a);
      const line = bytes.toString('latin1', 0, nl < 0 ? bytes.length : nl);
      if (parseFromLine(line)) {
        this.ctx.warn(`${this.label}: UID ${req.uid} starts with an mbox "From " line; it is dropped (as Dovecot does)`);
        bytes = nl < 0 ? Buffer.alloc(0) : bytes.subarray(nl + 1);
      }
    }
    bytes = quoteFromLines(bytes, this.env.quoting);
    bytes = this.quoteHeaderFromLines(bytes, req.uid);
    const { shape, eol } = shapeOf(bytes);
    const headerLen = shape.header.reduce((n, r) => n + r.end - r.start, 0);
    const hdrEnd = shape.rest ? shape.rest.start : bytes.length;
    if (headerLen !== hdrEnd) {
      this.ctx.warn(`${this.label}: UID ${req.uid} carries mbox metadata headers (Status, X-UID, Content-Length, ...); they are replaced, as Dovecot does`);
    }
    return {
      uid: req.uid,
      flags: req.flags & (Flag.Answered | Flag.Flagged | Flag.Deleted | Flag.Seen | Flag.Draft),
      keywords: this.cleanKeywords(req.keywords, req.uid),
      internalDate: req.internalDate,
      bytes,
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
    // Bodies first, without the lock: they may come from a peer, or from this very mailbox.
    const prepared: NewMessage[] = [];
    for (const r of requests) prepared.push(await this.prepare(r));

    await this.withLock(async (lock) => {
      const p = await this.load();
      const uidNext = this.uidNextOf(p);
      if (requests[0]!.uid < uidNext) {
        throw new StorageError(`${this.label}: cannot save UID ${requests[0]!.uid}: the mailbox's next UID is already ${uidNext}`, 'EXISTS');
      }
      const lastUid = prepared[prepared.length - 1]!.uid;
      const keywordList = this.withNewKeywords(p.keywordList, prepared.map((m) => m.keywords));
      const baseField = p.pseudo ? p.pseudo.lastUidField : p.messages[0]?.lastUidField;
      const canAppend =
        p.identity.size === 0 || (!p.needsPersist && keywordList.length === p.keywordList.length && baseField !== undefined && p.base !== 'bad');
      if (!canAppend) {
        const uv = this.uidValidityOf(p);
        await this.rewrite(lock, p, {
          uidValidity: uv,
          lastUid,
          keywordList,
          messages: [...this.keptPlan(p), ...prepared.map((m) => ({ src: m, uid: m.uid, flags: m.flags, keywords: m.keywords }))],
        });
        await this.load();
        return;
      }
      await this.append(lock, p, prepared, lastUid, keywordList, baseField);
    });
  }

  /** Appends new messages after raising the last UID in place (see the file comment). */
  private async append(lock: DotLock, p: ParsedMbox, prepared: NewMessage[], lastUid: number, keywordList: string[], baseField: ByteRange | undefined): Promise<void> {
    const empty = p.identity.size === 0;
    const uv = this.uidValidityOf(p);
    const chunks: Buffer[] = [];
    if (!empty && !p.endsWithNewline) chunks.push(Buffer.from('\n'));
    const plan: RewritePlan = { uidValidity: uv, lastUid, keywordList, messages: [] };
    for (let i = 0; i < prepared.length; i++) {
      const m = prepared[i]!;
      const pieces = await this.messagePieces({ src: m, uid: m.uid, flags: m.flags, keywords: m.keywords }, empty && i === 0 ? plan : null);
      for (const pc of pieces) if ('bytes' in pc) chunks.push(pc.bytes);
    }
    const data = Buffer.concat(chunks);
    const firstFrom = p.identity.size + (!empty && !p.endsWithNewline ? 1 : 0);

    let fh: fsp.FileHandle | undefined;
    try {
      fh = await fsp.open(this.file, 'r+');
      const st = identityOf(await fh.stat());
      if (!sameIdentity(st, p.identity)) {
        throw new StorageError(`${this.label} changed under our lock (another program does not honour ${this.file}.lock); nothing written`, 'LOCKED');
      }
      if (!empty && baseField && lastUid > p.lastUid) {
        // Raise the last UID first: a crash after this leaves only unused UIDs.
        const digits = Buffer.from(padUid(lastUid), 'latin1');
        if (digits.length !== baseField.end - baseField.start) throw new Error('last-UID field width changed');
        await fh.write(digits, 0, digits.length, baseField.start);
        await fh.sync();
      }
    } catch (e) {
      throw toStorageError(e, 'update', this.file);
    } finally {
      await fh?.close().catch(() => undefined);
    }
    let app: fsp.FileHandle | undefined;
    let written = 0;
    try {
      app = await fsp.open(this.file, 'a');
      while (written < data.length) {
        const { bytesWritten } = await app.write(data, written, data.length - written);
        written += bytesWritten;
        await lock.touch();
      }
      await app.sync();
    } catch (e) {
      // Cut our partial append off again, but only if nobody else wrote after it.
      if (app) {
        try {
          const st = await app.stat();
          if (st.size === p.identity.size + written) {
            await app.truncate(p.identity.size);
            await app.sync();
          } else {
            this.ctx.warn(`${this.label}: could not undo a partial append (the file grew meanwhile); the last message may be incomplete`);
          }
        } catch {
          // keep the original error
        }
      }
      throw toStorageError(e, 'append to', this.file);
    } finally {
      await app?.close().catch(() => undefined);
    }
    // Parse just what we appended.
    const fh2 = await this.openFile();
    try {
      const id = identityOf(await fh2.stat());
      this.parsed = empty
        ? await parseMbox(fh2, id, { warn: this.ctx.warn, label: this.file, quoting: this.env.quoting })
        : await parseMbox(fh2, id, {
            warn: this.ctx.warn,
            label: this.file,
            quoting: this.env.quoting,
            resume: { prev: p, offset: firstFrom, lastUid: Math.max(lastUid, p.lastUid) },
          });
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
        const drop = new Set(uids.filter((u) => p.messages.some((m) => m.uid === u)));
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
            throw new StorageError(`${this.label}: cannot move UID ${m.from} to ${m.to} (UIDNEXT is ${uidNext})`, 'EXISTS');
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
            await fh.write(Buffer.from(padUid(lastUid), 'latin1'), 0, 10, baseField.start);
            await fh.sync();
          } finally {
            await fh.close().catch(() => undefined);
          }
          this.parsed = null;
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

/** Writes pieces to the new file: literal bytes, or ranges copied from the old file. */
class PieceWriter {
  private pending: Buffer[] = [];
  private pendingLen = 0;
  private lastTouch = Date.now();
  /** Read-ahead over the old file as it was when the rewrite started (ranges come mostly in order). */
  private readonly reader: WindowReader;

  constructor(
    private readonly src: fsp.FileHandle,
    private readonly srcSize: number,
    private readonly out: fsp.FileHandle,
    private readonly lock: DotLock,
  ) {
    this.reader = new WindowReader(src, srcSize, 4 * COPY_CHUNK);
  }

  async sourceByte(pos: number): Promise<number> {
    return this.reader.byte(pos);
  }

  private push(b: Buffer): void {
    this.pending.push(b);
    this.pendingLen += b.length;
  }

  async write(pieces: Piece[]): Promise<void> {
    for (const pc of pieces) {
      if ('bytes' in pc) {
        if (pc.bytes.length > 0) this.push(pc.bytes);
      } else if (pc.range.end <= this.srcSize && pc.range.end - pc.range.start <= COPY_CHUNK) {
        this.push(await this.reader.slice(pc.range.start, pc.range.end));
      } else {
        // Big ranges, and bytes appended after the rewrite started, straight from the file.
        let pos = pc.range.start;
        while (pos < pc.range.end) {
          const buf = Buffer.allocUnsafe(Math.min(COPY_CHUNK, pc.range.end - pos));
          const { bytesRead } = await this.src.read(buf, 0, buf.length, pos);
          if (bytesRead === 0) throw new StorageError(`unexpected end of file while copying (offset ${pos})`, 'IO');
          this.push(buf.subarray(0, bytesRead));
          pos += bytesRead;
          if (this.pendingLen >= 4 * COPY_CHUNK) await this.flush();
        }
      }
      if (this.pendingLen >= 4 * COPY_CHUNK) await this.flush();
    }
  }

  async flush(): Promise<void> {
    if (this.pendingLen > 0) {
      const data = Buffer.concat(this.pending);
      this.pending = [];
      this.pendingLen = 0;
      let off = 0;
      while (off < data.length) {
        const { bytesWritten } = await this.out.write(data, off, data.length - off);
        off += bytesWritten;
      }
    }
    if (Date.now() - this.lastTouch > TOUCH_EVERY_MS) {
      this.lastTouch = Date.now();
      await this.lock.touch();
    }
  }
}
