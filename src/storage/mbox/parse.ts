// Reading an mbox file the way Dovecot 2.3 does (every rule here was checked against it):
//
// Message boundaries
//  * The file must be empty or start with a valid From_ line (see from-line.ts); anything else is
//    not an mbox file. A "From " line that does not parse is ordinary text.
//  * A message runs from after its From_ line to the line terminator ("\n" or "\r\n") that
//    precedes the next valid From_ line; that one terminator is the separator and not part of
//    the message. No blank line is needed before "From ". At the end of the file one trailing
//    line terminator is the separator. So "body\n\nFrom " gives "body\n", "body\nFrom " gives
//    "body", and a last message "end\n" or "end" (no final newline) gives "end".
//  * Content-Length (mboxcl/mboxcl2) is honoured only when the body that long ends exactly at the
//    end of the file, or is followed by one line terminator and then the end of the file or a
//    valid From_ line. Otherwise the body is scanned for the next From_ line, so a "From " line
//    in a body without a valid Content-Length starts a new message: that is what every mbox
//    reader does, and the reason mboxo/mboxrd quote such lines.
//  * "From " lines are not unquoted: Dovecot serves ">From " lines as they are (mboxo/mboxrd
//    unquoting is an opt-in of this store, see MboxQuoting).
//
// Metadata headers (hidden from the message bytes, every occurrence, names case-insensitive,
// whitespace before the colon allowed, continuation lines included): X-IMAPbase, X-IMAP, X-UID,
// Status, X-Status, X-Keywords, Content-Length.
//  * The first message's "X-IMAPbase: <uidvalidity> <last uid> [keyword...]" gives UIDVALIDITY,
//    the last UID handed out and the keywords X-Keywords may use. If the first message has an
//    "X-IMAP" header instead, it is the pseudo message ("DON'T DELETE THIS MESSAGE -- FOLDER
//    INTERNAL DATA") that keeps these values; it is never a message. X-IMAPbase/X-IMAP elsewhere
//    are ignored.
//  * A bad X-IMAPbase (UIDVALIDITY not 1..2^32-1, or a last UID that is not a number) is
//    ignored altogether: new UIDVALIDITY, every X-UID ignored. A missing last UID counts as 0.
//  * X-UID is used when it is greater than the previous message's UID and either not greater
//    than the last UID of X-IMAPbase or exactly the next free UID (last UID + 1, counting those
//    taken so); otherwise the message gets the next free UID, in file order, exactly like Dovecot
//    (which then writes the new X-UIDs back).
//  * Status: R = \Seen, O = not \Recent. X-Status: A = \Answered, F = \Flagged, T = \Draft,
//    D = \Deleted. Other letters are kept as they are when we rewrite.
//  * X-Keywords counts only when every keyword in it is listed in X-IMAPbase; otherwise Dovecot
//    ignores the whole header, and so do we.
//  * INTERNALDATE is the From_ line's date.
import type { FileHandle } from 'node:fs/promises';
import type { Stats } from 'node:fs';
import { Flag } from '../../model/flags.js';
import { StorageError } from '../types.js';
import { headerHash } from '../header-hash.js';
import { parseFromLine } from './from-line.js';
import { WindowReader } from './reader.js';

export const MAX_UID = 0xffffffff;

/** How "From " lines inside messages are quoted in this file. */
export type MboxQuoting = 'none' | 'mboxo' | 'mboxrd';

export interface FileIdentity {
  dev: number;
  ino: number;
  size: number;
  mtimeMs: number;
  ctimeMs: number;
}

export function identityOf(st: Stats): FileIdentity {
  return { dev: st.dev, ino: st.ino, size: st.size, mtimeMs: st.mtimeMs, ctimeMs: st.ctimeMs };
}

export function sameIdentity(a: FileIdentity, b: FileIdentity): boolean {
  return a.dev === b.dev && a.ino === b.ino && a.size === b.size && a.mtimeMs === b.mtimeMs && a.ctimeMs === b.ctimeMs;
}

export interface ByteRange {
  start: number;
  end: number;
}

