// Deterministic test mail: a seeded generator of small RFC 5322 messages and a
// "delivery agent" that drops them into a Maildir the way procmail/LDA would
// (tmp/ then rename into new/ or cur/, never touching dovecot-uidlist).
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { encodeMUtf7 } from './mutf7.js';

/** mulberry32: a tiny, fast, well-distributed 32-bit PRNG. Never Math.random. */
export function makeRng(seed: number | string): () => number {
  let a = typeof seed === 'number' ? seed >>> 0 : hashSeed(seed);
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function hashSeed(s: string): number {
  return createHash('sha256').update(s).digest().readUInt32BE(0);
}

const FIRST = ['Alice', 'Bob', 'Carol', 'Dave', 'Erin', 'Frank', 'Grace', 'Heidi', 'Ivan', 'Judy'];
const LAST = ['Smith', 'Jones', 'Miller', 'Brown', 'Novak', 'Weber', 'Rossi', 'Kim'];
const WORDS = (
  'lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore ' +
  'et dolore magna aliqua mailbox folder message sync index flag seen draft answered deleted archive ' +
  'meeting report budget quarterly review invoice agenda attached please find regards thanks'
).split(' ');
const WORDS_8BIT = ['Grüße', 'naïve', 'Straße', 'Ελληνικά', '日本語', 'déjà', 'Ærø', 'señor', 'Köln'];
const DAYS = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'];
const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

export interface MessageOptions {
  /** CRLF line endings (default: LF, as Maildir files usually are). */
  crlf?: boolean;
  /** Exact size in bytes of the result, when it is at least the size of the headers plus a short body. */
  size?: number;
  /** Subject header value (ASCII); default: a few generated words. */
  subject?: string;
  /** Put body lines starting with "From " (and ">From ") in, the mbox From-quoting hazard. */
  fromLine?: boolean;
  /** Use raw UTF-8 in the body (Content-Transfer-Encoding: 8bit). */
  eightBit?: boolean;
}

function pick<T>(rng: () => number, arr: readonly T[]): T {
  return arr[Math.floor(rng() * arr.length)];
}

function pad2(n: number): string {
  return n < 10 ? `0${n}` : String(n);
}

/** RFC 5322 date-time (UTC, "+0000") of a unix time in seconds. */
export function rfc5322Date(unixSeconds: number): string {
  const d = new Date(unixSeconds * 1000);
  return (
    `${DAYS[d.getUTCDay()]}, ${d.getUTCDate()} ${MONTHS[d.getUTCMonth()]} ${d.getUTCFullYear()} ` +
    `${pad2(d.getUTCHours())}:${pad2(d.getUTCMinutes())}:${pad2(d.getUTCSeconds())} +0000`
  );
}

/**
 * A deterministic message for `seed`: the same seed and options always give the same bytes.
 * Headers: Date, Message-ID, From, To, Subject, MIME-Version, Content-Type,
 * Content-Transfer-Encoding.
 */
export function makeMessage(seed: number | string, opts: MessageOptions = {}): Buffer {
  const rng = makeRng(seed);
  const eol = opts.crlf ? '\r\n' : '\n';
  const person = (): { name: string; addr: string } => {
    const first = pick(rng, FIRST);
    const last = pick(rng, LAST);
    return { name: `${first} ${last}`, addr: `${first.toLowerCase()}.${last.toLowerCase()}@example.org` };
  };
  const words = (n: number, eight = false): string[] => {
    const out: string[] = [];
    for (let i = 0; i < n; i++) out.push(eight && rng() < 0.25 ? pick(rng, WORDS_8BIT) : pick(rng, WORDS));
    return out;
  };
  // 2001-09-09 .. ~2033: plausible, and comfortably inside 32-bit time.
  const date = 1_000_000_000 + Math.floor(rng() * 1_000_000_000);
  const id = createHash('sha256').update(`corpus:${String(seed)}`).digest('hex').slice(0, 16);
  const from = person();
  const to = person();
  const subject = opts.subject ?? words(2 + Math.floor(rng() * 4)).join(' ');
  const headers = [
    `Date: ${rfc5322Date(date)}`,
    `Message-ID: <${id}@corpus.dsync.test>`,
    `From: ${from.name} <${from.addr}>`,
    `To: ${to.name} <${to.addr}>`,
    `Subject: ${subject}`,
    'MIME-Version: 1.0',
    `Content-Type: text/plain; charset=${opts.eightBit ? 'utf-8' : 'us-ascii'}`,
    `Content-Transfer-Encoding: ${opts.eightBit ? '8bit' : '7bit'}`,
  ];
  const head = headers.join(eol) + eol + eol;
  const lines: string[] = [];
  const nLines = 1 + Math.floor(rng() * 5);
  for (let i = 0; i < nLines; i++) {
    lines.push(words(4 + Math.floor(rng() * 8), !!opts.eightBit).join(' '));
    if (opts.fromLine && i === 0) {
      lines.push(`From ${from.addr} ${words(3).join(' ')}`);
      lines.push(`>From the quoted ${words(2).join(' ')}`);
    }
  }
  let body = lines.join(eol) + eol;
  if (opts.size !== undefined) {
    const headLen = Buffer.byteLength(head);
    const target = opts.size - headLen;
    if (target >= eol.length + 1) {
      // Grow with whole lines, then cut back to ASCII filler to hit the size exactly. The length
      // is kept as it grows: measuring the whole body each time made large mails quadratic.
      let bodyBytes = Buffer.byteLength(body);
      while (bodyBytes < target) {
        const line = words(6 + Math.floor(rng() * 6), !!opts.eightBit).join(' ') + eol;
        body += line;
        bodyBytes += Buffer.byteLength(line);
      }
      // Drop lines until we are below the target, then pad the last line with ASCII.
      let cut = body;
      while (Buffer.byteLength(cut) > target) {
        const idx = cut.lastIndexOf(eol, cut.length - eol.length - 1);
        cut = idx < 0 ? '' : cut.slice(0, idx + eol.length);
      }
      const missing = target - Buffer.byteLength(cut);
      if (missing > 0) {
        const fill = missing - eol.length;
        let filler = '';
        while (filler.length < fill) filler += pick(rng, WORDS) + ' ';
        cut += filler.slice(0, fill).replace(/ $/, 'x') + eol;
      }
      body = cut;
    }
  }
  return Buffer.from(head + body, 'utf8');
}

export interface MaildirMessage {
  body: Buffer | string;
  /** Maildir info flags, e.g. 'FS' (D=draft F=flagged P=passed R=replied S=seen T=trashed, a-z keywords). */
  flags?: string;
  /** Unix seconds; becomes the file's mtime, which is what Dovecot reports as INTERNALDATE. */
  internalDate: number;
  /** Unique part of the file name; default derived from internalDate and the body hash. */
  basename?: string;
  /** Deliver to new/ (no info suffix, becomes \Recent) instead of cur/. */
  inNew?: boolean;
}

/** Creates cur/, new/ and tmp/ of a Maildir mailbox directory if they are missing. */
export function ensureMaildir(mailboxDir: string): void {
  for (const sub of ['cur', 'new', 'tmp']) fs.mkdirSync(path.join(mailboxDir, sub), { recursive: true });
}

/**
 * Delivers one message into `mailboxDir` (a Maildir: cur/new/tmp are created if missing)
 * like a delivery agent: write to tmp/, set mtime, rename into new/ or cur/ with a
 * ":2,FLAGS" suffix (flags sorted). Never touches dovecot-uidlist. Returns the final path.
 */
export function writeMaildirMessage(mailboxDir: string, msg: MaildirMessage): string {
  ensureMaildir(mailboxDir);
  const body = typeof msg.body === 'string' ? Buffer.from(msg.body, 'utf8') : msg.body;
  const base =
    msg.basename ??
    `${msg.internalDate}.C${createHash('sha256').update(body).digest('hex').slice(0, 12)}.corpus`;
  const flags = [...new Set(msg.flags ?? '')].sort().join('');
  const name = msg.inNew ? base : `${base}:2,${flags}`;
  const tmp = path.join(mailboxDir, 'tmp', base);
  fs.writeFileSync(tmp, body);
  fs.utimesSync(tmp, msg.internalDate, msg.internalDate);
  const dest = path.join(mailboxDir, msg.inNew ? 'new' : 'cur', name);
  fs.renameSync(tmp, dest);
  return dest;
}

/**
 * The directory of a folder in a Maildir tree. `name` are the mailbox name components
 * in UTF-8 (['Archive', '2024']); ['INBOX'] or [] is the root itself.
 * 'maildir++' (Dovecot's default): root/.Archive.2024, names in modified UTF-7.
 * 'fs' (":LAYOUT=fs"): root/Archive/2024.
 */
export function maildirFolderPath(root: string, name: readonly string[], layout: 'maildir++' | 'fs' = 'maildir++'): string {
  if (name.length === 0 || (name.length === 1 && name[0].toUpperCase() === 'INBOX')) return root;
  const enc = name.map(encodeMUtf7);
  return layout === 'fs' ? path.join(root, ...enc) : path.join(root, `.${enc.join('.')}`);
}
