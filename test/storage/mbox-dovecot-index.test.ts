// UIDVALIDITY from Dovecot's binary index (dovecot.index, dovecot.index.log) for mbox files that
// hold none: the parser on hand-built and captured bytes, the mbox store using it (index
// directories with and without INDEX=), and, with a real Dovecot, an empty folder created by
// Dovecot and an mbox emptied behind Dovecot's back (main index plus log).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  combineIndex,
  decodeRecordSize,
  encodeRecordSize,
  parseIndexHeader,
  readDovecotIndexUids,
  scanLog,
} from '../../src/storage/mbox/dovecot-index.js';
import { chownTree, doveadm, dovecotSkipReason, writeDoveadmConfig } from '../helpers/dovecot.js';
import { makeTempDir, removeTree } from '../helpers/tmp.js';
import { tempDir, warnings } from './helpers.js';
import { fileState, openMbox, write } from './mbox-helpers.js';
import { StorageError, type SaveRequest } from '../../src/storage/types.js';

const skip = dovecotSkipReason();

// ------------------------------------------------------------------ building index files

const u32 = (n: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n >>> 0);
  return b;
};

interface IndexOpts {
  uidValidity: number;
  nextUid?: number;
  indexId?: number;
  logFileSeq?: number;
  major?: number;
  compat?: number;
}

/** A dovecot.index with only its 120-byte base header (version 7.3, little-endian). */
function indexFile(o: IndexOpts): Buffer {
  const b = Buffer.alloc(120);
  b[0] = o.major ?? 7;
  b[1] = 3;
  b.writeUInt16LE(120, 2);
  b.writeUInt32LE(120, 4);
  b.writeUInt32LE(24, 8);
  b[12] = o.compat ?? 1;
  b.writeUInt32LE(o.indexId ?? 0x6b000001, 16);
  b.writeUInt32LE(o.uidValidity, 24);
  b.writeUInt32LE(o.nextUid ?? 1, 28);
  b.writeUInt32LE(o.logFileSeq ?? 1, 60);
  return b;
}

/** A 40-byte dovecot.index.log header (version 1.3, little-endian). */
function logHeader(o: { indexId?: number; fileSeq?: number; compat?: number; major?: number } = {}): Buffer {
  const b = Buffer.alloc(40);
  b[0] = o.major ?? 1;
  b[1] = 3;
  b.writeUInt16LE(40, 2);
  b.writeUInt32LE(o.indexId ?? 0x6b000001, 4);
  b.writeUInt32LE(o.fileSeq ?? 1, 8);
  b.writeUInt32LE(1, 24); // initial_modseq
  b[32] = o.compat ?? 1;
  return b;
}

const EXTERNAL = 0x10000000;
const HEADER_UPDATE = 0x20;
const BOUNDARY = 0x80000;
const EXT_INTRO = 0x40;

function record(type: number, data: Buffer): Buffer {
  assert.equal(data.length % 4, 0);
  return Buffer.concat([encodeRecordSize(8 + data.length), u32(type), data]);
}

/** Header update entries {offset, size, bytes}, each padded to 4 bytes. */
function headerUpdate(entries: Array<[number, Buffer]>, type = HEADER_UPDATE | EXTERNAL): Buffer {
  const parts: Buffer[] = [];
  for (const [off, bytes] of entries) {
    const e = Buffer.alloc(4);
    e.writeUInt16LE(off, 0);
    e.writeUInt16LE(bytes.length, 2);
    parts.push(e, bytes, Buffer.alloc((4 - (bytes.length % 4)) % 4));
  }
  return record(type, Buffer.concat(parts));
}

/** A transaction: a boundary record giving the total length, then the records. */
function transaction(...records: Buffer[]): Buffer {
  const body = Buffer.concat(records);
  return Buffer.concat([record(BOUNDARY | EXTERNAL, u32(12 + body.length)), body]);
}

/** Sets UIDVALIDITY (and next UID) the way Dovecot does when it creates a mailbox. */
const setUids = (uv: number, next?: number): Buffer =>
  transaction(headerUpdate(next === undefined ? [[24, u32(uv)]] : [[24, Buffer.concat([u32(uv), u32(next)])]]));

/**
 * The dovecot.index.log Dovecot 2.3.19 wrote for a folder created with IMAP CREATE on an mbox
 * store (the mbox file stays empty; no dovecot.index yet): IMAP STATUS showed UIDVALIDITY
 * 1795696825, the header update at offset 128 (offset 24, size 4, b928086b).
 */
