// What an IMAP client can see of a mail store, as one plain, deterministic value:
// two stores are indistinguishable to a client iff their views are deepStrictEqual.
import { createHash } from 'node:crypto';
import type { ImapFlow } from 'imapflow';
import { imapSession, rawCommand, type RawAttr, type RawUntagged } from './imap-session.js';
import { decodeMUtf7 } from './mutf7.js';

export interface ViewMessage {
  uid: number;
  /** FLAGS, sorted, without \Recent (keywords included). */
  flags: string[];
  /** INTERNALDATE as unix seconds. */
  internalDate: number;
  /** RFC822.SIZE (Dovecot counts CRLF line endings). */
  size: number;
  /** sha256 (hex) of BODY.PEEK[] as served (CRLF line endings). */
  sha256: string;
}

export interface ViewMailboxStatus {
  uidValidity: number;
  uidNext: number;
  /** Sorted by UID. */
  messages: ViewMessage[];
}

export interface ViewMailbox {
  /** Mailbox name in UTF-8, split at the hierarchy delimiter: ['Archive', '2024']. */
  name: string[];
  /** The \Noselect / \NonExistent attributes the server reported, sorted. */
  attributes: string[];
  /** null for mailboxes that can't be selected. HIGHESTMODSEQ is left out on purpose. */
  status: ViewMailboxStatus | null;
}

export interface ImapView {
  /** Every mailbox LIST "" "*" returns, sorted by name. */
  mailboxes: ViewMailbox[];
  /** Every name LSUB "" "*" returns (including subscribed names that don't exist), sorted. */
  subscriptions: string[][];
}

const KEPT_ATTRIBUTES = new Set(['\\noselect', '\\nonexistent']);

function attrString(a: RawAttr | undefined): string | null {
  if (!a || Array.isArray(a)) return null;
  const v = a.value;
  if (v === null || v === undefined) return null;
  return Buffer.isBuffer(v) ? v.toString('utf8') : String(v);
}

function attrList(a: RawAttr | undefined): string[] {
  if (!Array.isArray(a)) return [];
  return a.map((x) => attrString(x)).filter((x): x is string => x !== null);
}

interface ListEntry {
  raw: string;
  delimiter: string | null;
  attributes: string[];
}

function parseListLine(u: RawUntagged): ListEntry | null {
  const attrs = u.attributes ?? [];
  const raw = attrString(attrs[2]);
  if (raw === null) return null;
  return { raw, delimiter: attrString(attrs[1]), attributes: attrList(attrs[0]) };
}

/** Prefix of a name component that was not valid modified UTF-7 on the wire (kept verbatim). */
export const INVALID_MUTF7 = '\u0000invalid-mUTF-7:';

/**
 * Splits a wire (modified UTF-7) name into UTF-8 components. A name that is not valid
 * modified UTF-7 (e.g. raw 8-bit from a hand-written subscriptions file) is kept verbatim,
 * each component prefixed with INVALID_MUTF7, so it can't pass for the valid name.
 */
function splitName(raw: string, delimiter: string | null): string[] {
  let decoded: string;
  try {
    decoded = decodeMUtf7(raw);
  } catch {
    return (delimiter ? raw.split(delimiter) : [raw]).map((c) => INVALID_MUTF7 + c);
  }
  const parts = delimiter ? decoded.split(delimiter) : [decoded];
  if (parts.length === 1 && parts[0].toUpperCase() === 'INBOX') return ['INBOX'];
  return parts;
}

export function compareNames(a: readonly string[], b: readonly string[]): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    if (a[i] !== b[i]) return a[i] < b[i] ? -1 : 1;
  }
  return a.length - b.length;
}

function sha256(buf: Buffer): string {
  return createHash('sha256').update(buf).digest('hex');
}

function toUnixSeconds(d: Date | string | undefined): number {
  if (d === undefined) return NaN;
  const t = d instanceof Date ? d.getTime() : Date.parse(d);
  return Math.floor(t / 1000);
}

