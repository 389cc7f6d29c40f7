// Saving (GUID as base name, G fallback, streams), flags, keywords, expunge, header changes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Readable } from 'node:stream';
import { createHash } from 'node:crypto';
import { Flag } from '../../src/model/flags.js';
import { StorageError, type SaveRequest, type StoreMailbox } from '../../src/storage/types.js';
import { makeMaildir, msg, openMaildir, tempDir, warnings, writeMail } from './helpers.js';

function req(uid: number, guid: string, body: string | Buffer, extra: Partial<SaveRequest> = {}): SaveRequest {
  return { uid, guid, flags: 0, keywords: [], internalDate: 1704103200 + uid, body: typeof body === 'string' ? Buffer.from(body) : body, ...extra };
}

async function readBody(box: StoreMailbox, uid: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of await box.openBody(uid)) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

function vsize(s: string): number {
  return Buffer.byteLength(s) + (s.match(/(?<!\r)\n/g)?.length ?? 0);
}

test('save: GUID becomes the base name when usable; otherwise generated name + G key', async (t) => {
  const root = tempDir(t);
  const w = warnings();
  const store = await openMaildir(`maildir:${root}`, { warn: w.warn });
  const box = await store.openMailbox(['INBOX']);
  const b1 = msg(1);
  const b2 = msg(2);
  const b3 = 'From: x\r\nSubject: crlf\r\n\r\nbody\r\n';
  const g1 = `1704103200.M100001P4242Q1.corpus,S=${Buffer.byteLength(b1)},W=${vsize(b1)}`;
  const g2 = '1704276000.M100003P4242Q3.corpus'; // no sizes: used as is
  const g3 = `1704362400.M1P1.corpus,S=${Buffer.byteLength(b3) + 1}`; // wrong S=: fallback
  const g4 = 'not usable: has spaces';
  const g5 = g2; // same GUID again (a copy): its base name is taken now
  await box.save([
    req(1, g1, b1, { flags: Flag.Seen }),
    req(2, g2, b2, { flags: Flag.Flagged | Flag.Answered, keywords: ['$Forwarded'] }),
    req(5, g3, b3),
    req(6, g4, 'four'),
    req(9, g5, 'five'),
  ]);
  const msgs = await box.scan();
  const ul = fs.readFileSync(path.join(root, 'dovecot-uidlist'), 'utf8').trimEnd().split('\n');
  const generated6 = ul[4]!.slice('6 :'.length);
  assert.deepEqual(msgs.map((m) => [m.uid, m.guid, m.flags, m.keywords, m.internalDate]), [
    [1, g1, Flag.Seen, [], 1704103201],
    [2, g2, Flag.Flagged | Flag.Answered, ['$Forwarded'], 1704103202],
    [5, g3, 0, [], 1704103205],
    [6, generated6, 0, [], 1704103206],
    [9, g5, 0, [], 1704103209],
  ]);
  assert.ok(w.has(/GUID "not usable: has spaces" of UID 6 cannot be stored/));
  const cur = fs.readdirSync(path.join(root, 'cur')).sort();
  assert.ok(cur.includes(`${g1}:2,S`), cur.join(' '));
  assert.ok(cur.includes(`${g2}:2,FRa`), cur.join(' '));
  assert.equal(cur.length, 5);
  assert.equal(ul[1], `1 :${g1}`);
  assert.equal(ul[2], `2 :${g2}`);
  const esc = (x: string) => x.replace(/[.]/g, '\\.');
  assert.match(ul[3]!, new RegExp(`^5 G${esc(g3)} :\\d+\\.M\\d+P${process.pid}\\.[^,]+,S=${Buffer.byteLength(b3)},W=${Buffer.byteLength(b3)}$`));
  assert.match(ul[4]!, /^6 :\d+\.M\d+P\d+\..+,S=4,W=4$/);
  assert.match(ul[5]!, new RegExp(`^9 G${esc(g2)} :\\d+\\.M`));
  assert.equal(fs.readFileSync(path.join(root, 'dovecot-keywords'), 'utf8'), '0 $Forwarded\n');
  assert.deepEqual(await readBody(box, 5), Buffer.from(b3));
  assert.deepEqual(await readBody(box, 1), Buffer.from(b1));
  assert.equal((await box.status()).uidNext, 10);
  assert.deepEqual(fs.readdirSync(path.join(root, 'tmp')), [], 'tmp/ is empty afterwards');
  // File mtimes are the internal dates.
  const byBase = new Map(ul.slice(1).map((l) => [l.slice(l.indexOf(':') + 1), Number(l.split(' ')[0])]));
  for (const n of cur) {
    const uid = byBase.get(n.split(':')[0]!);
    assert.ok(uid, n);
    assert.equal(fs.statSync(path.join(root, 'cur', n)).mtimeMs / 1000, 1704103200 + uid);
  }
});