export interface MboxMessage {
  /** Offset of the "From " line. */
  start: number;
  /** Line terminator of the From_ line. */
  eol: '\n' | '\r\n';
  hdrStart: number;
  /** End of the header fields: start of the blank line, or msgEnd when there is none. */
  hdrEnd: number;
  /** After the blank line (== msgEnd when there is no blank line). */
  bodyStart: number;
  hasBlankLine: boolean;
  /** End of the message bytes (the separator follows). */
  msgEnd: number;
  /** Start of the next From_ line, or the file size. */
  next: number;
  /** Metadata header fields inside [hdrStart, hdrEnd), adjacent ones merged (usually one range). */
  hidden: ByteRange[];
  /** The first kept header line is a continuation line (starts with SP/TAB). */
  leadingContinuation: boolean;
  internalDate: number;
  uid: number;
  flags: number;
  /** Shared and never to be modified (NO_KEYWORDS for most messages). */
  keywords: string[];
  /** Status letters other than R (e.g. "O"), in file order. */
  statusExtra: string;
  /** X-Status letters other than A, F, T, D. */
  xStatusExtra: string;
  /** Size of the bytes served for this message. */
  size: number;
  hdrHash: string;
  /** Absolute offset and width of the last-UID digits of X-IMAPbase/X-IMAP (for in-place updates). */
  lastUidField?: ByteRange;
}

export interface ParsedMbox {
  identity: FileIdentity;
  messages: MboxMessage[];
  pseudo: MboxMessage | null;
  /** 0 when missing or bad. */
  uidValidity: number;
  /** Last UID of X-IMAPbase/X-IMAP as on disk (0 if none). */
  lastUid: number;
  /** UIDNEXT after giving UIDs to messages without a usable X-UID. */
  nextUid: number;
  /** Keywords declared in X-IMAPbase/X-IMAP, in file order. */
  keywordList: string[];
  /** Where UIDVALIDITY came from. */
  base: 'imapbase' | 'pseudo' | 'none' | 'bad';
  /** Something (UIDVALIDITY or UIDs) is only in memory and must be written to keep it. */
  needsPersist: boolean;
  /** Last byte of the file is LF (or the file is empty). */
  endsWithNewline: boolean;
}

export type Warn = (msg: string) => void;

const LF = 0x0a;
const CR = 0x0d;
const FROM_ = Buffer.from('\nFrom ');

const META = new Set(['x-imapbase', 'x-imap', 'x-uid', 'status', 'x-status', 'x-keywords', 'content-length']);
const META_LENGTHS = new Set([...META].map((n) => n.length));

/** Metadata header names Dovecot hides, lowercase. */
export function isMetadataHeader(lowerName: string): boolean {
  return META.has(lowerName);
}

interface Field {
  start: number;
  end: number;
  name: string;
  value: string;
}

/** Splits a header block into fields (absolute offsets given base). */
function splitFields(buf: Buffer, base: number): { fields: Field[]; leadingContinuation: boolean } {
  const fields: Field[] = [];
  let cur: { start: number; lines: [number, number][] } | null = null;
  let leadingContinuation = false;
  const flush = (end: number): void => {
    if (!cur) return;
    const [ls, le] = cur.lines[0]!;
    let n = ls;
    while (n < le && buf[n] !== 0x3a && buf[n] !== 0x20 && buf[n] !== 0x09) n++;
    // Only names that could be metadata headers become strings (this runs for every header field).
    const c = buf[ls]! | 0x20;
    const maybe = META_LENGTHS.has(n - ls) && (c === 0x78 || c === 0x73 || c === 0x63); // x s c
    const name = maybe ? buf.toString('latin1', ls, n).toLowerCase() : '';
    let value = '';
    if (maybe && META.has(name)) {
      let c = n;
      while (c < le && (buf[c] === 0x20 || buf[c] === 0x09)) c++;
      if (buf[c] === 0x3a) {
        const pieces = cur.lines.map(([a, b], i) => buf.toString('latin1', i === 0 ? c + 1 : a, b));
        value = pieces.join(' ').trim();
        fields.push({ start: base + cur.start, end: base + end, name, value });
      }
    }
    cur = null;
  };
  let pos = 0;
  let first = true;
  while (pos < buf.length) {
    const nl = buf.indexOf(LF, pos);
    const lineEnd = nl < 0 ? buf.length : nl;
    let contentEnd = lineEnd;
    if (nl >= 0 && contentEnd > pos && buf[contentEnd - 1] === CR) contentEnd--;
    const next = nl < 0 ? buf.length : nl + 1;
    const c0 = buf[pos];
    if ((c0 === 0x20 || c0 === 0x09) && cur) {
      cur.lines.push([pos, contentEnd]);
    } else {
      if (first && (c0 === 0x20 || c0 === 0x09)) leadingContinuation = true;
      flush(pos);
      cur = { start: pos, lines: [[pos, contentEnd]] };
    }
    first = false;
    pos = next;
  }
  flush(buf.length);
  return { fields, leadingContinuation };
}

