// A damaged change index (dsync-index.sqlite) is moved aside with a warning and rebuilt from the
// mail store. Nothing may be invented by the rebuild: the other side's flag changes still win,
// mail that nobody expunged is deleted nowhere, UIDs stay put, nothing is duplicated.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import Database from 'better-sqlite3';
import { mirror } from '../helpers/mirror.js';
import { parseMailLocation } from '../../src/storage/location.js';
import { openStore } from '../../src/storage/open.js';
import { Flag } from '../../src/model/flags.js';
import { INDEX_FILE } from '../../src/sync/run.js';
import { ChangeIndex } from '../../src/index/change-index.js';
import { assertNoDuplicates, assertSame, dsync, mirrorArgs, putFile, sha, snap, syncedOk, tempDir } from './helpers.js';

type Corruption = 'garbage' | 'truncated' | 'foreign schema' | 'zeroed header' | 'a directory';

function corrupt(file: string, how: Corruption): void {
  for (const s of ['-wal', '-shm']) fs.rmSync(file + s, { force: true });
  switch (how) {
    case 'garbage':
      fs.writeFileSync(file, 'this is not a database\n'.repeat(100));
      break;
    case 'truncated': {
      const size = fs.statSync(file).size;
      assert.ok(size > 8192, `index too small to truncate (${size})`);
      fs.truncateSync(file, Math.floor(size / 2) + 100);
      break;
    }
    case 'zeroed header': {
      const fd = fs.openSync(file, 'r+');
      fs.writeSync(fd, Buffer.alloc(100), 0, 100, 0);
      fs.closeSync(fd);
      break;
    }
    case 'foreign schema': {
      fs.rmSync(file);
      const db = new Database(file);
      db.exec("CREATE TABLE contacts (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO contacts (name) VALUES ('someone else''s data');");
      db.close();
      break;
    }
    case 'a directory':
      fs.rmSync(file);
      fs.mkdirSync(file);
      break;
  }
}

async function setFlags(dir: string, mailbox: string[], uid: number, flags: number, keywords: string[] = []): Promise<void> {
  const s = await openStore(parseMailLocation(`maildir:${dir}`, {}), { warn: () => {} });
  try {
    const mb = await s.openMailbox(mailbox);
    await mb.scan();
    await mb.updateFlags([{ uid, flags, keywords }]);
    await mb.close();
  } finally {
    await s.close();
  }
}

/** A: INBOX with 6 mails and Sub with 2, all \Seen, mirrored into B. */
async function synced(t: Parameters<typeof tempDir>[0]) {
  const root = tempDir(t);
  const a = path.join(root, 'a');
  const b = path.join(root, 'b');
  for (let i = 1; i <= 6; i++) putFile(a, 'cur', `170000000${i}.m${i}.robust:2,S`, `Subject: m${i}\n\n${'body '.repeat(200)}${i}\n`);
  for (let i = 1; i <= 2; i++) putFile(path.join(a, '.Sub'), 'cur', `170000010${i}.s${i}.robust:2,S`, `Subject: s${i}\n\nsub ${i}\n`);
  // Enough history to make the index worth truncating.
  const r = await mirror(`maildir:${a}`, `maildir:${b}`);
  assert.equal(r.exitCode, 0, r.log.join('\n'));
  for (let round = 0; round < 2; round++) {
    await setFlags(a, ['INBOX'], 6, round % 2 ? Flag.Seen : Flag.Seen | Flag.Answered);
    assert.equal((await mirror(`maildir:${a}`, `maildir:${b}`)).exitCode, 0);
  }
  return { a, b, la: `maildir:${a}`, lb: `maildir:${b}` };
}

/** The moved-aside index itself (its -wal/-shm companions, if any, go along). */
const ASIDE = new RegExp(`^${INDEX_FILE.replace(/\./g, '\\.')}\\.corrupt-\\d+$`);

const KINDS: Corruption[] = ['garbage', 'truncated', 'zeroed header', 'a directory', 'foreign schema'];

