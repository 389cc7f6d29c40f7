// Oracle 5: Maildir <-> mbox conversion as an IMAP client sees it, following the conversion
// procedure: mirror the old store into the new one, keep using the old one through Dovecot and
// mirror again (only the changes are applied), then switch the user over (Dovecot now serves the
// new store), keep using it and mirror a last time. After every pass a real Dovecot serves both
// stores identically: folders, \Noselect parents, subscriptions, UIDVALIDITY, UIDNEXT, UIDs,
// flags and keywords, INTERNALDATE, RFC822.SIZE and bytes. Both directions: Maildir -> mbox
// starting from the corpus Maildir, and mbox -> Maildir starting from an mbox that Dovecot itself
// made of the corpus (doveadm backup). Also a round trip Maildir -> mbox -> Maildir.
//
// What may legitimately differ, and what does not:
//  * The corpus variant mbox can hold (CorpusOptions.mbox): an mbox mailbox file cannot have child
//    mailboxes, so Archive is a \Noselect parent; everything else of the corpus is kept
//    (non-ASCII and '&' folder names, every flag, keywords, "From " lines, CRLF, LF and mixed line
//    ends, 8-bit headers, a zero-byte message, one without final newline, NUL bytes).
//  * No projection of the views is needed: Dovecot serves mbox messages exactly like Maildir ones
//    (bytes with CRLF line ends, RFC822.SIZE counted with CRLF, INTERNALDATE from the From_ line
//    to the second, UIDVALIDITY/UIDNEXT from X-IMAPbase), whether the file holds LF (as Dovecot
//    writes it) or CRLF (as we keep a CRLF Maildir message).
//  * mbox cannot keep message GUIDs; IMAP does not show them, so the views do not contain them.
//  * Dovecot's own mbox (the start of the mbox -> Maildir direction) is not what we would have
//    written: Dovecot stores LF only, and its doveadm backup changes three corpus messages as a
//    client sees them (the one without a header section grows by 4 bytes, the zero-byte one and
//    the one without final newline by a line end). That is the mbox's content from then on, and
//    the Maildir we make of it must show exactly that.
//
// Mails that share a header hash (the identity where one side is an mbox) are distinct mails: the
// corpus has seven without Date and Message-ID in INBOX (no header, empty header, zero bytes, no
// final newline, mixed line ends, latin-1, binary), all hashing to md5("\n"). They were once
// dropped as duplicates on both sides alike, so the stores still matched each other: every pass
// is also compared with the view before it.
//
// An empty mbox folder created through Dovecot is an empty file: its UIDVALIDITY is only in
// Dovecot's index (.imap/<name>/dovecot.index.log), which the mbox store reads; the empty INBOX
// file Dovecot creates at login has none anywhere until Dovecot opens it, so the store writes its
// own into the file, which Dovecot then shows (its own test below).
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { ImapFlow } from 'imapflow';
import { makeMessage } from '../helpers/corpus.js';
import { ORACLE_PASSWORD, ORACLE_USER, dovecotSkipReason, doveadmSync, imapView, normalizeView, writeDoveadmConfig, type ImapView } from '../helpers/dovecot.js';
import { copyTree } from '../helpers/tmp.js';
import {
  T0,
  append,
  assertMirrorNoop,
  assertSameView,
  buildCorpus,
  bySha,
  corpusCounts,
  giveToDovecot,
  inBox,
  messagesOf,
  mirrorOk,
  serveLive,
  session,
  sideLoc,
  tempMailRoot,
  viewsWithLog,
  type Side,
} from './fixture.js';

const skip = dovecotSkipReason();
const MBOXABLE = { mbox: true };

/** Views of the given stores (Dovecot gets copies), asserting Dovecot logged no problems. */
async function views(sides: Side[], what: string): Promise<ImapView[]> {
  const { views: v, problems } = await viewsWithLog(sides);
  assert.deepEqual(problems, [], `${what}: Dovecot served the stores (with whatever index files it left in them earlier) without complaints`);
  return v;
}

