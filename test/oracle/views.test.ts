// Oracle 1: after our mirror, an IMAP client (a real Dovecot 2.3 serving both sides) cannot
// tell the two maildirs apart: same folders and \Noselect parents, same subscriptions (also to
// a folder that doesn't exist), same UIDVALIDITY/UIDNEXT, and per message the same UID, FLAGS
// (keywords included), INTERNALDATE, RFC822.SIZE and exact bytes. Also across layouts
// (Maildir++ on one side, LAYOUT=fs on the other: names are compared as component arrays).
// Dovecot only ever sees copies (opening a maildir writes indexes).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { dovecotSkipReason, findMailbox, normalizeView, type ImapView } from '../helpers/dovecot.js';
import { copyTree } from '../helpers/tmp.js';
import {
  SPECIAL,
  assertMirrorNoop,
  assertSameView,
  buildCorpus,
  corpusCounts,
  dovecotIndexFiles,
  loc,
  messagesOf,
  mirrorOk,
  tempMailRoot,
  viewsWithLog,
  type Layout,
} from './fixture.js';

const skip = dovecotSkipReason();

const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
/** Dovecot serves bare LF as CRLF. */
const served = (b: Buffer): Buffer => Buffer.from(b.toString('latin1').replace(/\r?\n/g, '\r\n'), 'latin1');

/** The view really shows the corpus (guards against two equally empty or equally broken views). */
function assertIsCorpus(v: ImapView, what: string): void {
  assert.deepEqual(
    v.mailboxes.map((m) => [m.name.join('/'), m.attributes.join(' ')]),
    [
      ['Archive', ''],
      ['Archive/2024', ''],
      ['Empty', ''],
      ['Entwürfe', ''],
      ['INBOX', ''],
      ['Projects', '\\Noselect'],
      ['Projects/Q1', ''],
      ['Q&A', ''],
      ['Sent Items', ''],
    ],
    `${what}: folders`,
  );
  for (const [box, n] of corpusCounts()) assert.equal(messagesOf(v, box).length, n, `${what}: messages in ${box}`);
  assert.deepEqual(v.subscriptions, [['Archive', '2024'], ['Entwürfe'], ['Gone', 'Nowhere'], ['INBOX'], ['Projects', 'Q1']], `${what}: subscriptions`);
  const inbox = messagesOf(v, 'INBOX');
  const flagSets = inbox.map((m) => m.flags.join(' '));
  for (const f of ['\\Draft', '\\Flagged', '\\Answered', '\\Seen', '\\Deleted']) assert.ok(flagSets.includes(f), `${what}: a message with only ${f}`);
  assert.ok(flagSets.includes('\\Answered \\Deleted \\Draft \\Flagged \\Seen'), `${what}: a message with every system flag`);
  assert.ok(flagSets.includes('$Forwarded $Junk Work \\Answered \\Flagged \\Seen project-x'), `${what}: keywords + flags`);
  const zero = inbox.filter((m) => m.size === 0);
  assert.equal(zero.length, 1, `${what}: the zero-byte message`);
  const byHash = new Set(inbox.map((m) => m.sha256));
  for (const k of ['eightBitHeaders', 'noHeaders', 'emptyHeaderSection', 'mixedLineEnds', 'latin1Body'] as const) {
    assert.ok(byHash.has(sha256(served(SPECIAL[k]))), `${what}: ${k} message served byte-exact`);
  }
  // Archive/2024 maps its keyword letters differently from INBOX ('a' = Work there).
  assert.deepEqual(
    messagesOf(v, 'Archive/2024').map((m) => m.flags.join(' ')),
    ['Work \\Seen', '$Forwarded \\Deleted', '$Forwarded Work'],
    `${what}: Archive/2024 keywords`,
  );
}

test('a corpus mirrored into an empty Maildir is indistinguishable from it over IMAP', { skip }, async () => {
  const a = buildCorpus(tempMailRoot('oracle-views-a-'));
  const b = tempMailRoot('oracle-views-b-');
  // What Dovecot makes of the corpus before anyone indexed it (UIDs assigned by Dovecot itself).
  const pristine = tempMailRoot('oracle-views-pristine-');
  copyTree(a, pristine);

  const r = await mirrorOk(loc(a), loc(b), 'first mirror');
  assert.ok(r.summary.length > 0, 'the first mirror reports what it created');

  const { views, problems } = await viewsWithLog([{ root: a }, { root: b }, { root: pristine }]);
  const [va, vb, vp] = views as [ImapView, ImapView, ImapView];
  assert.deepEqual(problems, [], 'Dovecot logged no problems');
  assertIsCorpus(va, 'A');
  assertSameView(va, vb, ['A', 'B'], 'after the first mirror');
  // Our scan of A gave the unindexed files the same UIDs Dovecot gives them. Only UIDVALIDITY
  // differs: Dovecot picks a time-based one for a maildir without dovecot-uidlist.
  assertSameView(normalizeView(vp, { uidValidity: false }), normalizeView(va, { uidValidity: false }), ['Dovecot-numbered', 'A'], 'UID assignment');

  assert.deepEqual(dovecotIndexFiles(b), [], 'B was never opened by Dovecot');
  assert.ok(!fs.existsSync(path.join(b, '.Gone')) && !fs.existsSync(path.join(b, '.Gone.Nowhere')), 'a subscription does not create a folder');
  await assertMirrorNoop(loc(a), loc(b), 'after the first mirror');
});

