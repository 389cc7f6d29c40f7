import * as fs from 'node:fs';
// dovecot-uidlist: the maildir UID map.
//
// Version 3 (Dovecot 1.0+):   "3 V<uidvalidity> N<nextuid> G<mailbox guid>[ <key><value>...]"
//                             "<uid>[ <key><value>...] :<base name>"     (one line per message)
// Version 1 (Courier style):  "1 <uidvalidity> <nextuid>" and "<uid> <file name>"
// Older 3-writers put the full file name incl. ":2,<flags>" after the colon; the base name is the
// part before the first ':'. On read, next uid = max(header N, highest uid + 1), because writers
// may append entries without touching the header (Dovecot does).
import { isNotFound, toStorageError, type Warn } from './io.js';

export const UIDLIST_NAME = 'dovecot-uidlist';
const MAX_UID = 0xffffffff;

export interface UidlistHeader {
  /** Version as read (1 or 3); writes are always version 3. */
  version: number;
  /** 0 when missing. */
  uidValidity: number;
  /** Header N as read (at least 1). */
  nextUid: number;
  /** Mailbox GUID, 32 lowercase hex, when present and valid. */
  guid?: string;
  /** Unknown header fields, kept verbatim (e.g. "Pxyz"). */
  extra: string[];
}

export interface UidlistEntry {
  uid: number;
  /** Base file name (before the first ':'). */
  base: string;
  /** Extension fields in file order, e.g. [['G', '<guid>'], ['W', '1234']]. */
  ext: [string, string][];
}

export interface Uidlist {
  header: UidlistHeader;
  /** Ascending by uid. */
  entries: UidlistEntry[];
  /** max(header N, highest uid + 1). */
  nextUid: number;
  /** The file had problems (garbled lines, old version, bad header) that a full rewrite fixes. */
  needsRewrite: boolean;
  /** False when the last line lacks its newline (an interrupted append). */
  endsWithNewline: boolean;
}

export function emptyUidlist(): Uidlist {
  return {
    header: { version: 3, uidValidity: 0, nextUid: 1, extra: [] },
    entries: [],
    nextUid: 1,
    needsRewrite: true,
    endsWithNewline: true,
  };
}

const GUID_RE = /^[0-9a-f]{32}$/;
export function isMailboxGuid(s: string): boolean {
  return GUID_RE.test(s);
}

function parseUint(s: string): number | null {
  if (!/^\d{1,10}$/.test(s)) return null;
  const n = Number(s);
  return n <= MAX_UID ? n : null;
}

function parseHeader(line: string, warn: Warn, where: string): { header: UidlistHeader; ok: boolean } {
  const header: UidlistHeader = { version: 3, uidValidity: 0, nextUid: 1, extra: [] };
  const tok = line.split(' ').filter((t) => t !== '');
  if (tok[0] === '1') {
    const uv = parseUint(tok[1] ?? '');
    const next = parseUint(tok[2] ?? '');
    if (uv === null || next === null || tok.length !== 3) {
      warn(`${where}: corrupt version 1 header "${line}"; assigning a new UIDVALIDITY`);
      header.version = 1;
      return { header, ok: false };
    }
    header.version = 1;
    header.uidValidity = uv;
    header.nextUid = Math.max(1, next);
    return { header, ok: true };
  }
  if (tok[0] !== '3') {
    warn(`${where}: unsupported or corrupt header "${line.slice(0, 80)}"; assigning a new UIDVALIDITY`);
    return { header, ok: false };
  }
  let ok = true;
  for (const t of tok.slice(1)) {
    const key = t[0]!;
    const value = t.slice(1);
    if (key === 'V') {
      const v = parseUint(value);
      if (v === null) {
        warn(`${where}: bad UIDVALIDITY field "${t}"`);
        ok = false;
      } else header.uidValidity = v;
    } else if (key === 'N') {
      const v = parseUint(value);
      if (v === null) {
        warn(`${where}: bad next-UID field "${t}"`);
        ok = false;
      } else header.nextUid = Math.max(1, v);
    } else if (key === 'G') {
      const g = value.toLowerCase();
      if (isMailboxGuid(g)) header.guid = g;
      else {
        warn(`${where}: bad mailbox GUID field "${t}"; a new GUID will be assigned`);
        ok = false;
      }
    } else {
      header.extra.push(t);
    }
  }
  return { header, ok };
}