const CAPTURED_LOG = Buffer.from(
  '01032800b928086b020000000000000000000000b928086b010000000000000001000000000000008080808300000810700000008080808840000010ffffffff000000002000000008000800' +
    '000004006d626f788080808b00010010000020000000000000000000b928086b00000000f6f81a2fb928086b671c000083ecc375808080862000001018000400b928086b4c000400ffffffff' +
    '80808083000008104c0000008080808940000000ffffffff000000001000000008000800010006006d6f64736571000080808087000100000000100001000000000000000000000000000000',
  'hex',
);

// ------------------------------------------------------------------ the parser

test('dovecot index: record sizes are 4 x a 28-bit number, 7 bits per byte with the high bit set, most significant first', () => {
  assert.equal(decodeRecordSize(Buffer.from([0x80, 0x80, 0x80, 0x83]), 0), 12);
  assert.equal(decodeRecordSize(Buffer.from([0x80, 0x80, 0x81, 0x80]), 0), 512);
  assert.equal(decodeRecordSize(Buffer.from([0x80, 0x80, 0x80, 0x03]), 0), 0, 'a byte without its high bit: torn or not a size');
  assert.equal(decodeRecordSize(Buffer.from([0, 0, 0, 0]), 0), 0);
  for (const n of [0, 8, 12, 508, 512, 6008, 65536, 2 ** 30 - 4]) assert.equal(decodeRecordSize(encodeRecordSize(n), 0), n);
});

test('dovecot index: the log Dovecot wrote for a folder created through IMAP', () => {
  const scan = scanLog(CAPTURED_LOG);
  assert.ok(scan);
  assert.equal(scan.indexId, 1795696825);
  assert.equal(scan.fileSeq, 2);
  assert.deepEqual(scan.writes.map((w) => [w.offset, w.bytes.toString('hex')]), [[24, 'b928086b']]);
  assert.deepEqual(combineIndex(null, [scan]), { uidValidity: 1795696825, nextUid: 0 });
});

test('dovecot index: main index header only', async (t) => {
  const dir = tempDir(t);
  fs.writeFileSync(path.join(dir, 'dovecot.index'), Buffer.concat([indexFile({ uidValidity: 1234567890, nextUid: 31 }), Buffer.alloc(400, 0xee)]));
  assert.deepEqual(await readDovecotIndexUids(dir), { uidValidity: 1234567890, nextUid: 31 });
  assert.deepEqual(parseIndexHeader(indexFile({ uidValidity: 7, nextUid: 8, indexId: 9, logFileSeq: 10 })), { indexId: 9, uidValidity: 7, nextUid: 8, logFileSeq: 10 });
});

test('dovecot index: log only; the last write wins, whatever the entry covers', async (t) => {
  const dir = tempDir(t);
  const log = (...recs: Buffer[]): Buffer => Buffer.concat([logHeader(), ...recs]);
  const cases: Array<[string, Buffer, { uidValidity: number; nextUid: number } | null]> = [
    ['one header update', log(setUids(1111)), { uidValidity: 1111, nextUid: 0 }],
    ['two transactions', log(setUids(1111, 5), setUids(2222)), { uidValidity: 2222, nextUid: 5 }],
    ['not in a transaction, internal', log(headerUpdate([[24, u32(3333)]], HEADER_UPDATE)), { uidValidity: 3333, nextUid: 0 }],
    ['an entry covering flags..next_uid', log(transaction(headerUpdate([[20, Buffer.concat([u32(1), u32(4444), u32(9)])]]))), { uidValidity: 4444, nextUid: 9 }],
    [
      'entries with padding, one byte changed',
      log(setUids(0x01020304), transaction(headerUpdate([[12, Buffer.from([1])], [25, Buffer.from([0xaa])], [76, u32(0xffffffff)]]))),
      { uidValidity: 0x0102aa04, nextUid: 0 },
    ],
    ['other records around it', log(transaction(record(EXT_INTRO, Buffer.alloc(24)), headerUpdate([[64, u32(5)]]), headerUpdate([[24, u32(5555)]]))), { uidValidity: 5555, nextUid: 0 }],
    ['only other header fields', log(transaction(headerUpdate([[64, u32(99)]]))), null],
    ['no records', log(), null],
  ];
  for (const [what, bytes, want] of cases) {
    fs.writeFileSync(path.join(dir, 'dovecot.index.log'), bytes);
    assert.deepEqual(await readDovecotIndexUids(dir), want, what);
  }
});

