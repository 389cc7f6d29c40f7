// Seeded benchmark corpus: a Maildir++ tree as a mail server's delivery agent would leave it.
//
//   node dist/bench/corpus.js --size 1k|10k|50k [--seed N] [--out DIR] [--force]
//
// Decisions (see bench/README.md):
// - Delivered like an MDA (Dovecot LDA / procmail): files in cur/ with ":2,<flags>" (the
//   newest unseen INBOX mails in new/ without info), mtime = INTERNALDATE, a dovecot-keywords
//   file per folder that uses keywords, a v2 "subscriptions" file, a "maildirfolder" marker in
//   every folder -- and NO dovecot-uidlist and no Dovecot index: both tools start from the same
//   bytes and must assign UIDs themselves. A second copy, "primed/", has been opened once by
//   `doveadm index` (uidlists + dovecot.index*), for the "source already indexed" variant.
// - The corpus is generated once per (size, seed, generator version) into os.tmpdir() and
//   every benchmark run works on a `cp -a` copy of it.
// - Everything is owned by MAIL_UID (65534): both tools run as that user.
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { Rng } from './lib/prng.js';
import { encodeMUtf7 } from './lib/mutf7.js';

export const GENERATOR_VERSION = 1;
export const SIZES = { '1k': 1_000, '10k': 10_000, '50k': 50_000 } as const;
export type SizeName = keyof typeof SIZES;
export const DEFAULT_SEED = 20240601;
export const MAIL_UID = 65534;
export const MAIL_GID = 65534;

type FolderKind = 'inbox' | 'sent' | 'drafts' | 'trash' | 'junk' | 'plain';

export interface FolderSpec {
  /** UTF-8 hierarchy components; [] = INBOX. */
  name: string[];
  weight: number;
  kind: FolderKind;
  subscribed: boolean;
}

/** 23 folders: nested, non-ASCII (incl. a non-BMP character), '&', a parent that is not a mailbox. */
export const FOLDERS: FolderSpec[] = [
  { name: [], weight: 28, kind: 'inbox', subscribed: true },
  { name: ['Sent'], weight: 9, kind: 'sent', subscribed: true },
  { name: ['Drafts'], weight: 0.6, kind: 'drafts', subscribed: true },
  { name: ['Trash'], weight: 2, kind: 'trash', subscribed: true },
  { name: ['Junk'], weight: 2, kind: 'junk', subscribed: true },
  { name: ['Archive'], weight: 1, kind: 'plain', subscribed: true },
  { name: ['Archive', '2022'], weight: 8, kind: 'plain', subscribed: true },
  { name: ['Archive', '2023'], weight: 8, kind: 'plain', subscribed: true },
  { name: ['Archive', '2024'], weight: 7, kind: 'plain', subscribed: false },
  { name: ['Work'], weight: 5, kind: 'plain', subscribed: true },
  { name: ['Work', 'Projects'], weight: 2, kind: 'plain', subscribed: true },
  { name: ['Work', 'Projects', 'Alpha'], weight: 3, kind: 'plain', subscribed: true },
  { name: ['Work', 'Projects', 'Beta'], weight: 2, kind: 'plain', subscribed: false },
  { name: ['Work', 'Reports'], weight: 3, kind: 'plain', subscribed: true },
  { name: ['Personal'], weight: 3, kind: 'plain', subscribed: true },
  { name: ['Personal', 'Familie'], weight: 2, kind: 'plain', subscribed: true },
  { name: ['Entwürfe'], weight: 0.8, kind: 'drafts', subscribed: true },
  { name: ['Reisen ✈ 2023'], weight: 2, kind: 'plain', subscribed: true },
  { name: ['Fotos 📷'], weight: 1, kind: 'plain', subscribed: false },
  { name: ['日本語'], weight: 1, kind: 'plain', subscribed: true },
  { name: ['Ελληνικά'], weight: 1, kind: 'plain', subscribed: true },
  { name: ['Lists', 'dovecot'], weight: 4, kind: 'plain', subscribed: true },
  { name: ['Lists', 'node'], weight: 4, kind: 'plain', subscribed: true },
  { name: ['Newsletters & Promo'], weight: 3, kind: 'plain', subscribed: false },
];
/** A subscription without a mailbox (common in real accounts). */
const EXTRA_SUBSCRIPTIONS: string[][] = [['Old Stuff']];