/** Bytes of [start, end) minus the hidden ranges. */
export function servedRanges(start: number, end: number, hidden: ByteRange[]): ByteRange[] {
  const out: ByteRange[] = [];
  let p = start;
  for (const h of hidden) {
    if (h.start > p) out.push({ start: p, end: Math.min(h.start, end) });
    p = Math.max(p, h.end);
  }
  if (p < end) out.push({ start: p, end });
  return out.filter((r) => r.end > r.start);
}

/** Removes one '>' from mboxo (">From ") or mboxrd (">+From ") quoted lines. */
export function unquoteFromLines(buf: Buffer, quoting: MboxQuoting): Buffer {
  if (quoting === 'none' || buf.indexOf('>') < 0) return buf;
  const out: Buffer[] = [];
  let pos = 0;
  let last = 0;
  while (pos < buf.length) {
    let nl = buf.indexOf(LF, pos);
    if (nl < 0) nl = buf.length;
    if (buf[pos] === 0x3e) {
      let q = pos;
      while (q < nl && buf[q] === 0x3e) q++;
      const quoted = q - pos === 1 || quoting === 'mboxrd';
      if (quoted && buf.toString('latin1', q, Math.min(nl, q + 5)) === 'From ') {
        out.push(buf.subarray(last, pos));
        last = pos + 1;
      }
    }
    pos = nl + 1;
  }
  out.push(buf.subarray(last));
  return Buffer.concat(out);
}

/** Adds one '>' to lines that would read as From_ lines ("From " always; mboxrd also ">+From "). */
export function quoteFromLines(buf: Buffer, quoting: MboxQuoting): Buffer {
  if (quoting === 'none') return buf;
  const out: Buffer[] = [];
  let pos = 0;
  let last = 0;
  while (pos < buf.length) {
    let nl = buf.indexOf(LF, pos);
    if (nl < 0) nl = buf.length;
    let q = pos;
    if (quoting === 'mboxrd') while (q < nl && buf[q] === 0x3e) q++;
    if (buf.toString('latin1', q, Math.min(nl, q + 5)) === 'From ') {
      out.push(buf.subarray(last, pos), Buffer.from('>'));
      last = pos;
    }
    pos = nl + 1;
  }
  out.push(buf.subarray(last));
  return Buffer.concat(out);
}

/**
 * Applies quoteFromLines or unquoteFromLines to data that arrives in chunks, with the same result
 * as on the whole: a line is handed to the function once its start decides it (its '>' run and
 * the 5 bytes after it are known), the rest of a long line passes through unchanged. `fn` must
 * only look at the start of each line. Keeps at most one line start between chunks.
 */
export class LineFilter {
  private carry: Buffer | null = null;
  /** The current line's start was already handled: pass bytes through up to its end. */
  private midLine = false;

  constructor(private readonly fn: (b: Buffer) => Buffer) {}

  push(chunk: Buffer): Buffer[] {
    const out: Buffer[] = [];
    let data = chunk;
    if (this.midLine) {
      const nl = data.indexOf(LF);
      if (nl < 0) return data.length > 0 ? [data] : [];
      out.push(data.subarray(0, nl + 1));
      data = data.subarray(nl + 1);
      this.midLine = false;
    }
    if (this.carry) {
      data = Buffer.concat([this.carry, data]);
      this.carry = null;
    }
    const lastNl = data.lastIndexOf(LF);
    if (lastNl >= 0) out.push(this.fn(data.subarray(0, lastNl + 1)));
    const rest = data.subarray(lastNl + 1);
    if (rest.length > 0) {
      let q = 0;
      while (q < rest.length && rest[q] === 0x3e) q++;
      if (rest.length >= q + 5) {
        out.push(this.fn(rest));
        this.midLine = true;
      } else {
        this.carry = Buffer.from(rest);
      }
    }
    return out;
  }