test('save: streamed large body is written exactly, sizes counted, not buffered', async (t) => {
  const root = tempDir(t);
  const store = await openMaildir(`maildir:${root}`);
  const box = await store.openMailbox(['INBOX']);
  const CHUNK = 64 * 1024;
  const COUNT = 200; // 12.5 MiB
  const hash = createHash('sha256');
  let bareLf = 0;
  const chunkAt = (i: number): Buffer => {
    const b = Buffer.alloc(CHUNK, 0x61 + (i % 26));
    for (let j = 100; j < CHUNK - 1; j += 1000) b[j] = 0x0a;
    if (i % 2 === 0) {
      b[99] = 0x0d; // a CRLF inside the chunk
      b[CHUNK - 1] = 0x0d; // and one across the chunk boundary
    } else b[0] = 0x0a;
    return b;
  };
  let prev = -1;
  for (let i = 0; i < COUNT; i++) {
    const b = chunkAt(i);
    hash.update(b);
    for (let j = 0; j < b.length; j++) {
      if (b[j] === 0x0a && prev !== 0x0d) bareLf++;
      prev = b[j]!;
    }
  }
  let produced = 0;
  const stream = () =>
    new Readable({
      read() {
        this.push(produced < COUNT ? chunkAt(produced++) : null);
      },
    });
  await box.save([{ uid: 1, guid: 'streamed-guid', flags: 0, keywords: [], internalDate: 1600000000, body: stream }]);
  // The same body again under a GUID carrying S= and W=: both must match for the name to be kept.
  const big = `big.M1P1.h,S=${CHUNK * COUNT},W=${CHUNK * COUNT + bareLf}`;
  produced = 0;
  await box.save([{ uid: 3, guid: big, flags: 0, keywords: [], internalDate: 1600000000, body: stream }]);
  assert.ok(fs.existsSync(path.join(root, 'cur', `${big}:2,`)), 'W= counted across chunk boundaries');
  const [m] = await box.scan();
  assert.equal(m!.size, CHUNK * COUNT);
  assert.equal(m!.guid, 'streamed-guid');
  assert.equal(m!.internalDate, 1600000000);
  const h2 = createHash('sha256');
  for await (const c of await box.openBody(1)) h2.update(c as Buffer);
  assert.equal(h2.digest('hex'), hash.digest('hex'));
  // GUID with matching S= and W= (W counts bare LFs as two bytes) keeps the name.
  const small = 'a\nb\r\nc\n';
  const g = `x.M1P1.h,S=${small.length},W=${small.length + 2}`;
  await box.save([req(4, g, small)]);
  assert.ok(fs.existsSync(path.join(root, 'cur', `${g}:2,`)));
  const wrongW = `y.M1P1.h,S=${small.length},W=${small.length}`;
  await box.save([req(5, wrongW, small)]);
  assert.ok(!fs.existsSync(path.join(root, 'cur', `${wrongW}:2,`)));
  assert.equal((await box.scan()).find((x) => x.uid === 5)!.guid, wrongW);
});

test('save: UID rules (ascending, not below uidNext); failed save leaves no files', async (t) => {
  const root = tempDir(t);
  const store = await openMaildir(`maildir:${root}`);
  const box = await store.openMailbox(['INBOX']);
  await box.save([req(3, 'a', 'a')]);
  await assert.rejects(box.save([req(2, 'b', 'b')]), (e: unknown) => e instanceof StorageError && e.code === 'UIDTAKEN');
  await assert.rejects(box.save([req(5, 'c', 'c'), req(5, 'd', 'd')]), /ascending/);
  const failing = () =>
    new Readable({
      read() {
        this.destroy(new Error('peer went away'));
      },
    });
  await assert.rejects(box.save([req(7, 'e', 'e'), { ...req(8, 'f', ''), body: failing }]), /peer went away/);
  assert.deepEqual(fs.readdirSync(path.join(root, 'tmp')), []);
  assert.deepEqual((await box.scan()).map((m) => m.uid), [3]);
  assert.equal((await box.status()).uidNext, 4);
});