const KEYWORDS = ['$Forwarded', '$MDNSent', '$Junk', '$NotJunk', '$Label1', '$Label2', 'todo', 'later', 'Work'];

/** On-disk directory name of a folder relative to the root ('' = INBOX, the root itself). */
export function folderDir(name: string[]): string {
  return name.length === 0 ? '' : '.' + name.map(encodeMUtf7).join('.');
}

export interface ManifestMessage {
  /** Folder directory ('' = INBOX). */
  folder: string;
  /** "cur/<name>" or "new/<name>" inside the folder directory. */
  rel: string;
  sha: string;
  size: number;
  /** System flag letters, sorted (subset of DFRST). */
  flags: string;
  keywords: string[];
  date: number;
  messageId: string;
}

export interface Manifest {
  version: number;
  seed: number;
  size: SizeName;
  count: number;
  totalBytes: number;
  folders: { dir: string; name: string[] }[];
  subscriptions: string[][];
  messages: ManifestMessage[];
}

export interface Corpus {
  dir: string;
  /** The MDA-delivered tree (no uidlists, no indexes). */
  maildir: string;
  /** Same bytes after one `doveadm index` pass (uidlists, dovecot.index*), or undefined if not made. */
  primed?: string;
  manifest: Manifest;
}

// ------------------------------------------------------------------ message composer

const FIRST = ['Alice', 'Bob', 'Carol', 'Dave', 'Erin', 'Frank', 'Grace', 'Heidi', 'Ivan', 'Judy', 'Mallory', 'Oscar', 'Peggy', 'Trent', 'Victor', 'Walter'];
const FIRST_8BIT = ['Jürgen', 'Zoë', 'Søren', 'Ἀλέξανδρος', '太郎', 'Ångström', 'François', 'Łukasz'];
const LAST = ['Smith', 'Jones', 'Miller', 'Brown', 'Novak', 'Weber', 'Rossi', 'Kim', 'Garcia', 'Müller', 'Dubois', 'Tanaka'];
const DOMAINS = ['example.com', 'example.org', 'mail.example.net', 'lists.example.org', 'corp.example', 'uni.example.edu'];
const WORDS = (
  'the of and to in is that for it as was with be by on not he this are or his from at which but have an they you were her ' +
  'meeting report budget quarterly review invoice agenda attached please find regards thanks project deadline schedule ' +
  'server mailbox folder message sync index flag release build test deploy update patch version customer order shipping ' +
  'lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore et dolore magna aliqua'
).split(' ');
const WORDS_8BIT = ['Grüße', 'naïve', 'Straße', 'Ελληνικά', '日本語', 'déjà', 'Ærø', 'señor', 'Köln', 'Zürich', 'café', 'Привет'];
const SUBJECT_8BIT = ['Grüße aus Köln', 'Réunion de l’équipe', 'Встреча в пятницу', '会議の議事録', 'Ελληνικά μαθήματα', 'Ærlig talt', '¿Qué tal?', 'Fotos vom Wochenende 📷'];
const ATTACH = [
  ['application/pdf', 'pdf'],
  ['image/jpeg', 'jpg'],
  ['application/zip', 'zip'],
  ['image/png', 'png'],
  ['application/vnd.openxmlformats-officedocument.spreadsheetml.sheet', 'xlsx'],
] as const;
const DAYS = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'];
const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

const pad2 = (n: number) => (n < 10 ? `0${n}` : String(n));
function rfcDate(t: number): string {
  const d = new Date(t * 1000);
  return `${DAYS[d.getUTCDay()]}, ${d.getUTCDate()} ${MONTHS[d.getUTCMonth()]} ${d.getUTCFullYear()} ${pad2(d.getUTCHours())}:${pad2(d.getUTCMinutes())}:${pad2(d.getUTCSeconds())} +0000`;
}

