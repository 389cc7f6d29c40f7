import { test } from 'node:test';
import assert from 'node:assert/strict';
import { planMailbox, type MessageView, type SideView } from '../../src/sync/decide/mailbox-plan.js';
import { Flag } from '../../src/model/flags.js';
import { EMPTY_HEADER_HASH } from '../../src/storage/header-hash.js';

const msg = (uid: number, key: string, p: Partial<MessageView> = {}): MessageView => ({
  uid,
  key,
  kind: 'save',
  flags: 0,
  keywords: [],
  addFlags: 0,
  removeFlags: 0,
  kwAdd: [],
  kwRemove: [],
  changedAt: 0,
  internalDate: 1_700_000_000,
  ...p,
});
const view = (uidNext: number, messages: MessageView[], p: Partial<SideView> = {}): SideView => ({ uidNext, complete: true, messages, expunges: [], ...p });

test('first sync into an empty side copies every mail with its UID', () => {
  const plan = planMailbox({ master: view(4, [msg(1, 'a'), msg(3, 'b')]), slave: view(1, []), lastCommonUid: 0 });
  assert.deepEqual(plan.slave.saves.map((s) => [s.uid, s.key, s.from]), [
    [1, 'a', 'peer'],
    [3, 'b', 'peer'],
  ]);
  assert.deepEqual(plan.master, { expunges: [], flagUpdates: [], saves: [] });
  assert.equal(plan.uidNext, 4);
});

test('UID conflict: both sides move their mail to fresh UIDs and copy the other one', () => {
  const common = [msg(1, 'c', { kind: 'flags' })];
  const plan = planMailbox({
    master: view(3, [...common, msg(2, 'A')], { complete: false }),
    slave: view(3, [...common, msg(2, 'B')], { complete: false }),
    lastCommonUid: 1,
  });
  // Master: moves A 2 -> 3, receives B as 4. Slave: receives A as 3, moves B 2 -> 4.
  assert.deepEqual(plan.master.saves.map((s) => [s.uid, s.key, s.from]), [
    [3, 'A', 'local'],
    [4, 'B', 'peer'],
  ]);
  assert.deepEqual(plan.slave.saves.map((s) => [s.uid, s.key, s.from]), [
    [3, 'A', 'peer'],
    [4, 'B', 'local'],
  ]);
  assert.deepEqual(plan.master.expunges, [{ uid: 2, key: 'A' }]);
  assert.deepEqual(plan.slave.expunges, [{ uid: 2, key: 'B' }]);
  assert.equal(plan.uidNext, 5);
  assert.equal(plan.renumbered, 2);
});

test('with state, an expunge on one side is applied on the other', () => {
  const plan = planMailbox({
    master: view(3, [], { complete: false, expunges: [{ uid: 1, key: 'a' }] }),
    slave: view(3, [], { complete: false }),
    lastCommonUid: 2,
  });
  assert.deepEqual(plan.slave.expunges, [{ uid: 1, key: 'a' }]);
});

test('with state and a complete view, a common mail missing on one side was expunged there', () => {
  const plan = planMailbox({
    master: view(3, [msg(1, 'a', { kind: 'flags' }), msg(2, 'b', { kind: 'flags' })]),
    slave: view(3, [msg(2, 'b', { kind: 'flags' })]),
    lastCommonUid: 2,
  });
  assert.deepEqual(plan.master.expunges, [{ uid: 1, key: 'a' }]);
  assert.equal(plan.slave.saves.length, 0);
});

test('flag changed on one side only is copied to the other', () => {
  const plan = planMailbox({
    master: view(2, [msg(1, 'a', { kind: 'flags', flags: Flag.Seen, addFlags: Flag.Seen })], { complete: false }),
    slave: view(2, [], { complete: false }),
    lastCommonUid: 1,
  });
  assert.deepEqual(plan.slave.flagUpdates, [{ uid: 1, flags: Flag.Seen, keywords: [] }]);
});

test('without state, a mail the other side logged as expunged is expunged, not copied back', () => {
  const plan = planMailbox({
    master: view(3, [msg(1, 'a'), msg(2, 'b')]),
    slave: view(3, [msg(2, 'b')], { expunges: [{ uid: 1, key: 'a' }] }),
    lastCommonUid: 0,
  });
  assert.deepEqual(plan.master.expunges, [{ uid: 1, key: 'a' }]);
  assert.equal(plan.slave.saves.length, 0);
});

test('without state, a mail the other side logged as expunged under another UID (GUID identity) is expunged too', () => {
  // A run that found its UIDs taken saved 'a' as 4 on the slave while the master has it as 3; the
  // user expunged it on the slave before the next run, which has no state.
  const plan = planMailbox({
    master: view(4, [msg(1, 'c'), msg(3, 'a')]),
    slave: view(5, [msg(1, 'c')], { expunges: [{ uid: 4, key: 'a' }] }),
    lastCommonUid: 0,
  });
  assert.deepEqual(plan.master.expunges, [{ uid: 3, key: 'a' }]);
  assert.deepEqual(plan.slave.saves, []);
});

test('with header-hash keys, an expunge logged under another UID counts where the hash is the only one of its kind here', () => {
  // The mbox case of the test above: 'h' is Date + Message-ID of the mail, not a GUID.
  const plan = planMailbox({
    master: view(4, [msg(1, 'c'), msg(3, 'h')]),
    slave: view(5, [msg(1, 'c')], { expunges: [{ uid: 4, key: 'h', at: 1_700_001_000_000 }] }),
    lastCommonUid: 0,
    uniqueKeys: false,
  });
  assert.deepEqual(plan.master.expunges, [{ uid: 3, key: 'h' }]);
  assert.deepEqual(plan.slave.saves, []);
});

