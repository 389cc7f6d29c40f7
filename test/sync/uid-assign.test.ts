import { test } from 'node:test';
import assert from 'node:assert/strict';
import { assignUids } from '../../src/sync/decide/uid-assign.js';

test('a mail new on one side keeps its UID when the other side never used it', () => {
  const r = assignUids([{ uid: 6, key: 'a' }], [], 6, 6);
  assert.deepEqual(r.mails, [{ key: 'a', masterUid: 6, slaveUid: undefined, finalUid: 6 }]);
  assert.equal(r.uidNext, 7);
});

test('both sides gave UID 6 to different mails: both get new UIDs 7 and 8 on both sides', () => {
  const r = assignUids([{ uid: 6, key: 'A' }], [{ uid: 6, key: 'B' }], 7, 7);
  assert.deepEqual(
    r.mails.map((m) => [m.key, m.finalUid]),
    [
      ['A', 7],
      ['B', 8],
    ],
  );
  assert.equal(r.uidNext, 9);
});

test('the same mail on both sides with different UIDs is linked, not duplicated', () => {
  const r = assignUids([{ uid: 9, key: 'X' }], [{ uid: 4, key: 'X' }], 10, 5);
  assert.equal(r.mails.length, 1);
  assert.equal(r.mails[0].finalUid, 9); // usable: 9 >= slave UIDNEXT 5
});

test('the same mail with the same UID stays put', () => {
  const r = assignUids([{ uid: 3, key: 'X' }], [{ uid: 3, key: 'X' }], 4, 4);
  assert.deepEqual(r.mails, [{ key: 'X', masterUid: 3, slaveUid: 3, finalUid: 3 }]);
});

test('the result is the same whichever side computes it (inputs are role-ordered)', () => {
  const m = [
    { uid: 5, key: 'k1' },
    { uid: 6, key: 'k2' },
  ];
  const s = [
    { uid: 5, key: 'k3' },
    { uid: 7, key: 'k2' },
  ];
  assert.deepEqual(assignUids(m, s, 7, 8), assignUids([...m].reverse(), [...s].reverse(), 7, 8));
});

test('no final UID is used twice and none is below a side that had a different mail there', () => {
  const r = assignUids(
    [
      { uid: 1, key: 'a' },
      { uid: 2, key: 'b' },
      { uid: 5, key: 'c' },
    ],
    [
      { uid: 1, key: 'd' },
      { uid: 2, key: 'b' },
      { uid: 3, key: 'e' },
    ],
    6,
    4,
  );
  const finals = r.mails.map((m) => m.finalUid);
  assert.equal(new Set(finals).size, finals.length);
  assert.equal(r.mails.find((m) => m.key === 'b')!.finalUid, 2);
  assert.equal(r.mails.find((m) => m.key === 'c')!.finalUid, 5);
  assert.ok(r.mails.find((m) => m.key === 'a')!.finalUid >= 6);
  assert.ok(r.mails.find((m) => m.key === 'd')!.finalUid >= 6);
});
