// Shared pieces of the Dovecot oracle tests: a corpus Maildir full of the things that are easy
// to get subtly wrong (every system flag, keywords with per-folder letter maps, CRLF/LF/mixed
// line ends, "From " lines, raw 8-bit headers, a message without headers, a zero-byte message,
// a message still in new/, nested and non-ASCII folders, an implicit \Noselect parent, an empty
// folder, a subscription to a folder that doesn't exist), plus small helpers to serve live
// maildirs and mbox stores (side by side, as users of one server), mirror them, make changes as
// an IMAP client and check ownership.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after } from 'node:test';
import type { ImapFlow } from 'imapflow';
import { makeMessage, maildirFolderPath, writeMaildirMessage } from '../helpers/corpus.js';
import { encodeMUtf7 } from '../helpers/mutf7.js';
import {
  MAIL_GID,
  MAIL_UID,
  ORACLE_PASSWORD,
  chownTree,
  diffViews,
  findMailbox,
  imapSession,
  imapView,
  prepareOracleCopy,
  removeOracleCopy,
  startImapServer,
  type ImapServer,
  type ImapView,
  type ViewMessage,
} from '../helpers/dovecot.js';
import { mirror, type MirrorRun } from '../helpers/mirror.js';
import { makeTempDir, removeTree } from '../helpers/tmp.js';

export type Layout = 'maildir++' | 'fs';

/** ':LAYOUT=fs' or ''. */
export function layoutSuffix(layout: Layout): string {
  return layout === 'fs' ? ':LAYOUT=fs' : '';
}

/** A mail location string for our engine. */
export function loc(root: string, layout: Layout = 'maildir++'): string {
  return `maildir:${root}${layoutSuffix(layout)}`;
}

/** An mbox location whose INBOX is the file `inbox` inside `root` (so a copy of `root` holds all of it). */
export function mboxLoc(root: string): string {
  return `mbox:${root}:INBOX=${path.join(root, 'inbox')}`;
}

/** A mail store the helpers below can serve: a Maildir (Maildir++ or LAYOUT=fs) or an mbox directory (see mboxLoc). */
export interface Side {
  root: string;
  /** Maildir layout; ignored for mbox. */
  layout?: Layout;
  /** Default 'maildir'. */
  format?: 'maildir' | 'mbox';
}

/** The mail location of a side, for our engine and for Dovecot alike. */
export function sideLoc(side: Side): string {
  return side.format === 'mbox' ? mboxLoc(side.root) : loc(side.root, side.layout ?? 'maildir++');
}

const cleanup: string[] = [];
// Registered when the module is loaded, i.e. at the top level of the importing test file: an
// after() called inside a running test would belong to that test and run when it ends.
// DSYNC_KEEP_ORACLE=1 keeps the trees for a post-mortem.
after(() => {
  if (!process.env.DSYNC_KEEP_ORACLE) for (const d of cleanup) removeTree(d);
});

/** Keeps the temp dir of a side's root (see tempMailRoot) after the test file, for a post-mortem. */
export function keepForPostMortem(mailRoot: string): string {
  const dir = path.dirname(mailRoot);
  const i = cleanup.indexOf(dir);
  if (i >= 0) cleanup.splice(i, 1);
  return dir;
}

/** A fresh temp dir (removed after the test file) with a not-yet-existing `mail` path inside. */
export function tempMailRoot(prefix: string): string {
  const d = makeTempDir(prefix);
  cleanup.push(d);
  return path.join(d, 'mail');
}

export const T0 = 1_700_000_000;

