// The digest of a mailbox's rows (src/location/row-digest.ts) and the refresh that trusts it: a
// changed mailbox is compared with the digest, and only the rows of messages that differ are
// read. The refresh must find exactly what a comparison with every row finds.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import Database from 'better-sqlite3';
import { RowDigest } from '../../src/location/row-digest.js';
import type { LocationMailbox } from '../../src/location/mailbox.js';
import type { MessageRow } from '../../src/index/change-index.js';
import { Flag } from '../../src/model/flags.js';
import { makeMaildir, msg, tempDir, writeMail } from '../storage/helpers.js';
import { withFirstMailbox } from './helpers.js';
import { checkDigests } from '../helpers/digest-check.js';

const row = (uid: number, guid: string, flags = 0, keywords: string[] = []): MessageRow => ({
  uid,
  guid,
  flags,
  keywords,
  modseq: 1,
  internalDate: 0,
  size: 0,
  hdrHash: null,
});

test('RowDigest: tells GUID, flags and keywords apart per UID; survives encode and decode', () => {
  const d = RowDigest.of([row(1, 'g1'), row(2, 'g2', 8), row(5, 'g5', 9, ['$Junk', 'work'])], 3)!;
  assert.equal(d.size, 3);
  assert.ok(d.matches(2, 'g2', 8, []));
  assert.ok(!d.matches(2, 'g2', 9, []), 'flags differ');
  assert.ok(!d.matches(2, 'g2', 8, ['work']), 'keywords differ');
  assert.ok(!d.matches(2, 'gX', 8, []), 'GUID differs');
  assert.ok(!d.matches(3, 'g2', 8, []), 'no such UID');
  assert.ok(d.matches(5, 'g5', 9, ['$Junk', 'work']));
  assert.ok(!d.matches(5, 'g5', 9, ['$Junk']));
  assert.ok(d.hasGuid(5, 'g5') && !d.hasGuid(5, 'g1') && !d.hasGuid(4, 'g5'));
  d.remove(2);
  assert.equal(d.size, 2);
  assert.ok(!d.matches(2, 'g2', 8, []) && !d.hasGuid(2, 'g2'));
  assert.ok(d.put(row(2, 'g2b', 1)), 'a removed UID can come back');
  assert.ok(d.matches(2, 'g2b', 1, []));
  const { data, keywordSets } = d.encode();
  const back = RowDigest.decode(data, keywordSets)!;
  const uids: number[] = [];
  back.forEachUid((u) => uids.push(u));
  assert.deepEqual(uids, [1, 2, 5]);
  assert.ok(back.matches(5, 'g5', 9, ['$Junk', 'work']) && back.matches(2, 'g2b', 1, []) && back.matches(1, 'g1', 0, []));
  // The stored form is little-endian words, 16 bytes per message, UID first.
  assert.equal(data.length, 48);
  assert.deepEqual([data.readUInt32LE(0), data.readUInt32LE(16), data.readUInt32LE(32)], [1, 2, 5]);
  assert.equal(data.readUInt32LE(20), 1, 'the flags of UID 2 (no keyword set) follow its UID');
  // A blob need not start at a multiple of 4 bytes in its memory (SQLite hands out slices).
  const unaligned = Buffer.concat([Buffer.alloc(1), data]).subarray(1);
  assert.notEqual(unaligned.byteOffset % 4, 0);
  const fromUnaligned = RowDigest.decode(unaligned, keywordSets)!;
  assert.ok(fromUnaligned.matches(5, 'g5', 9, ['$Junk', 'work']) && fromUnaligned.matches(1, 'g1', 0, []));
  assert.ok(!RowDigest.of([row(1, 'g', 0x100)], 1), 'flags it cannot hold: no digest');
});

test('RowDigest: new UIDs below the highest one (UID moves, conflict saves) are sorted in', () => {
  const d = RowDigest.of([], 0)!;
  const uids = Array.from({ length: 400 }, (_, i) => 1000 - i * 2); // descending: each one below all others
  for (const u of uids) assert.ok(d.put(row(u, `g${u}`, u & 0x1f)));
  for (const u of [1001, 3, 999]) assert.ok(d.put(row(u, `g${u}`)));
  for (const u of uids) assert.ok(d.matches(u, `g${u}`, u & 0x1f, []), `uid ${u}`);
  const seen: number[] = [];
  d.forEachUid((u) => seen.push(u));
  assert.deepEqual(seen, [...uids, 1001, 3, 999].sort((a, b) => a - b));
  const { data, keywordSets } = d.encode();
  assert.equal(RowDigest.decode(data, keywordSets)!.size, 403);
});