/** Takes the view of one user's mail store through an already logged-in client. */
export async function viewWithClient(client: ImapFlow): Promise<ImapView> {
  const listed: ListEntry[] = [];
  await rawCommand(client, 'LIST', [{ type: 'STRING', value: '' }, { type: 'STRING', value: '*' }], ['LIST'], (u) => {
    const e = parseListLine(u);
    if (e) listed.push(e);
  });
  const subscribed: ListEntry[] = [];
  await rawCommand(client, 'LSUB', [{ type: 'STRING', value: '' }, { type: 'STRING', value: '*' }], ['LSUB'], (u) => {
    const e = parseListLine(u);
    if (e) subscribed.push(e);
  });

  const mailboxes: ViewMailbox[] = [];
  for (const e of listed) {
    const name = splitName(e.raw, e.delimiter);
    const attributes = e.attributes.filter((a) => KEPT_ATTRIBUTES.has(a.toLowerCase())).sort();
    const selectable = attributes.length === 0;
    let status: ViewMailboxStatus | null = null;
    if (selectable) {
      const path = name.join(e.delimiter ?? '');
      const st = await client.status(path, { uidValidity: true, uidNext: true, messages: true });
      if (!st) throw new Error(`STATUS ${path} failed`);
      const messages: ViewMessage[] = [];
      const box = await client.mailboxOpen(path, { readOnly: true });
      if (box.exists > 0) {
        for await (const m of client.fetch('1:*', { uid: true, flags: true, internalDate: true, size: true, source: true })) {
          if (!m.source) throw new Error(`no BODY[] for UID ${m.uid} in ${path}`);
          messages.push({
            uid: m.uid,
            flags: [...(m.flags ?? [])].filter((f) => f.toLowerCase() !== '\\recent').sort(),
            internalDate: toUnixSeconds(m.internalDate),
            size: m.size ?? NaN,
            sha256: sha256(m.source),
          });
        }
      }
      await client.mailboxClose();
      messages.sort((x, y) => x.uid - y.uid);
      status = { uidValidity: Number(st.uidValidity), uidNext: Number(st.uidNext), messages };
    }
    mailboxes.push({ name, attributes, status });
  }
  mailboxes.sort((x, y) => compareNames(x.name, y.name));
  const subscriptions = subscribed.map((e) => splitName(e.raw, e.delimiter)).sort(compareNames);
  return { mailboxes, subscriptions };
}

/** Logs in to 127.0.0.1:`port` as `user`, takes the view, logs out. Marks nothing \Seen. */
export async function imapView(port: number, user: string, pass: string): Promise<ImapView> {
  const client = await imapSession(port, user, pass);
  try {
    return await viewWithClient(client);
  } finally {
    await client.logout().catch(() => client.close());
  }
}

/** The mailbox called `name` ('Archive/2024' or ['Archive', '2024']), if listed. */
export function findMailbox(view: ImapView, name: string | readonly string[]): ViewMailbox | undefined {
  const parts = typeof name === 'string' ? name.split('/') : name;
  return view.mailboxes.find((m) => compareNames(m.name, parts) === 0);
}

export interface NormalizeOptions {
  /** Keep UIDVALIDITY (default true). A fresh maildir without dovecot-uidlist gets a time-based one. */
  uidValidity?: boolean;
  /** Keep UIDNEXT (default true). */
  uidNext?: boolean;
  /** Keep UIDs (default true); when false messages are compared as a multiset ordered by content. */
  uids?: boolean;
}

/** A copy of `view` without the parts `opts` turns off, for comparisons where they may legitimately differ. */
export function normalizeView(view: ImapView, opts: NormalizeOptions = {}): ImapView {
  const keepUids = opts.uids !== false;
  return {
    subscriptions: view.subscriptions.map((s) => [...s]),
    mailboxes: view.mailboxes.map((m) => ({
      name: [...m.name],
      attributes: [...m.attributes],
      status: m.status && {
        uidValidity: opts.uidValidity === false ? 0 : m.status.uidValidity,
        uidNext: opts.uidNext === false || !keepUids ? 0 : m.status.uidNext,
        messages: m.status.messages
          .map((x) => ({ ...x, uid: keepUids ? x.uid : 0, flags: [...x.flags] }))
          .sort((x, y) =>
            keepUids
              ? x.uid - y.uid
              : x.sha256.localeCompare(y.sha256) || x.internalDate - y.internalDate || x.flags.join(' ').localeCompare(y.flags.join(' ')),
          ),
      },
    })),
  };
}

function label(name: readonly string[]): string {
  return JSON.stringify(name.join('/'));
}