test('flags: round trip keeps P, unknown letters and extras; keywords via dovecot-keywords', async (t) => {
  const root = tempDir(t);
  makeMaildir(root);
  writeMail(path.join(root, 'cur', 'm1:2,PSX,extra'), 'one');
  writeMail(path.join(root, 'cur', 'm2:2,Sz'), 'two'); // z: keyword letter without a name
  writeMail(path.join(root, 'new', 'm3'), 'three');
  fs.writeFileSync(path.join(root, 'dovecot-keywords'), '0 $Junk\n');
  const store = await openMaildir(`maildir:${root}`);
  const box = await store.openMailbox(['INBOX']);
  const msgs = await box.scan();
  assert.deepEqual(msgs.map((m) => [m.uid, m.flags, m.keywords]), [[1, Flag.Seen, []], [2, Flag.Seen, []], [3, 0, []]]);
  await box.updateFlags([
    { uid: 1, flags: Flag.Flagged | Flag.Draft, keywords: ['Work', '$Junk'] },
    { uid: 2, flags: Flag.Deleted, keywords: ['$Junk'] },
    { uid: 3, flags: Flag.Seen | Flag.Answered, keywords: ['Work'] },
    { uid: 99, flags: Flag.Seen, keywords: [] }, // unknown uid: ignored
  ]);
  assert.deepEqual(fs.readdirSync(path.join(root, 'cur')).sort(), ['m1:2,DFPXab,extra', 'm2:2,Taz', 'm3:2,RSb']);
  assert.equal(fs.readFileSync(path.join(root, 'dovecot-keywords'), 'utf8'), '0 $Junk\n1 Work\n');
  const after = await box.scan();
  assert.deepEqual(after.map((m) => [m.uid, m.flags, m.keywords]), [
    [1, Flag.Flagged | Flag.Draft, ['$Junk', 'Work']],
    [2, Flag.Deleted, ['$Junk']],
    [3, Flag.Seen | Flag.Answered, ['Work']],
  ]);
  await box.updateFlags([{ uid: 1, flags: 0, keywords: [] }]);
  assert.ok(fs.existsSync(path.join(root, 'cur', 'm1:2,PX,extra')));
  // Someone else renamed the file meanwhile (flag change): found by base name.
  fs.renameSync(path.join(root, 'cur', 'm3:2,RSb'), path.join(root, 'cur', 'm3:2,S'));
  await box.updateFlags([{ uid: 3, flags: Flag.Flagged, keywords: [] }]);
  assert.ok(fs.existsSync(path.join(root, 'cur', 'm3:2,F')));
  // Someone else expunged it: ignored.
  fs.unlinkSync(path.join(root, 'cur', 'm3:2,F'));
  await box.updateFlags([{ uid: 3, flags: Flag.Seen, keywords: [] }]);
  await assert.rejects(box.openBody(3), (e: unknown) => e instanceof StorageError && e.code === 'EXPUNGED');
});

test('keywords: more than 26 distinct keywords cannot be stored; extras dropped with a warning', async (t) => {
  const root = tempDir(t);
  const w = warnings();
  const store = await openMaildir(`maildir:${root}`, { warn: w.warn });
  const box = await store.openMailbox(['INBOX']);
  const kws = Array.from({ length: 30 }, (_, i) => `kw${String(i).padStart(2, '0')}`);
  await box.save([req(1, 'g1', 'x', { keywords: kws })]);
  const [m] = await box.scan();
  assert.equal(m!.keywords.length, 26);
  assert.deepEqual(m!.keywords, kws.slice(0, 26));
  assert.equal(w.list.filter((x) => /all 26 maildir keyword letters are in use; dropped/.test(x)).length, 4);
  const name = fs.readdirSync(path.join(root, 'cur'))[0]!;
  assert.equal(name, 'g1:2,abcdefghijklmnopqrstuvwxyz');
  await box.updateFlags([{ uid: 1, flags: 0, keywords: ['kw29', 'kw00'] }]);
  assert.deepEqual((await box.scan())[0]!.keywords, ['kw00']);
  assert.ok(w.has(/"kw29" cannot be stored/));
});

