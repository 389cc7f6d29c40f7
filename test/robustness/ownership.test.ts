// Ownership when run as root: with -u USER every file dsync creates in either mail store belongs
// to USER (dsync switches to the user before touching mail); without -u, new files belong to the
// owner of the mail directory - including the change index and the lock files, or the user's
// own later (non-root) runs cannot use them.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  assertContainsOnce,
  assertSame,
  chownTree,
  dsync,
  dsyncAsync,
  isRoot,
  mirrorArgs,
  passwdFileConfig,
  putFile,
  sha,
  tempDir,
  walkOwners,
} from './helpers.js';

const UID = 4242;
const GID = 4243;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * A: INBOX (mail in new/ and cur/, a keyword), folders, subscriptions, no dovecot-uidlist yet;
 * B: an empty directory. Both owned by UID:GID. Returns what was delivered.
 */
function populate(root: string): { a: string; b: string; expected: [string, string][] } {
  const a = path.join(root, 'a');
  const b = path.join(root, 'b');
  const expected: [string, string][] = [];
  for (let i = 0; i < 150; i++) {
    const body = `Subject: m${i}\n\n${'x'.repeat(200)} ${i}\n`;
    putFile(a, i % 2 ? 'cur' : 'new', `1700000000.M${i}.robust${i % 2 ? ':2,Sa' : ''}`, body);
    expected.push([sha(body), 'INBOX']);
  }
  fs.writeFileSync(path.join(a, 'dovecot-keywords'), '0 $Important\n');
  for (const f of ['.Archive', '.Archive.2024']) {
    const body = `Subject: in ${f}\n\nx\n`;
    putFile(path.join(a, f), 'cur', `1700000001.${f.slice(1)}.robust:2,`, body);
    fs.writeFileSync(path.join(a, f, 'maildirfolder'), '');
    expected.push([sha(body), f.slice(1).replace('.', '/')]);
  }
  fs.writeFileSync(path.join(a, 'subscriptions'), 'V\t2\n\nINBOX\nArchive\n');
  fs.mkdirSync(b);
  chownTree(a, UID, GID);
  chownTree(b, UID, GID);
  return { a, b, expected };
}

/** Runs dsync, watching both trees for lock/index files while it runs; returns their owners. */
async function runWatching(args: string[], dirs: string[]) {
  const seen = new Map<string, number>();
  const p = dsyncAsync(args);
  let done = false;
  void p.done.then(() => (done = true));
  while (!done) {
    for (const d of dirs) {
      try {
        // Files under private names (*.tmp, *.tmp.lock) are given their owner before they are
        // linked into place under the real name; the real names are what another process may open.
        for (const e of walkOwners(d)) if (/\.lock$|dsync-index|-wal$|-shm$/.test(e.path) && !/\.tmp(\.lock)?$/.test(e.path)) seen.set(`${path.basename(d)}/${e.path}`, e.uid);
      } catch {
        /* a file vanished while walking */
      }
    }
    await sleep(2);
  }
  return { r: await p.done, seen };
}

function rootOwned(dir: string): string[] {
  return walkOwners(dir)
    .filter((e) => e.uid !== UID || e.gid !== GID)
    .map((e) => `${e.path} (${e.uid}:${e.gid})`);
}

