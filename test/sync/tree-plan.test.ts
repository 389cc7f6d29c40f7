import { test } from 'node:test';
import assert from 'node:assert/strict';
import { planTree, type TreeSide } from '../../src/sync/decide/tree-plan.js';
import type { MailboxTreeNodeRecord } from '../../src/sync/records.js';
import { nameHash as nameHashOf } from '../../src/sync/decide/name-hash.js';

const box = (name: string[], guid: string, p: Partial<MailboxTreeNodeRecord> = {}): MailboxTreeNodeRecord => ({
  type: 'node',
  name,
  existence: 'exists',
  mailboxGuid: guid,
  uidValidity: 100,
  uidNext: 1,
  lastRenamedOrCreated: 0,
  subscribed: false,
  lastSubscriptionChange: 0,
  ...p,
});
const side = (nodes: MailboxTreeNodeRecord[], d: Partial<TreeSide['deletes']> = {}): TreeSide => ({
  nodes,
  deletes: { type: 'deletes', hierarchySep: '.', mailboxes: [], dirs: [], unsubscribes: [], ...d },
});
const G = (c: string) => c.repeat(32);

test('a mailbox on one side is created on the other with the same GUID and UIDVALIDITY, dated as there', () => {
  const p = planTree(side([box(['Archive'], G('a'), { uidValidity: 77, lastRenamedOrCreated: 1234 })]), side([]), 'mirror');
  assert.deepEqual(p.slave, [{ op: 'create', name: ['Archive'], guid: G('a'), uidValidity: 77, at: 1234 }]);
  assert.deepEqual(p.master, []);
});

test('two INBOXes with different GUIDs merge onto the larger GUID', () => {
  const p = planTree(side([box(['INBOX'], G('1'))]), side([box(['INBOX'], G('2'))]), 'mirror');
  assert.deepEqual(p.master, [{ op: 'setGuid', name: ['INBOX'], from: G('1'), to: G('2') }]);
  assert.deepEqual(p.slave, []);
});

test('a rename on one side (newer timestamp) is applied on the other', () => {
  const p = planTree(side([box(['Old'], G('a'), { lastRenamedOrCreated: 10 })]), side([box(['New'], G('a'), { lastRenamedOrCreated: 20 })]), 'mirror');
  assert.deepEqual(p.master, [{ op: 'rename', guid: G('a'), from: ['Old'], to: ['New'], at: 20 }]);
  assert.deepEqual(p.slave, []);
});

test('a delete tombstone deletes an unchanged mailbox, but not one with news since the last sync', () => {
  const tomb = { mailboxes: [{ key: G('a'), timestamp: 5 }] };
  const p = planTree(side([box(['X'], G('a'), { changedSinceSync: false })]), side([], tomb), 'mirror');
  assert.deepEqual(p.master, [{ op: 'delete', guid: G('a'), name: ['X'] }]);
  const q = planTree(side([box(['X'], G('a'), { changedSinceSync: true })]), side([], tomb), 'mirror');
  assert.deepEqual(q.slave, [{ op: 'create', name: ['X'], guid: G('a'), uidValidity: 100, at: 0 }]);
});

test('subscriptions: the newer change wins, subscribe wins a tie', () => {
  const p = planTree(
    side([box(['A'], G('a'), { subscribed: true, lastSubscriptionChange: 5 })]),
    side([box(['A'], G('a'), { subscribed: false, lastSubscriptionChange: 9 })]),
    'mirror',
  );
  assert.deepEqual(p.master, [{ op: 'unsubscribe', name: ['A'], timestamp: 9 }]);
  const q = planTree(side([box(['A'], G('a'), { subscribed: true })]), side([box(['A'], G('a'))]), 'mirror');
  assert.deepEqual(q.slave, [{ op: 'subscribe', name: ['A'], timestamp: 0 }]);
});

test('two different mailboxes wanting one name: the older moves aside on both sides', () => {
  // Master renamed G(a) to "B" (t=20) while the slave created an unrelated "B" (G(b), t=10).
  const p = planTree(side([box(['B'], G('a'), { lastRenamedOrCreated: 20 })]), side([box(['A'], G('a'), { lastRenamedOrCreated: 1 }), box(['B'], G('b'), { lastRenamedOrCreated: 10 })]), 'mirror');
  const aside = ['B-bbbbbbbb'];
  assert.deepEqual(p.slave, [
    { op: 'rename', guid: G('a'), from: ['A'], to: ['B'], at: 20 },
    { op: 'rename', guid: G('b'), from: ['B'], to: aside, at: 10 },
  ]);
  assert.deepEqual(p.master, [{ op: 'create', name: aside, guid: G('b'), uidValidity: 100, at: 10 }]);
});

test('backup: the destination mirrors the source and the source is never changed', () => {
  const p = planTree(side([box(['A'], G('a'))]), side([box(['Z'], G('z'))]), 'backup-master-to-slave');
  assert.deepEqual(p.master, []);
  assert.deepEqual(p.slave, [
    { op: 'delete', guid: G('z'), name: ['Z'] },
    { op: 'create', name: ['A'], guid: G('a'), uidValidity: 100, at: 0 },
  ]);
});

test('a directory deleted on one side is not deleted on the other while a mailbox lives below it', () => {
  const dir = (name: string[], p: Partial<MailboxTreeNodeRecord> = {}): MailboxTreeNodeRecord => ({ ...box(name, ''), mailboxGuid: undefined, ...p });
  const hash = nameHashOf(['D'], '.');
  const p = planTree(
    side([], { dirs: [{ key: hash, timestamp: 50 }] }),
    side([dir(['D'], { lastRenamedOrCreated: 10 }), box(['D', 'x'], G('c'))]),
    'mirror',
  );
  assert.deepEqual(p.slave.filter((a) => a.op === 'deleteDir'), []);
});