test('with header-hash keys, an expunge logged under another UID expunges nothing where the hash may name another mail', () => {
  const cases: [string, MessageView[], string][] = [
    // Two mails here share the hash (a message delivered twice): which one was expunged there?
    ['two mails with the hash', [msg(1, 'c'), msg(3, 'h'), msg(4, 'h')], 'h'],
    // The hash of every mail without Date and Message-ID.
    ['no Date, no Message-ID', [msg(1, 'c'), msg(3, EMPTY_HEADER_HASH)], EMPTY_HEADER_HASH],
  ];
  for (const [what, messages, key] of cases) {
    const plan = planMailbox({
      master: view(6, messages),
      slave: view(6, [msg(1, 'c')], { expunges: [{ uid: 5, key }] }),
      lastCommonUid: 0,
      uniqueKeys: false,
    });
    // Kept: moved to fresh UIDs here (the slave used them up) and copied there.
    const n = messages.filter((m) => m.key === key).length;
    assert.equal(plan.master.saves.filter((s) => s.key === key && s.from === 'local').length, n, `${what}: kept`);
    assert.equal(plan.slave.saves.filter((s) => s.key === key).length, n, `${what}: copied`);
  }
  // A mail that arrived here (INTERNALDATE) after the other side expunged its twin: a copy
  // delivered again (a list's resend keeps Date and Message-ID), not the mail expunged there.
  const later = planMailbox({
    master: view(6, [msg(1, 'c'), msg(3, 'h', { internalDate: 1_700_002_000, changedAt: 1_700_002_000_000 })]),
    slave: view(6, [msg(1, 'c')], { expunges: [{ uid: 5, key: 'h', at: 1_700_001_000_000 }] }),
    lastCommonUid: 0,
    uniqueKeys: false,
  });
  assert.equal(later.slave.saves.filter((x) => x.key === 'h').length, 1, 'a later copy is kept and copied');
  assert.deepEqual(later.master.expunges.filter((e) => e.uid === 3 && e.key === 'h' && !later.master.saves.some((x) => x.sourceUid === 3)), []);
  // One that arrived before and only had its flags changed since is that mail: it goes.
  const flagged = planMailbox({
    master: view(4, [msg(1, 'c'), msg(3, 'h', { internalDate: 1_700_000_500, changedAt: 1_700_002_000_000 })]),
    slave: view(5, [msg(1, 'c')], { expunges: [{ uid: 4, key: 'h', at: 1_700_001_000_000 }] }),
    lastCommonUid: 0,
    uniqueKeys: false,
  });
  assert.deepEqual(flagged.master.expunges, [{ uid: 3, key: 'h' }]);
  // With GUIDs the time does not matter: a GUID names one mail.
  const guid = planMailbox({
    master: view(4, [msg(1, 'c'), msg(3, 'g', { internalDate: 1_700_002_000 })]),
    slave: view(5, [msg(1, 'c')], { expunges: [{ uid: 4, key: 'g', at: 1_700_001_000_000 }] }),
    lastCommonUid: 0,
  });
  assert.deepEqual(guid.master.expunges, [{ uid: 3, key: 'g' }]);
  // Under the same UID it counts, as before: the mail there was that mail.
  const same = planMailbox({
    master: view(4, [msg(1, 'c'), msg(3, EMPTY_HEADER_HASH)]),
    slave: view(4, [msg(1, 'c')], { expunges: [{ uid: 3, key: EMPTY_HEADER_HASH }] }),
    lastCommonUid: 0,
    uniqueKeys: false,
  });
  assert.deepEqual(same.master.expunges, [{ uid: 3, key: EMPTY_HEADER_HASH }]);
});

test('without state and without any log, a mail missing on one side is copied (never lost)', () => {
  const plan = planMailbox({ master: view(3, [msg(1, 'a'), msg(2, 'b')]), slave: view(3, [msg(2, 'b')]), lastCommonUid: 0 });
  // UID 1 was allocated on the slave already (UIDNEXT 3), so the copy gets a fresh UID everywhere.
  assert.deepEqual(plan.slave.saves.map((s) => [s.uid, s.key]), [[3, 'a']]);
  assert.deepEqual(plan.master.saves.map((s) => [s.uid, s.key, s.from]), [[3, 'a', 'local']]);
  assert.deepEqual(plan.master.expunges, [{ uid: 1, key: 'a' }]); // the move's old UID
});

test('a mail present twice on one side (interrupted UID move) is kept once, not copied twice', () => {
  const plan = planMailbox({ master: view(10, [msg(5, 'g'), msg(9, 'g')]), slave: view(6, [msg(5, 'g')]), lastCommonUid: 0 });
  assert.deepEqual(plan.master.expunges, [{ uid: 9, key: 'g' }]);
  assert.equal(plan.slave.saves.length, 0);
  assert.equal(plan.master.saves.length, 0);
});

test('with header-hash keys, two mails sharing a key are two mails: neither is dropped', () => {
  const plan = planMailbox({ master: view(3, [msg(1, 'h'), msg(2, 'h')]), slave: view(1, []), lastCommonUid: 0, uniqueKeys: false });
  assert.deepEqual(plan.master.expunges, []);
  assert.deepEqual(plan.slave.saves.map((s) => s.uid), [1, 2]);
});