  end(): Buffer[] {
    const c = this.carry;
    this.carry = null;
    this.midLine = false;
    return c ? [this.fn(c)] : [];
  }
}

function parseBase(value: string): { uidValidity: number; lastUid: number; keywords: string[] } | null {
  const t = value.split(/[ \t]+/).filter((x) => x !== '');
  if (t.length === 0 || !/^\d{1,10}$/.test(t[0]!)) return null;
  const uidValidity = Number(t[0]);
  if (uidValidity < 1 || uidValidity > MAX_UID) return null;
  let lastUid = 0;
  if (t.length > 1) {
    if (!/^\d{1,10}$/.test(t[1]!)) return null;
    lastUid = Number(t[1]);
    // Dovecot's imap process dies on 4294967295 here; no UID could ever be given out anyway.
    if (lastUid >= MAX_UID) return null;
  }
  return { uidValidity, lastUid, keywords: t.slice(2) };
}

/** Offset (within value text of field) of the second token: the last UID digits. */
function lastUidRange(buf: Buffer, fieldStart: number, absBase: number): ByteRange | undefined {
  // buf is the whole header block; fieldStart is relative. Find ':' then token 1 and token 2.
  let p = fieldStart;
  while (p < buf.length && buf[p] !== 0x3a) p++;
  p++;
  const skipWs = (): void => {
    while (p < buf.length && (buf[p] === 0x20 || buf[p] === 0x09)) p++;
  };
  const token = (): ByteRange => {
    const s = p;
    while (p < buf.length && buf[p] !== 0x20 && buf[p] !== 0x09 && buf[p] !== LF && buf[p] !== CR) p++;
    return { start: s, end: p };
  };
  skipWs();
  token();
  skipWs();
  const t = token();
  if (t.end - t.start !== 10) return undefined;
  for (let i = t.start; i < t.end; i++) if (buf[i]! < 0x30 || buf[i]! > 0x39) return undefined;
  return { start: absBase + t.start, end: absBase + t.end };
}

export interface ParseOptions {
  warn: Warn;
  /** Used in messages. */
  label: string;
  quoting?: MboxQuoting;
  /**
   * Continue an earlier parse after messages were appended at `offset` (the first appended From_
   * line) and X-IMAPbase's last UID was set to `lastUid`: earlier messages are taken over.
   */
  resume?: { prev: ParsedMbox; offset: number; lastUid: number };
  /**
   * Parse only the file's first `end` bytes (the rest is the unfinished part of an interrupted
   * append, see append-intent.ts). The identity stays the whole file's.
   */
  end?: number;
}

/** A message as parseMessages hands it over: its metadata fields are only needed until its UID is assigned. */
interface Raw {
  msg: MboxMessage;
  fields: Field[];
}

/** Keywords of a message without any (shared: message keyword arrays are never modified). */
export const NO_KEYWORDS: string[] = [];
/** Hidden ranges of a message without metadata headers (shared, never modified). */
const NO_HIDDEN: ByteRange[] = [];

/**
 * Parses the mbox open as fh (identity = its fstat before reading). Throws StorageError CORRUPT
 * when the file does not start with a From_ line.
 *
 * The file is read once, front to back, through a window of fixed size; each message is reduced
 * to its offsets, flags and header hash as soon as it has been read, so memory is a few hundred
 * bytes per message whatever the size of the file or of its messages.
 */
export async function parseMbox(fh: FileHandle, identity: FileIdentity, opts: ParseOptions): Promise<ParsedMbox> {
  // A file size from fstat is a double; offsets computed from it would be too, and V8 then keeps
  // every offset field of every message in a separate heap number (16 bytes each). As a small
  // integer they stay inline (files up to 1 GiB; beyond, offsets are doubles anyway).
  const visible = opts.end !== undefined ? Math.min(opts.end, identity.size) : identity.size;
  const size = visible <= 0x3fffffff ? visible | 0 : visible;
  // One window buffer for the whole file (views into it are used before the window moves, or copied).
  const r = new WindowReader(fh, size, undefined, true);
  try {
    return await parseWith(r, identity, size, opts);
  } finally {
    r.release();
  }
}

