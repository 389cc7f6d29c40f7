import { test } from 'node:test';
import assert from 'node:assert/strict';
import { planBackup } from '../../src/sync/decide/backup-plan.js';
import type { MessageView, SideView } from '../../src/sync/decide/mailbox-plan.js';
import { Flag } from '../../src/model/flags.js';

const msg = (uid: number, key: string, flags = 0): MessageView => ({
  uid,
  key,
  kind: 'save',
  flags,
  keywords: [],
  addFlags: 0,
  removeFlags: 0,
  kwAdd: [],
  kwRemove: [],
  changedAt: 0,
  internalDate: 1,
});
const view = (uidNext: number, messages: MessageView[]): SideView => ({ uidNext, complete: true, messages, expunges: [] });

test('backup copies missing mails, reverts flags and expunges destination-only mails', () => {
  const p = planBackup(view(5, [msg(1, 'a', Flag.Seen), msg(2, 'b'), msg(4, 'd')]), view(4, [msg(1, 'a'), msg(2, 'b'), msg(3, 'x')]), true);
  assert.equal(p.rebuild, false);
  assert.deepEqual(p.dest.expunges, [{ uid: 3, key: 'x' }]);
  assert.deepEqual(p.dest.flagUpdates, [{ uid: 1, flags: Flag.Seen, keywords: [] }]);
  assert.deepEqual(p.dest.saves.map((s) => s.uid), [4]);
  assert.equal(p.uidNext, 5);
});

test('a destination UID holding a different mail forces a rebuild, not a failure', () => {
  const p = planBackup(view(3, [msg(1, 'a'), msg(2, 'b')]), view(3, [msg(1, 'a'), msg(2, 'other')]), true);
  assert.equal(p.rebuild, true);
  assert.match(p.reason!, /UID 2/);
  assert.deepEqual(p.dest.saves.map((s) => s.uid), [1, 2]);
});

test('a destination UIDNEXT past the source forces a rebuild', () => {
  const p = planBackup(view(2, [msg(1, 'a')]), view(9, [msg(1, 'a')]), true);
  assert.equal(p.rebuild, true);
});

test('a source mail below the destination UIDNEXT that the destination lacks forces a rebuild', () => {
  const p = planBackup(view(4, [msg(1, 'a'), msg(2, 'b')]), view(4, [msg(1, 'a')]), true);
  assert.equal(p.rebuild, true);
});