test('root with -u USER: no file in either mail store is left root-owned (mail, uidlists, keywords, subscriptions, index, locks)', { timeout: 60_000 }, async (t) => {
  if (!isRoot()) {
    t.skip('not running as root');
    return;
  }
  const root = tempDir(t);
  const { a, b, expected } = populate(root);
  const conf = passwdFileConfig(root, { name: 'robust', uid: UID, gid: GID, home: root });
  const args = mirrorArgs(`maildir:${a}`, `maildir:${b}`, ['-c', conf, '-u', 'robust']);
  const { r, seen } = await runWatching(args, [a, b]);
  assert.equal(r.code, 0, r.stderr);
  t.diagnostic(`lock/index files seen during the run: ${[...seen.keys()].join(', ')}`);
  assert.ok([...seen.keys()].some((k) => k.endsWith('dsync.lock')), 'the location lock was seen');
  for (const [f, uid] of seen) assert.equal(uid, UID, `${f} was owned by uid ${uid} while dsync ran`);
  assert.deepEqual(rootOwned(a), [], 'A');
  assert.deepEqual(rootOwned(b), [], 'B');
  // Everything that should exist does (so the walk above really covered it).
  for (const f of ['dovecot-uidlist', 'dovecot-keywords', 'subscriptions', 'dsync-index.sqlite', '.Archive.2024/dovecot-uidlist']) {
    assert.ok(fs.existsSync(path.join(b, f)), `B/${f}`);
  }
  const s = await assertSame(`maildir:${a}`, `maildir:${b}`);
  assertContainsOnce(s, expected, 'after -u');
  // A second run as the user works and still creates nothing root-owned.
  const again = dsync(args);
  assert.equal(again.code, 0, again.stderr);
  assert.deepEqual([...rootOwned(a), ...rootOwned(b)], []);
});

test('root without -u: mail files dsync creates belong to the owner of the mail directory', { timeout: 60_000 }, async (t) => {
  if (!isRoot()) {
    t.skip('not running as root');
    return;
  }
  const root = tempDir(t);
  const { a, b, expected } = populate(root);
  // A destination that does not exist yet, below a directory the user owns.
  const parent = path.join(root, 'home');
  fs.mkdirSync(parent);
  fs.chownSync(parent, UID, GID);
  const c = path.join(parent, 'Maildir');
  const r = dsync(mirrorArgs(`maildir:${a}`, `maildir:${b}`));
  assert.equal(r.code, 0, r.stderr);
  const r2 = dsync(mirrorArgs(`maildir:${a}`, `maildir:${c}`));
  assert.equal(r2.code, 0, r2.stderr);
  const notIndex = (e: string) => !/dsync-index\.sqlite|dsync\.lock/.test(e);
  assert.deepEqual(rootOwned(a).filter(notIndex), [], 'A');
  assert.deepEqual(rootOwned(b).filter(notIndex), [], 'B');
  assert.deepEqual(rootOwned(c).filter(notIndex), [], 'C (created by dsync)');
  assertContainsOnce(await assertSame(`maildir:${a}`, `maildir:${c}`), expected, 'C');
});

// Regression (found by this suite, fixed in run.ts / lock.ts): as root without -u, the change index
// (dsync-index.sqlite, its -journal/-wal/-shm) and the location lock dsync.lock were created by root
// and never chowned, unlike everything the maildir store creates; the user's own dsync then failed
// with "attempt to write a readonly database".
test('root without -u: the change index and lock belong to the mail directory owner too; the owner can sync afterwards', { timeout: 60_000 }, async (t) => {
  if (!isRoot()) {
    t.skip('not running as root');
    return;
  }
  const root = tempDir(t);
  const { a, b } = populate(root);
  const { r, seen } = await runWatching(mirrorArgs(`maildir:${a}`, `maildir:${b}`), [a, b]);
  assert.equal(r.code, 0, r.stderr);
  for (const [f, uid] of seen) assert.equal(uid, UID, `${f} was owned by uid ${uid} while dsync ran`);
  assert.deepEqual([...rootOwned(a), ...rootOwned(b)], []);
  // The user's own run (here: root switching to the user with -u) must be able to use the index.
  putFile(a, 'new', '1700000099.later.robust', 'Subject: later\n\nx\n');
  fs.chownSync(path.join(a, 'new', '1700000099.later.robust'), UID, GID);
  const conf = passwdFileConfig(root, { name: 'robust', uid: UID, gid: GID, home: root });
  const own = dsync(mirrorArgs(`maildir:${a}`, `maildir:${b}`, ['-c', conf, '-u', 'robust']));
  assert.equal(own.code, 0, own.stderr);
});
