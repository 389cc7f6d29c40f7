import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  entryGuid,
  parseUidlist,
  readUidlistSummary,
  serializeUidlist,
} from '../../src/storage/maildir/uidlist.js';
import { tempDir, warnings } from './helpers.js';

// As written by Dovecot 2.3.19 (wire capture a, B side after the sync).
const DOVECOT_V3 = [
  '3 V1795683406 N1 Gb0cc402c4cf4076ba805000083ecc375',
  '1 :1704103200.M100001P4242Q1.corpus,S=171,W=178',
  '2 :1704189600.M100002P4242Q2.corpus,S=207,W=218',
  '3 G1704276000.M100003P4242Q3.corpus :1795683405.M990881P1499.vm,S=201,W=208',
  '4 G1704362400.M100004P4242Q4.corpus :1795683405.M990883P1499.vm,S=177,W=184',
  '5 :1704448800.M100005P4242Q5.corpus,S=201,W=208',
  '',
].join('\n');

test('uidlist: reads Dovecot v3 (header N below the listed UIDs, G extension)', () => {
  const w = warnings();
  const ul = parseUidlist(DOVECOT_V3, w.warn);
  assert.deepEqual(w.list, []);
  assert.equal(ul.header.version, 3);
  assert.equal(ul.header.uidValidity, 1795683406);
  assert.equal(ul.header.guid, 'b0cc402c4cf4076ba805000083ecc375');
  assert.equal(ul.header.nextUid, 1);
  assert.equal(ul.nextUid, 6, 'next uid = max(N, highest + 1)');
  assert.equal(ul.entries.length, 5);
  assert.equal(ul.entries[2]!.base, '1795683405.M990881P1499.vm,S=201,W=208');
  assert.equal(entryGuid(ul.entries[2]!), '1704276000.M100003P4242Q3.corpus');
  assert.equal(entryGuid(ul.entries[0]!), '1704103200.M100001P4242Q1.corpus,S=171,W=178');
  assert.equal(ul.needsRewrite, false);
});

test('uidlist: write keeps unknown header fields and entry keys, normalises N', () => {
  const text = '3 V42 N7 Gaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa Pxyz Qq\n' +
    '3 S100 W104 Xunknown :base3:2,S\n' +
    '9 G<g9> :base9\n';
  const ul = parseUidlist(text, warnings().warn);
  assert.equal(ul.nextUid, 10);
  assert.deepEqual(ul.header.extra, ['Pxyz', 'Qq']);
  assert.deepEqual(ul.entries[0]!.ext, [['S', '100'], ['W', '104'], ['X', 'unknown']]);
  assert.equal(ul.entries[0]!.base, 'base3', 'old form with :2,flags suffix');
  assert.equal(
    serializeUidlist(ul),
    '3 V42 N10 Gaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa Pxyz Qq\n3 S100 W104 Xunknown :base3\n9 G<g9> :base9\n',
  );
  // Parsing what we wrote gives the same thing.
  const again = parseUidlist(serializeUidlist(ul), warnings().warn);
  assert.deepEqual(again.entries, ul.entries);
  assert.deepEqual(again.header, { ...ul.header, nextUid: 10 });
});

test('uidlist: version 1 (Courier style)', () => {
  const ul = parseUidlist('1 1234567 5\n1 1000.M1P1.host:2,S\n3 1001.M2P1.host\n', warnings().warn);
  assert.equal(ul.header.version, 1);
  assert.equal(ul.header.uidValidity, 1234567);
  assert.equal(ul.nextUid, 5);
  assert.deepEqual(ul.entries.map((e) => [e.uid, e.base]), [[1, '1000.M1P1.host'], [3, '1001.M2P1.host']]);
  assert.equal(ul.needsRewrite, true, 'v1 is rewritten as v3');
  assert.match(serializeUidlist(ul), /^3 V1234567 N5\n1 :1000.M1P1.host\n3 :1001.M2P1.host\n$/);
});

test('uidlist: garbled lines are skipped with a warning, the rest survives', () => {
  const w = warnings();
  const text = '3 V7 N3 Gbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\n' +
    '1 :one\n' +
    'garbage line here\n' +
    '2 nocolon\n' +
    '0 :zero-uid\n' +
    '5 :five\n' +
    '4 :not-ascending\n' +
    '6 :one\n' +
    '7 lowercasekey :x\n' +
    '8 :partial-append-no-newl';
  const ul = parseUidlist(text, w.warn);
  assert.deepEqual(ul.entries.map((e) => [e.uid, e.base]), [[1, 'one'], [5, 'five'], [8, 'partial-append-no-newl']]);
  assert.equal(ul.nextUid, 9);
  assert.equal(ul.needsRewrite, true);
  assert.equal(ul.endsWithNewline, false);
  assert.ok(w.list.length >= 5, w.list.join('\n'));
  assert.ok(w.has(/garbled line "garbage line here"/));
  assert.ok(w.has(/not above the previous UID/));
  assert.ok(w.has(/listed twice/));
});

test('uidlist: broken or missing header fields', () => {
  const w = warnings();
  const a = parseUidlist('3 Vxyz N2 Gnothex\n1 :a\n', w.warn);
  assert.equal(a.header.uidValidity, 0);
  assert.equal(a.header.guid, undefined);
  assert.equal(a.entries.length, 1);
  assert.equal(a.needsRewrite, true);
  const b = parseUidlist('7 what is this\n1 :a\n', w.warn);
  assert.equal(b.header.uidValidity, 0);
  assert.equal(b.entries.length, 1, 'entries are still used');
  assert.ok(w.has(/unsupported or corrupt header/));
  const empty = parseUidlist('', w.warn);
  assert.equal(empty.nextUid, 1);
  assert.equal(empty.entries.length, 0);
});

test('uidlist: summary reads header + last entry only', async (t) => {
  const dir = tempDir(t);
  const p = path.join(dir, 'dovecot-uidlist');
  assert.equal(await readUidlistSummary(p), null);
  fs.writeFileSync(p, DOVECOT_V3);
  assert.deepEqual(await readUidlistSummary(p), { guid: 'b0cc402c4cf4076ba805000083ecc375', uidValidity: 1795683406, uidNext: 6 });
  // Large file: the tail read must still find the highest UID.
  let big = '3 V9 N2 Gcccccccccccccccccccccccccccccccc\n';
  for (let i = 1; i <= 5000; i++) big += `${i} :${1700000000 + i}.M${i}P1.host,S=100,W=102\n`;
  fs.writeFileSync(p, big);
  assert.deepEqual(await readUidlistSummary(p), { guid: 'cccccccccccccccccccccccccccccccc', uidValidity: 9, uidNext: 5001 });
  fs.writeFileSync(p, '3 V9 N77\n1 :x\n');
  assert.deepEqual(await readUidlistSummary(p), { guid: undefined, uidValidity: 9, uidNext: 77 });
});