/** Shared by the many entries without extension fields; never mutated (frozen). */
const NO_EXT: [string, string][] = Object.freeze([]) as unknown as [string, string][];

/** Parses one entry line; returns null when it is garbled. */
export function parseEntry(line: string, version: number): UidlistEntry | null {
  return parseEntryAt(line, 0, line.length, version);
}

/**
 * Parses the entry line text[start, end); null when it is garbled. Works on the text in place
 * (no line strings, no regular expressions): a large mailbox's uidlist has one line per mail and
 * is read by every scan of it.
 */
function parseEntryAt(text: string, start: number, end: number, version: number): UidlistEntry | null {
  let i = start;
  let uid = 0;
  while (i < end) {
    const c = text.charCodeAt(i);
    if (c < 48 || c > 57) break;
    uid = uid * 10 + (c - 48);
    i++;
  }
  const digits = i - start;
  if (digits === 0 || digits > 10 || uid === 0 || uid > MAX_UID || i >= end || text.charCodeAt(i) !== 32) return null;
  i++;
  let ext: [string, string][] = NO_EXT;
  if (version !== 1) {
    // Extension fields ("<key><value> "), then ":<file name>".
    while (text.charCodeAt(i) !== 58) {
      const sp = text.indexOf(' ', i);
      if (sp < 0 || sp >= end) return null; // no ":<file name>" part
      const key = text.charCodeAt(i);
      if (!(key >= 65 && key <= 90)) return null;
      if (ext === NO_EXT) ext = [];
      ext.push([text[i]!, text.slice(i + 1, sp)]);
      i = sp + 1;
    }
    i++;
  }
  // The base name: the file name up to its first ':'.
  let stop = text.indexOf(':', i);
  if (stop < 0 || stop > end) stop = end;
  if (stop === i) return null;
  const base = text.slice(i, stop);
  if (base.includes('/') || base.includes('\0')) return null;
  return { uid, base, ext };
}

/** Parses uidlist text. Garbled lines are skipped with a warning (their files later get new UIDs). */
export function parseUidlist(text: string, warn: Warn, where = UIDLIST_NAME): Uidlist {
  if (text === '') return emptyUidlist();
  const endsWithNewline = text.endsWith('\n');
  const firstEnd = text.indexOf('\n');
  const { header, ok } = parseHeader(firstEnd < 0 ? text : text.slice(0, firstEnd), warn, where);
  const entries: UidlistEntry[] = [];
  const byBase = new Map<string, UidlistEntry>();
  let needsRewrite = !ok || header.version !== 3;
  let prevUid = 0;
  let garbled = 0;
  let lineNo = 1;
  for (let pos = firstEnd < 0 ? text.length : firstEnd + 1; pos < text.length; ) {
    let end = text.indexOf('\n', pos);
    if (end < 0) end = text.length;
    lineNo++;
    const lineStart = pos;
    pos = end + 1;
    if (end === lineStart) continue;
    const e = parseEntryAt(text, lineStart, end, header.version);
    if (!e) {
      garbled++;
      if (garbled <= 5) warn(`${where}:${lineNo}: skipping garbled line "${text.slice(lineStart, Math.min(end, lineStart + 120))}"`);
      needsRewrite = true;
      continue;
    }
    if (e.uid <= prevUid) {
      warn(`${where}:${lineNo}: UID ${e.uid} is not above the previous UID ${prevUid}; skipping the line`);
      needsRewrite = true;
      continue;
    }
    if (byBase.has(e.base)) {
      warn(`${where}:${lineNo}: file ${e.base} is listed twice; keeping the first UID`);
      needsRewrite = true;
      continue;
    }
    byBase.set(e.base, e);
    entries.push(e);
    prevUid = e.uid;
  }
  if (garbled > 5) warn(`${where}: ${garbled} garbled lines skipped in total`);
  const highest = entries.length > 0 ? entries[entries.length - 1]!.uid : 0;
  const ul: Uidlist = {
    header,
    entries,
    nextUid: Math.max(header.nextUid, highest + 1),
    needsRewrite,
    endsWithNewline,
  };
  entryMaps.set(ul, { entries, length: entries.length, map: byBase });
  return ul;
}

const entryMaps = new WeakMap<Uidlist, { entries: UidlistEntry[]; length: number; map: Map<string, UidlistEntry> }>();

/**
 * A uidlist's entries by base name, kept per uidlist object (a parse makes it on the way). Valid
 * while its entries array is the same one with the same length: uidlists read for scanning are
 * never changed, and the ones changed under the lock get new arrays or only grow (an entry must
 * never be replaced in place: the map would keep the old one).
 */
