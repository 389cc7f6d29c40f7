// Oracle 2: changes an IMAP client makes through a real Dovecot serving the *live* maildirs
// (APPEND with flags and INTERNALDATE, STORE flags/keywords, EXPUNGE, CREATE, RENAME of a folder
// with a child, DELETE, SUBSCRIBE/UNSUBSCRIBE) are mirrored by our engine so that afterwards a
// client sees exactly the same on both sides; first with changes on A, then on B, then on both
// in one round (including a UID conflict). Dovecot leaves its index files (dovecot.index*,
// dovecot.list.index*, dovecot.mailbox.log) in the maildirs: our engine must ignore them, and
// Dovecot must still serve a consistent view after we changed files and uidlists behind its
// indexes. We run as root; the maildirs belong to Dovecot's mail user and must stay that way.
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { makeMessage } from '../helpers/corpus.js';
import { ORACLE_PASSWORD, dovecotSkipReason, findMailbox, imapView, type ImapView } from '../helpers/dovecot.js';
import {
  T0,
  append,
  assertMirrorNoop,
  assertSameView,
  buildCorpus,
  bySha,
  dovecotIndexFiles,
  filesNotOwnedByMailUser,
  giveToDovecot,
  inBox,
  loc,
  messagesOf,
  mirrorOk,
  serveLive,
  session,
  tempMailRoot,
  viewsWithLog,
  type Layout,
} from './fixture.js';

const skip = dovecotSkipReason();

const names = (v: ImapView): string[] => v.mailboxes.map((m) => m.name.join('/') + (m.status ? '' : ' (noselect)'));
const subs = (v: ImapView): string[] => v.subscriptions.map((s) => s.join('/'));
const flagsOf = (v: ImapView, box: string, uid: number): string[] | undefined => messagesOf(v, box).find((m) => m.uid === uid)?.flags;

for (const [layoutA, layoutB] of [
  ['maildir++', 'maildir++'],
  ['fs', 'maildir++'],
] as const) {
  const title = layoutA === layoutB ? 'Maildir++ on both sides' : `A LAYOUT=${layoutA}, B ${layoutB}`;
  test(`changes made through Dovecot on A, on B, then on both are mirrored; IMAP clients see the same on both sides (${title})`, { skip }, (t) =>
    liveRounds(t, layoutA, layoutB),
  );
}