async function parseWith(r: WindowReader, identity: FileIdentity, size: number, opts: ParseOptions): Promise<ParsedMbox> {
  const result: ParsedMbox = {
    identity,
    messages: [],
    pseudo: null,
    uidValidity: 0,
    lastUid: 0,
    nextUid: 1,
    keywordList: [],
    base: 'none',
    needsPersist: false,
    endsWithNewline: true,
  };
  if (size === 0) return result;
  result.endsWithNewline = (await r.byte(size - 1)) === LF;
  const resume = opts.resume;
  const startAt = resume ? resume.offset : 0;
  const first = await r.lineAt(startAt);
  if (!first || !parseFromLine(first.text)) {
    if (resume) throw new StorageError(`${opts.label}: appended data at offset ${startAt} does not start with a From_ line`, 'IO');
    throw new StorageError(`${opts.label} is not an mbox file: it does not start with a "From " line`, 'CORRUPT');
  }

  let assigner: UidAssigner;
  if (resume) {
    // Earlier messages are unchanged (appending never moves them; the last UID was updated in
    // place); only the end of the last one may now be the appended From_ line. The message
    // objects are shared with the earlier parse, except the one whose end changes.
    const prev = resume.prev;
    let pseudo = prev.pseudo;
    result.messages = prev.messages.slice();
    const n = result.messages.length;
    if (n > 0) {
      const last = result.messages[n - 1]!;
      if (last.next === prev.identity.size) result.messages[n - 1] = { ...last, next: startAt };
    } else if (pseudo && pseudo.next === prev.identity.size) {
      pseudo = { ...pseudo, next: startAt };
    }
    result.pseudo = pseudo;
    result.uidValidity = prev.uidValidity;
    result.lastUid = resume.lastUid;
    result.keywordList = prev.keywordList;
    result.base = prev.base;
    result.needsPersist = prev.needsPersist;
    const prevUid = n > 0 ? result.messages[n - 1]!.uid : 0;
    assigner = new UidAssigner(result, opts, prevUid, Math.max(prev.nextUid, resume.lastUid + 1));
    await parseMessages(r, startAt, opts, (raw) => assigner.add(raw));
    assigner.finish();
    return result;
  }

  let firstSeen = false;
  await parseMessages(r, startAt, opts, (raw) => {
    if (firstSeen) {
      assigner.add(raw);
      return;
    }
    firstSeen = true;
    // The first message decides UIDVALIDITY / last UID / keywords.
    const { msg, fields } = raw;
    const imap = fieldValue(fields, 'x-imap');
    let baseValue: string | undefined;
    if (imap !== undefined) {
      result.pseudo = msg;
      baseValue = imap;
    } else {
      baseValue = fieldValue(fields, 'x-imapbase');
      if (baseValue === undefined) msg.lastUidField = undefined;
    }
    if (baseValue !== undefined) {
      const b = parseBase(baseValue);
      if (b) {
        result.uidValidity = b.uidValidity;
        result.lastUid = b.lastUid;
        result.keywordList = b.keywords;
        result.base = result.pseudo ? 'pseudo' : 'imapbase';
      } else {
        result.base = 'bad';
        msg.lastUidField = undefined;
        opts.warn(`${opts.label}: ignoring a bad ${result.pseudo ? 'X-IMAP' : 'X-IMAPbase'} header "${baseValue.slice(0, 80)}": a new UIDVALIDITY is assigned and all messages get new UIDs`);
      }
    }
    assigner = new UidAssigner(result, opts, 0, result.lastUid + 1);
    if (!result.pseudo) assigner.add(raw);
  });
  assigner!.finish();
  if (result.uidValidity === 0) result.needsPersist = true;
  return result;
}

/** Gives every message its UID, flags and keywords (see the file comment), in file order. */
class UidAssigner {
  private readonly declared: Set<string>;
  private nextUid: number;
  private prev: number;
  /** Keyword lists are shared between messages with the same keywords. */
  private readonly keywordLists = new Map<string, string[]>();

  constructor(
    private readonly result: ParsedMbox,
    private readonly opts: ParseOptions,
    prevUid: number,
    private readonly firstFree: number,
  ) {
    this.declared = new Set(result.keywordList);
    this.nextUid = firstFree;
    this.prev = prevUid;
  }

