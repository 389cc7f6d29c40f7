// Maildir message file names: "<base>[:2,<flag letters>[,<extra>]]".
// Base names Dovecot generates: "<secs>.M<usecs>P<pid>.<host>,S=<size>,W=<crlf size>".
import * as os from 'node:os';
import { Flag } from '../../model/flags.js';
import type { KeywordMap } from './keywords.js';

export interface ParsedFileName {
  base: string;
  /** Everything after the first ':' (e.g. "2,RS"), or null when there is no ':'. */
  info: string | null;
}

export function parseFileName(name: string): ParsedFileName {
  const colon = name.indexOf(':');
  return colon < 0 ? { base: name, info: null } : { base: name.slice(0, colon), info: name.slice(colon + 1) };
}

export interface ParsedInfo {
  /** Flag letters as found. */
  letters: string;
  /** Anything after a further ',' inside the info (kept verbatim incl. the comma), else ''. */
  extra: string;
}

/** Parses a "2,<letters>[,<extra>]" info suffix; null for other (experimental) info forms. */
export function parseInfo(info: string | null): ParsedInfo | null {
  if (info === null || !info.startsWith('2,')) return null;
  const rest = info.slice(2);
  const comma = rest.indexOf(',');
  return comma < 0 ? { letters: rest, extra: '' } : { letters: rest.slice(0, comma), extra: rest.slice(comma) };
}

const SYSTEM_LETTERS: ReadonlyArray<[string, number]> = [
  ['D', Flag.Draft],
  ['F', Flag.Flagged],
  ['R', Flag.Answered],
  ['S', Flag.Seen],
  ['T', Flag.Deleted],
];

export function isSystemLetter(c: string): boolean {
  return c === 'D' || c === 'F' || c === 'R' || c === 'S' || c === 'T';
}

export interface DecodedFlags {
  flags: number;
  /** Sorted, unique. */
  keywords: string[];
}

/** Decodes flag letters: system flags and keywords known to the map (other letters are ignored). */
export function decodeLetters(letters: string, kw: KeywordMap | null): DecodedFlags {
  let flags = 0;
  let keywords: string[] | undefined;
  for (let i = 0; i < letters.length; i++) {
    const c = letters[i]!;
    if (c >= 'a' && c <= 'z') {
      const name = kw?.nameOfLetter(c);
      if (name !== undefined) (keywords ??= []).push(name);
      continue;
    }
    switch (c) {
      case 'D':
        flags |= Flag.Draft;
        break;
      case 'F':
        flags |= Flag.Flagged;
        break;
      case 'R':
        flags |= Flag.Answered;
        break;
      case 'S':
        flags |= Flag.Seen;
        break;
      case 'T':
        flags |= Flag.Deleted;
        break;
      default:
        break;
    }
  }
  if (!keywords) return { flags, keywords: [] };
  keywords = [...new Set(keywords)].sort();
  return { flags, keywords };
}

export function systemLetters(flags: number): string {
  let s = '';
  for (const [c, bit] of SYSTEM_LETTERS) if (flags & bit) s += c;
  return s;
}

function sortedUnique(letters: string): string {
  return [...new Set(letters)].sort().join('');
}

/**
 * The new info suffix for a flag change: system letters and known-keyword letters are replaced,
 * everything else (P = Passed, unknown letters, letters of keywords missing from the map, extra
 * ",..." content) is preserved. Letters are sorted by ASCII like Dovecot does.
 */
export function buildInfo(oldInfo: string | null, flags: number, keywordLetters: string, kw: KeywordMap | null): string {
  const parsed = parseInfo(oldInfo);
  let keep = '';
  if (parsed) {
    for (const c of parsed.letters) {
      if (isSystemLetter(c)) continue;
      if (c >= 'a' && c <= 'z' && kw?.nameOfLetter(c) !== undefined) continue;
      keep += c;
    }
  }
  return `2,${sortedUnique(keep + systemLetters(flags) + keywordLetters)}${parsed ? parsed.extra : ''}`;
}

export function fileNameOf(base: string, info: string | null): string {
  return info === null ? base : `${base}:${info}`;
}

export interface SizeHints {
  size?: number;
  vsize?: number;
}