for (const side of ['A (master)', 'B (slave)'] as const) {
  for (const kind of KINDS) {
    test(`${side}'s change index ${kind}: rebuilt; the other side's flag changes win, nothing expunged, UIDs kept`, { timeout: 30_000 }, async (t) => {
      const { a, b, la, lb } = await synced(t);
      const before = await snap(la);
      // Changes on the side whose index stays intact, made after the last sync.
      const [broken, intact] = side.startsWith('A') ? [a, b] : [b, a];
      await setFlags(intact, ['INBOX'], 1, Flag.Seen | Flag.Flagged);
      await setFlags(intact, ['INBOX'], 2, 0); // \Seen removed
      await setFlags(intact, ['INBOX'], 3, Flag.Seen, ['$Important']);
      await setFlags(intact, ['Sub'], 1, Flag.Seen | Flag.Answered);
      corrupt(path.join(broken, INDEX_FILE), kind);

      const r = await mirror(la, lb);
      assert.ok(r.exitCode === 0 || r.exitCode === 2, r.log.join('\n'));
      let again = await mirror(la, lb);
      if (again.exitCode === 2) again = await mirror(la, lb);
      assert.equal(again.exitCode, 0, again.log.join('\n'));
      assert.deepEqual(again.summary, [], 'converged: a further run changes nothing');

      const s = await assertSame(la, lb);
      assertNoDuplicates(s, 'after the rebuild');
      const inbox = s.mailboxes.find((m) => m.name === 'INBOX')!;
      const sub = s.mailboxes.find((m) => m.name === 'Sub')!;
      // Nothing was expunged anywhere, and no mail moved to another UID.
      const uidsBefore = before.mailboxes.map((m) => [m.name, m.messages.map((x) => [x.uid, x.sha])]);
      assert.deepEqual(s.mailboxes.map((m) => [m.name, m.messages.map((x) => [x.uid, x.sha])]), uidsBefore);
      // The intact side's changes won.
      const flags = new Map(inbox.messages.map((m) => [m.uid, [m.flags, m.keywords]]));
      assert.deepEqual(flags.get(1), [['\\Flagged', '\\Seen'], []]);
      assert.deepEqual(flags.get(2), [[], []]);
      assert.deepEqual(flags.get(3), [['\\Seen'], ['$Important']]);
      assert.deepEqual(flags.get(4), [['\\Seen'], []]);
      assert.deepEqual(sub.messages.map((m) => m.flags), [['\\Answered', '\\Seen'], ['\\Seen']]);
      // The broken index was kept for inspection, not deleted.
      const aside = fs.readdirSync(broken).filter((n) => ASIDE.test(n));
      if (kind !== 'foreign schema') assert.equal(aside.length, 1, fs.readdirSync(broken).join(' '));
    });
  }
}

for (const kind of KINDS) {
  const foreign = kind === 'foreign schema';
  // 'foreign schema' is a regression test: a valid SQLite file without our tables used to be adopted
  // silently (our tables added to someone else's database, no warning).
  test(`a change index that is ${kind}: a warning names the file and says it was rebuilt; the file is moved aside`, { timeout: 30_000 }, async (t) => {
    const root = tempDir(t);
    const a = path.join(root, 'a');
    const b = path.join(root, 'b');
    putFile(a, 'cur', '1700000001.m1.robust:2,S', `Subject: m1\n\n${'x'.repeat(20000)}\n`);
    const args = mirrorArgs(`maildir:${a}`, `maildir:${b}`);
    syncedOk(args);
    const file = path.join(a, INDEX_FILE);
    corrupt(file, kind);
    const r = dsync(args);
    assert.equal(r.code, 0, r.stderr);
    const esc = file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    assert.match(r.stderr, new RegExp(`warning: change index ${esc}: .*moved it to ${esc}\\.corrupt-\\d+ and rebuilt the index`), r.stderr);
    assert.equal(fs.readdirSync(a).filter((n) => ASIDE.test(n)).length, 1, fs.readdirSync(a).join(' '));
    if (foreign) {
      const db = new Database(path.join(a, fs.readdirSync(a).find((n) => ASIDE.test(n))!), { readonly: true });
      const tables = db.prepare("SELECT name FROM sqlite_master WHERE type = 'table'").all() as { name: string }[];
      db.close();
      assert.deepEqual(tables.map((x) => x.name), ['contacts'], 'the foreign database is left as it was');
    }
    const s = await assertSame(`maildir:${a}`, `maildir:${b}`);
    assert.equal(s.mailboxes[0]!.messages.length, 1);
    syncedOk(args);
  });
}