test('dovecot index: the log is applied over the main index, unless it belongs to another index or is older', () => {
  const index = parseIndexHeader(indexFile({ uidValidity: 1000, nextUid: 7, indexId: 42, logFileSeq: 3 }));
  const scan = (o: { indexId?: number; fileSeq?: number }, ...recs: Buffer[]) => scanLog(Buffer.concat([logHeader(o), ...recs]));
  assert.deepEqual(combineIndex(index, [scan({ indexId: 42, fileSeq: 3 }, setUids(2000))]), { uidValidity: 2000, nextUid: 7 });
  assert.deepEqual(combineIndex(index, [scan({ indexId: 42, fileSeq: 3 }, transaction(headerUpdate([[28, u32(12)]])))]), { uidValidity: 1000, nextUid: 12 });
  assert.deepEqual(combineIndex(index, [scan({ indexId: 43, fileSeq: 3 }, setUids(2000))]), { uidValidity: 1000, nextUid: 7 }, 'another indexid: stale log');
  assert.deepEqual(combineIndex(index, [scan({ indexId: 42, fileSeq: 2 }, setUids(2000))]), { uidValidity: 1000, nextUid: 7 }, 'older than the snapshot');
  assert.deepEqual(combineIndex(index, []), { uidValidity: 1000, nextUid: 7 });
  assert.equal(combineIndex(parseIndexHeader(indexFile({ uidValidity: 0 })), []), null, 'UIDVALIDITY 0 is none');
  assert.equal(combineIndex(null, []), null);
});

test('dovecot index: dovecot.index.log.2 counts only without a main index', async (t) => {
  const dir = tempDir(t);
  fs.writeFileSync(path.join(dir, 'dovecot.index.log.2'), Buffer.concat([logHeader({ fileSeq: 1 }), setUids(1111, 4)]));
  fs.writeFileSync(path.join(dir, 'dovecot.index.log'), Buffer.concat([logHeader({ fileSeq: 2 }), transaction(headerUpdate([[28, u32(6)]]))]));
  assert.deepEqual(await readDovecotIndexUids(dir), { uidValidity: 1111, nextUid: 6 });
  fs.writeFileSync(path.join(dir, 'dovecot.index'), indexFile({ uidValidity: 2222, nextUid: 5, logFileSeq: 2 }));
  assert.deepEqual(await readDovecotIndexUids(dir), { uidValidity: 2222, nextUid: 6 });
});

test('dovecot index: bad, short, torn or foreign files give nothing (or what came before the damage), never an error', async (t) => {
  const dir = tempDir(t);
  const idx = path.join(dir, 'dovecot.index');
  const log = path.join(dir, 'dovecot.index.log');
  const good = indexFile({ uidValidity: 1234, nextUid: 5 });
  const badIndexes: Array<[string, Buffer]> = [
    ['empty', Buffer.alloc(0)],
    ['short', good.subarray(0, 40)],
    ['major version 6', indexFile({ uidValidity: 1234, major: 6 })],
    ['big-endian', indexFile({ uidValidity: 1234, compat: 0 })],
    ['text', Buffer.from('dovecot state\n'.repeat(20))],
  ];
  for (const [what, bytes] of badIndexes) {
    fs.writeFileSync(idx, bytes);
    assert.equal(await readDovecotIndexUids(dir), null, `index: ${what}`);
  }
  fs.rmSync(idx);
  const okTx = setUids(1111);
  const badLogs: Array<[string, Buffer, number | null]> = [
    ['empty', Buffer.alloc(0), null],
    ['one byte', Buffer.from('x'), null],
    ['header cut', logHeader().subarray(0, 20), null],
    ['major version 2', Buffer.concat([logHeader({ major: 2 }), okTx]), null],
    ['big-endian', Buffer.concat([logHeader({ compat: 0 }), okTx]), null],
    ['transaction cut short by a crash', Buffer.concat([logHeader(), okTx, setUids(2222).subarray(0, 24)]), 1111],
    ['transaction whose last record is missing', Buffer.concat([logHeader(), okTx, setUids(2222).subarray(0, 12)]), 1111],
    ['zeros after the records (torn size)', Buffer.concat([logHeader(), okTx, Buffer.alloc(64)]), 1111],
    ['garbage after the records', Buffer.concat([logHeader(), okTx, Buffer.from('garbage!'.repeat(8))]), 1111],
    ['a record claiming more than the file', Buffer.concat([logHeader(), okTx, encodeRecordSize(4096), u32(HEADER_UPDATE), Buffer.from([24, 0, 4, 0, 1, 2, 3, 4])]), 1111],
    ['a header update entry overrunning its record', Buffer.concat([logHeader(), okTx, record(HEADER_UPDATE, Buffer.from([24, 0, 8, 0, 1, 2, 3, 4]))]), 1111],
  ];
  for (const [what, bytes, want] of badLogs) {
    fs.writeFileSync(log, bytes);
    assert.deepEqual((await readDovecotIndexUids(dir))?.uidValidity ?? null, want, `log: ${what}`);
  }
  // Not files at all, or no directory.
  fs.rmSync(log);
  fs.mkdirSync(idx);
  fs.mkdirSync(log);
  assert.equal(await readDovecotIndexUids(dir), null, 'directories');
  assert.equal(await readDovecotIndexUids(path.join(dir, 'missing')), null, 'no index directory');
  // A good main index with a bad log: the index stands.
  fs.rmSync(idx, { recursive: true });
  fs.rmSync(log, { recursive: true });
  fs.writeFileSync(idx, good);
  fs.writeFileSync(log, 'x');
  assert.deepEqual(await readDovecotIndexUids(dir), { uidValidity: 1234, nextUid: 5 });
});