/** Raw message texts that the generator doesn't produce. */
export const SPECIAL = {
  eightBitHeaders: Buffer.from(
    'From: Jürgen Weiß <juergen@example.org>\nTo: Zoë <zoe@example.org>\nSubject: Grüße aus Köln – 日本語\n' +
      'Message-ID: <8bit-headers@corpus.dsync.test>\n\nRaw UTF-8 in the header section, no MIME encoding.\n',
    'utf8',
  ),
  noHeaders: Buffer.from('This message has no header section at all.\nJust lines of body text.\n', 'utf8'),
  emptyHeaderSection: Buffer.from('\nThe header section is empty: the message starts with a blank line.\n', 'utf8'),
  zeroBytes: Buffer.alloc(0),
  noFinalNewline: Buffer.from('Subject: no final newline\n\nthe last line ends without a line feed', 'utf8'),
  mixedLineEnds: Buffer.from('Subject: mixed\r\nX-Note: LF here\n\nCRLF line\r\nLF line\nlone CR \r in the middle\r\n', 'latin1'),
  latin1Body: Buffer.from('Subject: latin-1 body\nContent-Type: text/plain; charset=iso-8859-1\n\nGr\xfc\xdfe, \xe9t\xe9.\n', 'latin1'),
  /** A NUL byte and a lone CR: Dovecot serves NUL as 0x80, so both sides must hold the same bytes. */
  binary: Buffer.from('Subject: binary\nContent-Transfer-Encoding: binary\n\nnul:\x00 cr:\r 8bit:\xff\xfe\n', 'latin1'),
};

interface Spec {
  box: string[];
  body: Buffer;
  flags?: string;
  date: number;
  inNew?: boolean;
}

/** Corpus variants. */
export interface CorpusOptions {
  /**
   * Only what an mbox store can hold too: a mailbox file can't have children (Dovecot: "Mailbox
   * doesn't allow inferior mailboxes"), so Archive's own two messages go to Archive/Old and
   * Archive becomes a \Noselect parent like Projects.
   */
  mbox?: boolean;
}

function corpusSpecs(opts: CorpusOptions = {}): Spec[] {
  const inbox = ['INBOX'];
  const archive = opts.mbox ? ['Archive', 'Old'] : ['Archive'];
  let d = T0;
  const next = (): number => (d += 3_600);
  const specs: Spec[] = [
    // Every system flag alone, then all of them at once (D=\Draft F=\Flagged R=\Answered S=\Seen T=\Deleted).
    ...['D', 'F', 'R', 'S', 'T', 'DFRST'].map((flags, i) => ({ box: inbox, body: makeMessage(`flag-${i}`), flags, date: next() })),
    // Keywords (letters from INBOX's dovecot-keywords, see KEYWORDS below), alone and with flags.
    { box: inbox, body: makeMessage('kw-1'), flags: 'a', date: next() },
    { box: inbox, body: makeMessage('kw-2'), flags: 'Sbd', date: next() },
    { box: inbox, body: makeMessage('kw-3'), flags: 'FRSabcd', date: next() },
    { box: inbox, body: makeMessage('crlf', { crlf: true }), flags: 'S', date: next() },
    { box: inbox, body: makeMessage('from-lines', { fromLine: true }), flags: '', date: next() },
    { box: inbox, body: makeMessage('from-lines-crlf', { fromLine: true, crlf: true }), flags: 'R', date: next() },
    { box: inbox, body: makeMessage('eight-bit-body', { eightBit: true }), flags: 'S', date: next() },
    { box: inbox, body: SPECIAL.eightBitHeaders, flags: 'S', date: next() },
    { box: inbox, body: SPECIAL.noHeaders, flags: '', date: next() },
    { box: inbox, body: SPECIAL.emptyHeaderSection, flags: 'F', date: next() },
    { box: inbox, body: SPECIAL.zeroBytes, flags: '', date: next() },
    { box: inbox, body: SPECIAL.noFinalNewline, flags: 'S', date: next() },
    { box: inbox, body: SPECIAL.mixedLineEnds, flags: '', date: next() },
    { box: inbox, body: SPECIAL.latin1Body, flags: 'S', date: next() },
    { box: inbox, body: SPECIAL.binary, flags: '', date: next() },
    { box: inbox, body: makeMessage('big', { size: 70_000 }), flags: 'S', date: next() },
    // Delivered but never seen by an MUA: new/, \Recent.
    { box: inbox, body: makeMessage('new-1'), date: next(), inNew: true },
    { box: inbox, body: makeMessage('new-2', { crlf: true }), date: next(), inNew: true },
    // An old message (INTERNALDATE far from the others).
    { box: inbox, body: makeMessage('old'), flags: 'S', date: 631_152_000 },
    { box: archive, body: makeMessage('ar-1'), flags: 'S', date: next() },
    { box: archive, body: makeMessage('ar-2', { crlf: true }), flags: 'RS', date: next() },
    // Archive/2024 has its own keyword file with a different letter mapping.
    { box: ['Archive', '2024'], body: makeMessage('ar24-1'), flags: 'Sa', date: next() },
    { box: ['Archive', '2024'], body: makeMessage('ar24-2'), flags: 'Tb', date: next() },
    { box: ['Archive', '2024'], body: makeMessage('ar24-3', { fromLine: true }), flags: 'ab', date: next() },
    { box: ['Entwürfe'], body: makeMessage('draft-1', { eightBit: true }), flags: 'D', date: next() },
    { box: ['Entwürfe'], body: makeMessage('draft-2', { eightBit: true, crlf: true }), flags: 'DS', date: next() },
    // Names that need escaping: '&' is "&-" in modified UTF-7; a space is kept as is.
    { box: ['Q&A'], body: makeMessage('qa-1'), flags: 'S', date: next() },
    { box: ['Sent Items'], body: makeMessage('sent-1', { crlf: true }), flags: 'RS', date: next() },
    // Only Projects/Q1 exists on disk: "Projects" is an implicit (\Noselect) parent in Maildir++.
    { box: ['Projects', 'Q1'], body: makeMessage('q1-1'), flags: '', date: next() },
  ];
  return specs;
}