test('RowDigest.decode: anything but a digest it wrote is refused (the rows are read instead)', () => {
  const { data, keywordSets } = RowDigest.of([row(1, 'a'), row(2, 'b', 0, ['x'])], 2)!.encode();
  assert.ok(RowDigest.decode(data, keywordSets));
  assert.equal(RowDigest.decode(data.subarray(0, 20), keywordSets), null, 'torn');
  assert.equal(RowDigest.decode(data, 'not json'), null);
  assert.equal(RowDigest.decode(data, '["x"]'), null, 'set 0 is not the empty set');
  assert.equal(RowDigest.decode(data, '[""]'), null, 'a keyword set number beyond the list');
  const swapped = Buffer.concat([data.subarray(16, 32), data.subarray(0, 16)]);
  assert.equal(RowDigest.decode(swapped, keywordSets), null, 'UIDs out of order');
});

/** A Maildir of n mails with assorted flags, its index in a file, and runs on it. */
function fixture(t: { after: (fn: () => void) => void }, n: number) {
  const dir = tempDir(t as never, 'dsync-digest-');
  const root = path.join(dir, 'Maildir');
  const indexPath = path.join(dir, 'index.sqlite');
  makeMaildir(root);
  const letters = ['', 'S', 'FS', 'RS', 'T'];
  for (let i = 1; i <= n; i++) writeMail(path.join(root, 'cur', `${1000 + i}.M${i}P1.h:2,${letters[i % letters.length]}`), msg(i), 1000 + i);
  /** Opens the mailbox, runs fn on it, closes everything. */
  const withBox = <T>(fn: (box: LocationMailbox) => Promise<T>, file = indexPath): Promise<T> => withFirstMailbox(root, file, fn);
  return { root, dir, indexPath, withBox };
}

/** The index's messages and journal, comparable between two index files. */
function indexContent(file: string) {
  const db = new Database(file, { readonly: true });
  try {
    return {
      messages: db.prepare('SELECT uid, guid, flags, keywords, modseq, internal_date, size FROM messages ORDER BY uid').all(),
      changes: db.prepare('SELECT modseq, uid, kind, guid, add_flags, remove_flags, kw_add, kw_remove, origin FROM changes ORDER BY modseq').all(),
      mailboxes: db.prepare('SELECT uid_next, highest_modseq FROM mailboxes').all(),
    };
  } finally {
    db.close();
  }
}

test('refresh by digest finds exactly what a comparison with every row finds, reading only the rows that differ', async (t) => {
  const n = 300;
  const { root, dir, indexPath, withBox } = fixture(t, n);
  await withBox(async (box) => {
    await box.refresh(true);
    box.recordSummary();
  });
  assert.equal(checkDigests(indexPath), 1, 'the digest is on record at the current modseq');

  // Changes made outside dsync: flags (renames), expunges, new mails, and a mail that got another
  // GUID at the same UID (its uidlist entry rewritten).
  const cur = path.join(root, 'cur');
  const rename = (from: string, to: string) => fs.renameSync(path.join(cur, from), path.join(cur, to));
  rename('1007.M7P1.h:2,FS', '1007.M7P1.h:2,S');
  rename('1010.M10P1.h:2,', '1010.M10P1.h:2,RS');
  rename('1299.M299P1.h:2,T', '1299.M299P1.h:2,');
  fs.unlinkSync(path.join(cur, '1003.M3P1.h:2,RS'));
  fs.unlinkSync(path.join(cur, '1300.M300P1.h:2,'));
  writeMail(path.join(root, 'new', '2001.M901P1.h'), msg(901), 2001);
  writeMail(path.join(root, 'new', '2002.M902P1.h'), msg(902), 2002);
  const uidlist = path.join(root, 'dovecot-uidlist');
  const text = fs.readFileSync(uidlist, 'utf8');
  assert.match(text, /^20 :1020\.M20P1\.h$/m);
  fs.writeFileSync(uidlist, text.replace(/^20 :1020\.M20P1\.h$/m, '20 Gother-guid-of-twenty :1020.M20P1.h'));

  // The same refresh with every row: on a copy of the index without its digest.
  const copy = path.join(dir, 'copy.sqlite');
  fs.copyFileSync(indexPath, copy);
  const db = new Database(copy);
  db.prepare('DELETE FROM digests').run();
  db.close();
  const before = fs.readdirSync(cur).sort();
  const byRows = await withBox(async (box) => {
    await box.refresh(true);
    return box.loadedCount;
  }, copy);
  // Undo what that scan did to the Maildir (new/ moved to cur/) so both see the same.
  for (const f of fs.readdirSync(cur)) if (!before.includes(f)) fs.renameSync(path.join(cur, f), path.join(root, 'new', f.replace(/:2,$/, '')));

  const byDigest = await withBox(async (box) => {
    await box.refresh(true);
    const loaded = box.loadedCount;
    assert.equal(box.messageCount, n - 2 + 2);
    assert.equal(box.heldCount, n, 'the store holds every message it scanned, whatever rows were read');
    box.recordSummary();
    return loaded;
  });
  assert.equal(byRows, n, 'without a digest every row is read');
  assert.ok(byDigest <= 10, `with the digest only the rows that differ are read (read ${byDigest})`);
  assert.deepEqual(indexContent(indexPath), indexContent(copy));
  const changes = indexContent(indexPath).changes as { uid: number; kind: string }[];
  assert.deepEqual(
    changes.map((c) => `${c.kind}:${c.uid}`).sort(),
    ['expunge:20', 'expunge:3', 'expunge:300', 'flags:10', 'flags:299', 'flags:7'].sort(),
    'every change is journaled (the GUID change as an expunge of the old mail)',
  );
  assert.equal(checkDigests(indexPath), 1, 'and the digest is recorded again, matching the rows');
});

