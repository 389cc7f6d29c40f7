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
//    written: Dovecot stores LF only and changes some messages on the way in (a zero-byte message
//    gets a line end, so does a message without final newline). That is its content from then on,
//    and the Maildir we make of it must show exactly that.
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { makeMessage } from '../helpers/corpus.js';
import { ORACLE_PASSWORD, ORACLE_USER, dovecotSkipReason, doveadmSync, imapView, writeDoveadmConfig, type ImapView } from '../helpers/dovecot.js';
import type { ImapFlow } from 'imapflow';
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

function assertIsCorpus(v: ImapView, what: string): void {
  assert.deepEqual(
    names(v),
    ['Archive (noselect)', 'Archive/2024', 'Archive/Old', 'Empty', 'Entwürfe', 'INBOX', 'Projects (noselect)', 'Projects/Q1', 'Q&A', 'Sent Items'],
    `${what}: folders`,
  );
  for (const [box, n] of corpusCounts(MBOXABLE)) assert.equal(messagesOf(v, box).length, n, `${what}: messages in ${box}`);
  assert.deepEqual(v.subscriptions, [['Archive', '2024'], ['Entwürfe'], ['Gone', 'Nowhere'], ['INBOX'], ['Projects', 'Q1']], `${what}: subscriptions`);
}

const names = (v: ImapView): string[] => v.mailboxes.map((m) => m.name.join('/') + (m.status ? '' : ' (noselect)'));

/** Summary lines without the location prefix ("<root>: "), sorted. */
const changes = (summary: string[]): string[] => summary.map((l) => l.replace(/^.*?: (?=mailbox )/, '')).sort();

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
  return mb;
}

test('Maildir -> mbox -> Maildir: the corpus looks the same in all three', { skip }, async () => {
  const a: Side = { root: buildCorpus(tempMailRoot('oracle-convert-rt-a-'), 'maildir++', MBOXABLE) };
  const m: Side = { root: tempMailRoot('oracle-convert-rt-mbox-'), format: 'mbox' };
  const b: Side = { root: tempMailRoot('oracle-convert-rt-b-') };
  await mirrorOk(sideLoc(a), sideLoc(m), 'Maildir -> mbox');
  await mirrorOk(sideLoc(m), sideLoc(b), 'mbox -> Maildir');
  const [va, vm, vb] = await views([a, m, b], 'round trip');
  assertIsCorpus(va!, 'the Maildir');
  assertSameView(va!, vm!, ['Maildir', 'mbox'], 'Maildir -> mbox');
  assertSameView(vm!, vb!, ['mbox', 'Maildir again'], 'mbox -> Maildir');
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
    await c.messageFlagsRemove('4', ['\\Seen'], { uid: true });
    assert.equal(await c.messageDelete('3', { uid: true }), true);
  });
  // imapflow's CREATE also subscribes.
  await c.mailboxCreate(['Neu']);
  await append(c, ['Neu'], OLD_BODIES.neu, [], T0 + 86_400 * 32);
  await c.mailboxRename(['Q&A'], ['Fragen']);
  await c.mailboxDelete(['Empty']);
  assert.equal(await c.mailboxUnsubscribe(['Projects', 'Q1']), true);
}

/** The changes the user makes on the new store after the switch. */
const NEW_BODIES = {
  inbox: makeMessage('convert-new-1'),
  drafts: makeMessage('convert-new-2', { crlf: true }),
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
  await c.mailboxDelete(['Neu']);
}

async function procedure(t: TestContext, oldSide: Side, newSide: Side): Promise<void> {
  const OLD = sideLoc(oldSide);
  const NEW = sideLoc(newSide);
  const [oldName, newName] = [oldSide, newSide].map((s) => (s.format === 'mbox' ? 'mbox' : 'Maildir')) as [string, string];
  giveToDovecot(oldSide.root);
  // The user's store as Dovecot has been serving it.
  let start: ImapView | undefined;
  assert.deepEqual(await serveLive([{ name: 'u', ...oldSide }], async (s) => void (start = await imapView(s.port, 'u', ORACLE_PASSWORD))), []);
  assertIsCorpus(start!, oldName);

  /** One pass: mirror, the same view on both sides (and `expected`, if given), then a no-op pass. */
  const pass = async (what: string, expected?: ImapView): Promise<{ summary: string[]; view: ImapView }> => {
    const r = await mirrorOk(OLD, NEW, what);
    giveToDovecot(newSide.root);
    const [vo, vn] = await views([oldSide, newSide], what);
    assertSameView(vo!, vn!, [oldName, newName], what);
    if (expected) assertSameView(expected, vo!, ['the live view where the changes were made', 'after the pass'], what);
    await assertMirrorNoop(OLD, NEW, what);
    return { summary: changes(r.summary), view: vo! };
  };

  await t.test('pass 1: the whole store is copied', async () => {
    const { view } = await pass('pass 1', start);
    assertIsCorpus(view, `${newName} after pass 1`);
  });

  await t.test(`pass 2: the user kept using the ${oldName} through Dovecot; only the changes are applied`, async () => {
    let live: ImapView | undefined;
    const problems = await serveLive([{ name: 'u', ...oldSide }], async (s) => {
      await session(s.port, 'u', useOldStore);
      live = await imapView(s.port, 'u', ORACLE_PASSWORD);
    });
    assert.deepEqual(problems, []);
    const { summary, view } = await pass('pass 2', live);
    console.log(summary);
    assert.deepEqual(bySha(messagesOf(view, 'INBOX'), OLD_BODIES.inbox)?.flags, ['$Forwarded', '\\Seen']);
    assert.deepEqual(bySha(messagesOf(view, 'Neu'), OLD_BODIES.neu)?.internalDate, T0 + 86_400 * 32);
  });

  await t.test(`pass 3: the user was switched to the ${newName} and used it through Dovecot; only the changes are applied`, async () => {
    let live: ImapView | undefined;
    const problems = await serveLive([{ name: 'u', ...newSide }], async (s) => {
      await session(s.port, 'u', useNewStore);
      live = await imapView(s.port, 'u', ORACLE_PASSWORD);
    });
    assert.deepEqual(problems, []);
    const { summary } = await pass('pass 3', live);
    console.log(summary);
  });
}