const KEYWORDS: Record<string, string> = {
  INBOX: '0 $Forwarded\n1 Work\n2 $Junk\n3 project-x\n',
  'Archive/2024': '0 Work\n1 $Forwarded\n',
};

/**
 * Writes the corpus into `root` (Maildir++ or LAYOUT=fs). No dovecot-uidlist anywhere yet:
 * UIDs come from whoever scans first. Returns `root`.
 */
export function buildCorpus(root: string, layout: Layout = 'maildir++', opts: CorpusOptions = {}): string {
  fs.mkdirSync(root, { recursive: true });
  for (const d of ['cur', 'new', 'tmp']) fs.mkdirSync(path.join(root, d), { recursive: true });
  for (const s of corpusSpecs(opts)) {
    const dir = maildirFolderPath(root, s.box, layout);
    writeMaildirMessage(dir, { body: s.body, flags: s.flags, internalDate: s.date, inNew: s.inNew });
    if (layout === 'maildir++' && s.box[0] !== 'INBOX') fs.writeFileSync(path.join(dir, 'maildirfolder'), '');
  }
  // An empty, selectable folder.
  for (const sub of ['cur', 'new', 'tmp']) fs.mkdirSync(path.join(maildirFolderPath(root, ['Empty'], layout), sub), { recursive: true });
  if (layout === 'maildir++') fs.writeFileSync(path.join(maildirFolderPath(root, ['Empty'], layout), 'maildirfolder'), '');
  for (const [box, text] of Object.entries(KEYWORDS)) {
    fs.writeFileSync(path.join(maildirFolderPath(root, box.split('/'), layout), 'dovecot-keywords'), text);
  }
  // Dovecot 2.3 subscriptions (v2): TAB between levels, names in modified UTF-7. "Gone/Nowhere" doesn't exist.
  const subs = [['INBOX'], ['Archive', '2024'], ['Entwürfe'], ['Projects', 'Q1'], ['Gone', 'Nowhere']];
  fs.writeFileSync(path.join(root, 'subscriptions'), 'V\t2\n\n' + subs.map((n) => n.map(encodeMUtf7).join('\t') + '\n').join(''));
  return root;
}