// ------------------------------------------------------------------ the mbox store

/** Writes a Dovecot-like log setting UIDVALIDITY (and next UID) into an index directory. */
function writeIndexLog(dir: string, uv: number, next?: number): void {
  write(path.join(dir, 'dovecot.index.log'), Buffer.concat([logHeader({ indexId: uv }), setUids(uv, next)]));
}

test('mbox store: an empty mailbox file takes UIDVALIDITY from Dovecot\'s index; the first mail saved writes it into the file', async (t) => {
  const root = path.join(tempDir(t), 'mail');
  write(`${root}/inbox`, '');
  write(`${root}/Neu`, '');
  write(`${root}/Lists/dev`, '');
  write(`${root}/Plain`, '');
  writeIndexLog(`${root}/.imap/INBOX`, 1795696827);
  writeIndexLog(`${root}/.imap/Neu`, 1795696825);
  writeIndexLog(`${root}/Lists/.imap/dev`, 1795696826, 31);
  write(`${root}/.imap/Plain/dovecot.index.log`, 'not an index');
  const loc = `mbox:${root}:INBOX=${root}/inbox`;
  const files = ['inbox', 'Neu', 'Lists/dev', 'Plain'].map((f) => `${root}/${f}`);
  const before = files.map(fileState);

  // Read-only: the values are read, nothing is written.
  const ro = await openMbox(loc, { readOnly: true });
  const status = async (store: Awaited<ReturnType<typeof openMbox>>, name: string[]) => {
    const box = await store.openMailbox(name);
    try {
      const s = await box.status();
      return [s.uidValidity, s.uidNext];
    } finally {
      await box.close();
    }
  };
  const listed = Object.fromEntries((await ro.listMailboxes()).filter((m) => m.selectable).map((m) => [m.name.join('/'), [m.uidValidity, m.uidNext]]));
  const want = {
    INBOX: [1795696827, 1],
    Neu: [1795696825, 1],
    'Lists/dev': [1795696826, 31],
  };
  for (const [name, v] of Object.entries(want)) {
    assert.deepEqual(listed[name], v, `listed ${name}`);
    assert.deepEqual(await status(ro, name.split('/')), v, `status of ${name}`);
  }
  const plain = await status(ro, ['Plain']);
  assert.deepEqual(listed['Plain'], plain, 'without a usable index: the derived value, the same in the list and the status');
  assert.ok(![1795696825, 1795696826, 1795696827].includes(plain[0]!));
  await ro.close();
  assert.deepEqual(files.map(fileState), before, 'a read-only store wrote nothing');

  // Writable: looking leaves an empty file with an index empty (as Dovecot does); the first mail
  // saved writes the values into the file (X-IMAPbase), so they stay when Dovecot's index goes.
  // An empty file without a usable index gets its (derived) value written right away: nothing
  // else would keep it, and Dovecot would make up another one.
  const rw = await openMbox(loc);
  for (const [name, v] of Object.entries(want)) assert.deepEqual(await status(rw, name.split('/')), v, `status of ${name} (writable)`);
  assert.deepEqual(await status(rw, ['Plain']), plain);
  assert.deepEqual(files.slice(0, 3).map(fileState), before.slice(0, 3), 'still empty');
  assert.match(fs.readFileSync(`${root}/Plain`, 'latin1'), new RegExp(`^X-IMAP: ${plain[0]} 0000000000$`, 'm'));
  const mail = (uid: number): SaveRequest => ({ uid, guid: `g${uid}`, flags: 0, keywords: [], internalDate: 1704103200, body: Buffer.from(`Subject: ${uid}\n\nbody\n`) });
  for (const [name, uid] of [[['Neu'], 1], [['Lists', 'dev'], 31]] as const) {
    const box = await rw.openMailbox([...name]);
    await box.save([mail(uid)]);
    await box.close();
  }
  await rw.close();
  assert.match(fs.readFileSync(`${root}/Neu`, 'latin1'), /^X-IMAPbase: 1795696825 0000000001\b/m);
  assert.match(fs.readFileSync(`${root}/Lists/dev`, 'latin1'), /^X-IMAPbase: 1795696826 0000000031\b/m);
  want.Neu = [1795696825, 2];
  want['Lists/dev'] = [1795696826, 32];
  fs.rmSync(`${root}/.imap/Neu`, { recursive: true });
  fs.rmSync(`${root}/Lists/.imap`, { recursive: true });
  fs.rmSync(`${root}/.imap/Plain`, { recursive: true });
  const again = await openMbox(loc, { readOnly: true });
  assert.deepEqual(await status(again, ['Plain']), plain);
  assert.deepEqual(await status(again, ['Neu']), want.Neu);
  assert.deepEqual(await status(again, ['Lists', 'dev']), want['Lists/dev']);
  await again.close();
});