  add({ msg, fields }: Raw): void {
    const { result, opts } = this;
    const xuid = fieldValue(fields, 'x-uid');
    let uid = 0;
    if (xuid !== undefined && /^\d{1,10}$/.test(xuid)) {
      const n = Number(xuid);
      if (n > this.prev && n <= result.lastUid) uid = n;
      else if (n > this.prev && n === this.nextUid) {
        // The next UID expected (an append in progress raises X-IMAPbase afterwards; Dovecot 2.3
        // accepts it too): kept, nothing to write back.
        uid = n;
        this.nextUid++;
      }
    }
    if (uid === 0) {
      if (this.nextUid > MAX_UID) throw new StorageError(`${opts.label}: no UIDs left to give to new messages (UIDNEXT would exceed 2^32-1)`, 'CORRUPT');
      uid = this.nextUid++;
      result.needsPersist = true;
    }
    msg.uid = uid;
    this.prev = uid;
    const status = fieldValue(fields, 'status') ?? '';
    const xstatus = fieldValue(fields, 'x-status') ?? '';
    let flags = 0;
    let statusExtra = '';
    for (const ch of status) {
      if (ch === ' ' || ch === '\t') continue;
      if (ch === 'R') flags |= Flag.Seen;
      else if (!statusExtra.includes(ch)) statusExtra += ch;
    }
    let xStatusExtra = '';
    for (const ch of xstatus) {
      if (ch === ' ' || ch === '\t') continue;
      if (ch === 'A') flags |= Flag.Answered;
      else if (ch === 'F') flags |= Flag.Flagged;
      else if (ch === 'T') flags |= Flag.Draft;
      else if (ch === 'D') flags |= Flag.Deleted;
      else if (!xStatusExtra.includes(ch)) xStatusExtra += ch;
    }
    msg.flags = flags;
    msg.statusExtra = statusExtra;
    msg.xStatusExtra = xStatusExtra;
    const kw = fieldValue(fields, 'x-keywords');
    if (kw !== undefined && kw !== '') {
      const names = kw.split(/[ \t]+/).filter((k) => k !== '');
      const unknown = names.filter((k) => !this.declared.has(k));
      if (unknown.length === 0) {
        const list = [...new Set(names)].sort();
        const key = list.join(' ');
        let shared = this.keywordLists.get(key);
        if (!shared) {
          shared = list.length === 0 ? NO_KEYWORDS : list;
          this.keywordLists.set(key, shared);
        }
        msg.keywords = shared;
      } else {
        opts.warn(
          `${opts.label}: message UID ${uid}: X-Keywords names keywords missing from X-IMAPbase (${unknown.slice(0, 5).join(' ')}); ` +
            'the header is ignored, as Dovecot does',
        );
      }
    }
    result.messages.push(msg);
  }

  finish(): void {
    this.result.nextUid = Math.max(this.nextUid, this.firstFree);
  }
}

/**
 * Finds the end of a header in a window of the file: the blank line (blankAt, bodyStart) or a From_
 * line (boundary), both -1 when the file ends first. null when the window ends before either.
 */
function scanHeader(buf: Buffer, start: number, from: number, size: number, atEof: boolean): { blankAt: number; bodyStart: number; boundary: number } | null {
  let q = from;
  while (q < size) {
    const rel = q - start;
    const nlRel = buf.indexOf(LF, rel);
    if (nlRel < 0 && !atEof) return null;
    const lineEnd = nlRel < 0 ? size : start + nlRel;
    const len = lineEnd - q;
    if (nlRel >= 0 && (len === 0 || (len === 1 && buf[rel] === CR))) return { blankAt: q, bodyStart: lineEnd + 1, boundary: -1 };
    if (len >= 5 && len <= MAX_FROM_LINE && buf[rel] === 0x46 && buf[rel + 4] === 0x20 && parseFromLine(buf.toString('latin1', rel, rel + len)) !== null) {
      return { blankAt: -1, bodyStart: -1, boundary: q };
    }
    q = nlRel < 0 ? size : lineEnd + 1;
  }
  return { blankAt: -1, bodyStart: -1, boundary: -1 };
}

/** Bytes of a message looked at at a time to count its quoted From_ lines. */
const QUOTE_SCAN_CHUNK = 256 * 1024;

/** From_ lines longer than this are not separators (WindowReader.lineAt's default limit). */
const MAX_FROM_LINE = 4096;

/**
 * The structure of every message from the From_ line at offset start to the end of the file,
 * handed to onMessage one at a time, in file order.
 */
