// dsync's "hashed headers" message identity, for stores that cannot save message GUIDs (mbox):
// an MD5 (32 lowercase hex) over selected header fields of the message, by default Date and
// Message-ID, so the same mail matches across stores however each store names it.
//
// The rules below were checked against hdr_hash values sent by Dovecot 2.3.19 (protocol 3.5,
// hash version 3) for a corpus of awkward messages (test/storage/header-hash.test.ts):
//  * The header block is the lines up to the first empty line ("\n" or "\r\n") or the end of the
//    message. A field is a line plus its continuation lines (lines starting with SP or TAB).
//  * A field's name is its leading run of bytes up to the first ':', SP or TAB, compared
//    case-insensitively: "Date : x", "Date" (no colon at all) and "Message-ID <x>" all count as
//    Date / Message-ID; "Resent-Date", "X-Date" and "Date-Foo" do not.
//  * Selected fields are kept whole and in message order, every line ended by a bare LF (a CR
//    right before an LF is dropped), followed by one "\n" for the empty line that ends the header,
//    even when the message has none. A message with neither field hashes to md5("\n").
//  * Version >= 2: every control byte (< 0x20) except LF and TAB, every byte >= 0x7f and '?' is
//    replaced by '?', a run of such bytes giving a single '?'. Version >= 3 also drops spaces (a
//    dropped space ends a run: "? ?" gives "??"); version 4 also drops TABs.
import { createHash } from '../util/builtin.js';

export type HeaderHashVersion = 1 | 2 | 3 | 4;

export interface HeaderHashOptions {
  /** Hash version; default 3 (what Dovecot 2.2.31+ peers with protocol minor >= 4 use). */
  version?: HeaderHashVersion;
  /** Header names to hash (case-insensitive); default Date and Message-ID (dsync_hashed_headers). */
  headers?: readonly string[];
}

/** md5("\n"): the hash of a message that has none of the hashed headers. */
export const EMPTY_HEADER_HASH = '68b329da9893e34099c7d8ad5cb9c940';

const DEFAULT_HEADERS = ['date', 'message-id'];

const LF = 0x0a;
const CR = 0x0d;
const SP = 0x20;
const TAB = 0x09;
const COLON = 0x3a;
const QUESTION = 0x3f;

/** The selected fields of the header block, LF line endings, plus the terminating "\n". */
/** True when bytes[a, b) equals the lowercase ASCII name, ignoring case. */
function nameIs(bytes: Uint8Array, a: number, b: number, lower: string): boolean {
  if (b - a !== lower.length) return false;
  for (let i = 0; i < lower.length; i++) {
    let c = bytes[a + i]!;
    if (c >= 0x41 && c <= 0x5a) c |= 0x20;
    if (c !== lower.charCodeAt(i)) return false;
  }
  return true;
}

export function hashedHeaderBytes(bytes: Uint8Array, headers: readonly string[] = DEFAULT_HEADERS): Buffer {
  const wanted = headers.map((h) => h.toLowerCase());
  const parts: Buffer[] = [];
  let selected = false;
  let pos = 0;
  const len = bytes.length;
  while (pos < len) {
    let nl = pos;
    while (nl < len && bytes[nl] !== LF) nl++;
    // Line content without its terminator (and without a CR right before the LF).
    let end = nl;
    if (nl < len && end > pos && bytes[end - 1] === CR) end--;
    if (end === pos) break; // the empty line: end of the header
    const first = bytes[pos]!;
    if (first === SP || first === TAB) {
      // Continuation of the current field.
    } else {
      let n = pos;
      while (n < end && bytes[n] !== COLON && bytes[n] !== SP && bytes[n] !== TAB) n++;
      selected = wanted.some((w) => nameIs(bytes, pos, n, w));
    }
    if (selected) {
      parts.push(Buffer.from(bytes.subarray(pos, end)));
      parts.push(Buffer.from([LF]));
    }
    pos = nl + 1;
  }
  parts.push(Buffer.from([LF]));
  return Buffer.concat(parts);
}

/** Applies the version >= 2 byte rules to data (see the file comment). */
export function normalizeHashedBytes(data: Uint8Array, version: HeaderHashVersion): Buffer {
  if (version === 1) return Buffer.from(data);
  const out = Buffer.allocUnsafe(data.length);
  let o = 0;
  let prevQuestion = false;
  for (let i = 0; i < data.length; i++) {
    const b = data[i]!;
    if ((b < 0x20 && b !== LF && b !== TAB) || b >= 0x7f || b === QUESTION) {
      if (!prevQuestion) out[o++] = QUESTION;
      prevQuestion = true;
    } else if (b === SP && version >= 3) {
      prevQuestion = false;
    } else if (b === TAB && version >= 4) {
      prevQuestion = false;
    } else {
      out[o++] = b;
      prevQuestion = false;
    }
  }
  return out.subarray(0, o);
}

/**
 * dsync's header hash of a message (only its header block is looked at, so passing just the
 * header is enough). Default: version 3 over Date and Message-ID.
 */
export function headerHash(bytes: Uint8Array, opts: HeaderHashOptions = {}): string {
  const version = opts.version ?? 3;
  const data = normalizeHashedBytes(hashedHeaderBytes(bytes, opts.headers ?? DEFAULT_HEADERS), version);
  return createHash('md5').update(data).digest('hex');
}
