// A read of an mbox waits while another process holds a write lock on the file (see
// MboxMailbox.waitWhileWritten), and only a write lock that is held, not a shared one or one
// still waited for. The locks are taken with util-linux's flock(1), which /proc/locks lists like
// Dovecot's fcntl locks.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import { lockIdentity, otherLockHolders, otherWriteLockHolders } from '../../src/storage/mbox/file-locks.js';
import { tempDir } from './helpers.js';
import { openMbox, write } from './mbox-helpers.js';
import { flockSkipReason, holdLock, release } from '../helpers/flock.js';

const skip = flockSkipReason;

const MBOX = 'From a@b Tue Jan  2 10:00:00 2024\nX-IMAPbase: 1700000050 0000000001\nX-UID: 1\nSubject: one\n\nbody\n\n';

test('file locks: held write locks count as writers; shared locks and waiters do not', { skip }, async (t) => {
  const dir = tempDir(t, 'dsync-mbox-writers-');
  const file = `${dir}/inbox`;
  write(file, MBOX);
  const id = lockIdentity(file)!;
  const reader = await holdLock(file, '-s');
  t.after(() => release(reader));
  assert.deepEqual(otherLockHolders(id), [reader.pid]);
  assert.deepEqual(otherWriteLockHolders(id), [], 'a shared lock is no writer');
  const waiter = spawn('flock', ['-o', '-x', file, 'sleep', '60'], { stdio: 'ignore', detached: true });
  t.after(() => release(waiter));
  const deadline = Date.now() + 5000;
  while (!(otherLockHolders(id) ?? []).includes(waiter.pid!)) {
    assert.ok(Date.now() < deadline, 'the second flock waits');
    await new Promise((r) => setTimeout(r, 5));
  }
  assert.deepEqual(otherWriteLockHolders(id), [], 'one waiting for a write lock is no writer yet');
  release(reader);
  const until = Date.now() + 5000;
  while (!(otherWriteLockHolders(id) ?? []).includes(waiter.pid!)) {
    assert.ok(Date.now() < until, 'the waiter got its write lock');
    await new Promise((r) => setTimeout(r, 5));
  }
});

test('mbox: a scan waits while another process holds a write lock on the file, not while it holds a shared one', { skip }, async (t) => {
  const dir = tempDir(t, 'dsync-mbox-writers-');
  const file = `${dir}/m/inbox`;
  write(file, MBOX);
  const box = await (await openMbox(`mbox:${dir}/m:INBOX=${file}`, { readOnly: true })).openMailbox(['INBOX']);
  const shared = await holdLock(file, '-s');
  t.after(() => release(shared));
  assert.deepEqual((await box.scan()).map((m) => m.uid), [1], 'a shared lock does not hold the scan up');
  release(shared);

  const writer = await holdLock(file, '-x');
  t.after(() => release(writer));
  const box2 = await (await openMbox(`mbox:${dir}/m:INBOX=${file}`, { readOnly: true })).openMailbox(['INBOX']);
  let done = false;
  const scanning = box2.scan().then((msgs) => {
    done = true;
    return msgs;
  });
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(done, false, 'the scan waits for the writer');
  // The writer adds a mail before it lets go; the scan sees the file as it left it.
  fs.appendFileSync(file, 'From a@b Tue Jan  2 11:00:00 2024\nX-UID: 2\nSubject: two\n\nbody\n\n');
  release(writer);
  assert.deepEqual((await scanning).map((m) => m.uid), [1, 2]);
});

test('mbox: a scan waits while another process holds the dotlock, but not for one its dead holder left', { skip }, async (t) => {
  const dir = tempDir(t, 'dsync-mbox-writers-');
  const file = `${dir}/m/inbox`;
  write(file, MBOX);
  const open = async () => (await openMbox(`mbox:${dir}/m:INBOX=${file}`, { readOnly: true })).openMailbox(['INBOX']);
  // A dotlock of a process that no longer exists (a pid far above any in use).
  fs.writeFileSync(`${file}.lock`, `999999999:${(await import('node:os')).hostname()}`);
  assert.deepEqual((await (await open()).scan()).map((m) => m.uid), [1], 'a dead holder\'s dotlock does not hold the scan up');
  // One of a live process (our parent's pid stands in for it).
  fs.writeFileSync(`${file}.lock`, `${process.ppid}:${(await import('node:os')).hostname()}`);
  let done = false;
  const scanning = (await open()).scan().then(() => (done = true));
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(done, false, 'the scan waits while the dotlock is there');
  fs.unlinkSync(`${file}.lock`);
  await scanning;
});