const names = (v: ImapView): string[] => v.mailboxes.map((m) => m.name.join('/') + (m.status ? '' : ' (noselect)'));

/** The view shows the mbox-able corpus: guards against comparing two equally empty views. */
function assertIsCorpus(v: ImapView, what: string): void {
  assert.deepEqual(
    names(v),
    ['Archive (noselect)', 'Archive/2024', 'Archive/Old', 'Empty', 'Entwürfe', 'INBOX', 'Projects (noselect)', 'Projects/Q1', 'Q&A', 'Sent Items'],
    `${what}: folders`,
  );
  for (const [box, n] of corpusCounts(MBOXABLE)) assert.equal(messagesOf(v, box).length, n, `${what}: messages in ${box}`);
  assert.deepEqual(v.subscriptions, [['Archive', '2024'], ['Entwürfe'], ['Gone', 'Nowhere'], ['INBOX'], ['Projects', 'Q1']], `${what}: subscriptions`);
}

/**
 * What a pass changed, where: summary lines are "<root>: mailbox <name>: <what>", the name spelt
 * with the separator of that store (Maildir++ '.', mbox '/'; no corpus folder has a '.' itself).
 */
function changesOn(summary: string[], root: string, what: string): string[] {
  const out: string[] = [];
  for (const l of summary) {
    const m = /^(.*?): mailbox (.*?): (.*)$/.exec(l);
    assert.ok(m, `${what}: summary line ${JSON.stringify(l)}`);
    assert.equal(m[1], root, `${what}: only the other store is changed: ${l}`);
    out.push(`${m[2]!.replaceAll('.', '/')}: ${m[3]}`);
  }
  return out.sort();
}

/** An mbox that Dovecot made of the (mbox-able) corpus: `doveadm backup` from the Maildir. */
async function dovecotMadeMbox(): Promise<string> {
  const md = buildCorpus(tempMailRoot('oracle-convert-dcsrc-'), 'maildir++', MBOXABLE);
  const mb = tempMailRoot('oracle-convert-dcmbox-');
  fs.mkdirSync(mb);
  giveToDovecot(md);
  giveToDovecot(mb);
  const conf = writeDoveadmConfig(path.join(path.dirname(mb), 'conf'));
  // Dovecot converts between storages only with an explicit hierarchy separator.
  fs.appendFileSync(conf, 'namespace inbox {\n  inbox = yes\n  separator = /\n}\n');
  const r = await doveadmSync({ configPath: conf, user: ORACLE_USER, locationA: sideLoc({ root: md }), locationB: sideLoc({ root: mb, format: 'mbox' }), mode: 'backup' });
  assert.equal(r.code, 0, `doveadm backup into mbox: ${r.stderr}`);
  // Dovecot gives new mailboxes time-based UIDVALIDITYs, from a counter per mail root: 'Empty'
  // got one from the Maildir's, 'Neu' (created later in the mbox) gets one from the mbox's. In
  // the same second they would be equal, and a vanished mailbox whose UIDVALIDITY reappears
  // under another name is a rename for an mbox (src/storage/mbox/guids.ts). Users do not delete
  // and create folders within a second of a migration; a fast test run does.
  await new Promise((r) => setTimeout(r, 1010 - (Date.now() % 1000)));
  return mb;
}