test('mbox store: a file with messages but without X-IMAPbase keeps the index\'s UIDVALIDITY and next UID; one with X-IMAPbase ignores the index', async (t) => {
  const root = path.join(tempDir(t), 'mail');
  write(`${root}/inbox`, '');
  write(`${root}/Box`, 'From a@b  Tue Nov 14 22:13:22 2023\nSubject: 3\n\nz\n');
  write(`${root}/Based`, 'From a@b  Tue Nov 14 22:13:22 2023\nX-IMAPbase: 1700000000 0000000001\nX-UID: 1\nSubject: 1\n\nz\n');
  writeIndexLog(`${root}/.imap/Box`, 1795696946, 3);
  writeIndexLog(`${root}/.imap/Based`, 1795696947, 9);
  const store = await openMbox(`mbox:${root}:INBOX=${root}/inbox`, { readOnly: true });
  const box = await store.openMailbox(['Box']);
  assert.deepEqual((await box.scan()).map((m) => m.uid), [1]);
  const s = await box.status();
  assert.deepEqual([s.uidValidity, s.uidNext], [1795696946, 3], 'what Dovecot 2.3.19 showed for this file after it was rewritten behind its back');
  const based = await store.openMailbox(['Based']);
  const b = await based.status();
  assert.deepEqual([b.uidValidity, b.uidNext], [1700000000, 2]);
  await store.close();
});

// Dovecot writes X-IMAPbase lazily: its index can be ahead of the file (a mail appended and
// expunged through it; a state of ours it read between two of our writes). A mail saved below
// its next UID would be "inserted in the middle of mailbox" for it.
test('mbox store: Dovecot\'s next UID counts when its index has the file\'s UIDVALIDITY', async (t) => {
  const root = path.join(tempDir(t), 'mail');
  write(`${root}/inbox`, '');
  write(`${root}/Box`, 'From a@b  Tue Nov 14 22:13:22 2023\nX-IMAPbase: 1795696950 0000000001\nX-UID: 1\nSubject: 1\n\nz\n');
  writeIndexLog(`${root}/.imap/Box`, 1795696950, 9);
  const store = await openMbox(`mbox:${root}:INBOX=${root}/inbox`);
  const box = await store.openMailbox(['Box']);
  assert.deepEqual((await box.scan()).map((m) => m.uid), [1]);
  assert.equal((await box.status()).uidNext, 9);
  const mail = (uid: number) => ({ uid, guid: `g${uid}`, flags: 0, keywords: [], internalDate: 1_700_000_000, body: Buffer.from(`Subject: ${uid}\n\nz\n`) });
  await assert.rejects(box.save([mail(2)]), (e: unknown) => e instanceof StorageError && e.code === 'UIDTAKEN');
  await box.save([mail(9)]);
  assert.deepEqual((await box.scan()).map((m) => m.uid), [1, 9]);
  await store.close();
});