// Regression (found by this suite, fixed): copying a Maildir with `cp -a` (the usual way to seed a
// backup) copies dsync-index.sqlite with it, so both sides carried the same location id and every
// run refused with "both sides are the same location (same change index)" (exit 75).
test('a Maildir copied together with its change index can be mirrored with the copy', { timeout: 30_000 }, async (t) => {
  const root = tempDir(t);
  const a = path.join(root, 'a');
  const b = path.join(root, 'b');
  const c = path.join(root, 'c');
  for (let i = 1; i <= 3; i++) putFile(a, 'cur', `170000000${i}.m${i}.robust:2,S`, `Subject: m${i}\n\n${i}\n`);
  syncedOk(mirrorArgs(`maildir:${a}`, `maildir:${c}`));
  fs.cpSync(a, b, { recursive: true, preserveTimestamps: true });
  putFile(b, 'cur', '1700000009.new.robust:2,', 'Subject: new on the copy\n\nx\n');
  const args = mirrorArgs(`maildir:${a}`, `maildir:${b}`);
  const r = dsync(args);
  assert.ok(r.code === 0 || r.code === 2, r.stderr);
  const runs = [r];
  while (runs.at(-1)!.code === 2 && runs.length < 3) runs.push(dsync(args));
  assert.equal(runs.at(-1)!.code, 0, runs.map((x) => x.stderr).join('\n'));
  const s = await assertSame(`maildir:${a}`, `maildir:${b}`);
  assert.ok(s.mailboxes[0]!.messages.some((m) => m.sha === sha('Subject: new on the copy\n\nx\n')));
  assertNoDuplicates(s, 'A');
});

/** Identity of the index files: anything written to them changes this. */
function indexFiles(dir: string): string {
  return ['', '-wal', '-shm']
    .map((s) => path.join(dir, INDEX_FILE + s))
    .map((p) => (fs.existsSync(p) ? `${path.basename(p)}:${fs.statSync(p).size}:${fs.statSync(p).mtimeMs}:${sha(fs.readFileSync(p))}` : `${path.basename(p)}:-`))
    .join(' ');
}

test('a run that finds nothing to do writes nothing to either change index', { timeout: 30_000 }, async (t) => {
  const root = tempDir(t);
  const a = path.join(root, 'a');
  const b = path.join(root, 'b');
  for (let i = 1; i <= 3; i++) putFile(a, 'cur', `170000000${i}.m${i}.robust:2,S`, `Subject: m${i}\n\nbody ${i}\n`);
  const args = mirrorArgs(`maildir:${a}`, `maildir:${b}`);
  syncedOk(args);
  syncedOk(args);
  // Past the change tokens' tick margin: from here on, nothing on disk changes.
  await new Promise((r) => setTimeout(r, 150));
  syncedOk(args);
  const before = [indexFiles(a), indexFiles(b)];
  const r = syncedOk(args);
  assert.equal(r.stderr, '');
  assert.deepEqual([indexFiles(a), indexFiles(b)], before);
});

test('the index of a run that was killed is checked at the next open; a damaged page is found and the index rebuilt', { timeout: 30_000 }, async (t) => {
  const { a, la, lb } = await synced(t);
  const file = path.join(a, INDEX_FILE);
  // What a killed run leaves: the database file plus a write-ahead log with content. A page of
  // the database file is damaged too (the header and the file size are intact, so only a full
  // check can tell).
  const db = new Database(file);
  db.pragma('wal_autocheckpoint = 0');
  db.exec("INSERT INTO meta (key, value) VALUES ('killed-run', 'x')");
  const crash = path.join(a, 'crash-copy');
  fs.copyFileSync(file, crash);
  fs.copyFileSync(`${file}-wal`, `${crash}-wal`);
  db.close();
  fs.rmSync(`${file}-shm`, { force: true });
  fs.renameSync(crash, file);
  fs.renameSync(`${crash}-wal`, `${file}-wal`);
  assert.ok(fs.statSync(`${file}-wal`).size > 0);
  const pageSize = 4096;
  const pages = fs.statSync(file).size / pageSize;
  assert.ok(pages >= 3, `index has ${pages} pages`);
  const fd = fs.openSync(file, 'r+');
  fs.writeSync(fd, Buffer.alloc(pageSize, 0x5a), 0, pageSize, pageSize * (pages - 1));
  fs.closeSync(fd);

  const r = await mirror(la, lb);
  assert.ok(r.exitCode === 0 || r.exitCode === 2, r.log.join('\n'));
  assert.ok(r.log.some((l) => /change index .*moved it to .*corrupt-\d+ and rebuilt/.test(l)), r.log.join('\n'));
  let again = await mirror(la, lb);
  if (again.exitCode === 2) again = await mirror(la, lb);
  assert.equal(again.exitCode, 0, again.log.join('\n'));
  assertNoDuplicates(await assertSame(la, lb), 'after the rebuild');
});