test('Maildir -> mbox -> Maildir: the corpus looks the same in all three', { skip }, async () => {
  const a: Side = { root: buildCorpus(tempMailRoot('oracle-convert-rt-a-'), 'maildir++', MBOXABLE) };
  const m: Side = { root: tempMailRoot('oracle-convert-rt-mbox-'), format: 'mbox' };
  const b: Side = { root: tempMailRoot('oracle-convert-rt-b-') };
  // The corpus as Dovecot numbers it before anyone indexed it (time-based UIDVALIDITY).
  const pristine: Side = { root: tempMailRoot('oracle-convert-rt-pristine-') };
  copyTree(a.root, pristine.root);
  await mirrorOk(sideLoc(a), sideLoc(m), 'Maildir -> mbox');
  await mirrorOk(sideLoc(m), sideLoc(b), 'mbox -> Maildir');
  const [va, vm, vb, vp] = (await views([a, m, b, pristine], 'round trip')) as [ImapView, ImapView, ImapView, ImapView];
  assertIsCorpus(vp, 'the corpus');
  // Nothing lost or changed in the source either (only UIDVALIDITY: see `pristine`).
  assertSameView(normalizeView(vp, { uidValidity: false }), normalizeView(va, { uidValidity: false }), ['the corpus before', 'Maildir after'], 'round trip');
  assertSameView(va, vm, ['Maildir', 'mbox'], 'Maildir -> mbox');
  assertSameView(vm, vb, ['mbox', 'Maildir again'], 'mbox -> Maildir');
  await assertMirrorNoop(sideLoc(m), sideLoc(b), 'mbox -> Maildir');
});

test('conversion procedure Maildir -> mbox: mirror, use the Maildir, mirror, switch to the mbox, use it, mirror', { skip }, (t) =>
  procedure(t, { root: buildCorpus(tempMailRoot('oracle-convert-md-'), 'maildir++', MBOXABLE) }, { root: tempMailRoot('oracle-convert-mbox-'), format: 'mbox' }),
);

test('conversion procedure mbox (made by Dovecot) -> Maildir: mirror, use the mbox, mirror, switch to the Maildir, use it, mirror', { skip }, async (t) =>
  procedure(t, { root: await dovecotMadeMbox(), format: 'mbox' }, { root: tempMailRoot('oracle-convert-md-') }),
);

/** The changes a user makes on the old store before the switch. */
const OLD_BODIES = {
  inbox: makeMessage('convert-old-1', { crlf: true, fromLine: true }),
  archive: makeMessage('convert-old-2', { eightBit: true }),
  neu: makeMessage('convert-old-3'),
};
async function useOldStore(c: ImapFlow): Promise<void> {
  await append(c, ['INBOX'], OLD_BODIES.inbox, ['\\Seen', '$Forwarded'], T0 + 86_400 * 30);
  await append(c, ['Archive', '2024'], OLD_BODIES.archive, ['\\Flagged'], T0 + 86_400 * 31);
  await inBox(c, ['INBOX'], async () => {
    await c.messageFlagsAdd('1', ['\\Answered', 'later'], { uid: true });
    await c.messageFlagsRemove('5', ['\\Seen'], { uid: true });
    assert.equal(await c.messageDelete('3', { uid: true }), true);
  });
  // imapflow's CREATE also subscribes.
  await c.mailboxCreate(['Neu']);
  await append(c, ['Neu'], OLD_BODIES.neu, [], T0 + 86_400 * 32);
  await c.mailboxRename(['Q&A'], ['Fragen']);
  await c.mailboxDelete(['Empty']);
  assert.equal(await c.mailboxUnsubscribe(['Projects', 'Q1']), true);
}
const OLD_CHANGES = [
  'Archive/2024: 1 new',
  'Empty: deleted',
  'INBOX: 1 new, 1 expunged, 2 flag changes',
  'Neu: 1 new',
  'Neu: created',
  'Neu: subscribed',
  'Projects/Q1: unsubscribed',
  'Q&A: renamed to Fragen',
];