test('mbox store: with INDEX=, Dovecot\'s index directories are under it (INBOX in <INDEX>/.imap/INBOX); INDEX=MEMORY has none', async (t) => {
  const dir = tempDir(t);
  const root = `${dir}/mail`;
  const idx = `${dir}/idx`;
  write(`${root}/inbox`, '');
  write(`${root}/Lists/dev`, '');
  writeIndexLog(`${idx}/.imap/INBOX`, 1795696896);
  writeIndexLog(`${idx}/Lists/.imap/dev`, 1795696894);
  // What the root would hold without INDEX=: not used.
  writeIndexLog(`${root}/.imap/INBOX`, 1111);
  writeIndexLog(`${root}/Lists/.imap/dev`, 2222);
  const w = warnings();
  const store = await openMbox(`mbox:${root}:INBOX=${root}/inbox:INDEX=${idx}`, { readOnly: true, warn: w.warn });
  for (const [name, uv] of [[['INBOX'], 1795696896], [['Lists', 'dev'], 1795696894]] as const) {
    const box = await store.openMailbox([...name]);
    assert.equal((await box.status()).uidValidity, uv, name.join('/'));
  }
  await store.close();
  const mem = await openMbox(`mbox:${root}:INBOX=${root}/inbox:INDEX=MEMORY`, { readOnly: true, warn: w.warn });
  const box = await mem.openMailbox(['Lists', 'dev']);
  assert.ok(![1795696894, 2222].includes((await box.status()).uidValidity));
  await mem.close();
  assert.deepEqual(w.list, []);
});

// ------------------------------------------------------------------ with a real Dovecot

function tempRoot(t: { after: (fn: () => void) => void }): string {
  const dir = makeTempDir('dsync-mbox-index-');
  t.after(() => removeTree(dir));
  return dir;
}

/** doveadm with a mail location; throws on failure, and on anything Dovecot complains about. */
async function dc(conf: string, location: string, args: string[]): Promise<string> {
  const r = await doveadm(conf, ['-o', `mail_location=${location}`, ...args]);
  if (r.code !== 0) throw new Error(`doveadm ${args.join(' ')} failed (${r.code}): ${r.stderr}`);
  assert.equal(r.stderr, '', `doveadm ${args.join(' ')}: no complaints`);
  return r.stdout;
}

/** Dovecot's UIDVALIDITY and UIDNEXT of a mailbox. */
async function theirStatus(conf: string, loc: string, name: string): Promise<number[]> {
  const out = await dc(conf, loc, ['-f', 'tab', 'mailbox', 'status', 'uidvalidity uidnext', name]);
  const [head, row] = out.trim().split('\n').map((l) => l.split('\t'));
  const rec = Object.fromEntries(head!.map((h, i) => [h, row![i]]));
  return [Number(rec['uidvalidity']), Number(rec['uidnext'])];
}

