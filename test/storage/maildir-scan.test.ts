// Scanning: new/ -> cur/, UID assignment, Dovecot-written state, garbled/stray input, read-only.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Flag } from '../../src/model/flags.js';
import { StorageError } from '../../src/storage/types.js';
import { hashTree, makeMaildir, msg, openMaildir, tempDir, warnings, writeMail } from './helpers.js';

test('scan: moves new/ to cur/, assigns UIDs by base name, writes uidlist + uidvalidity', async (t) => {
  const root = path.join(tempDir(t), 'Maildir');
  makeMaildir(root);
  writeMail(path.join(root, 'cur', '1000.M2P1.h,S=10:2,S'), msg(2), 1000);
  writeMail(path.join(root, 'new', '1000.M1P1.h'), msg(1), 999);
  writeMail(path.join(root, 'new', '1000.M3P1.h'), msg(3), 1001);
  writeMail(path.join(root, 'cur', '1000.M0P1.h:2,FRa'), msg(0), 998);
  fs.writeFileSync(path.join(root, 'dovecot-keywords'), '0 $Forwarded\n');
  const store = await openMaildir(`maildir:${root}`);
  const inbox = await store.openMailbox(['inbox']);
  assert.deepEqual(inbox.name, ['INBOX']);
  const msgs = await inbox.scan();
  assert.deepEqual(
    msgs.map((m) => [m.uid, m.guid, m.flags, m.keywords, m.internalDate, m.size]),
    [
      [1, '1000.M0P1.h', Flag.Flagged | Flag.Answered, ['$Forwarded'], 998, Buffer.byteLength(msg(0))],
      [2, '1000.M1P1.h', 0, [], 999, Buffer.byteLength(msg(1))],
      [3, '1000.M2P1.h,S=10', Flag.Seen, [], 1000, Buffer.byteLength(msg(2))],
      [4, '1000.M3P1.h', 0, [], 1001, Buffer.byteLength(msg(3))],
    ],
  );
  assert.deepEqual(fs.readdirSync(path.join(root, 'new')), []);
  assert.deepEqual(fs.readdirSync(path.join(root, 'cur')).sort(), [
    '1000.M0P1.h:2,FRa',
    '1000.M1P1.h:2,',
    '1000.M2P1.h,S=10:2,S',
    '1000.M3P1.h:2,',
  ]);
  const ul = fs.readFileSync(path.join(root, 'dovecot-uidlist'), 'utf8').split('\n');
  assert.match(ul[0]!, /^3 V(\d+) N(\d+) G([0-9a-f]{32})$/);
  assert.deepEqual(ul.slice(1), ['1 :1000.M0P1.h', '2 :1000.M1P1.h', '3 :1000.M2P1.h,S=10', '4 :1000.M3P1.h', '']);
  const uvHex = fs.readFileSync(path.join(root, 'dovecot-uidvalidity'), 'utf8');
  assert.match(uvHex, /^[0-9a-f]{8}$/);
  assert.ok(fs.existsSync(path.join(root, `dovecot-uidvalidity.${uvHex}`)));
  const st = await inbox.status();
  assert.equal(st.uidValidity, parseInt(uvHex, 16));
  assert.equal(st.uidNext, 5);
  assert.equal(`3 V${st.uidValidity} N5 G${st.guid}`, ul[0]);

  // Stable on rescan; a new delivery gets the next UID and is appended.
  const before = fs.readFileSync(path.join(root, 'dovecot-uidlist'), 'utf8');
  assert.deepEqual((await inbox.scan()).map((m) => m.uid), [1, 2, 3, 4]);
  assert.equal(fs.readFileSync(path.join(root, 'dovecot-uidlist'), 'utf8'), before, 'no rewrite when nothing changed');
  writeMail(path.join(root, 'new', '0999.M9P1.h'), msg(9), 1002);
  const again = await inbox.scan();
  assert.deepEqual(again.map((m) => [m.uid, m.guid]).slice(-1), [[5, '0999.M9P1.h']]);
  assert.equal(fs.readFileSync(path.join(root, 'dovecot-uidlist'), 'utf8'), before + '5 :0999.M9P1.h\n', 'appended');
  assert.equal((await inbox.status()).uidNext, 6);
  await store.close();
});

