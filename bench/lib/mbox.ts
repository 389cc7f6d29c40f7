// An independent, read-only reader of an mbox directory (Dovecot's "mbox:" layout) for the
// correctness checks of the convert scenario. Like snapshot.ts it shares no code with src/: a bug
// in our mbox store cannot hide itself. It never writes anything.
//
// What both writers do (checked on their output, Dovecot 2.3.19 and ours):
//  * every message starts with a "From <sender>  <asctime date>" line and is followed by one "\n"
//    separator; its header carries the metadata headers X-IMAPbase (first message only), X-UID,
//    Status (R = \Seen, O = not \Recent), X-Status (A \Answered, F \Flagged, T \Draft, D \Deleted),
//    X-Keywords and Content-Length (the body's length in bytes);
//  * "From " lines in bodies are not quoted (no mboxrd/mboxo ">From " escaping): Content-Length
//    marks where a message ends, so nothing is un-escaped here;
//  * an mbox folder may start with a pseudo message ("DON'T DELETE THIS MESSAGE -- FOLDER
//    INTERNAL DATA") whose X-IMAP header holds UIDVALIDITY and the last UID. Both tools write one.
// The message as a client sees it is the header minus those metadata fields, the blank line and
// the body: that is what is hashed (Dovecot stores LF line ends, so compare its output with the
// CRLF->LF normalised hash; ours keeps the bytes).
//
// The result is a TreeState as snapshot.ts makes it of a Maildir++ tree (folder keys are the
// Maildir++ directory names: '' = INBOX, "Work/Projects" -> ".Work.Projects"; on-disk names are
// modified UTF-7 in both), with flags as Maildir letters, so the comparisons of snapshot.ts work
// across the two formats.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { bodyShas, parseSubscriptions, type FolderState, type MsgState, type TreeState } from './snapshot.js';

/** Header fields the mbox writers own: not part of the message. */
const META = new Set(['status', 'x-status', 'x-keywords', 'x-uid', 'x-imapbase', 'x-imap', 'content-length']);

const LF = 0x0a;
const CR = 0x0d;
const FROM = Buffer.from('From ', 'latin1');

interface Field {
  /** Lower-cased field name ('' for a line without a colon). */
  name: string;
  start: number;
  /** End of the field incl. continuation lines and line terminator. */
  end: number;
  colon: number;
}

export interface MboxFile {
  uidValidity: number;
  lastUid: number;
  messages: MsgState[];
  /** Anything that does not look like what the writers must produce. */
  problems: string[];
  bytes: number;
}

function startsWithFrom(buf: Buffer, at: number): boolean {
  return at + FROM.length <= buf.length && buf.compare(FROM, 0, FROM.length, at, at + FROM.length) === 0;
}

function value(buf: Buffer, f: Field): string {
  return buf.toString('latin1', f.colon + 1, f.end).trim();
}

/** Maildir letters (sorted) of Status / X-Status values. */
function flagLetters(status: string, xStatus: string): string {
  let s = '';
  if (status.includes('R')) s += 'S';
  for (const [x, m] of [
    ['A', 'R'],
    ['F', 'F'],
    ['T', 'D'],
    ['D', 'T'],
  ] as const) {
    if (xStatus.includes(x)) s += m;
  }
  return [...s].sort().join('');
}