test('a digest from another modseq, or one that does not decode, is not used', async (t) => {
  const { root, indexPath, withBox } = fixture(t, 50);
  await withBox(async (box) => {
    await box.refresh(true);
    box.recordSummary();
  });
  const db = new Database(indexPath);
  db.prepare('UPDATE digests SET modseq = modseq - 1').run();
  db.close();
  fs.renameSync(path.join(root, 'cur', '1004.M4P1.h:2,T'), path.join(root, 'cur', '1004.M4P1.h:2,S'));
  assert.equal(await withBox(async (box) => (await box.refresh(true), box.loadedCount)), 50, 'stale: every row read');

  await withBox(async (box) => (await box.refresh(true), box.recordSummary()));
  const db2 = new Database(indexPath);
  db2.prepare('UPDATE digests SET data = ?').run(Buffer.alloc(15));
  db2.close();
  fs.renameSync(path.join(root, 'cur', '1004.M4P1.h:2,S'), path.join(root, 'cur', '1004.M4P1.h:2,T'));
  await withBox(async (box) => {
    await box.refresh(true);
    assert.equal(box.loadedCount, 50, 'torn: every row read');
    assert.equal(box.message(4)?.flags, Flag.Deleted, 'the change is found');
  });
});

test('a refresh whose index transaction fails leaves nothing trusted: the same handle finds the change again', async (t) => {
  const { root, indexPath, withBox } = fixture(t, 30);
  await withBox(async (box) => (await box.refresh(true), box.recordSummary()));
  fs.renameSync(path.join(root, 'cur', '1004.M4P1.h:2,T'), path.join(root, 'cur', '1004.M4P1.h:2,S'));
  await withBox(async (box) => {
    const index = box.location.index;
    const addChange = index.addChange.bind(index);
    index.addChange = () => {
      throw new Error('disk full (simulated)');
    };
    try {
      await assert.rejects(box.refresh(), /disk full/);
    } finally {
      index.addChange = addChange;
    }
    await box.refresh();
    assert.equal(box.message(4)?.flags, Flag.Seen, 'the flag change is in the index now');
    box.recordSummary();
  });
  const changes = indexContent(indexPath).changes as { uid: number; kind: string; origin: string }[];
  assert.deepEqual(
    changes.map((c) => `${c.kind}:${c.uid}:${c.origin}`),
    ['flags:4:'],
    'journaled once, as a change made outside dsync',
  );
  assert.equal(checkDigests(indexPath), 1);
});

test('RowDigest: a GUID confirmed by hasGuid is not trusted once its entry changes or moves', () => {
  const d = RowDigest.of([row(100, 'a'), row(200, 'b')], 2)!;
  assert.ok(d.hasGuid(200, 'b'));
  assert.ok(d.matches(200, 'b', 0, []));
  assert.ok(d.put(row(200, 'b2')));
  assert.ok(!d.matches(200, 'b', 0, []), 'the GUID before the put');
  assert.ok(d.matches(200, 'b2', 0, []));
  // Confirmed at position 1; then 65 UIDs below all others make the digest sort itself, and
  // position 1 holds another message.
  assert.ok(d.hasGuid(200, 'b2'));
  for (let u = 1; u <= 65; u++) assert.ok(d.put(row(u, `g${u}`)));
  assert.ok(!d.matches(2, 'b2', 0, []), 'a confirmation follows its message, not its position');
  assert.ok(d.matches(2, 'g2', 0, []) && d.matches(200, 'b2', 0, []));
  assert.ok(d.hasGuid(100, 'a'));
  d.remove(100);
  assert.ok(!d.matches(100, 'a', 0, []), 'removed');
});