/** Pools of body lines, built once per seed: composing bodies is then cheap even at 50k. */
export class TextPool {
  readonly ascii: string[] = [];
  readonly eight: string[] = [];
  constructor(rng: Rng) {
    for (let i = 0; i < 4096; i++) this.ascii.push(this.line(rng, false));
    for (let i = 0; i < 512; i++) this.eight.push(this.line(rng, true));
  }
  private line(rng: Rng, eightBit: boolean): string {
    const target = rng.int(20, 74);
    let s = '';
    while (s.length < target) {
      const w = eightBit && rng.chance(0.3) ? rng.pick(WORDS_8BIT) : rng.pick(WORDS);
      s += (s ? ' ' : '') + w;
    }
    if (rng.chance(0.1)) s += '.';
    return s;
  }
}

function addr(rng: Rng): { display: string; email: string } {
  const eight = rng.chance(0.1);
  const first = eight ? rng.pick(FIRST_8BIT) : rng.pick(FIRST);
  const last = rng.pick(LAST);
  const email = `${rng.pick(FIRST).toLowerCase()}.${rng.pick(LAST).toLowerCase().replace(/[^a-z]/g, 'u')}@${rng.pick(DOMAINS)}`;
  const name = `${first} ${last}`;
  // eslint-disable-next-line no-control-regex
  const display = /[^\x00-\x7f]/.test(name) ? `=?UTF-8?B?${Buffer.from(name).toString('base64')}?=` : `"${name}"`;
  return { display: `${display} <${email}>`, email };
}

function subject(rng: Rng): string {
  const r = rng.next();
  if (r < 0.15) return `=?UTF-8?B?${Buffer.from(rng.pick(SUBJECT_8BIT)).toString('base64')}?=`;
  if (r < 0.2) return `=?UTF-8?Q?${encodeQ(rng.pick(SUBJECT_8BIT))}?=`;
  if (r < 0.22) return rng.pick(SUBJECT_8BIT); // raw 8-bit, as some senders do
  const n = rng.int(2, 9);
  const words: string[] = [];
  for (let i = 0; i < n; i++) words.push(rng.pick(WORDS));
  const s = words.join(' ');
  return (rng.chance(0.2) ? 'Re: ' : rng.chance(0.05) ? 'Fwd: ' : '') + s[0]!.toUpperCase() + s.slice(1);
}

function encodeQ(s: string): string {
  let out = '';
  for (const b of Buffer.from(s)) {
    if ((b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a)) out += String.fromCharCode(b);
    else if (b === 0x20) out += '_';
    else out += '=' + b.toString(16).toUpperCase().padStart(2, '0');
  }
  return out;
}

function textLines(rng: Rng, pool: TextPool, bytes: number, eightBit: boolean, out: string[]): void {
  let n = 0;
  while (n < bytes) {
    const l = rng.chance(0.08) ? '' : eightBit && rng.chance(0.3) ? rng.pick(pool.eight) : rng.pick(pool.ascii);
    out.push(l);
    n += Buffer.byteLength(l) + 1;
  }
}

function base64Lines(data: Buffer, out: string[]): void {
  const b64 = data.toString('base64');
  for (let i = 0; i < b64.length; i += 76) out.push(b64.slice(i, i + 76));
}

export type SizeClass = 'tiny' | 'normal' | 'large';

export interface ComposeOptions {
  index: number;
  seed: number;
  date: number;
  sizeClass: SizeClass;
  crlf: boolean;
  sent: boolean;
  tag?: string;
}