test('scan: reads Dovecot-written uidlists (N below listed UIDs, G extension, old :2, form) without rewriting', async (t) => {
  const root = tempDir(t);
  makeMaildir(root);
  const uidlist = [
    '3 V1795683406 N1 Gb0cc402c4cf4076ba805000083ecc375',
    '1 :1704103200.M100001P4242Q1.corpus,S=171,W=178',
    '3 G1704276000.M100003P4242Q3.corpus :1795683405.M990881P1499.vm,S=201,W=208',
    '7 :1704448800.M100005P4242Q5.corpus,S=201,W=208:2,S',
    '',
  ].join('\n');
  fs.writeFileSync(path.join(root, 'dovecot-uidlist'), uidlist);
  writeMail(path.join(root, 'cur', '1704103200.M100001P4242Q1.corpus,S=171,W=178:2,S'), 'a');
  writeMail(path.join(root, 'cur', '1795683405.M990881P1499.vm,S=201,W=208:2,F'), 'bb');
  writeMail(path.join(root, 'cur', '1704448800.M100005P4242Q5.corpus,S=201,W=208:2,RS'), 'ccc');
  const store = await openMaildir(`maildir:${root}`);
  const box = await store.openMailbox(['INBOX']);
  const msgs = await box.scan();
  assert.deepEqual(msgs.map((m) => [m.uid, m.guid, m.flags, m.size]), [
    [1, '1704103200.M100001P4242Q1.corpus,S=171,W=178', Flag.Seen, 1],
    [3, '1704276000.M100003P4242Q3.corpus', Flag.Flagged, 2],
    [7, '1704448800.M100005P4242Q5.corpus,S=201,W=208', Flag.Answered | Flag.Seen, 3],
  ]);
  assert.deepEqual(await box.status(), { guid: 'b0cc402c4cf4076ba805000083ecc375', uidValidity: 1795683406, uidNext: 8 });
  assert.equal(fs.readFileSync(path.join(root, 'dovecot-uidlist'), 'utf8'), uidlist);
  const list = (await store.listMailboxes()).map(({ changedAt, ...rest }) => {
    assert.equal(typeof changedAt, 'number', 'the directory ctime dates renames');
    return rest;
  });
  assert.deepEqual(list, [{ name: ['INBOX'], selectable: true, guid: 'b0cc402c4cf4076ba805000083ecc375', uidValidity: 1795683406, uidNext: 8 }]);
});

test('scan: a garbled uidlist line never loses the file; vanished entries are not returned', async (t) => {
  const root = tempDir(t);
  makeMaildir(root);
  fs.writeFileSync(
    path.join(root, 'dovecot-uidlist'),
    '3 V5 N3 Gdddddddddddddddddddddddddddddddd\n1 :keep\nthis is #garbage :lost\n2 :gone\n',
  );
  writeMail(path.join(root, 'cur', 'keep:2,S'), 'k');
  writeMail(path.join(root, 'cur', 'lost:2,'), 'l');
  const w = warnings();
  const store = await openMaildir(`maildir:${root}`, { warn: w.warn });
  const box = await store.openMailbox(['INBOX']);
  const msgs = await box.scan();
  assert.deepEqual(msgs.map((m) => [m.uid, m.guid]), [[1, 'keep'], [3, 'lost']]);
  assert.ok(w.has(/garbled line/));
  // The garbled line forced a clean rewrite; "gone" is still listed (dropped lazily) but never returned.
  assert.equal(fs.readFileSync(path.join(root, 'dovecot-uidlist'), 'utf8'), '3 V5 N4 Gdddddddddddddddddddddddddddddddd\n1 :keep\n2 :gone\n3 :lost\n');
});

test('scan: missing GUID / UIDVALIDITY in the header are filled in', async (t) => {
  const root = tempDir(t);
  makeMaildir(root);
  fs.writeFileSync(path.join(root, 'dovecot-uidlist'), '3 V77 N2\n1 :a\n');
  writeMail(path.join(root, 'cur', 'a:2,'), 'x');
  const store = await openMaildir(`maildir:${root}`);
  const box = await store.openMailbox(['INBOX']);
  assert.deepEqual((await box.scan()).map((m) => m.uid), [1]);
  const head = fs.readFileSync(path.join(root, 'dovecot-uidlist'), 'utf8');
  assert.match(head, /^3 V77 N2 G[0-9a-f]{32}\n1 :a\n$/);
  fs.writeFileSync(path.join(root, 'dovecot-uidlist'), '3 N2 Geeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee\n1 :a\n');
  const st = await box.status();
  assert.equal(st.guid, 'eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee');
  assert.ok(st.uidValidity > 1_600_000_000, 'time-based first UIDVALIDITY');
});

test('scan: zero-byte files are messages; dot-files and directories are ignored with a warning', async (t) => {
  const root = tempDir(t);
  makeMaildir(root);
  writeMail(path.join(root, 'cur', 'empty:2,S'), '');
  writeMail(path.join(root, 'cur', '.stray-dotfile'), 'x');
  writeMail(path.join(root, 'new', '.nfs000123'), 'x');
  fs.mkdirSync(path.join(root, 'cur', 'subdir'));
  const w = warnings();
  const store = await openMaildir(`maildir:${root}`, { warn: w.warn });
  const msgs = await (await store.openMailbox(['INBOX'])).scan();
  assert.deepEqual(msgs.map((m) => [m.uid, m.guid, m.size]), [[1, 'empty', 0]]);
  assert.ok(w.has(/stray dot-file cur\/\.stray-dotfile/));
  assert.ok(w.has(/stray dot-file new\/\.nfs000123/));
  assert.ok(w.has(/ignoring directory cur\/subdir/));
  assert.ok(fs.existsSync(path.join(root, 'new', '.nfs000123')), 'stray files are left alone');
});