test('the change index is held exclusively while open: no shared-memory file, other connections are kept out', async (t) => {
  const file = path.join(tempDir(t), INDEX_FILE);
  const { index } = ChangeIndex.open(file);
  try {
    index.setMeta('probe', 'x');
    assert.equal(fs.existsSync(`${file}-shm`), false, 'no -shm: the WAL index lives in the process');
    const other = new Database(file, { timeout: 0 });
    try {
      assert.throws(() => other.prepare('SELECT value FROM meta').all(), /locked|busy/i);
    } finally {
      other.close();
    }
  } finally {
    await index.close();
  }
  const after = new Database(file, { readonly: true });
  try {
    assert.deepEqual(after.prepare("SELECT value FROM meta WHERE key = 'probe'").get(), { value: 'x' });
  } finally {
    after.close();
  }
});

test('an index of schema version 1 (before digests) is upgraded in place; one of a later version is rebuilt', async (t) => {
  const file = path.join(tempDir(t), INDEX_FILE);
  const first = ChangeIndex.open(file).index;
  const id = first.locationId;
  await first.close();
  const db = new Database(file);
  db.prepare("UPDATE meta SET value = '1' WHERE key = 'schema_version'").run();
  db.exec('DROP TABLE digests');
  db.close();
  const upgraded = ChangeIndex.open(file);
  try {
    assert.equal(upgraded.rebuiltReason, undefined, 'kept, not rebuilt');
    assert.equal(upgraded.index.locationId, id);
    assert.equal(upgraded.index.getMeta('schema_version'), '2');
    assert.equal(upgraded.index.digestMadeAt('x'), undefined, 'the digests table exists');
  } finally {
    await upgraded.index.close();
  }
  // What an older dsync does with this index, a newer one's does to ours: it starts over.
  const db2 = new Database(file);
  db2.prepare("UPDATE meta SET value = '3' WHERE key = 'schema_version'").run();
  db2.close();
  const later = ChangeIndex.open(file);
  try {
    assert.match(later.rebuiltReason ?? '', /unknown schema version 3/);
    assert.notEqual(later.index.locationId, id);
  } finally {
    await later.index.close();
  }
});

// Found by the crash soak (a kill at one of 150 random moments): a new index got its schema
// version and its identity in two commits, and a run killed between them left an index without
// an identity. Every later run then failed ("NOT NULL constraint failed: peer_state.peer").
test('an index that lost its identity (a run killed while creating it) gets a new one; mirroring works', { timeout: 30_000 }, async (t) => {
  const root = tempDir(t);
  const a = path.join(root, 'a');
  const b = path.join(root, 'b');
  for (let i = 1; i <= 3; i++) putFile(a, 'cur', `170000000${i}.m${i}.robust:2,S`, `Subject: m${i}\n\n${i}\n`);
  const file = path.join(a, INDEX_FILE);
  await ChangeIndex.open(file).index.close();
  const db = new Database(file);
  db.prepare("DELETE FROM meta WHERE key = 'location_id'").run();
  db.close();
  const reopened = ChangeIndex.open(file);
  try {
    assert.equal(reopened.rebuiltReason, undefined);
    assert.match(reopened.index.locationId ?? '', /^[0-9a-f]{32}$/);
  } finally {
    await reopened.index.close();
  }
  // And through a mirror run, which records the peer's identity in both indexes.
  const again = new Database(file);
  again.prepare("DELETE FROM meta WHERE key = 'location_id'").run();
  again.close();
  const args = mirrorArgs(`maildir:${a}`, `maildir:${b}`);
  syncedOk(args);
  syncedOk(args);
  await assertSame(`maildir:${a}`, `maildir:${b}`);
});