/** One RFC 5322 message; approximately the size its class asks for. */
export function composeMessage(rng: Rng, pool: TextPool, o: ComposeOptions): { buf: Buffer; messageId: string } {
  const target =
    o.sizeClass === 'tiny' ? rng.int(250, 1200) : o.sizeClass === 'large' ? rng.logUniform(100_000, 2_000_000) : rng.logUniform(2_000, 20_000);
  const from = addr(rng);
  const to = o.sent ? addr(rng) : { display: 'Bench User <user@bench.example>', email: 'user@bench.example' };
  const messageId = `<${o.tag ?? 'c'}${o.index}.${o.seed}.${rng.u32().toString(16)}@${from.email.split('@')[1]}>`;
  const h: string[] = [];
  if (o.sizeClass !== 'tiny') {
    h.push(`Return-Path: <${from.email}>`, `Delivered-To: user@bench.example`);
    const hops = rng.int(1, 3);
    for (let i = 0; i < hops; i++) {
      h.push(
        `Received: from relay${rng.int(1, 99)}.${rng.pick(DOMAINS)} (relay${rng.int(1, 99)}.${rng.pick(DOMAINS)} [192.0.2.${rng.int(1, 254)}])`,
        `\tby mx${i + 1}.bench.example with ESMTPS id ${rng.u32().toString(36)}${rng.u32().toString(36)}`,
        `\tfor <user@bench.example>; ${rfcDate(o.date - i * rng.int(1, 30))}`,
      );
    }
  }
  h.push(`Date: ${rfcDate(o.date - rng.int(1, 600))}`, `From: ${from.display}`, `To: ${to.display}`);
  if (rng.chance(0.15)) h.push(`Cc: ${addr(rng).display}, ${addr(rng).display}`);
  h.push(`Subject: ${subject(rng)}`, `Message-ID: ${messageId}`);
  if (rng.chance(0.2)) {
    const ref = `<r${rng.u32().toString(16)}@${rng.pick(DOMAINS)}>`;
    h.push(`In-Reply-To: ${ref}`, `References: ${ref}`);
  }
  if (rng.chance(0.3)) h.push(`X-Mailer: ${rng.pick(['Thunderbird 115.3.1', 'Apple Mail (2.3731)', 'Microsoft Outlook 16.0', 'mutt/2.2.9', 'Roundcube Webmail/1.6.5'])}`);
  if (rng.chance(0.2)) h.push(`List-Id: <${rng.pick(['dovecot', 'node', 'announce'])}.lists.example.org>`, 'Precedence: list');
  h.push('MIME-Version: 1.0');

  const eightBit = rng.chance(0.1);
  const cte = eightBit ? '8bit' : '7bit';
  const headerBytes = h.reduce((n, l) => n + l.length + 1, 0);
  const room = Math.max(80, target - headerBytes - 120);
  const body: string[] = [];
  const boundary = `=_bench_${rng.u32().toString(16)}${rng.u32().toString(16)}`;
  const structure = o.sizeClass === 'large' ? 'mixed' : o.sizeClass === 'tiny' ? 'plain' : rng.pick(['plain', 'plain', 'plain', 'alternative', 'alternative', 'mixed'] as const);
  if (structure === 'plain') {
    h.push(`Content-Type: text/plain; charset=${eightBit ? 'utf-8' : 'us-ascii'}; format=flowed`, `Content-Transfer-Encoding: ${cte}`);
    textLines(rng, pool, room, eightBit, body);
  } else if (structure === 'alternative') {
    h.push(`Content-Type: multipart/alternative; boundary="${boundary}"`);
    body.push('This is a multi-part message in MIME format.', '', `--${boundary}`);
    body.push(`Content-Type: text/plain; charset=utf-8`, `Content-Transfer-Encoding: ${cte}`, '');
    textLines(rng, pool, room * 0.4, eightBit, body);
    body.push(`--${boundary}`, 'Content-Type: text/html; charset=utf-8', `Content-Transfer-Encoding: ${cte}`, '');
    body.push('<html><head><meta charset="utf-8"></head><body>');
    const html: string[] = [];
    textLines(rng, pool, room * 0.5, eightBit, html);
    for (const l of html) body.push(l === '' ? '<br>' : `<p>${l}</p>`);
    body.push('</body></html>', `--${boundary}--`, '');
  } else {
    h.push(`Content-Type: multipart/mixed; boundary="${boundary}"`);
    const textBytes = o.sizeClass === 'large' ? rng.int(300, 4000) : Math.floor(room * 0.4);
    const attachRaw = Math.max(200, Math.floor(((room - textBytes) * 57) / 78));
    const [ctype, ext] = rng.pick(ATTACH);
    body.push('This is a multi-part message in MIME format.', '', `--${boundary}`);
    body.push(`Content-Type: text/plain; charset=utf-8`, `Content-Transfer-Encoding: ${cte}`, '');
    textLines(rng, pool, textBytes, eightBit, body);
    body.push(`--${boundary}`, `Content-Type: ${ctype}; name="file${o.index}.${ext}"`, 'Content-Transfer-Encoding: base64');
    body.push(`Content-Disposition: attachment; filename="file${o.index}.${ext}"`, '');
    base64Lines(rng.bytes(attachRaw), body);
    body.push(`--${boundary}--`, '');
  }
  const eol = o.crlf ? '\r\n' : '\n';
  const text = h.join(eol) + eol + eol + body.join(eol) + eol;
  return { buf: Buffer.from(text, 'utf8'), messageId };
}