/** Parses one mbox file. `label` names it in problem reports. */
export function parseMboxFile(buf: Buffer, label: string): MboxFile {
  const out: MboxFile = { uidValidity: 0, lastUid: 0, messages: [], problems: [], bytes: buf.length };
  const problem = (s: string) => {
    if (out.problems.length < 10) out.problems.push(`${label}: ${s}`);
  };
  const len = buf.length;
  if (len === 0) return out;
  if (!startsWithFrom(buf, 0)) {
    problem('does not start with a "From " line');
    return out;
  }
  let pos = 0;
  let index = 0;
  while (pos < len) {
    const msgStart = pos;
    const fromEnd = buf.indexOf(LF, pos);
    if (fromEnd < 0) {
      problem(`message at byte ${pos}: From line without end`);
      break;
    }
    // Header: up to the first empty line.
    const fields: Field[] = [];
    let p = fromEnd + 1;
    let blankStart = -1;
    let bodyStart = -1;
    while (p < len) {
      const nl = buf.indexOf(LF, p);
      const le = nl < 0 ? len : nl + 1;
      if (buf[p] === LF || (buf[p] === CR && buf[p + 1] === LF)) {
        blankStart = p;
        bodyStart = le;
        break;
      }
      if (startsWithFrom(buf, p)) break; // next message without a blank line in this one
      const last = fields[fields.length - 1];
      if ((buf[p] === 0x20 || buf[p] === 0x09) && last) last.end = le;
      else {
        const colon = buf.indexOf(0x3a, p);
        const ok = colon >= 0 && colon < le;
        fields.push({ name: ok ? buf.toString('latin1', p, colon).trim().toLowerCase() : '', start: p, end: le, colon: ok ? colon : le - 1 });
      }
      p = le;
    }
    if (blankStart < 0) {
      problem(`message ${index + 1} (byte ${msgStart}): no empty line after the header`);
      blankStart = bodyStart = p;
    }
    const get = (name: string) => fields.find((f) => f.name === name);
    // Where the body ends: Content-Length when it points at a separator, else the next "\nFrom ".
    let bodyEnd = -1;
    let next = -1;
    const cl = get('content-length');
    if (cl) {
      const n = Number(value(buf, cl));
      const end = bodyStart + n;
      if (Number.isInteger(n) && n >= 0 && end <= len) {
        if (end === len) [bodyEnd, next] = [end, len];
        else if (buf[end] === LF && (end + 1 === len || startsWithFrom(buf, end + 1))) [bodyEnd, next] = [end, end + 1];
      }
      if (bodyEnd < 0) problem(`message ${index + 1} (byte ${msgStart}): Content-Length ${value(buf, cl)} does not end at a separator`);
    }
    if (bodyEnd < 0) {
      const sep = buf.indexOf('\nFrom ', Math.max(bodyStart - 1, fromEnd), 'latin1');
      if (sep < 0) [bodyEnd, next] = [len > bodyStart && buf[len - 1] === LF ? len - 1 : len, len];
      else [bodyEnd, next] = [Math.max(sep, bodyStart), sep + 1];
    }
    const ximap = get('x-imap');
    const subject = get('subject');
    if (ximap && index === 0 && subject && /FOLDER INTERNAL DATA/.test(value(buf, subject))) {
      // Dovecot's (and our) pseudo message: UIDVALIDITY and last UID, not a message.
      const [uv, lu] = value(buf, ximap).split(/\s+/);
      out.uidValidity = Number(uv);
      out.lastUid = Number(lu);
    } else {
      const base = get('x-imapbase');
      if (base) {
        if (out.messages.length > 0 || out.uidValidity !== 0) problem(`message ${index + 1}: X-IMAPbase in a message that is not the first`);
        const [uv, lu] = value(buf, base).split(/\s+/);
        out.uidValidity = Number(uv);
        out.lastUid = Number(lu);
      }
      const xuid = get('x-uid');
      const uid = xuid ? Number(value(buf, xuid)) : 0;
      if (!xuid) problem(`message ${index + 1} (byte ${msgStart}): no X-UID`);
      const status = get('status');
      const xStatus = get('x-status');
      const kw = get('x-keywords');
      const parts: Buffer[] = [];
      for (const f of fields) if (!META.has(f.name)) parts.push(buf.subarray(f.start, f.end));
      parts.push(buf.subarray(blankStart, bodyEnd));
      const shas = bodyShas(Buffer.concat(parts));
      out.messages.push({
        uid: Number.isInteger(uid) && uid > 0 ? uid : 0,
        flags: flagLetters(status ? value(buf, status) : '', xStatus ? value(buf, xStatus) : ''),
        keywords: kw ? value(buf, kw).split(/\s+/).filter(Boolean).sort() : [],
        ...shas,
        rel: `${label}@${msgStart}`,
      });
    }
    index++;
    pos = next;
  }
  if (out.uidValidity === 0 && out.messages.length > 0) problem('no UIDVALIDITY (neither X-IMAPbase nor a pseudo message with X-IMAP)');
  const maxUid = Math.max(0, ...out.messages.map((m) => m.uid));
  if (out.lastUid < maxUid) problem(`last UID ${out.lastUid} in X-IMAPbase/X-IMAP is below the highest X-UID ${maxUid}`);
  out.messages.sort((a, b) => a.uid - b.uid || (a.sha < b.sha ? -1 : 1));
  return out;
}

/** `mbox:DIR:INBOX=DIR/inbox`: the layout the benchmark uses (a copy of DIR holds all of it). */
export function mboxLocation(dir: string): string {
  return `mbox:${dir}:INBOX=${path.join(dir, 'inbox')}`;
}

/**
 * Reads an mbox directory (INBOX = the file `inbox` in it): every regular file is a folder, every
 * directory a level of hierarchy; names starting with '.' (index/control directories,
 * .subscriptions) and "*.lock" are not folders. Subscriptions from DIR/.subscriptions.
 */
export function readMboxTree(root: string, inbox = path.join(root, 'inbox')): { tree: TreeState; problems: string[] } {
  const folders = new Map<string, FolderState>();
  const problems: string[] = [];
  let bytes = 0;
  const walk = (dir: string, comps: string[]): void => {
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      if (e.name.startsWith('.') || e.name.endsWith('.lock')) continue;
      const p = path.join(dir, e.name);
      if (e.isDirectory()) walk(p, [...comps, e.name]);
      else if (e.isFile()) {
        const isInbox = path.resolve(p) === path.resolve(inbox);
        const key = isInbox ? '' : '.' + [...comps, e.name].join('.');
        const label = isInbox ? 'INBOX' : [...comps, e.name].join('/');
        const f = parseMboxFile(fs.readFileSync(p), label);
        problems.push(...f.problems);
        bytes += f.bytes;
        if (folders.has(key)) problems.push(`${label}: two mbox files map to the same folder`);
        folders.set(key, { dir: key, uidValidity: f.uidValidity, messages: f.messages });
      } else problems.push(`${path.relative(root, p)}: neither a file nor a directory`);
    }
  };
  walk(root, []);
  let subs: string | null = null;
  try {
    subs = fs.readFileSync(path.join(root, '.subscriptions'), 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
  const sorted = new Map([...folders].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
  return { tree: { root, folders: sorted, subscriptions: parseSubscriptions(subs), bytes }, problems };
}