test('dovecot oracle: empty folders Dovecot created (index log only) show Dovecot\'s UIDVALIDITY', { skip }, async (t) => {
  const dir = tempRoot(t);
  const conf = writeDoveadmConfig(path.join(dir, 'conf'));
  const root = path.join(dir, 'mail');
  fs.mkdirSync(root);
  chownTree(root);
  const loc = `mbox:${root}:INBOX=${root}/inbox`;
  await dc(conf, loc, ['mailbox', 'create', 'Neu', 'Lists/dev', 'INBOX/kid']);
  const names = ['INBOX', 'Neu', 'Lists/dev', 'INBOX/kid'];
  const theirs = new Map<string, number[]>();
  for (const n of names) theirs.set(n, await theirStatus(conf, loc, n));
  for (const f of ['inbox', 'Neu', 'Lists/dev', 'INBOX/kid']) assert.equal(fs.statSync(path.join(root, f)).size, 0, `${f} is an empty file`);
  assert.ok(fs.existsSync(`${root}/Lists/.imap/dev/dovecot.index.log`) && !fs.existsSync(`${root}/Lists/.imap/dev/dovecot.index`), 'only a log');
  assert.ok(fs.existsSync(`${root}/INBOX/.imap/kid/dovecot.index.log`));

  const store = await openMbox(loc, { readOnly: true });
  const listed = new Map((await store.listMailboxes()).filter((m) => m.selectable).map((m) => [m.name.join('/'), [m.uidValidity, m.uidNext]]));
  for (const n of names) {
    const box = await store.openMailbox(n.split('/'));
    const s = await box.status();
    assert.deepEqual([s.uidValidity, s.uidNext], theirs.get(n), `status of ${n}`);
    assert.deepEqual(listed.get(n), theirs.get(n), `listed ${n}`);
    await box.close();
  }
  await store.close();
  // A mail saved by us goes in under that UIDVALIDITY, and Dovecot agrees (without complaints).
  const rw = await openMbox(loc);
  const box = await rw.openMailbox(['Lists', 'dev']);
  await box.save([{ uid: 1, guid: 'g1', flags: 0, keywords: [], internalDate: 1704103200, body: Buffer.from('Subject: one\n\nbody\n') }]);
  await box.close();
  await rw.close();
  chownTree(root);
  assert.deepEqual(await theirStatus(conf, loc, 'Lists/dev'), [theirs.get('Lists/dev')![0], 2]);
  assert.match(fs.readFileSync(`${root}/Lists/dev`, 'latin1'), new RegExp(`^X-IMAPbase: ${theirs.get('Lists/dev')![0]} 0000000001\\b`, 'm'));
});

test('dovecot oracle: an mbox emptied behind Dovecot\'s back keeps UIDVALIDITY and UIDNEXT of its main index', { skip }, async (t) => {
  const dir = tempRoot(t);
  const conf = writeDoveadmConfig(path.join(dir, 'conf'));
  const root = path.join(dir, 'mail');
  const big = path.join(root, 'Big');
  fs.mkdirSync(root);
  // Enough messages for Dovecot to write a main index (dovecot.index) besides the log.
  let text = '';
  for (let i = 0; i < 300; i++) text += `From a@b  Tue Nov 14 22:${String(10 + (i % 50)).padStart(2, '0')}:00 2023\nSubject: ${i}\n\nbody ${i}\n\n`;
  fs.writeFileSync(big, text);
  chownTree(root);
  const loc = `mbox:${root}:INBOX=${root}/inbox`;
  const [uv, next] = await theirStatus(conf, loc, 'Big');
  assert.equal(next, 301);
  assert.ok(fs.existsSync(`${root}/.imap/Big/dovecot.index`), 'Dovecot wrote a main index');
  const fromIndex = parseIndexHeader(fs.readFileSync(`${root}/.imap/Big/dovecot.index`));
  assert.equal(fromIndex?.uidValidity, uv, 'the main index header has it at offset 24');
  fs.truncateSync(big, 0);
  const store = await openMbox(loc, { readOnly: true });
  const box = await store.openMailbox(['Big']);
  const s = await box.status();
  await store.close();
  assert.deepEqual(await theirStatus(conf, loc, 'Big'), [uv, 301], 'Dovecot keeps both');
  assert.deepEqual([s.uidValidity, s.uidNext], [uv, 301]);
});

test('dovecot oracle: an empty mbox without any index gets our UIDVALIDITY written, and Dovecot shows it', { skip }, async (t) => {
  const dir = tempRoot(t);
  const conf = writeDoveadmConfig(path.join(dir, 'conf'));
  const root = path.join(dir, 'mail');
  fs.mkdirSync(root);
  fs.writeFileSync(`${root}/inbox`, '');
  fs.writeFileSync(`${root}/Box`, '');
  chownTree(root);
  const loc = `mbox:${root}:INBOX=${root}/inbox`;
  const store = await openMbox(loc);
  const ours = new Map<string, number[]>();
  for (const n of ['INBOX', 'Box']) {
    const box = await store.openMailbox([n]);
    const s = await box.status();
    ours.set(n, [s.uidValidity, s.uidNext]);
    await box.close();
  }
  await store.close();
  for (const n of ['INBOX', 'Box']) assert.deepEqual(await theirStatus(conf, loc, n), ours.get(n), n);
});
