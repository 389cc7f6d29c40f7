import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mergeFlags, type FlagSide } from '../../src/sync/decide/flag-merge.js';
import { Flag } from '../../src/model/flags.js';

const side = (p: Partial<FlagSide>): FlagSide => ({ flags: 0, keywords: [], addFlags: 0, removeFlags: 0, kwAdd: [], kwRemove: [], changedAt: 0, ...p });

test('independent changes on both sides are combined per flag', () => {
  const r = mergeFlags(side({ flags: Flag.Seen, addFlags: Flag.Seen }), side({ flags: Flag.Flagged, addFlags: Flag.Flagged }));
  assert.equal(r.flags, Flag.Seen | Flag.Flagged);
});

test('a removal on one side wins over an unchanged other side', () => {
  const r = mergeFlags(side({ flags: 0, removeFlags: Flag.Seen }), side({ flags: Flag.Seen }));
  assert.equal(r.flags, 0);
});

test('conflicting changes: the later change wins, the master on a tie', () => {
  const m = side({ flags: Flag.Seen, addFlags: Flag.Seen, changedAt: 100 });
  const s = side({ flags: 0, removeFlags: Flag.Seen, changedAt: 200 });
  assert.equal(mergeFlags(m, s).flags, 0);
  assert.equal(mergeFlags({ ...m, changedAt: 200 }, s).flags, Flag.Seen);
});

test('keywords merge like flags', () => {
  const r = mergeFlags(
    side({ keywords: ['$Junk', 'work'], kwAdd: ['work'] }),
    side({ keywords: ['$Junk', 'home'], kwAdd: ['home'], kwRemove: [] }),
  );
  assert.deepEqual(r.keywords, ['$Junk', 'home', 'work']);
  const r2 = mergeFlags(side({ keywords: ['a'] }), side({ keywords: [], kwRemove: ['a'] }));
  assert.deepEqual(r2.keywords, []);
});
