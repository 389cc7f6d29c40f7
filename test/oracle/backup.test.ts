// Oracle 4: backup and -R as an IMAP client sees them. A corpus Maildir that Dovecot has been
// serving is backed up into an empty Maildir and into an empty mbox location; afterwards a real
// Dovecot serves source and destination identically (folders, \Noselect parents, subscriptions,
// UIDVALIDITY, UIDNEXT, UIDs, flags and keywords, INTERNALDATE, RFC822.SIZE, bytes) and the source
// is byte for byte what it was (a backup never writes its source). Then a client changes the
// destination through Dovecot (APPEND, STORE, EXPUNGE, CREATE + APPEND, DELETE, UNSUBSCRIBE): the
// next backup reverts all of it (rebuilding what cannot be fixed in place: an expunged UID can't
// be given out again) so that Dovecot, with its now stale index files in the destination, shows
// the source's view again; a second backup finds nothing to do. Finally a client damages the
// source (EXPUNGE, STORE, DELETE, APPEND) and `-R` restores it from the backup: the client sees
// exactly what it saw before the damage, and the backup is not touched.
//
// Why the source is first served by Dovecot: a Maildir nobody indexed has no dovecot-uidlist,
// and Dovecot then picks a new time-based UIDVALIDITY on every look (and a backup must not write
// one into its source), so there would be nothing stable to compare. A real source has one.
//
// mbox: a mailbox file cannot have child mailboxes, so the mbox backup starts from the corpus
// variant mbox can hold (CorpusOptions.mbox: Archive is a \Noselect parent). Dovecot serves mbox
// messages exactly like Maildir ones (whatever the line ends in the file: served with CRLF,
// RFC822.SIZE counted with CRLF), so the views need no projection at all; mbox cannot keep message
// GUIDs, but GUIDs are not part of what IMAP shows.
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { makeMessage } from '../helpers/corpus.js';
import { ORACLE_PASSWORD, dovecotSkipReason, imapView, type ImapView } from '../helpers/dovecot.js';
import { mirror, type MirrorRun } from '../helpers/mirror.js';
import { hashTree } from '../helpers/tmp.js';
import {
  T0,
  append,
  assertSameView,
  buildCorpus,
  bySha,
  corpusCounts,
  giveToDovecot,
  inBox,
  messagesOf,
  serveLive,
  session,
  sideLoc,
  tempMailRoot,
  viewsWithLog,
  type CorpusOptions,
  type Side,
} from './fixture.js';

const skip = dovecotSkipReason();

/**
 * `dsync -o mail_location=LOCAL backup REMOTE`: REMOTE becomes a copy of LOCAL; with `reverse`
 * (-R) LOCAL becomes a copy of REMOTE. Asserts exit code 0.
 */
async function backupOk(local: Side, remote: Side, what: string, reverse = false): Promise<MirrorRun> {
  const r = await mirror(sideLoc(local), sideLoc(remote), { backup: true, reverse });
  assert.equal(r.exitCode, 0, `${what}: exit ${r.exitCode}\n${r.log.join('\n')}`);
  return r;
}

/** Views of the given stores (Dovecot gets copies), asserting Dovecot logged no problems. */
async function views(sides: Side[], what: string): Promise<ImapView[]> {
  const { views: v, problems } = await viewsWithLog(sides);
  assert.deepEqual(problems, [], `${what}: Dovecot served the stores (with whatever index files it left in them earlier) without complaints`);
  return v;
}

/** The view shows the (mbox-able or full) corpus: guards against comparing two equally empty views. */
function assertIsCorpus(v: ImapView, opts: CorpusOptions, what: string): void {
  for (const [box, n] of corpusCounts(opts)) assert.equal(messagesOf(v, box).length, n, `${what}: messages in ${box}`);
  assert.deepEqual(v.subscriptions, [['Archive', '2024'], ['Entwürfe'], ['Gone', 'Nowhere'], ['INBOX'], ['Projects', 'Q1']], `${what}: subscriptions`);
}

const names = (v: ImapView): string[] => v.mailboxes.map((m) => m.name.join('/') + (m.status ? '' : ' (noselect)'));

for (const format of ['maildir', 'mbox'] as const) {
  test(`backup of a Maildir into an empty ${format}: identical over IMAP, source untouched, destination changes reverted, -R restores`, { skip }, (t) =>
    backupRounds(t, format),
  );
}