test('expunge: unlinks, drops the uidlist entries, keeps uidNext; missing UIDs ignored', async (t) => {
  const root = tempDir(t);
  const store = await openMaildir(`maildir:${root}`);
  const box = await store.openMailbox(['INBOX']);
  await box.save([req(1, 'a', 'a'), req(2, 'b', 'b'), req(3, 'c', 'c')]);
  await box.expunge([3, 1, 42]);
  assert.deepEqual((await box.scan()).map((m) => m.uid), [2]);
  assert.deepEqual(fs.readdirSync(path.join(root, 'cur')), ['b:2,']);
  const ul = fs.readFileSync(path.join(root, 'dovecot-uidlist'), 'utf8');
  assert.match(ul, /^3 V\d+ N4 G[0-9a-f]{32}\n2 :b\n$/);
  assert.equal((await box.status()).uidNext, 4);
  await box.expunge([2, 2]);
  assert.deepEqual(await box.scan(), []);
  // A new save may not reuse an expunged UID.
  await assert.rejects(box.save([req(3, 'z', 'z')]), (e: unknown) => e instanceof StorageError && e.code === 'UIDTAKEN');
  await box.save([req(4, 'z', 'z')]);
  assert.deepEqual((await box.scan()).map((m) => m.uid), [4]);
});

test('header: setGuid, setUidValidity, raiseUidNext (only grows) rewrite the uidlist header', async (t) => {
  const root = tempDir(t);
  makeMaildir(root);
  fs.writeFileSync(path.join(root, 'dovecot-uidlist'), '3 V1 N2 G11111111111111111111111111111111 Pfoo\n1 Xkeep :a\n');
  writeMail(path.join(root, 'cur', 'a:2,'), 'a');
  const store = await openMaildir(`maildir:${root}`);
  const box = await store.openMailbox(['INBOX']);
  await box.setGuid('ABCDEFABCDEFABCDEFABCDEFABCDEFAB');
  await box.setUidValidity(12345);
  await box.raiseUidNext(50);
  await box.raiseUidNext(10);
  assert.equal(fs.readFileSync(path.join(root, 'dovecot-uidlist'), 'utf8'), '3 V12345 N50 Gabcdefabcdefabcdefabcdefabcdefab Pfoo\n1 Xkeep :a\n');
  assert.deepEqual(await box.status(), { guid: 'abcdefabcdefabcdefabcdefabcdefab', uidValidity: 12345, uidNext: 50 });
  await assert.rejects(box.setGuid('xyz'), /invalid mailbox GUID/);
  await assert.rejects(box.setUidValidity(0), /invalid UIDVALIDITY/);
  writeMail(path.join(root, 'new', 'b'), 'b');
  assert.deepEqual((await box.scan()).map((m) => m.uid), [1, 50]);
});

test('openBody: EXPUNGED when the file is gone, follows renames', async (t) => {
  const root = tempDir(t);
  const store = await openMaildir(`maildir:${root}`);
  const box = await store.openMailbox(['INBOX']);
  await box.save([req(1, 'a', 'hello'), req(2, 'b', 'bye')]);
  fs.renameSync(path.join(root, 'cur', 'a:2,'), path.join(root, 'cur', 'a:2,S'));
  assert.equal((await readBody(box, 1)).toString(), 'hello');
  fs.unlinkSync(path.join(root, 'cur', 'b:2,'));
  await assert.rejects(box.openBody(2), (e: unknown) => e instanceof StorageError && e.code === 'EXPUNGED');
  await assert.rejects(box.openBody(77), (e: unknown) => e instanceof StorageError && e.code === 'EXPUNGED');
});

test('renumber: messages get new UIDs in one uidlist rewrite; files, GUIDs, flags and dates stay', async (t) => {
  const root = tempDir(t);
  const store = await openMaildir(`maildir:${root}`);
  const box = await store.openMailbox(['INBOX']);
  await box.save([
    req(1, 'a', 'aa', { flags: Flag.Seen, keywords: ['k1'] }),
    req(2, 'b:guid-kept-in-G-key', 'bb'),
    req(3, 'c', 'cc'),
  ]);
  const before = await box.scan();
  const filesBefore = fs.readdirSync(path.join(root, 'cur')).sort();
  assert.ok(box.renumber, 'maildir implements the optional renumber');
  await box.renumber!([
    { from: 1, to: 10 },
    { from: 2, to: 11 },
  ]);
  const after = await box.scan();
  assert.deepEqual(after.map((m) => m.uid), [3, 10, 11]);
  const strip = (m: { uid: number }) => ({ ...m, uid: 0 });
  assert.deepEqual(after.map(strip), [before[2]!, before[0]!, before[1]!].map(strip));
  assert.deepEqual(fs.readdirSync(path.join(root, 'cur')).sort(), filesBefore);
  assert.equal((await box.status()).uidNext, 12);
  const ul = fs.readFileSync(path.join(root, 'dovecot-uidlist'), 'utf8').trimEnd().split('\n');
  assert.deepEqual(ul.slice(1).map((l) => Number(l.split(' ')[0])), [3, 10, 11]);
  assert.match(ul[0]!, / N12 /);
  assert.equal((await readBody(box, 10)).toString(), 'aa');
  await assert.rejects(box.openBody(1), (e: unknown) => e instanceof StorageError && e.code === 'EXPUNGED');
  await assert.rejects(box.renumber!([{ from: 3, to: 5 }]), (e: unknown) => e instanceof StorageError && e.code === 'UIDTAKEN');
});

