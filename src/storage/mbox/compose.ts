// What we write into an mbox: Dovecot's metadata headers and the byte layout of a message.
//
// Dovecot (checked with 2.3.19: doveadm save, IMAP APPEND) writes
//   From <sender>  Fri Mar 01 12:34:56 2024          (local time, day zero-padded)
//   <the message's own header fields, minus any metadata headers it carried>
//   X-IMAPbase: <uidvalidity> <last uid, 10 digits> [keywords]   (first message only)
//   X-UID: <uid>
//   Status: RO                                       (R = \Seen, O = not \Recent)
//   X-Status: AFTD                                   (\Answered \Flagged \Draft \Deleted)
//   X-Keywords: kw1 kw2
//   Content-Length: <body bytes>
//   <blank line><body>
//   <one "\n" separator>
// with body "From " lines left unquoted (Content-Length protects them) and a leading "From "
// line of the message itself dropped. We write the same headers in the same order, and only
// non-empty Status/X-Status/X-Keywords; Dovecot's space padding (which only serves its in-place
// rewrites) only where Dovecot needs it, see below.
//
// Line ends: Dovecot stores every message with LF line ends (it converts CRLF on save), so its
// in-place rewrites assume LF outside the messages. We keep a message's bytes as they are, but:
//  * the From_ line and the separator after the message are always "\n" (after a "\r\n"
//    separator Dovecot computes the previous message's end one byte off when it appends, and
//    then fails to read that message: "Next message unexpectedly lost");
//  * a message whose blank line after the header is "\r\n" gets an X-Keywords header with
//    padding: Dovecot rebuilds a header it moves with a "\n" blank line, and for a header
//    without padding it then fails ("Sync failed for mbox: ... originally needed 0 bytes, now
//    needs 18446744073709551615 bytes") as soon as it must move the message to make room.
import { Flag } from '../../model/flags.js';
import type { ByteRange } from './parse.js';

export interface MetaValues {
  base?: { header: 'X-IMAPbase' | 'X-IMAP'; uidValidity: number; lastUid: number; keywords: string[] };
  uid?: number;
  flags: number;
  keywords: string[];
  /** Status letters besides R (kept from the original, "O" for new messages). */
  statusExtra: string;
  xStatusExtra: string;
  contentLength?: number;
  /** Write X-Keywords even when empty, with KEYWORDS_PADDING spaces of room for Dovecot. */
  padding?: boolean;
}

/** Spaces after X-Keywords where we pad (Dovecot's MBOX_HEADER_PADDING). */
export const KEYWORDS_PADDING = 50;

export function padUid(n: number): string {
  return String(n).padStart(10, '0');
}

export function statusString(flags: number, extra: string): string {
  return (flags & Flag.Seen ? 'R' : '') + extra.replace(/R/g, '');
}

export function xStatusString(flags: number, extra: string): string {
  let s = '';
  if (flags & Flag.Answered) s += 'A';
  if (flags & Flag.Flagged) s += 'F';
  if (flags & Flag.Draft) s += 'T';
  if (flags & Flag.Deleted) s += 'D';
  return s + extra.replace(/[AFTD]/g, '');
}

export function metaHeaders(v: MetaValues, eol: string): string {
  let s = '';
  if (v.base) {
    const kw = v.base.keywords.length > 0 ? ' ' + v.base.keywords.join(' ') : '';
    s += `${v.base.header}: ${v.base.uidValidity} ${padUid(v.base.lastUid)}${kw}${eol}`;
  }
  if (v.uid !== undefined) s += `X-UID: ${v.uid}${eol}`;
  const st = statusString(v.flags, v.statusExtra);
  if (st !== '') s += `Status: ${st}${eol}`;
  const xst = xStatusString(v.flags, v.xStatusExtra);
  if (xst !== '') s += `X-Status: ${xst}${eol}`;
  if (v.padding) s += `X-Keywords:${v.keywords.map((k) => ' ' + k).join('')}${' '.repeat(KEYWORDS_PADDING)}${eol}`;
  else if (v.keywords.length > 0) s += `X-Keywords: ${v.keywords.join(' ')}${eol}`;
  if (v.contentLength !== undefined) s += `Content-Length: ${v.contentLength}${eol}`;
  return s;
}

/**
 * One message as pieces: either literal bytes or ranges of a source (the old mbox file, or a
 * new message's own buffer). `metaAt` is where the metadata headers go.
 */
export type Piece = { bytes: Buffer } | { range: ByteRange };

export interface MessageShape {
  /** Header ranges to keep (metadata fields already removed). */
  header: ByteRange[];
  /** The header's own bytes end with a line terminator (or it is empty). */
  headerEndsWithLf: boolean;
  leadingContinuation: boolean;
  /** Blank line + body, or null when the message has no blank line. */
  rest: ByteRange | null;
  /** Body length (after the blank line) for Content-Length. */
  bodyLength: number;
}

/**
 * Lays out a message: From line, header with the metadata headers at its end (or at its start when
 * the header does not end with a newline, so that no byte of the message changes), blank line and
 * body, separator.
 */
export function layoutMessage(fromLine: Buffer, shape: MessageShape, meta: string, eol: string, separator: Buffer): Piece[] {
  const pieces: Piece[] = [{ bytes: fromLine }];
  const headerLen = shape.header.reduce((n, r) => n + r.end - r.start, 0);
  const metaFirst = headerLen > 0 && !shape.headerEndsWithLf && !shape.leadingContinuation;
  if (metaFirst) pieces.push({ bytes: Buffer.from(meta, 'latin1') });
  for (const r of shape.header) pieces.push({ range: r });
  if (!metaFirst) {
    if (headerLen > 0 && !shape.headerEndsWithLf) pieces.push({ bytes: Buffer.from(eol) });
    pieces.push({ bytes: Buffer.from(meta, 'latin1') });
  }
  if (shape.rest) pieces.push({ range: shape.rest });
  pieces.push({ bytes: separator });
  return pieces;
}

/** Text of the pseudo message that keeps UIDVALIDITY / last UID of a mailbox without messages. */
export function pseudoMessage(uidValidity: number, lastUid: number, keywords: string[], now: number, host: string, fromLine: string): string {
  const date = new Date(now * 1000).toUTCString().replace('GMT', '+0000');
  const kw = keywords.length > 0 ? ' ' + keywords.join(' ') : '';
  return (
    `${fromLine}\n` +
    `Date: ${date}\n` +
    `From: Mail System Internal Data <MAILER-DAEMON@${host}>\n` +
    `Subject: DON'T DELETE THIS MESSAGE -- FOLDER INTERNAL DATA\n` +
    `Message-ID: <${uidValidity}@${host}>\n` +
    `X-IMAP: ${uidValidity} ${padUid(lastUid)}${kw}\n` +
    `Status: RO\n` +
    `\n` +
    `This message only keeps internal data of the mail folder (its UIDVALIDITY and\n` +
    `last used UID) for IMAP servers. It is not a real message: please keep it, or\n` +
    `the folder's message numbering is reset.\n` +
    `\n`
  );
}