async function parseMessages(r: WindowReader, start: number, opts: ParseOptions, onMessage: (raw: Raw) => void): Promise<void> {
  const size = r.size;
  const quoting = opts.quoting ?? 'none';
  const validFromAt = async (pos: number): Promise<boolean> => {
    if (pos >= size) return false;
    if ((await r.byte(pos)) !== 0x46) return false;
    const line = await r.lineAt(pos);
    return line !== null && parseFromLine(line.text) !== null;
  };
  /** Start of the separator before the From_ line at b, not below floor. */
  const sepStart = async (b: number, floor: number): Promise<number> => {
    let e = b - 1;
    if (e >= 1 && (await r.byte(e - 1)) === CR) e--;
    return Math.max(e, floor);
  };
  const eofEnd = async (floor: number): Promise<number> => {
    let e = size;
    if ((await r.byte(e - 1)) === LF) {
      e--;
      if (e >= 1 && (await r.byte(e - 1)) === CR) e--;
    }
    return Math.max(e, floor);
  };

  let count = 0;
  let p = start;
  while (p < size) {
    const line = await r.lineAt(p);
    const from = line ? parseFromLine(line.text) : null;
    if (!line || !from) throw new Error(`mbox parser lost its place at offset ${p} of ${opts.label}`);
    const eol: '\n' | '\r\n' = line.text.endsWith('\r') ? '\r\n' : '\n';
    const hdrStart = line.end;
    // Header lines up to the blank line, a From_ line or the end of the file.
    let blankAt = -1;
    let bodyStart = -1;
    let boundary = -1;
    for (let want = 64 * 1024; ; want *= 4) {
      const w = await r.window(hdrStart, want);
      const h = scanHeader(w.buf, w.start, hdrStart, size, w.atEof);
      if (h) {
        ({ blankAt, bodyStart, boundary } = h);
        break;
      }
    }
    let hdrEnd: number;
    let msgEnd: number;
    let next: number;
    let hasBlank = false;
    let headerBuf: Buffer;
    let split: ReturnType<typeof splitFields> | undefined;
    if (blankAt < 0) {
      // No blank line: everything up to the boundary is header.
      if (boundary >= 0) {
        msgEnd = await sepStart(boundary, hdrStart);
        next = boundary;
      } else {
        msgEnd = await eofEnd(hdrStart);
        next = size;
      }
      hdrEnd = msgEnd;
      bodyStart = msgEnd;
      headerBuf = await r.slice(hdrStart, hdrEnd);
    } else {
      // A copy: the window moves while the body's end is looked for.
      headerBuf = Buffer.from(await r.slice(hdrStart, blankAt));
      split = splitFields(headerBuf, hdrStart);
      const cl = fieldValue(split.fields, 'content-length');
      let contentLength: number | undefined;
      let resolved: { msgEnd: number; next: number } | null = null;
      if (cl !== undefined && /^\d{1,15}$/.test(cl)) {
        contentLength = Number(cl);
        const e = bodyStart + contentLength;
        if (e === size) resolved = { msgEnd: e, next: size };
        else if (e < size) {
          const b = await r.byte(e);
          if (b === LF) {
            if (e + 1 === size) resolved = { msgEnd: e, next: size };
            else if (await validFromAt(e + 1)) resolved = { msgEnd: e, next: e + 1 };
          } else if (b === CR && (await r.byte(e + 1)) === LF) {
            if (e + 2 === size) resolved = { msgEnd: e, next: size };
            else if (await validFromAt(e + 2)) resolved = { msgEnd: e, next: e + 2 };
          }
        }
      }
      if (!resolved) {
        let from = bodyStart - 1;
        let found = -1;
        for (;;) {
          const idx = await r.indexOf(FROM_, from);
          if (idx < 0) break;
          if (await validFromAt(idx + 1)) {
            found = idx + 1;
            break;
          }
          from = idx + 1;
        }
        if (found >= 0) resolved = { msgEnd: await sepStart(found, hdrStart), next: found };
        else resolved = { msgEnd: await eofEnd(hdrStart), next: size };
        if (contentLength !== undefined && bodyStart + contentLength > size && resolved.next === size) {
          opts.warn(`${opts.label}: the last message (at offset ${p}) is shorter than its Content-Length says: the file looks truncated`);
        }
      }
      msgEnd = resolved.msgEnd;
      next = resolved.next;
      if (msgEnd < bodyStart) {
        // The blank line was the separator: a message without body.
        hasBlank = false;
        hdrEnd = Math.max(hdrStart, Math.min(blankAt, msgEnd));
        bodyStart = msgEnd;
        if (hdrEnd !== blankAt) {
          headerBuf = await r.slice(hdrStart, hdrEnd);
          split = undefined;
        }
      } else {
        hasBlank = true;
        hdrEnd = blankAt;
      }
    }
    const { fields, leadingContinuation } = split ?? splitFields(headerBuf, hdrStart);
    const merged: ByteRange[] = [];
    for (const f of fields) {
      const last = merged[merged.length - 1];
      if (last && last.end === f.start) last.end = f.end;
      else merged.push({ start: f.start, end: f.end });
    }
    // Exactly sized (an array grown by push keeps room for 17 elements): kept for every message.
    const hidden = merged.length === 0 ? NO_HIDDEN : merged.length === 1 ? [merged[0]!] : merged.slice();
    const msg: MboxMessage = {
      start: p,
      eol,
      hdrStart,
      hdrEnd,
      bodyStart,
      hasBlankLine: hasBlank,
      msgEnd,
      next,
      hidden,
      leadingContinuation,
      internalDate: from.date,
      uid: 0,
      flags: 0,
      keywords: NO_KEYWORDS,
      statusExtra: '',
      xStatusExtra: '',
      size: 0,
      hdrHash: '',
    };
    const baseField = count === 0 && !opts.resume ? (fields.find((f) => f.name === 'x-imap') ?? fields.find((f) => f.name === 'x-imapbase')) : undefined;
    if (baseField) msg.lastUidField = lastUidRange(headerBuf, baseField.start - hdrStart, hdrStart);
    // Served header (for the hash) and size.
    const served = servedRanges(hdrStart, hdrEnd, hidden);
    const hdrServed = Buffer.concat(served.map((s) => headerBuf.subarray(s.start - hdrStart, s.end - hdrStart)));
    msg.hdrHash = headerHash(hdrServed);
    msg.size = hdrServed.length + (hasBlank ? msgEnd - hdrEnd : 0);
    if (quoting !== 'none') {
      // The size as served: minus one byte per quoted From_ line (read in pieces: bodies can be big).
      const filter = new LineFilter((b) => unquoteFromLines(b, quoting));
      let n = 0;
      for (const s of servedRanges(hdrStart, msgEnd, hidden)) {
        for (let a = s.start; a < s.end; a += QUOTE_SCAN_CHUNK) {
          for (const o of filter.push(await r.slice(a, Math.min(s.end, a + QUOTE_SCAN_CHUNK)))) n += o.length;
        }
      }
      for (const o of filter.end()) n += o.length;
      msg.size = n;
    }
    count++;
    onMessage({ msg, fields });
    p = next;
  }
}