test('LAYOUT=fs on one side and Maildir++ on the other: still indistinguishable, both directions', { skip }, async () => {
  // A (Maildir++) -> B (fs), and C (fs) -> D (Maildir++).
  const cases: Array<{ src: string; srcLayout: Layout; dst: string; dstLayout: Layout }> = [
    { src: buildCorpus(tempMailRoot('oracle-layout-a-')), srcLayout: 'maildir++', dst: tempMailRoot('oracle-layout-b-'), dstLayout: 'fs' },
    { src: buildCorpus(tempMailRoot('oracle-layout-c-'), 'fs'), srcLayout: 'fs', dst: tempMailRoot('oracle-layout-d-'), dstLayout: 'maildir++' },
  ];
  for (const c of cases) await mirrorOk(loc(c.src, c.srcLayout), loc(c.dst, c.dstLayout), `mirror ${c.srcLayout} -> ${c.dstLayout}`);
  // The on-disk shapes really differ.
  assert.ok(fs.existsSync(path.join(cases[0]!.dst, 'Archive', '2024', 'cur')), 'B uses nested directories');
  assert.ok(fs.existsSync(path.join(cases[0]!.dst, 'Entw&APw-rfe', 'cur')), 'B: non-ASCII folder in modified UTF-7');
  assert.ok(fs.existsSync(path.join(cases[1]!.dst, '.Archive.2024', 'cur')), 'D uses Maildir++ dot directories');
  assert.ok(fs.existsSync(path.join(cases[1]!.dst, '.Q&-A', 'cur')) && fs.existsSync(path.join(cases[0]!.dst, 'Q&-A', 'cur')), "'&' is stored as &-");

  const { views, problems } = await viewsWithLog(cases.flatMap((c) => [{ root: c.src, layout: c.srcLayout }, { root: c.dst, layout: c.dstLayout }]));
  assert.deepEqual(problems, [], 'Dovecot logged no problems');
  const [va, vb, vc, vd] = views as [ImapView, ImapView, ImapView, ImapView];
  assertIsCorpus(va, 'A (Maildir++)');
  assertIsCorpus(vc, 'C (fs)');
  assertSameView(va, vb, ['A (Maildir++)', 'B (fs)'], 'Maildir++ -> fs');
  assertSameView(vc, vd, ['C (fs)', 'D (Maildir++)'], 'fs -> Maildir++');
  // The \Noselect parent: implicit in Maildir++ (no ".Projects" dir), a plain directory in fs.
  assert.deepEqual(findMailbox(vb, 'Projects')?.attributes, ['\\Noselect']);
  assert.deepEqual(findMailbox(vd, 'Projects')?.attributes, ['\\Noselect']);
  for (const c of cases) await assertMirrorNoop(loc(c.src, c.srcLayout), loc(c.dst, c.dstLayout), `${c.srcLayout} -> ${c.dstLayout}`);
});

test('a maildir nobody indexed yet gets the same UIDs from us as from Dovecot (same-second deliveries, old timestamps)', { skip }, async () => {
  // maildir_filename_sort_cmp order: numeric seconds, then microseconds, then bytewise.
  const names = [
    '1700000000.M123P1.host',
    '1700000000.M99P1.host',
    '999999999.M1P1.old',
    '1700000000.V801I2M300.host',
    '1700000000.abc.host',
    'notimestamp',
    '1700000001.M0P1.host',
  ];
  const a = tempMailRoot('oracle-uidorder-a-');
  for (const sub of ['cur', 'new', 'tmp']) fs.mkdirSync(path.join(a, sub), { recursive: true });
  names.forEach((n, i) => fs.writeFileSync(i % 2 ? path.join(a, 'new', n) : path.join(a, 'cur', `${n}:2,S`), `Subject: ${n}\n\n${n}\n`));
  const pristine = tempMailRoot('oracle-uidorder-pristine-');
  copyTree(a, pristine);
  await mirrorOk(loc(a), loc(tempMailRoot('oracle-uidorder-b-')));
  const { views } = await viewsWithLog([{ root: pristine }, { root: a }]);
  const [vp, va] = views as [ImapView, ImapView];
  assert.equal(messagesOf(vp, 'INBOX').length, names.length);
  assertSameView(normalizeView(vp, { uidValidity: false }), normalizeView(va, { uidValidity: false }), ['Dovecot-numbered', 'dsync-numbered'], 'UID order');
});