/** Dovecot's W= value: the size with every bare LF counted as CRLF. */
function virtualSize(buf: Buffer): number {
  let n = buf.length;
  let prev = -1;
  for (let i = 0; i < buf.length; i++) {
    const b = buf[i]!;
    if (b === 0x0a && prev !== 0x0d) n++;
    prev = b;
  }
  return n;
}

/** A maildir base name as an MDA would pick it (Dovecot LDA with S=/W=, or procmail without). */
function baseName(rng: Rng, t: number, q: number, ldaStyle: boolean, size: number, vsize: number): string {
  if (ldaStyle) return `${t}.M${rng.int(0, 999_999)}P${rng.int(300, 65_000)}Q${q}.mx1.bench.example,S=${size},W=${vsize}`;
  return `${t}.${rng.int(300, 65_000)}_${q}.mx1.bench.example`;
}

function sortLetters(s: string): string {
  return [...s].sort().join('');
}

function pickFlags(rng: Rng, kind: FolderKind): string {
  let f = '';
  switch (kind) {
    case 'inbox':
      if (rng.chance(0.8)) f += 'S';
      if (f && rng.chance(0.15)) f += 'R';
      if (rng.chance(0.06)) f += 'F';
      if (rng.chance(0.005)) f += 'T';
      break;
    case 'sent':
      f = 'S';
      break;
    case 'drafts':
      f = rng.chance(0.5) ? 'DS' : 'D';
      break;
    case 'trash':
      if (rng.chance(0.9)) f += 'S';
      if (rng.chance(0.2)) f += 'T';
      break;
    case 'junk':
      if (rng.chance(0.5)) f += 'S';
      break;
    default:
      if (rng.chance(0.97)) f += 'S';
      if (rng.chance(0.1)) f += 'R';
      if (rng.chance(0.03)) f += 'F';
  }
  return sortLetters(f);
}

function pickKeywords(rng: Rng, kind: FolderKind): string[] {
  const kw = new Set<string>();
  if (kind === 'junk' && rng.chance(0.9)) kw.add('$Junk');
  if (rng.chance(0.08)) {
    kw.add(rng.pick(KEYWORDS));
    if (rng.chance(0.3)) kw.add(rng.pick(KEYWORDS));
  }
  return [...kw].sort();
}

// ------------------------------------------------------------------ the generator

export interface GeneratedMessage {
  buf: Buffer;
  messageId: string;
  date: number;
  /** Base name (no info). */
  base: string;
  sizeClass: SizeClass;
}

/** A stream of messages for one purpose (corpus, or "new mail" in a mutation), fully determined by seed+tag. */
export class MessageFactory {
  private readonly rng: Rng;
  private readonly pool: TextPool;
  private q = 0;
  constructor(
    readonly seed: number,
    readonly tag: string,
  ) {
    const root = new Rng(seed);
    this.pool = new TextPool(root.fork('pool'));
    this.rng = root.fork(`messages:${tag}`);
  }

  make(date: number, opts: { sent?: boolean } = {}): GeneratedMessage {
    const rng = this.rng;
    const r = rng.next();
    const sizeClass: SizeClass = r < 0.02 ? 'tiny' : r < 0.042 ? 'large' : 'normal';
    const crlf = rng.chance(0.12);
    const index = this.q++;
    const { buf, messageId } = composeMessage(rng, this.pool, { index, seed: this.seed, date, sizeClass, crlf, sent: !!opts.sent, tag: this.tag });
    const base = baseName(rng, date, index, rng.chance(0.7), buf.length, virtualSize(buf));
    return { buf, messageId, date, base, sizeClass };
  }
}

const DATE_FROM = 1_609_459_200; // 2021-01-01
const DATE_TO = 1_719_705_600; // 2024-06-30