function fieldValue(fields: Field[], name: string): string | undefined {
  return fields.find((f) => f.name === name)?.value;
}

/**
 * UIDVALIDITY and last UID from the beginning of an mbox file (enough bytes for the first
 * message's header), the way parseMbox would read them; null when the prefix does not start with
 * a From_ line or has no valid X-IMAPbase / X-IMAP.
 */
export function peekBase(head: Buffer): { uidValidity: number; lastUid: number } | null {
  const nl = head.indexOf(LF);
  if (nl < 0) return null;
  if (!parseFromLine(head.toString('latin1', 0, nl))) return null;
  let pos = nl + 1;
  let end = head.length;
  while (pos < head.length) {
    let e = head.indexOf(LF, pos);
    if (e < 0) e = head.length;
    const len = e - pos;
    if (len === 0 || (len === 1 && head[pos] === CR)) {
      end = pos;
      break;
    }
    if (head.toString('latin1', pos, pos + 5) === 'From ' && parseFromLine(head.toString('latin1', pos, e))) {
      end = pos;
      break;
    }
    pos = e + 1;
  }
  const { fields } = splitFields(head.subarray(nl + 1, end), 0);
  const value = fieldValue(fields, 'x-imap') ?? fieldValue(fields, 'x-imapbase');
  if (value === undefined) return null;
  const b = parseBase(value);
  return b ? { uidValidity: b.uidValidity, lastUid: b.lastUid } : null;
}
