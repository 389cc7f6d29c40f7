// dovecot-uidlist.lock: exclusive, waited for, stale locks overridden; concurrent writers agree.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createRequire, syncBuiltinESMExports } from 'node:module';
import { DotLock, withDotLock } from '../../src/storage/maildir/lock.js';
import type { FsContext } from '../../src/storage/maildir/io.js';
import { StorageError } from '../../src/storage/types.js';
import { makeMaildir, openMaildir, tempDir, warnings, writeMail } from './helpers.js';

function ctx(warn: (m: string) => void = () => undefined): FsContext {
  return { readOnly: false, warn, dirMode: 0o700, fileMode: 0o600 };
}

test('dotlock: exclusive, times out with LOCKED, replaceTarget swaps the file atomically', async (t) => {
  const dir = tempDir(t);
  const target = path.join(dir, 'file');
  fs.writeFileSync(target, 'old');
  const a = await DotLock.acquire(ctx(), target);
  assert.ok(fs.existsSync(`${target}.lock`));
  await assert.rejects(DotLock.acquire(ctx(), target, { timeoutMs: 150 }), (e: unknown) => e instanceof StorageError && e.code === 'LOCKED');
  const waiting = DotLock.acquire(ctx(), target, { timeoutMs: 5000 });
  setTimeout(() => void a.release(), 100);
  const b = await waiting;
  await b.replaceTarget('new contents\n');
  assert.equal(fs.readFileSync(target, 'utf8'), 'new contents\n');
  assert.ok(!fs.existsSync(`${target}.lock`), 'replacing released the lock');
  await withDotLock(ctx(), target, async () => {
    assert.ok(fs.existsSync(`${target}.lock`));
  });
  assert.ok(!fs.existsSync(`${target}.lock`));
});

test('dotlock: a stale lock (older than 2 minutes) is overridden with a warning', async (t) => {
  const root = tempDir(t);
  makeMaildir(root);
  writeMail(path.join(root, 'new', 'm1'), 'x');
  const lock = path.join(root, 'dovecot-uidlist.lock');
  fs.writeFileSync(lock, '');
  const old = Date.now() / 1000 - 180;
  fs.utimesSync(lock, old, old);
  const w = warnings();
  const store = await openMaildir(`maildir:${root}`, { warn: w.warn });
  assert.deepEqual((await (await store.openMailbox(['INBOX'])).scan()).map((m) => m.uid), [1]);
  assert.ok(w.has(/overriding stale lock .*dovecot-uidlist\.lock/));
  assert.ok(!fs.existsSync(lock));
});

test('dotlock: a writer waits for a fresh lock held by someone else', async (t) => {
  const root = tempDir(t);
  makeMaildir(root);
  writeMail(path.join(root, 'new', 'm1'), 'x');
  const lock = path.join(root, 'dovecot-uidlist.lock');
  fs.writeFileSync(lock, '');
  const store = await openMaildir(`maildir:${root}`);
  const started = Date.now();
  setTimeout(() => fs.unlinkSync(lock), 300);
  const msgs = await (await store.openMailbox(['INBOX'])).scan();
  assert.deepEqual(msgs.map((m) => m.uid), [1]);
  assert.ok(Date.now() - started >= 250, 'waited for the lock');
});

test('concurrency: two stores scanning and saving at once never hand out a UID twice', async (t) => {
  const root = tempDir(t);
  makeMaildir(root);
  for (let i = 0; i < 50; i++) writeMail(path.join(root, 'new', `m${String(i).padStart(3, '0')}`), `m${i}`);
  const s1 = await openMaildir(`maildir:${root}`);
  const s2 = await openMaildir(`maildir:${root}`);
  const [b1, b2] = await Promise.all([s1.openMailbox(['INBOX']), s2.openMailbox(['INBOX'])]);
  const [r1, r2] = await Promise.all([b1.scan(), b2.scan()]);
  assert.equal(r1.length, 50);
  assert.deepEqual(r1.map((m) => [m.uid, m.guid]), r2.map((m) => [m.uid, m.guid]));
  assert.deepEqual(r1.map((m) => m.uid), Array.from({ length: 50 }, (_, i) => i + 1));
  // Concurrent deliveries + scans from both sides.
  for (let i = 50; i < 80; i++) writeMail(path.join(root, 'new', `m${i}`), `m${i}`);
  const [x1, x2] = await Promise.all([b1.scan(), b2.scan()]);
  const final = await b1.scan();
  const uids = final.map((m) => m.uid);
  assert.equal(new Set(uids).size, 80);
  assert.deepEqual(x1.map((m) => [m.uid, m.guid]), x2.map((m) => [m.uid, m.guid]));
  const ul = fs.readFileSync(path.join(root, 'dovecot-uidlist'), 'utf8').trimEnd().split('\n').slice(1);
  assert.equal(ul.length, 80, 'every file listed exactly once');
  assert.equal(new Set(ul.map((l) => l.split(' :')[1])).size, 80);
});