/** ",S=<n>" and ",W=<n>" fields of a base name. */
export function sizeHints(base: string): SizeHints {
  const out: SizeHints = {};
  const parts = base.split(',');
  for (let i = 1; i < parts.length; i++) {
    const p = parts[i]!;
    const m = /^([SW])=(\d+)$/.exec(p);
    if (!m) continue;
    if (m[1] === 'S') out.size = Number(m[2]);
    else out.vsize = Number(m[2]);
  }
  return out;
}

/** Dovecot's escaping of the host name in maildir file names: '/' -> \057, ':' -> \072. */
export function encodeHostname(host: string): string {
  return host.replace(/\//g, '\\057').replace(/:/g, '\\072');
}

let hostPart: string | undefined;
let lastSecs = 0;
let lastUsecs = 0;

/**
 * A fresh unique base name "<secs>.M<usecs>P<pid>.<host>" (without size fields). Unique within
 * this process even when called faster than the clock ticks.
 */
export function generateBaseName(now = Date.now()): string {
  hostPart ??= encodeHostname(os.hostname() || 'localhost');
  let secs = Math.floor(now / 1000);
  let usecs = (now % 1000) * 1000;
  if (secs < lastSecs || (secs === lastSecs && usecs <= lastUsecs)) {
    secs = lastSecs;
    usecs = lastUsecs + 1;
    if (usecs >= 1_000_000) {
      secs++;
      usecs = 0;
    }
  }
  lastSecs = secs;
  lastUsecs = usecs;
  return `${secs}.M${usecs}P${process.pid}.${hostPart}`;
}

/** Max bytes of a base name we create (room for ":2," + 26 keywords + 6 system letters in 255). */
export const MAX_BASE_BYTES = 200;

/**
 * Whether s can be used verbatim as a maildir base name (and as a uidlist token): printable ASCII
 * without '/', ':' or spaces, not starting with '.', not too long.
 */
export function isUsableBaseName(s: string): boolean {
  if (s === '' || s.length > MAX_BASE_BYTES || s.startsWith('.')) return false;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c <= 0x20 || c >= 0x7f || c === 0x2f || c === 0x3a) return false;
  }
  return true;
}

/** Whether s can be stored as a uidlist G extension value (one token, no control chars). */
export function isStorableGuidValue(s: string): boolean {
  // eslint-disable-next-line no-control-regex
  return s !== '' && !/[\x00-\x20\x7f]/.test(s);
}

/** Leading decimal digits of s as a number, and where they end. */
function leadingNumber(s: string, from: number): { value: number; end: number } {
  let value = 0;
  let i = from;
  for (; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x30 || c > 0x39) break;
    value = value * 10 + (c - 0x30);
  }
  return { value, end: i };
}

/**
 * Microseconds in the uniqueness part of a base name, given the rest after its leading seconds:
 * ".<uniqueness>.<host>" where the uniqueness contains "M<digits>" (Dovecot "M123P45", postfix
 * "V801I2M300"). Undefined when there is none (Dovecot's maildir_fname_get_usecs).
 */
function uniquenessUsecs(s: string, from: number): number | undefined {
  if (s[from] !== '.') return undefined;
  for (let i = from + 1; i < s.length && s[i] !== '.' && s[i] !== ':'; i++) {
    if (s[i] === 'M') return leadingNumber(s, i + 1).value;
  }
  return undefined;
}

/**
 * The order in which Dovecot gives UIDs to files not yet in dovecot-uidlist
 * (maildir_filename_sort_cmp): leading seconds numerically, then the microseconds of the
 * uniqueness part when both names have them, then the rest of the base name bytewise.
 */
export function compareForUidOrder(a: string, b: string): number {
  const sa = leadingNumber(a, 0);
  const sb = leadingNumber(b, 0);
  if (sa.value !== sb.value) return sa.value < sb.value ? -1 : 1;
  const ua = uniquenessUsecs(a, sa.end);
  const ub = uniquenessUsecs(b, sb.end);
  if (ua !== undefined && ub !== undefined && ua !== ub) return ua < ub ? -1 : 1;
  const ra = parseFileName(a.slice(sa.end)).base;
  const rb = parseFileName(b.slice(sb.end)).base;
  return ra < rb ? -1 : ra > rb ? 1 : 0;
}