/** Number of messages per mailbox in the corpus, for sanity checks. */
export function corpusCounts(opts: CorpusOptions = {}): Map<string, number> {
  const m = new Map<string, number>();
  for (const s of corpusSpecs(opts)) m.set(s.box.join('/'), (m.get(s.box.join('/')) ?? 0) + 1);
  m.set('Empty', 0);
  return m;
}

// ------------------------------------------------------------------ mirroring

/** Our mirror; asserts exit code 0 and returns the run. */
export async function mirrorOk(a: string, b: string, what = 'mirror'): Promise<MirrorRun> {
  const r = await mirror(a, b);
  assert.equal(r.exitCode, 0, `${what}: exit ${r.exitCode}\n${r.log.join('\n')}`);
  return r;
}

/** A second mirror right after a first one must find nothing to do. */
export async function assertMirrorNoop(a: string, b: string, what: string): Promise<void> {
  const r = await mirror(a, b);
  assert.equal(r.exitCode, 0, `${what}: second mirror exit ${r.exitCode}\n${r.log.join('\n')}`);
  assert.deepEqual(r.summary, [], `${what}: a second mirror must change nothing\n${r.log.join('\n')}`);
}

// ------------------------------------------------------------------ views

export function assertSameView(x: ImapView, y: ImapView, names: [string, string], what: string): void {
  const d = diffViews(x, y, { names, limit: 40 });
  assert.deepEqual(d, [], `${what}: an IMAP client can tell ${names[0]} and ${names[1]} apart:\n  ${d.join('\n  ')}`);
}

/** The messages of a mailbox in a view (throws if it is missing or not selectable). */
export function messagesOf(view: ImapView, name: string | string[]): ViewMessage[] {
  const box = findMailbox(view, name);
  assert.ok(box, `mailbox ${String(name)} is listed`);
  assert.ok(box.status, `mailbox ${String(name)} is selectable`);
  return box.status.messages;
}

// ------------------------------------------------------------------ an IMAP client's changes

/** sha256 of a message as Dovecot serves it (bare LF -> CRLF). */
export function servedSha(body: Buffer): string {
  return createHash('sha256').update(Buffer.from(body.toString('latin1').replace(/\r?\n/g, '\r\n'), 'latin1')).digest('hex');
}

/** The message of a view with these bytes (as served). */
export function bySha(msgs: ViewMessage[], body: Buffer): ViewMessage | undefined {
  const sha = servedSha(body);
  return msgs.find((m) => m.sha256 === sha);
}

/** Runs fn with `box` selected (imapflow's mailbox lock). */
export async function inBox<T>(c: ImapFlow, box: string[], fn: () => Promise<T>): Promise<T> {
  const lock = await c.getMailboxLock(box);
  try {
    return await fn();
  } finally {
    lock.release();
  }
}

/** APPEND with flags and INTERNALDATE (unix seconds); returns the new UID (UIDPLUS). */
export async function append(c: ImapFlow, box: string[], body: Buffer, flags: string[], date: number): Promise<number> {
  const r = await c.append(box, body, flags, new Date(date * 1000));
  assert.ok(r && typeof r.uid === 'number', `APPEND to ${box.join('/')} returned a UID (UIDPLUS)`);
  return r.uid;
}

/** A logged-in IMAP session of `user` for the duration of fn. */
export async function session<T>(port: number, user: string, fn: (c: ImapFlow) => Promise<T>): Promise<T> {
  const c = await imapSession(port, user, ORACLE_PASSWORD);
  try {
    return await fn(c);
  } finally {
    await c.logout().catch(() => c.close());
  }
}

// ------------------------------------------------------------------ ownership

/** Our own state files: owned by whoever ran dsync, never read by Dovecot. */
export function isDsyncOwnFile(name: string): boolean {
  return name.startsWith('dsync-index.sqlite') || name === 'dsync.lock';
}

