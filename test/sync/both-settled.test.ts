// bothSettled: runSync waits for both brains, whatever happens to one of them.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { bothSettled } from '../../src/sync/run.js';


const later = <T>(ms: number, f: () => T): Promise<T> => new Promise((resolve, reject) => setTimeout(() => {
  try {
    resolve(f());
  } catch (e) {
    reject(e);
  }
}, ms));

test('both succeed: both results, in order', async () => {
  assert.deepEqual(await bothSettled(later(20, () => 1), later(5, () => 'b')), [1, 'b']);
});

test('one fails early: settles only once the other has finished too, with the first error', async () => {
  let otherDone = false;
  const early = later(1, () => {
    throw new Error('disk full');
  });
  const slow = later(60, () => {
    otherDone = true;
    return 2;
  });
  await assert.rejects(bothSettled(early, slow), /disk full/);
  assert.ok(otherDone, 'returned while the other side was still running');
});

test('both fail: the error raised first wins (the other is the abort it caused)', async () => {
  const cause = later(5, () => {
    throw new Error('EPERM on the uidlist');
  });
  const abort = later(30, () => {
    throw new Error('peer failed: EPERM on the uidlist');
  });
  await assert.rejects(bothSettled(abort, cause), /^Error: EPERM on the uidlist$/);
});