test('readBody: a known mail whole; null above the limit, for an unknown UID and for a file gone since the scan', async (t) => {
  const root = tempDir(t);
  const store = await openMaildir(`maildir:${root}`);
  const box = await store.openMailbox(['INBOX']);
  const big = `Subject: big\n\n${'x'.repeat(5000)}\n`;
  await box.save([req(1, 'small-one', 'Subject: small\n\nhi\n'), req(2, 'big-one', big), req(3, 'gone-one', 'Subject: gone\n\nbye\n')]);
  await box.scan();
  assert.equal((await box.readBody!(1, 4096))!.toString(), 'Subject: small\n\nhi\n');
  assert.equal(await box.readBody!(2, 4096), null, 'larger than maxBytes');
  assert.equal((await box.readBody!(2, 8192))!.toString(), big);
  assert.equal(await box.readBody!(99, 4096), null, 'unknown UID');
  const gone = fs.readdirSync(path.join(root, 'cur')).find((n) => n.startsWith('gone-one'))!;
  fs.unlinkSync(path.join(root, 'cur', gone));
  assert.equal(await box.readBody!(3, 4096), null, 'removed after the scan: the caller falls back to openBody');
  await store.close();
});

// The uidlist a renumber rewrites may be one just parsed (not the handle's cached copy), whose
// entries-by-name map was made by the parse: moving entries must not leave that map naming the
// old UIDs for the next scan. Both ways of moving mails, each on a handle that never scanned.
for (const [how, move] of [
  ['renumber', (box: StoreMailbox) => box.renumber!([{ from: 1, to: 10 }])],
  ['saveAndRenumber with moves only', (box: StoreMailbox) => box.saveAndRenumber!([], [{ from: 1, to: 10 }])],
] as const) {
  test(`${how} on a fresh handle, then scan: the scan sees the new UIDs`, async (t) => {
    const root = tempDir(t);
    const first = await openMaildir(`maildir:${root}`);
    const box1 = await first.openMailbox(['INBOX']);
    await box1.save([req(1, 'a', 'aa'), req(2, 'b', 'bb'), req(3, 'c', 'cc')]);
    await box1.close();
    await first.close();
    const store = await openMaildir(`maildir:${root}`);
    const box = await store.openMailbox(['INBOX']);
    await move(box);
    assert.deepEqual((await box.scan()).map((m) => [m.uid, m.guid]), [[2, 'b'], [3, 'c'], [10, 'a']]);
    await box.close();
    await store.close();
  });
}

test('save: a mail whose GUID names a file delivered to new/ since the scan gets a name of its own', async (t) => {
  const root = tempDir(t);
  const store = await openMaildir(`maildir:${root}`);
  const box = await store.openMailbox(['INBOX']);
  await box.scan();
  // Delivered after the scan, under the very name the save would give its mail.
  const guid = '1704103200.M100001P4242Q1.corpus';
  fs.writeFileSync(path.join(root, 'new', guid), msg(7));
  await box.save([req(1, guid, msg(1))]);
  const cur = fs.readdirSync(path.join(root, 'cur'));
  assert.equal(cur.length, 1);
  assert.ok(!cur[0]!.startsWith(guid), `saved under another name: ${cur[0]}`);
  // Two files, two mails: the saved one under its UID (its GUID kept in the uidlist), the
  // delivered one with the next UID (its name is its GUID).
  const msgs = await box.scan();
  assert.deepEqual(
    msgs.map((m) => [m.uid, m.guid]),
    [
      [1, guid],
      [2, guid],
    ],
  );
  await box.close();
  await store.close();
});
