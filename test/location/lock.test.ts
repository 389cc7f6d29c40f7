// createInPlace: a file that appears complete and with its owner, or not at all.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createInPlace } from '../../src/location/lock.js';

function tempDir(t: { after: (fn: () => void) => void }): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'dsync-lock-'));
  t.after(() => fs.rmSync(d, { recursive: true, force: true }));
  return d;
}

test('createInPlace makes the file with its content and leaves no private name behind', (t) => {
  const d = tempDir(t);
  const p = path.join(d, 'dsync.lock');
  // A private name left by an earlier run with the same pid is reused, not an obstacle.
  fs.writeFileSync(`${p}.${process.pid}.tmp.lock`, 'stale leftover');
  createInPlace(p, '123 host\n', undefined, 'lock file');
  assert.equal(fs.readFileSync(p, 'utf8'), '123 host\n');
  assert.equal(fs.statSync(p).mode & 0o777, 0o600);
  assert.deepEqual(fs.readdirSync(d), ['dsync.lock']);
});

test('createInPlace never replaces an existing file: EEXIST, the file as it was, no private name left', (t) => {
  const d = tempDir(t);
  const p = path.join(d, 'dsync.lock');
  fs.writeFileSync(p, 'holder\n');
  assert.throws(() => createInPlace(p, 'intruder\n', undefined, 'lock file'), (e: NodeJS.ErrnoException) => e.code === 'EEXIST');
  assert.equal(fs.readFileSync(p, 'utf8'), 'holder\n');
  assert.deepEqual(fs.readdirSync(d), ['dsync.lock']);
});

test('createInPlace gives the file its owner before it appears (as root)', (t) => {
  if (process.getuid?.() !== 0) {
    t.skip('not running as root: cannot give files to another user');
    return;
  }
  const d = tempDir(t);
  const p = path.join(d, 'dsync-index.sqlite-wal');
  createInPlace(p, '', { uid: 4242, gid: 4243 }, 'index file');
  const st = fs.statSync(p);
  assert.deepEqual([st.uid, st.gid, st.size], [4242, 4243, 0]);
  assert.deepEqual(fs.readdirSync(d), ['dsync-index.sqlite-wal']);
});