/**
 * Every file and directory of the maildir that Dovecot may read or write (everything except
 * our own index/lock files) must be owned by the Dovecot mail user; returns the offenders.
 */
export function filesNotOwnedByMailUser(root: string): string[] {
  const bad: string[] = [];
  const walk = (p: string, rel: string): void => {
    const st = fs.lstatSync(p);
    if (st.uid !== MAIL_UID || st.gid !== MAIL_GID) bad.push(`${rel || '.'} (${st.uid}:${st.gid})`);
    if (!st.isDirectory()) return;
    for (const e of fs.readdirSync(p)) {
      if (rel === '' && isDsyncOwnFile(e)) continue;
      walk(path.join(p, e), rel ? `${rel}/${e}` : e);
    }
  };
  walk(root, '');
  return bad;
}

/** Dovecot's own index files anywhere in the tree (relative paths). */
export function dovecotIndexFiles(root: string): string[] {
  const out: string[] = [];
  const walk = (p: string, rel: string): void => {
    for (const e of fs.readdirSync(p, { withFileTypes: true })) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) walk(path.join(p, e.name), r);
      else if (/^dovecot\.(index|list\.index|mailbox\.log)/.test(e.name)) out.push(r);
    }
  };
  walk(root, '');
  return out.sort();
}

/** chown -R the maildir's temp parent to the mail user (Dovecot must be able to write everywhere). */
export function giveToDovecot(root: string): void {
  chownTree(path.dirname(root));
}

// ------------------------------------------------------------------ Dovecot with its log

export interface Served extends Side {
  name: string;
}

/**
 * Lines of a Dovecot log where a mail process (imap, doveadm) reports an error or warning, plus
 * any panic or fatal error. The harness kills the server quickly, which makes master, auth,
 * anvil and log processes complain ("Killed with signal 15", "anvil-auth-penalty", "Shutting
 * down logging"): that is not about the mail and is left out.
 */
export function logProblems(logText: string): string[] {
  return logText
    .split('\n')
    .filter((l) => /: (Panic|Fatal):/.test(l) || (/\b(imap|doveadm|dsync-local|dsync-remote)\(/.test(l) && /: (Error|Warning):/.test(l)));
}

/**
 * Serves the given mail stores *live* (not copies: changes made through the server land in them)
 * as users of one server, runs fn, stops the server and returns the problems Dovecot logged.
 * The trees must be owned by the mail user (giveToDovecot). Maildir and mbox users can be mixed.
 */
export async function serveLive(users: Served[], fn: (server: ImapServer) => Promise<void>): Promise<string[]> {
  const dir = makeTempDir('dsync-oracle-srv-');
  try {
    const server = await startImapServer({
      dir,
      users: users.map((u) => ({ name: u.name, mailLocation: sideLoc(u) })),
    });
    try {
      await fn(server);
    } finally {
      await server.stop();
    }
    return logProblems(fs.existsSync(server.logPath) ? fs.readFileSync(server.logPath, 'utf8') : '');
  } finally {
    removeTree(dir);
  }
}

/**
 * Like viewMaildirs (Dovecot only ever sees copies, including any index files it left in the
 * originals earlier), but also returns what Dovecot logged as a problem while opening them:
 * a maildir whose uidlist we changed behind Dovecot's index must open without complaints.
 */
export async function viewsWithLog(specs: Side[]): Promise<{ views: ImapView[]; problems: string[] }> {
  const copies = specs.map((s) => prepareOracleCopy(s.root));
  try {
    const users = specs.map((s, i) => ({ ...s, name: `view${i}`, root: copies[i]! }));
    const views: ImapView[] = [];
    const problems = await serveLive(users, async (server) => {
      for (const u of users) views.push(await imapView(server.port, u.name, ORACLE_PASSWORD));
    });
    return { views, problems };
  } finally {
    for (const c of copies) removeOracleCopy(c);
  }
}