/**
 * Human-readable differences between two views (at most `limit`, default 20, plus a
 * count of the rest). Empty iff the views are deepStrictEqual.
 */
export function diffViews(a: ImapView, b: ImapView, opts: { names?: [string, string]; limit?: number } = {}): string[] {
  const [an, bn] = opts.names ?? ['A', 'B'];
  const limit = opts.limit ?? 20;
  const out: string[] = [];
  const key = (n: readonly string[]): string => JSON.stringify(n);

  const am = new Map(a.mailboxes.map((m) => [key(m.name), m]));
  const bm = new Map(b.mailboxes.map((m) => [key(m.name), m]));
  const allNames = [...new Set([...am.keys(), ...bm.keys()])].map((k) => JSON.parse(k) as string[]).sort(compareNames);
  for (const name of allNames) {
    const x = am.get(key(name));
    const y = bm.get(key(name));
    const box = `mailbox ${label(name)}`;
    if (!x || !y) {
      out.push(`${box}: only in ${x ? an : bn}`);
      continue;
    }
    if (x.attributes.join(' ') !== y.attributes.join(' ')) {
      out.push(`${box}: attributes ${an}=[${x.attributes.join(' ')}] ${bn}=[${y.attributes.join(' ')}]`);
    }
    const xs = x.status;
    const ys = y.status;
    if (!xs || !ys) {
      if (xs || ys) out.push(`${box}: selectable only in ${xs ? an : bn}`);
      continue;
    }
    if (xs.uidValidity !== ys.uidValidity) out.push(`${box}: UIDVALIDITY ${an}=${xs.uidValidity} ${bn}=${ys.uidValidity}`);
    if (xs.uidNext !== ys.uidNext) out.push(`${box}: UIDNEXT ${an}=${xs.uidNext} ${bn}=${ys.uidNext}`);
    const xmap = new Map<number, ViewMessage[]>();
    const ymap = new Map<number, ViewMessage[]>();
    for (const m of xs.messages) xmap.set(m.uid, [...(xmap.get(m.uid) ?? []), m]);
    for (const m of ys.messages) ymap.set(m.uid, [...(ymap.get(m.uid) ?? []), m]);
    const uids = [...new Set([...xmap.keys(), ...ymap.keys()])].sort((p, q) => p - q);
    for (const uid of uids) {
      const xl = xmap.get(uid) ?? [];
      const yl = ymap.get(uid) ?? [];
      const msg = `${box} UID ${uid}`;
      if (xl.length !== yl.length) {
        out.push(`${msg}: ${xl.length} message(s) in ${an}, ${yl.length} in ${bn}`);
        continue;
      }
      for (let i = 0; i < xl.length; i++) {
        const p = xl[i];
        const q = yl[i];
        if (p.flags.join(' ') !== q.flags.join(' ')) out.push(`${msg}: FLAGS ${an}=(${p.flags.join(' ')}) ${bn}=(${q.flags.join(' ')})`);
        if (p.internalDate !== q.internalDate) {
          out.push(`${msg}: INTERNALDATE ${an}=${p.internalDate} ${bn}=${q.internalDate} (${p.internalDate - q.internalDate}s)`);
        }
        if (p.size !== q.size) out.push(`${msg}: RFC822.SIZE ${an}=${p.size} ${bn}=${q.size}`);
        if (p.sha256 !== q.sha256) out.push(`${msg}: body sha256 ${an}=${p.sha256.slice(0, 12)} ${bn}=${q.sha256.slice(0, 12)}`);
      }
    }
  }

  const as = new Set(a.subscriptions.map(key));
  const bs = new Set(b.subscriptions.map(key));
  for (const s of [...new Set([...as, ...bs])].sort()) {
    if (!as.has(s) || !bs.has(s)) out.push(`subscription ${label(JSON.parse(s) as string[])}: only in ${as.has(s) ? an : bn}`);
  }
  if (a.subscriptions.length !== as.size || b.subscriptions.length !== bs.size) {
    out.push(`duplicate subscriptions: ${an} has ${a.subscriptions.length - as.size}, ${bn} has ${b.subscriptions.length - bs.size}`);
  }
  if (out.length > limit) return [...out.slice(0, limit), `... and ${out.length - limit} more difference(s)`];
  return out;
}