export function generateCorpus(out: string, size: SizeName, seed: number, log: (s: string) => void = () => undefined): Manifest {
  const count = SIZES[size];
  const rng = new Rng(seed).fork(`corpus:${size}`);
  const factory = new MessageFactory(seed, `corpus-${size}`);
  fs.rmSync(out, { recursive: true, force: true });
  fs.mkdirSync(out, { recursive: true });
  const folders = FOLDERS.map((f) => ({ ...f, dir: folderDir(f.name) }));
  for (const f of folders) {
    const d = path.join(out, f.dir);
    for (const sub of ['cur', 'new', 'tmp']) fs.mkdirSync(path.join(d, sub), { recursive: true });
    if (f.dir !== '') fs.writeFileSync(path.join(d, 'maildirfolder'), '');
  }
  // Dates: each message gets a date; INBOX's newest unseen ones go to new/.
  const plan: { folder: number; date: number }[] = [];
  const weights = folders.map((f) => f.weight);
  for (let i = 0; i < count; i++) plan.push({ folder: rng.weighted(weights), date: rng.int(DATE_FROM, DATE_TO) });
  plan.sort((a, b) => a.date - b.date);
  const newCutoff = DATE_TO - (DATE_TO - DATE_FROM) * 0.02;

  const messages: ManifestMessage[] = [];
  const pending: { base: string; inNew: boolean }[] = [];
  const kwByFolder = new Map<string, Set<string>>();
  let totalBytes = 0;
  const t0 = Date.now();
  for (let i = 0; i < plan.length; i++) {
    const p = plan[i]!;
    const f = folders[p.folder]!;
    const msg = factory.make(p.date, { sent: f.kind === 'sent' });
    let flags = pickFlags(rng, f.kind);
    let keywords = pickKeywords(rng, f.kind);
    const inNew = f.kind === 'inbox' && p.date > newCutoff && !flags.includes('S');
    if (inNew) {
      flags = '';
      keywords = [];
    }
    if (keywords.length) {
      let s = kwByFolder.get(f.dir);
      if (!s) kwByFolder.set(f.dir, (s = new Set()));
      for (const k of keywords) s.add(k);
    }
    messages.push({
      folder: f.dir,
      rel: '', // filled in below, once the keyword letters are known
      sha: createHash('sha1').update(msg.buf).digest('hex'),
      size: msg.buf.length,
      flags,
      keywords,
      date: p.date,
      messageId: msg.messageId,
    });
    pending.push({ base: msg.base, inNew });
    const full = path.join(out, f.dir, 'tmp', msg.base);
    fs.writeFileSync(full, msg.buf);
    totalBytes += msg.buf.length;
    if ((i + 1) % 5000 === 0) log(`  ${i + 1}/${count} messages (${(totalBytes / 1e6).toFixed(0)} MB, ${((Date.now() - t0) / 1000).toFixed(1)} s)`);
  }
  // Keyword files: the keywords a folder uses, in the global order, letters a, b, c, ...
  const letterMaps = new Map<string, Map<string, string>>();
  for (const f of folders) {
    const used = kwByFolder.get(f.dir);
    if (!used) continue;
    const list = KEYWORDS.filter((k) => used.has(k));
    const map = new Map<string, string>();
    list.forEach((k, i) => map.set(k, String.fromCharCode(0x61 + i)));
    letterMaps.set(f.dir, map);
    fs.writeFileSync(path.join(out, f.dir, 'dovecot-keywords'), list.map((k, i) => `${i} ${k}\n`).join(''));
  }
  // "Deliver": tmp/ -> cur/ (with info) or new/, then mtime = INTERNALDATE.
  messages.forEach((m, i) => {
    const { base, inNew } = pending[i]!;
    const letters = m.keywords.map((k) => letterMaps.get(m.folder)!.get(k)!).sort().join('');
    m.rel = inNew ? `new/${base}` : `cur/${base}:2,${m.flags}${letters}`;
    const dst = path.join(out, m.folder, m.rel);
    fs.renameSync(path.join(out, m.folder, 'tmp', base), dst);
    fs.utimesSync(dst, m.date, m.date);
  });
  // Subscriptions, v2 as Dovecot 2.3 writes them: mUTF-7 components separated by TAB.
  const subs = [...folders.filter((f) => f.subscribed && f.name.length > 0).map((f) => f.name), ...EXTRA_SUBSCRIPTIONS];
  fs.writeFileSync(path.join(out, 'subscriptions'), 'V\t2\n\n' + 'INBOX\n' + subs.map((n) => n.map(encodeMUtf7).join('\t') + '\n').join(''));
  // Directory mtimes are part of "the same bytes" too.
  for (const f of folders) for (const sub of ['cur', 'new', 'tmp', '']) fs.utimesSync(path.join(out, f.dir, sub), DATE_TO, DATE_TO);
  chownR(out);
  return {
    version: GENERATOR_VERSION,
    seed,
    size,
    count,
    totalBytes,
    folders: folders.map((f) => ({ dir: f.dir, name: f.name })),
    subscriptions: [['INBOX'], ...subs],
    messages,
  };
}