async function backupRounds(t: TestContext, format: 'maildir' | 'mbox'): Promise<void> {
  const opts: CorpusOptions = { mbox: format === 'mbox' };
  const src: Side = { root: buildCorpus(tempMailRoot('oracle-backup-src-'), 'maildir++', opts) };
  const dst: Side = { root: tempMailRoot(`oracle-backup-${format}-`), format };
  giveToDovecot(src.root);
  // The user's Maildir as Dovecot has been serving it (see the file comment).
  let original: ImapView | undefined;
  const seedProblems = await serveLive([{ name: 'u', ...src }], async (server) => {
    original = await imapView(server.port, 'u', ORACLE_PASSWORD);
  });
  assert.deepEqual(seedProblems, []);
  assert.ok(original);
  assertIsCorpus(original, opts, 'the source');

  await t.test('the first backup: identical views, the source unchanged, a second backup does nothing', async () => {
    const before = await hashTree(src.root);
    const r = await backupOk(src, dst, 'first backup');
    assert.ok(r.summary.length > 0, 'the first backup reports what it created');
    assert.equal(await hashTree(src.root), before, 'the backup wrote nothing into its source');
    const [vs, vd] = await views([src, dst], 'first backup');
    assertSameView(original!, vs!, ['source before', 'source after'], 'first backup');
    assertSameView(vs!, vd!, ['source', `${format} backup`], 'first backup');
    assert.deepEqual((await backupOk(src, dst, 'second backup')).summary, [], 'a second backup finds nothing to do');
    assert.equal(await hashTree(src.root), before);
  });

  await t.test('changes made on the destination through Dovecot are reverted by the next backup', async () => {
    giveToDovecot(dst.root);
    let changed: ImapView | undefined;
    const problems = await serveLive([{ name: 'd', ...dst }], async (server) => {
      await session(server.port, 'd', async (c) => {
        await append(c, ['INBOX'], makeMessage('backup-dst-new', { crlf: true }), ['\\Seen', 'DestOnly'], T0 + 86_400 * 30);
        await append(c, ['Archive', '2024'], makeMessage('backup-dst-new-2'), [], T0 + 86_400 * 31);
        await inBox(c, ['INBOX'], async () => {
          await c.messageFlagsAdd('1', ['\\Flagged', 'junk'], { uid: true });
          await c.messageFlagsRemove('4', ['\\Seen'], { uid: true });
          assert.equal(await c.messageDelete('2', { uid: true }), true);
        });
        await inBox(c, ['Archive', '2024'], async () => {
          assert.equal(await c.messageDelete('3', { uid: true }), true);
        });
        // imapflow's CREATE also subscribes.
        await c.mailboxCreate(['Scratch']);
        await append(c, ['Scratch'], makeMessage('backup-scratch'), ['\\Draft'], T0 + 86_400 * 32);
        await c.mailboxDelete(['Sent Items']);
        assert.equal(await c.mailboxUnsubscribe(['INBOX']), true);
      });
      changed = await imapView(server.port, 'd', ORACLE_PASSWORD);
    });
    assert.deepEqual(problems, [], 'Dovecot logged no problems while changing the destination');
    assert.ok(changed);
    assert.ok(names(changed).includes('Scratch') && !names(changed).includes('Sent Items'), 'the changes happened');

    const before = await hashTree(src.root);
    const r = await backupOk(src, dst, 'backup after destination changes');
    assert.equal(await hashTree(src.root), before, 'the backup wrote nothing into its source');
    assert.ok(r.log.some((l) => /rebuild/.test(l)), 'INBOX and Archive/2024 cannot be fixed in place and are rebuilt, and this is said');
    const [vs, vd] = await views([src, dst], 'backup after destination changes');
    assertSameView(vs!, vd!, ['source', `${format} backup`], 'backup after destination changes');
    assertSameView(original!, vd!, ['source before', `${format} backup`], 'backup after destination changes');
    assert.deepEqual((await backupOk(src, dst, 'backup again')).summary, [], 'then a backup finds nothing to do');
  });

  await t.test('-R restores a damaged source from the backup; the backup is not touched', async () => {
    const lost = makeMessage('backup-src-damage');
    const problems = await serveLive([{ name: 's', ...src }], async (server) => {
      await session(server.port, 's', async (c) => {
        await inBox(c, ['INBOX'], async () => {
          assert.equal(await c.messageDelete('1:3', { uid: true }), true);
          await c.messageFlagsSet('5', ['$Junk'], { uid: true });
        });
        await c.mailboxDelete(['Entwürfe']);
        await append(c, ['Projects', 'Q1'], lost, ['\\Seen'], T0 + 86_400 * 40);
      });
    });
    assert.deepEqual(problems, []);
    const damaged = (await views([src], 'damaged source'))[0]!;
    assert.ok(bySha(messagesOf(damaged, 'Projects/Q1'), lost) && !names(damaged).includes('Entwürfe'), 'the damage happened');

    const before = await hashTree(dst.root);
    await backupOk(src, dst, 'restore (-R)', true);
    assert.equal(await hashTree(dst.root), before, '-R wrote nothing into the backup');
    const [vs, vd] = await views([src, dst], 'restore (-R)');
    assertSameView(vd!, vs!, [`${format} backup`, 'restored source'], 'restore (-R)');
    assertSameView(original!, vs!, ['source before the damage', 'restored source'], 'restore (-R)');
    const again = await mirror(sideLoc(src), sideLoc(dst), { backup: true, reverse: true });
    assert.deepEqual(again.summary, [], 'a second -R finds nothing to do');
  });
}