test('scan: same base name in new/ and cur/ keeps one and gives the other its own name', async (t) => {
  const root = tempDir(t);
  makeMaildir(root);
  writeMail(path.join(root, 'cur', 'dup:2,S'), 'first');
  writeMail(path.join(root, 'new', 'dup'), 'second, different');
  // A second hard link to the same file is simply removed.
  writeMail(path.join(root, 'cur', 'linked:2,'), 'same');
  fs.linkSync(path.join(root, 'cur', 'linked:2,'), path.join(root, 'new', 'linked'));
  const w = warnings();
  const store = await openMaildir(`maildir:${root}`, { warn: w.warn });
  const msgs = await (await store.openMailbox(['INBOX'])).scan();
  assert.equal(msgs.length, 3);
  assert.ok(w.has(/duplicates the base name/));
  assert.ok(w.has(/second link/));
  const cur = fs.readdirSync(path.join(root, 'cur'));
  assert.equal(cur.length, 3);
  assert.deepEqual(fs.readdirSync(path.join(root, 'new')), []);
  const contents = cur.map((n) => fs.readFileSync(path.join(root, 'cur', n), 'utf8')).sort();
  assert.deepEqual(contents, ['first', 'same', 'second, different']);
});

test('readOnly: never writes anything, UIDs assigned in memory deterministically', async (t) => {
  const root = tempDir(t);
  makeMaildir(root);
  fs.mkdirSync(path.join(root, '.Sub', 'cur'), { recursive: true });
  fs.writeFileSync(path.join(root, 'dovecot-uidlist'), '3 V9 N5 Gffffffffffffffffffffffffffffffff\n2 :b\n');
  writeMail(path.join(root, 'cur', 'b:2,S'), 'b');
  writeMail(path.join(root, 'new', 'c'), 'c');
  writeMail(path.join(root, 'new', 'a'), 'a');
  fs.writeFileSync(path.join(root, 'subscriptions'), 'V\t2\n\nSub\n');
  const before = hashTree(root);
  const store = await openMaildir(`maildir:${root}`, { readOnly: true });
  const list = await store.listMailboxes();
  assert.deepEqual(list.map((l) => [l.name, l.selectable]), [[['INBOX'], true], [['Sub'], true]]);
  const box = await store.openMailbox(['INBOX']);
  const msgs = await box.scan();
  assert.deepEqual(msgs.map((m) => [m.uid, m.guid]), [[2, 'b'], [5, 'a'], [6, 'c']]);
  assert.deepEqual((await box.scan()).map((m) => m.uid), [2, 5, 6], 'same answer twice');
  const body = await box.openBody(6);
  let text = '';
  for await (const c of body) text += c;
  assert.equal(text, 'c');
  // The UIDs given in memory count: a backup from this read-only store needs UIDNEXT above them.
  assert.equal((await box.status()).uidNext, 7);
  assert.deepEqual(await store.readSubscriptions(), [['Sub']]);
  // Mailbox without uidlist: synthetic but stable header values.
  const sub = await store.openMailbox(['Sub']);
  const s1 = await sub.status();
  assert.deepEqual(await sub.status(), s1);
  assert.match(s1.guid, /^[0-9a-f]{32}$/);
  assert.deepEqual(await sub.scan(), []);
  for (const op of [
    () => box.save([{ uid: 10, guid: 'x', flags: 0, keywords: [], internalDate: 1, body: Buffer.from('x') }]),
    () => box.updateFlags([{ uid: 2, flags: 0, keywords: [] }]),
    () => box.expunge([2]),
    () => box.setGuid('00000000000000000000000000000000'),
    () => store.createMailbox(['New'], { guid: '00000000000000000000000000000000', uidValidity: 1 }),
    () => store.writeSubscriptions([]),
    () => store.newUidValidity(),
  ]) {
    await assert.rejects(op(), (e: unknown) => e instanceof StorageError && e.code === 'PERM');
  }
  assert.equal(hashTree(root), before, 'the tree is untouched');
  await assert.rejects(openMaildir(`maildir:${root}/missing`, { readOnly: true }), (e: unknown) => e instanceof StorageError && e.code === 'NOTFOUND');
  assert.equal(hashTree(root), before);
});

test('open: createIfMissing creates the root maildir; false refuses', async (t) => {
  const dir = tempDir(t);
  await assert.rejects(openMaildir(`maildir:${dir}/a`, { createIfMissing: false }), (e: unknown) => e instanceof StorageError && e.code === 'NOTFOUND');
  assert.equal(fs.existsSync(`${dir}/a`), false);
  await openMaildir(`maildir:${dir}/b/c`);
  assert.deepEqual(fs.readdirSync(`${dir}/b/c`).sort(), ['cur', 'new', 'tmp']);
  assert.equal((await openMaildir(`mbox:${dir}/m`)).format, 'mbox', 'mbox locations open the mbox store');
});