test('dotlock: a lock carried away by a rename of its folder is still removed on release', async (t) => {
  const dir = tempDir(t);
  fs.mkdirSync(path.join(dir, 'F'));
  const lock = await DotLock.acquire(ctx(), path.join(dir, 'F', 'dovecot-uidlist'));
  // An IMAP user renames the folder meanwhile; Dovecot does not wait for the uidlist lock.
  fs.renameSync(path.join(dir, 'F'), path.join(dir, 'G'));
  await lock.release();
  assert.deepEqual(fs.readdirSync(path.join(dir, 'G')), [], 'the moved lock was removed, nothing else left');
  // And a lock that someone else replaced meanwhile is not theirs to lose.
  const again = await DotLock.acquire(ctx(), path.join(dir, 'G', 'dovecot-uidlist'));
  fs.unlinkSync(path.join(dir, 'G', 'dovecot-uidlist.lock'));
  fs.writeFileSync(path.join(dir, 'G', 'dovecot-uidlist.lock'), 'someone else');
  fs.renameSync(path.join(dir, 'G'), path.join(dir, 'H'));
  await again.release();
  assert.equal(fs.readFileSync(path.join(dir, 'H', 'dovecot-uidlist.lock'), 'utf8'), 'someone else');
});

test('dotlock: private files of locks left by a killed run are removed once they are older than the stale timeout', async (t) => {
  const dir = tempDir(t);
  const target = path.join(dir, 'dovecot-uidlist');
  fs.writeFileSync(target, 'x');
  const old = new Date(Date.now() - 200_000);
  const left = [`dovecot-uidlist.4242.7.tmp.lock`, `dovecot-uidlist.4242.tmp.lock`, 'dovecot-keywords.4242.1.tmp.lock'];
  for (const n of left) {
    fs.writeFileSync(path.join(dir, n), '4242:host');
    fs.utimesSync(path.join(dir, n), old, old);
  }
  // Not ours, or too young to be abandoned: kept.
  const kept = ['dovecot-uidlist.4243.1.tmp.lock', 'dovecot-uidlist.x.tmp.lock', 'Trash.lock', 'dovecot-uidlist.4242.tmp'];
  for (const n of kept) fs.writeFileSync(path.join(dir, n), '');
  fs.utimesSync(path.join(dir, kept[1]!), old, old);
  fs.utimesSync(path.join(dir, kept[2]!), old, old);
  fs.utimesSync(path.join(dir, kept[3]!), old, old);
  const lock = await DotLock.acquire(ctx(), target);
  await lock.release();
  assert.deepEqual(fs.readdirSync(dir).sort(), ['dovecot-uidlist', ...kept].sort());
});

test('dotlock: a failure right after the lock became ours (reopening it) does not leave it behind', async (t) => {
  const dir = tempDir(t);
  const target = path.join(dir, 'file');
  fs.writeFileSync(target, 'x');
  const require = createRequire(import.meta.url);
  const cjsFs = require('node:fs') as typeof fs;
  const openSync = cjsFs.openSync;
  cjsFs.openSync = ((p: fs.PathLike, ...rest: unknown[]) => {
    if (p === `${target}.lock`) throw Object.assign(new Error('EMFILE: too many open files'), { code: 'EMFILE' });
    return (openSync as (...a: unknown[]) => number)(p, ...rest);
  }) as typeof fs.openSync;
  syncBuiltinESMExports();
  try {
    await assert.rejects(DotLock.acquire(ctx(), target), /EMFILE/);
  } finally {
    cjsFs.openSync = openSync;
    syncBuiltinESMExports();
  }
  assert.deepEqual(fs.readdirSync(dir), ['file'], 'no lock left');
  const again = await DotLock.acquire(ctx(), target, { timeoutMs: 100 });
  await again.release();
});