/** The changes the user makes on the new store after the switch. */
const NEW_BODIES = {
  inbox: makeMessage('convert-new-1'),
  drafts: makeMessage('convert-new-2', { crlf: true }),
  archive: makeMessage('convert-new-3', { fromLine: true }),
};
async function useNewStore(c: ImapFlow): Promise<void> {
  await append(c, ['INBOX'], NEW_BODIES.inbox, [], T0 + 86_400 * 40);
  await append(c, ['Entwürfe'], NEW_BODIES.drafts, ['\\Draft', '\\Seen'], T0 + 86_400 * 41);
  await inBox(c, ['INBOX'], async () => {
    await c.messageFlagsAdd('2', ['\\Flagged', 'work'], { uid: true });
    await c.messageFlagsRemove('1', ['\\Answered'], { uid: true });
    assert.equal(await c.messageDelete('5:6', { uid: true }), true);
  });
  await c.mailboxCreate(['Archive', '2025']);
  await append(c, ['Archive', '2025'], NEW_BODIES.archive, ['\\Seen'], T0 + 86_400 * 42);
  await c.mailboxDelete(['Neu']);
}
const NEW_CHANGES = [
  'Archive/2025: 1 new',
  'Archive/2025: created',
  'Archive/2025: subscribed',
  'Entwürfe: 1 new',
  'INBOX: 1 new, 2 expunged, 2 flag changes',
  'Neu: deleted',
];

async function procedure(t: TestContext, oldSide: Side, newSide: Side): Promise<void> {
  const OLD = sideLoc(oldSide);
  const NEW = sideLoc(newSide);
  const [oldName, newName] = [oldSide, newSide].map((s) => (s.format === 'mbox' ? 'mbox' : 'Maildir')) as [string, string];
  giveToDovecot(oldSide.root);
  // The user's store as Dovecot has been serving it.
  let start: ImapView | undefined;
  assert.deepEqual(await serveLive([{ name: 'u', ...oldSide }], async (s) => void (start = await imapView(s.port, 'u', ORACLE_PASSWORD))), []);
  assertIsCorpus(start!, oldName);

  /**
   * One pass: mirror, the same view of both stores, which is `expected` (the view before the
   * pass, with the changes made through Dovecot), then a pass that does nothing.
   */
  const pass = async (what: string, expected: ImapView): Promise<{ summary: string[]; view: ImapView }> => {
    const r = await mirrorOk(OLD, NEW, what);
    giveToDovecot(newSide.root);
    const [vo, vn] = await views([oldSide, newSide], what);
    assertSameView(vo!, vn!, [oldName, newName], what);
    assertSameView(expected, vo!, ['the live view before the pass', 'after the pass'], what);
    await assertMirrorNoop(OLD, NEW, what);
    return { summary: r.summary, view: vo! };
  };

  await t.test(`pass 1: the ${oldName} is copied into the ${newName}, nothing lost`, async () => {
    await pass('pass 1', start!);
  });

  await t.test(`pass 2: the user kept using the ${oldName} through Dovecot; only the changes are applied, to the ${newName}`, async () => {
    let live: ImapView | undefined;
    const problems = await serveLive([{ name: 'u', ...oldSide }], async (s) => {
      await session(s.port, 'u', useOldStore);
      live = await imapView(s.port, 'u', ORACLE_PASSWORD);
    });
    assert.deepEqual(problems, []);
    const { summary, view } = await pass('pass 2', live!);
    assert.deepEqual(changesOn(summary, newSide.root, 'pass 2'), OLD_CHANGES);
    const m = bySha(messagesOf(view, 'INBOX'), OLD_BODIES.inbox);
    assert.deepEqual(m && [m.flags, m.internalDate], [['$Forwarded', '\\Seen'], T0 + 86_400 * 30]);
    assert.deepEqual(bySha(messagesOf(view, 'Neu'), OLD_BODIES.neu)?.internalDate, T0 + 86_400 * 32);
  });

  await t.test(`pass 3: the user was switched to the ${newName} and used it through Dovecot; only the changes are applied, to the ${oldName}`, async () => {
    let live: ImapView | undefined;
    const problems = await serveLive([{ name: 'u', ...newSide }], async (s) => {
      await session(s.port, 'u', useNewStore);
      live = await imapView(s.port, 'u', ORACLE_PASSWORD);
    });
    assert.deepEqual(problems, []);
    const { summary, view } = await pass('pass 3', live!);
    assert.deepEqual(changesOn(summary, oldSide.root, 'pass 3'), NEW_CHANGES);
    assert.deepEqual(bySha(messagesOf(view, 'Archive/2025'), NEW_BODIES.archive)?.flags, ['\\Seen']);
  });
}