export function entriesByBase(ul: Uidlist): ReadonlyMap<string, UidlistEntry> {
  const c = entryMaps.get(ul);
  if (c && c.entries === ul.entries && c.length === ul.entries.length) return c.map;
  const map = new Map<string, UidlistEntry>();
  const entries = ul.entries;
  for (let i = 0; i < entries.length; i++) map.set(entries[i]!.base, entries[i]!);
  entryMaps.set(ul, { entries, length: entries.length, map });
  return map;
}

export function formatHeader(h: UidlistHeader, nextUid: number): string {
  let s = `3 V${h.uidValidity} N${nextUid}`;
  if (h.guid) s += ` G${h.guid}`;
  for (const x of h.extra) s += ` ${x}`;
  return s;
}

export function formatEntry(e: UidlistEntry): string {
  let s = String(e.uid);
  for (const [k, v] of e.ext) s += ` ${k}${v}`;
  return `${s} :${e.base}`;
}

/** Serializes as version 3 with header N = the effective next uid. */
export function serializeUidlist(ul: Uidlist): string {
  const parts = [formatHeader(ul.header, ul.nextUid)];
  for (const e of ul.entries) parts.push(formatEntry(e));
  return parts.join('\n') + '\n';
}

export function entryExt(e: UidlistEntry, key: string): string | undefined {
  // Indexed: called per message in scans, where for-of would allocate an iterator per call.
  const ext = e.ext;
  for (let i = 0; i < ext.length; i++) if (ext[i]![0] === key) return ext[i]![1];
  return undefined;
}

/** The message GUID: the G extension if present, else the base file name (Dovecot's rule). */
export function entryGuid(e: UidlistEntry): string {
  return entryExt(e, 'G') ?? e.base;
}

export async function readUidlist(p: string, warn: Warn): Promise<Uidlist | null> {
  let text: string;
  try {
    text = fs.readFileSync(p, 'utf8');
  } catch (e) {
    if (isNotFound(e)) return null;
    throw toStorageError(e, 'read', p);
  }
  return parseUidlist(text, warn, p);
}

export interface UidlistSummary {
  guid?: string;
  uidValidity?: number;
  uidNext: number;
}

/**
 * Reads only the header and the last entry of a uidlist (two small reads), enough for a mailbox
 * listing: entries are ascending, so the last one carries the highest UID. Null if missing.
 */
export async function readUidlistSummary(p: string): Promise<UidlistSummary | null> {
  // Synchronous reads: two small reads per mailbox, many mailboxes per run; a thread-pool round
  // trip per call would cost more than the reads themselves.
  let fd: number;
  try {
    fd = fs.openSync(p, 'r');
  } catch (e) {
    if (isNotFound(e)) return null;
    throw toStorageError(e, 'open', p);
  }
  try {
    const CHUNK = 4096;
    const size = fs.fstatSync(fd).size;
    const headBuf = Buffer.alloc(Math.min(CHUNK, size));
    const bytesRead = fs.readSync(fd, headBuf, 0, headBuf.length, 0);
    const head = headBuf.subarray(0, bytesRead).toString('utf8');
    const nl = head.indexOf('\n');
    const first = nl < 0 ? head : head.slice(0, nl);
    const { header } = parseHeader(first, () => undefined, p);
    let tail: string;
    let tailIsWhole: boolean;
    if (size <= CHUNK) {
      tail = nl < 0 ? '' : head.slice(nl + 1);
      tailIsWhole = true;
    } else {
      const buf = Buffer.alloc(CHUNK);
      const r = fs.readSync(fd, buf, 0, CHUNK, size - CHUNK);
      tail = buf.subarray(0, r).toString('utf8');
      tailIsWhole = false;
    }
    const lines = tail.split('\n');
    if (!tailIsWhole) lines.shift(); // probably a partial line
    let highest = 0;
    for (let i = lines.length - 1; i >= 0; i--) {
      const e = parseEntry(lines[i]!, header.version);
      if (e) {
        highest = e.uid;
        break;
      }
    }
    return {
      guid: header.guid,
      uidValidity: header.uidValidity || undefined,
      uidNext: Math.max(header.nextUid, highest + 1),
    };
  } catch (e) {
    throw toStorageError(e, 'read', p);
  } finally {
    fs.closeSync(fd);
  }
}