export function chownR(dir: string): void {
  const r = spawnSync('chown', ['-R', `${MAIL_UID}:${MAIL_GID}`, dir], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`chown -R ${dir} failed: ${r.stderr}`);
}

export function corpusRoot(): string {
  return path.join(os.tmpdir(), 'dsync-bench');
}

export function corpusDir(size: SizeName, seed: number): string {
  return path.join(corpusRoot(), `corpus-${size}-s${seed}-v${GENERATOR_VERSION}`);
}

/** Generates the corpus unless a complete one for the same (size, seed, version) exists. */
export function ensureCorpus(size: SizeName, seed: number, o: { force?: boolean; log?: (s: string) => void } = {}): Corpus {
  const log = o.log ?? (() => undefined);
  const dir = corpusDir(size, seed);
  const maildir = path.join(dir, 'maildir');
  const manifestPath = path.join(dir, 'manifest.json');
  const done = path.join(dir, '.complete');
  if (!o.force && fs.existsSync(done)) {
    const manifest = JSON.parse(fs.readFileSync(manifestPath, 'utf8')) as Manifest;
    const primed = path.join(dir, 'primed');
    return { dir, maildir, manifest, primed: fs.existsSync(path.join(dir, '.primed')) ? primed : undefined };
  }
  log(`generating the ${size} corpus (seed ${seed}) in ${dir}`);
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true, mode: 0o755 });
  fs.chmodSync(dir, 0o755);
  const t0 = Date.now();
  const manifest = generateCorpus(maildir, size, seed, log);
  fs.writeFileSync(manifestPath, JSON.stringify(manifest));
  fs.writeFileSync(done, '');
  log(`  done: ${manifest.count} messages, ${(manifest.totalBytes / 1e6).toFixed(1)} MB in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  return { dir, maildir, manifest };
}

// ------------------------------------------------------------------ CLI

function parseCli(argv: string[]): { size: SizeName; seed: number; out?: string; force: boolean } {
  let size: SizeName = '1k';
  let seed = DEFAULT_SEED;
  let out: string | undefined;
  let force = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--size') {
      const v = argv[++i] ?? '';
      if (!(v in SIZES)) throw new Error(`--size must be one of ${Object.keys(SIZES).join(', ')}`);
      size = v as SizeName;
    } else if (a === '--seed') seed = Number(argv[++i]);
    else if (a === '--out') out = argv[++i];
    else if (a === '--force') force = true;
    else throw new Error(`unknown argument ${a} (usage: corpus.js --size 1k|10k|50k [--seed N] [--out DIR] [--force])`);
  }
  return { size, seed, out, force };
}

if (process.argv[1] && path.resolve(process.argv[1]) === new URL(import.meta.url).pathname) {
  const o = parseCli(process.argv.slice(2));
  if (o.out) {
    const m = generateCorpus(o.out, o.size, o.seed, console.log);
    fs.writeFileSync(path.join(o.out, '..', `${path.basename(o.out)}.manifest.json`), JSON.stringify(m));
    console.log(`${m.count} messages, ${m.totalBytes} bytes in ${o.out}`);
  } else {
    const c = ensureCorpus(o.size, o.seed, { force: o.force, log: console.log });
    console.log(`${c.manifest.count} messages, ${c.manifest.totalBytes} bytes in ${c.maildir}`);
  }
}