// ------------------------------------------------------------------ minimal cases

/** Three mails with neither Date nor Message-ID: one header hash, md5("\n"). */
const NO_ID = ['Subject: one\n\n1\n', 'Subject: two\r\n\r\n2\r\n', '\nno header at all\n'];

test('mails without Date and Message-ID all survive a conversion, both ways', { skip }, async () => {
  // Maildir -> mbox.
  const md: Side = { root: tempMailRoot('oracle-convert-noid-md-') };
  const mb: Side = { root: tempMailRoot('oracle-convert-noid-mbox-'), format: 'mbox' };
  for (const d of ['cur', 'new', 'tmp']) fs.mkdirSync(path.join(md.root, d), { recursive: true });
  NO_ID.forEach((body, i) => fs.writeFileSync(path.join(md.root, 'cur', `${T0 + i}.M${i}P1.noid:2,S`), body));
  // mbox -> Maildir.
  const mb2: Side = { root: tempMailRoot('oracle-convert-noid-mbox2-'), format: 'mbox' };
  const md2: Side = { root: tempMailRoot('oracle-convert-noid-md2-') };
  fs.mkdirSync(mb2.root, { recursive: true });
  fs.writeFileSync(path.join(mb2.root, 'inbox'), NO_ID.map((body) => `From someone@example.org  Tue Nov 14 22:13:20 2023\n${body}\n`).join(''));
  giveToDovecot(md.root);
  giveToDovecot(mb2.root);
  const before = await views([md, mb2], 'before');
  await mirrorOk(sideLoc(md), sideLoc(mb), 'Maildir -> mbox');
  await mirrorOk(sideLoc(mb2), sideLoc(md2), 'mbox -> Maildir');
  const [vmd, vmb, vmb2, vmd2] = (await views([md, mb, mb2, md2], 'after')) as [ImapView, ImapView, ImapView, ImapView];
  assert.equal(messagesOf(before[0]!, 'INBOX').length, 3);
  assert.equal(messagesOf(before[1]!, 'INBOX').length, 3);
  assertSameView(normalizeView(before[0]!, { uidValidity: false }), normalizeView(vmd, { uidValidity: false }), ['Maildir before', 'Maildir after'], 'Maildir -> mbox');
  assertSameView(vmd, vmb, ['Maildir', 'mbox'], 'Maildir -> mbox');
  assertSameView(normalizeView(before[1]!, { uidValidity: false }), normalizeView(vmb2, { uidValidity: false }), ['mbox before', 'mbox after'], 'mbox -> Maildir');
  assertSameView(vmb2, vmd2, ['mbox', 'Maildir'], 'mbox -> Maildir');
});

test('an empty folder created through Dovecot in an mbox keeps its UIDVALIDITY in the Maildir copy', { skip }, async () => {
  const mb: Side = { root: tempMailRoot('oracle-convert-empty-mbox-'), format: 'mbox' };
  const md: Side = { root: tempMailRoot('oracle-convert-empty-md-') };
  fs.mkdirSync(mb.root);
  giveToDovecot(mb.root);
  assert.deepEqual(await serveLive([{ name: 'u', ...mb }], (s) => session(s.port, 'u', (c) => c.mailboxCreate(['Neu']).then(() => undefined))), []);
  await mirrorOk(sideLoc(mb), sideLoc(md), 'mbox -> Maildir');
  const [vmb, vmd] = (await views([mb, md], 'after')) as [ImapView, ImapView];
  assert.deepEqual(names(vmb), ['INBOX', 'Neu']);
  assertSameView(vmb, vmd, ['mbox', 'Maildir'], 'mbox -> Maildir');
});