async function liveRounds(t: TestContext, layoutA: Layout, layoutB: Layout): Promise<void> {
  const a = buildCorpus(tempMailRoot('oracle-live-a-'), layoutA);
  const b = tempMailRoot('oracle-live-b-');
  const A = loc(a, layoutA);
  const B = loc(b, layoutB);
  const sideA = { root: a, layout: layoutA };
  const sideB = { root: b, layout: layoutB };
  await mirrorOk(A, B, 'initial mirror');
  giveToDovecot(a);
  giveToDovecot(b);
  let last = (await viewsWithLog([sideA, sideB])).views;
  assertSameView(last[0]!, last[1]!, ['A', 'B'], 'after the initial mirror');

  /**
   * After changes were made through Dovecot: mirror, check a second mirror is a no-op, that
   * Dovecot (with its now stale indexes in the maildirs) serves identical views of A and B
   * without complaints, that those views equal `expected` (what the client saw live where it
   * made its changes), and that everything still belongs to the mail user.
   */
  const mirrorAndCheck = async (what: string, expected?: ImapView): Promise<ImapView> => {
    await mirrorOk(A, B, what);
    await assertMirrorNoop(A, B, what);
    assert.deepEqual(filesNotOwnedByMailUser(a), [], `${what}: A still belongs to the mail user`);
    assert.deepEqual(filesNotOwnedByMailUser(b), [], `${what}: B still belongs to the mail user`);
    const { views, problems } = await viewsWithLog([sideA, sideB]);
    assert.deepEqual(problems, [], `${what}: Dovecot opened the mirrored maildirs (with its old indexes) without complaints`);
    const [va, vb] = views as [ImapView, ImapView];
    assertSameView(va, vb, ['A', 'B'], what);
    if (expected) assertSameView(expected, va, ['live view where the changes were made', 'mirrored'], what);
    last = views;
    return va;
  };

  /** The live view at the start of a session must be what the copies showed after the last mirror. */
  const assertLiveIsLast = (live: ImapView, i: 0 | 1, what: string): void =>
    assertSameView(last[i]!, live, ['copy after mirror', 'live'], `${what}: Dovecot serving the real maildir`);

  await t.test('round 1: APPEND, STORE, EXPUNGE, CREATE, RENAME with a child, DELETE, (UN)SUBSCRIBE on A', async () => {
    const body1 = makeMessage('live-r1-1', { crlf: true });
    const body2 = makeMessage('live-r1-2', { eightBit: true });
    let u1 = 0;
    let after: ImapView | undefined;
    const problems = await serveLive([{ name: 'a', ...sideA }], async (server) => {
      const before = await imapView(server.port, 'a', ORACLE_PASSWORD);
      assertLiveIsLast(before, 0, 'round 1');
      await session(server.port, 'a', async (c) => {
        u1 = await append(c, ['INBOX'], body1, ['\\Seen', '$Label1'], T0 + 86_400 * 30);
        assert.equal(u1, findMailbox(before, 'INBOX')!.status!.uidNext, 'APPEND takes UIDNEXT');
        await append(c, ['Archive', '2024'], body2, ['\\Flagged'], T0 + 86_400 * 31);
        await inBox(c, ['INBOX'], async () => {
          await c.messageFlagsAdd('2', ['\\Seen', 'Work'], { uid: true });
          await c.messageFlagsRemove('7', ['\\Deleted', '\\Draft'], { uid: true });
          await c.messageFlagsRemove('8', ['$Forwarded'], { uid: true });
          assert.equal(await c.messageDelete('3', { uid: true }), true);
        });
        await c.mailboxCreate(['Projects', 'Q2']);
        await c.mailboxCreate(['Neu']);
        await c.mailboxRename(['Archive'], ['Alt']);
        await c.mailboxDelete(['Entwürfe']);
        assert.equal(await c.mailboxUnsubscribe(['INBOX']), true);
        // Dovecot refuses SUBSCRIBE to a folder that doesn't exist ("NO Mailbox doesn't exist");
        // DELETE leaves the subscription of the deleted Entwürfe behind, though.
        assert.equal(await c.mailboxSubscribe(['Zukunft']), false);
        assert.equal(await c.mailboxSubscribe(['Alt', '2024']), true);
      });
      after = await imapView(server.port, 'a', ORACLE_PASSWORD);
    });
    assert.deepEqual(problems, [], 'Dovecot logged no problems while serving A');
    assert.ok(after);
    assert.ok(dovecotIndexFiles(a).some((f) => f.startsWith('dovecot.index')), 'Dovecot left its index files in A');
    assert.ok(dovecotIndexFiles(a).some((f) => f.startsWith('dovecot.list.index')), 'Dovecot left its mailbox list index in A');

    const v = await mirrorAndCheck('round 1', after);
    // Each change, as seen on B (== v).
    assert.deepEqual(names(v), ['Alt', 'Alt/2024', 'Empty', 'INBOX', 'Neu', 'Projects (noselect)', 'Projects/Q1', 'Projects/Q2', 'Q&A', 'Sent Items']);
    const inbox = messagesOf(v, 'INBOX');
    const m1 = bySha(inbox, body1);
    assert.deepEqual(m1 && [m1.uid, m1.flags, m1.internalDate], [u1, ['$Label1', '\\Seen'], T0 + 86_400 * 30], 'appended with flags and date');
    assert.deepEqual(bySha(messagesOf(v, 'Alt/2024'), body2)?.flags, ['\\Flagged'], 'appended into the renamed child');
    assert.deepEqual(flagsOf(v, 'INBOX', 2), ['Work', '\\Draft', '\\Seen']);
    assert.deepEqual(flagsOf(v, 'INBOX', 7), ['\\Answered', '\\Flagged', '\\Seen']);
    assert.deepEqual(flagsOf(v, 'INBOX', 8), []);
    assert.equal(flagsOf(v, 'INBOX', 3), undefined, 'UID 3 expunged');
    // Dovecot's RENAME doesn't move subscriptions; imapflow's CREATE subscribes.
    assert.deepEqual(subs(v).sort(), ['Alt/2024', 'Archive/2024', 'Entwürfe', 'Gone/Nowhere', 'Neu', 'Projects/Q1', 'Projects/Q2']);
    assert.deepEqual(dovecotIndexFiles(b), [], 'our mirror copies none of Dovecot\'s index files');
  });

  await t.test('round 2: the same kinds of changes on B (Dovecot opens B for the first time)', async () => {
    const body3 = makeMessage('live-r2-3');
    const body4 = makeMessage('live-r2-4', { fromLine: true });
    let after: ImapView | undefined;
    let u4 = 0;
    const problems = await serveLive([{ name: 'b', ...sideB }], async (server) => {
      const before = await imapView(server.port, 'b', ORACLE_PASSWORD);
      assertLiveIsLast(before, 1, 'round 2');
      const u1 = messagesOf(before, 'INBOX').at(-1)!.uid;
      await session(server.port, 'b', async (c) => {
        await append(c, ['Neu'], body3, [], T0 + 86_400 * 40);
        u4 = await append(c, ['INBOX'], body4, ['\\Answered', 'Work'], T0 + 86_400 * 41);
        await inBox(c, ['INBOX'], async () => {
          await c.messageFlagsRemove(String(u1), ['\\Seen'], { uid: true });
          await c.messageFlagsRemove('2', ['Work'], { uid: true });
          assert.equal(await c.messageDelete('4:5', { uid: true }), true);
        });
        await c.mailboxCreate(['Alt', '2024', 'Q3']);
        // The name of a folder deleted on A in round 1, now a new, different folder.
        await c.mailboxCreate(['Entwürfe']);
        await c.mailboxRename(['Projects', 'Q2'], ['Q2']);
        await c.mailboxDelete(['Empty']);
        assert.equal(await c.mailboxSubscribe(['INBOX']), true);
        assert.equal(await c.mailboxUnsubscribe(['Gone', 'Nowhere']), true);
      });
      after = await imapView(server.port, 'b', ORACLE_PASSWORD);
    });
    assert.deepEqual(problems, [], 'Dovecot logged no problems while serving B');
    assert.ok(after);
    const v = await mirrorAndCheck('round 2', after);
    assert.deepEqual(names(v), ['Alt', 'Alt/2024', 'Alt/2024/Q3', 'Entwürfe', 'INBOX', 'Neu', 'Projects (noselect)', 'Projects/Q1', 'Q&A', 'Q2', 'Sent Items']);
    assert.deepEqual(messagesOf(v, 'Entwürfe'), [], 'the recreated folder is new and empty');
    assert.deepEqual(bySha(messagesOf(v, 'Neu'), body3)?.internalDate, T0 + 86_400 * 40);
    assert.deepEqual(bySha(messagesOf(v, 'INBOX'), body4)?.uid, u4);
    assert.deepEqual(bySha(messagesOf(v, 'INBOX'), body4)?.flags, ['Work', '\\Answered']);
    assert.deepEqual(flagsOf(v, 'INBOX', 2), ['\\Draft', '\\Seen']);
    assert.equal(flagsOf(v, 'INBOX', 4), undefined);
    assert.equal(flagsOf(v, 'INBOX', 5), undefined);
    assert.deepEqual(subs(v).sort(), ['Alt/2024', 'Alt/2024/Q3', 'Archive/2024', 'Entwürfe', 'INBOX', 'Neu', 'Projects/Q1', 'Projects/Q2']);
  });

  await t.test('round 3: changes on both sides in one round, incl. new mail on both sides with the same UID', async () => {
    const bodyA = makeMessage('live-r3-a');
    const bodyB = makeMessage('live-r3-b', { crlf: true });
    const bodyNeu = makeMessage('live-r3-neu');
    let uidA = 0;
    let uidB = 0;
    let nextBefore = 0;
    const problems = await serveLive(
      [
        { name: 'a', ...sideA },
        { name: 'b', ...sideB },
      ],
      async (server) => {
        assertLiveIsLast(await imapView(server.port, 'a', ORACLE_PASSWORD), 0, 'round 3, A');
        assertLiveIsLast(await imapView(server.port, 'b', ORACLE_PASSWORD), 1, 'round 3, B');
        nextBefore = findMailbox(last[0]!, 'INBOX')!.status!.uidNext;
        await session(server.port, 'a', async (c) => {
          uidA = await append(c, ['INBOX'], bodyA, ['\\Seen'], T0 + 86_400 * 50);
          await inBox(c, ['INBOX'], async () => {
            await c.messageFlagsAdd('1', ['\\Flagged'], { uid: true });
            await c.messageFlagsAdd('6', ['\\Deleted'], { uid: true });
            await c.messageDelete('6', { uid: true });
          });
          await c.mailboxCreate(['VonA']);
          await c.mailboxRename(['Neu'], ['Neu2']);
          assert.equal(await c.mailboxUnsubscribe(['Archive', '2024']), true);
        });
        await session(server.port, 'b', async (c) => {
          uidB = await append(c, ['INBOX'], bodyB, ['\\Flagged'], T0 + 86_400 * 51);
          await inBox(c, ['INBOX'], async () => {
            await c.messageFlagsAdd('1', ['$Label2'], { uid: true });
            await c.messageFlagsAdd('6', ['\\Answered'], { uid: true });
          });
          await c.mailboxCreate(['VonB']);
          await append(c, ['Neu'], bodyNeu, ['\\Seen'], T0 + 86_400 * 52);
          assert.equal(await c.mailboxSubscribe(['Alt']), true);
        });
      },
    );
    assert.deepEqual(problems, [], 'Dovecot logged no problems while serving A and B');
    assert.equal(uidA, nextBefore, 'A gave its new mail UIDNEXT');
    assert.equal(uidB, nextBefore, 'B gave its new mail the same UID');

    const v = await mirrorAndCheck('round 3');
    assert.deepEqual(names(v), ['Alt', 'Alt/2024', 'Alt/2024/Q3', 'Entwürfe', 'INBOX', 'Neu2', 'Projects (noselect)', 'Projects/Q1', 'Q&A', 'Q2', 'Sent Items', 'VonA', 'VonB']);
    const inbox = messagesOf(v, 'INBOX');
    const ma = bySha(inbox, bodyA);
    const mb = bySha(inbox, bodyB);
    assert.ok(ma && mb, 'both new mails are on both sides');
    assert.deepEqual([ma.flags, mb.flags], [['\\Seen'], ['\\Flagged']]);
    assert.equal(flagsOf(v, 'INBOX', nextBefore), undefined, `the conflicting UID ${nextBefore} is gone`);
    assert.ok(ma.uid > nextBefore && mb.uid > nextBefore && ma.uid !== mb.uid, `new UIDs ${ma.uid}, ${mb.uid} above ${nextBefore}`);
    assert.ok(findMailbox(v, 'INBOX')!.status!.uidNext > Math.max(ma.uid, mb.uid));
    assert.deepEqual(flagsOf(v, 'INBOX', 1), ['$Label2', '\\Flagged', '\\Seen'], 'flag changes from both sides merge');
    assert.equal(flagsOf(v, 'INBOX', 6), undefined, 'an expunge wins over a flag change on the other side');
    // Mail saved on B into the folder A renamed follows it.
    assert.deepEqual(bySha(messagesOf(v, 'Neu2'), bodyNeu)?.flags, ['\\Seen']);
    assert.equal(messagesOf(v, 'Neu2').length, 2);
    assert.deepEqual(subs(v).sort(), ['Alt', 'Alt/2024', 'Alt/2024/Q3', 'Entwürfe', 'INBOX', 'Neu', 'Projects/Q1', 'Projects/Q2', 'VonA', 'VonB']);
  });

  await t.test('finally: Dovecot can still write everywhere in both live maildirs after all our writes', async () => {
    // The copies the views are taken from are chowned afresh; only the live dirs show whether
    // the files and directories we created (as root) stay usable for Dovecot's mail user.
    const problems = await serveLive(
      [
        { name: 'a', ...sideA },
        { name: 'b', ...sideB },
      ],
      async (server) => {
        for (const [user, i] of [['a', 0], ['b', 1]] as const) {
          assertLiveIsLast(await imapView(server.port, user, ORACLE_PASSWORD), i, `final, ${user}`);
          await session(server.port, user, async (c) => {
            for (const box of last[i]!.mailboxes) {
              if (!box.status) continue;
              await append(c, box.name, makeMessage(`live-final-${user}-${box.name.join('/')}`), [], T0 + 86_400 * 60);
              // Every message file renamed (flag change) and the uidlist rewritten (expunge).
              await inBox(c, box.name, async () => {
                assert.equal(await c.messageFlagsAdd('1:*', ['$Checked'], { uid: true }), true);
                assert.equal(await c.messageDelete(String(box.status!.uidNext), { uid: true }), true);
              });
            }
          });
        }
      },
    );
    assert.deepEqual(problems, [], 'Dovecot could write into every mailbox without errors');
    const v = await mirrorAndCheck('final round');
    for (const box of v.mailboxes) {
      if (box.status) assert.ok(box.status.messages.every((m) => m.flags.includes('$Checked')), `${box.name.join('/')}: every message got the flag`);
    }
  });
}
