// keywords file, file names, subscriptions file.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { KeywordMap } from '../../src/storage/maildir/keywords.js';
import {
  buildInfo,
  decodeLetters,
  encodeHostname,
  generateBaseName,
  isUsableBaseName,
  parseFileName,
  parseInfo,
  sizeHints,
} from '../../src/storage/maildir/filename.js';
import {
  parseSubscriptions,
  serializeSubscriptions,
  tabEscape,
  tabUnescape,
  type SubscriptionCodec,
} from '../../src/storage/maildir/subscriptions.js';
import { decodeMUtf7, encodeMUtf7 } from '../../src/storage/utf7.js';
import { Flag } from '../../src/model/flags.js';
import { warnings } from './helpers.js';

test('keywords: parse, letters, add into free slots, serialize', () => {
  const w = warnings();
  const kw = KeywordMap.parse('0 $Forwarded\n2 Custom\nbad line\n30 toolarge\n1 $Junk\n', w.warn);
  assert.equal(w.list.length, 2);
  assert.equal(kw.nameOfLetter('a'), '$Forwarded');
  assert.equal(kw.nameOfLetter('b'), '$Junk');
  assert.equal(kw.letterOf('Custom'), 'c');
  assert.equal(kw.nameOfLetter('d'), undefined);
  assert.equal(kw.add('New'), 'd');
  assert.equal(kw.add('New'), 'd');
  assert.equal(kw.serialize(), '0 $Forwarded\n1 $Junk\n2 Custom\n3 New\n');
  const gap = KeywordMap.parse('0 a0\n5 a5\n', w.warn);
  assert.equal(gap.add('x'), 'b', 'lowest free slot');
  const full = new KeywordMap();
  for (let i = 0; i < 26; i++) assert.equal(full.add(`k${i}`), String.fromCharCode(97 + i));
  assert.equal(full.add('k26'), undefined, '27th keyword does not fit');
});

test('filename: base/info split, flags decode and rebuild preserving P, unknown letters and extras', () => {
  assert.deepEqual(parseFileName('123.M1P2.host,S=5:2,RS'), { base: '123.M1P2.host,S=5', info: '2,RS' });
  assert.deepEqual(parseFileName('123.M1P2.host'), { base: '123.M1P2.host', info: null });
  assert.deepEqual(parseInfo('2,FPS,extra'), { letters: 'FPS', extra: ',extra' });
  assert.equal(parseInfo('1,xyz'), null);
  const kw = KeywordMap.parse('0 $Forwarded\n1 $Junk\n', () => undefined);
  const d = decodeLetters('DFPRSTabz', kw);
  assert.equal(d.flags, Flag.Draft | Flag.Flagged | Flag.Answered | Flag.Seen | Flag.Deleted);
  assert.deepEqual(d.keywords, ['$Forwarded', '$Junk']);
  // Remove all flags/known keywords: P, the unknown keyword letter z, X and ",extra" stay.
  assert.equal(buildInfo('2,FPSXaz,extra', 0, '', kw), '2,PXz,extra');
  assert.equal(buildInfo('2,P', Flag.Seen | Flag.Answered, 'b', kw), '2,PRSb');
  assert.equal(buildInfo(null, Flag.Draft | Flag.Deleted | Flag.Flagged, 'ba', kw), '2,DFTab');
  assert.equal(buildInfo('1,weird', Flag.Seen, '', kw), '2,S');
});

test('filename: size hints, host escaping, generated names, usable GUIDs', () => {
  assert.deepEqual(sizeHints('1.M2P3.h,S=171,W=178'), { size: 171, vsize: 178 });
  assert.deepEqual(sizeHints('1.M2P3.h'), {});
  assert.equal(encodeHostname('a/b:c'), 'a\\057b\\072c');
  const a = generateBaseName(1700000000123);
  const b = generateBaseName(1700000000123);
  assert.notEqual(a, b);
  assert.match(a, new RegExp(`^1700000000\\.M\\d+P${process.pid}\\.`));
  assert.equal(isUsableBaseName('1704276000.M100003P4242Q3.corpus'), true);
  assert.equal(isUsableBaseName('with space'), false);
  assert.equal(isUsableBaseName('a/b'), false);
  assert.equal(isUsableBaseName('a:b'), false);
  assert.equal(isUsableBaseName('.hidden'), false);
  assert.equal(isUsableBaseName('ümlaut'), false);
  assert.equal(isUsableBaseName(''), false);
});

const mutf7: SubscriptionCodec = { separator: '.', decode: decodeMUtf7, encode: encodeMUtf7 };
const utf8fs: SubscriptionCodec = { separator: '/', decode: (s) => s, encode: (s) => s };

test('subscriptions: v2 bytes exactly as Dovecot 2.3 writes them', () => {
  // Byte-exact file Dovecot 2.3.19 wrote (mutf7 location): INBOX, Archive, Entwürfe, Neu/Sub, a&b, "Tab\tx".
  const dovecot = 'V\t2\n\nINBOX\nArchive\nEntw&APw-rfe\nNeu\tSub\na&-b\nTab&AAk-x\n';
  const names = [['INBOX'], ['Archive'], ['Entwürfe'], ['Neu', 'Sub'], ['a&b'], ['Tab\tx']];
  assert.deepEqual(parseSubscriptions(dovecot, mutf7, warnings().warn), names);
  assert.equal(serializeSubscriptions(names, mutf7), dovecot);
  // With :UTF-8 Dovecot wrote raw UTF-8 and tab-escaped the TAB inside a name.
  const dovecotUtf8 = 'V\t2\n\nÜber\tSub\nx.y\nTab\x01tx\n';
  const n8 = [['Über', 'Sub'], ['x.y'], ['Tab\tx']];
  assert.deepEqual(parseSubscriptions(dovecotUtf8, utf8fs, warnings().warn), n8);
  assert.equal(serializeSubscriptions(n8, utf8fs), dovecotUtf8);
  assert.equal(serializeSubscriptions([], mutf7), 'V\t2\n\n');
  // INBOX case folding and duplicates.
  assert.equal(serializeSubscriptions([['inbox'], ['INBOX'], ['a'], ['a']], mutf7), 'V\t2\n\nINBOX\na\n');
});

test('subscriptions: v1 uses the storage separator', () => {
  assert.deepEqual(parseSubscriptions('INBOX\nArchive.2024\nEntw&APw-rfe\n\n', mutf7, warnings().warn), [
    ['INBOX'],
    ['Archive', '2024'],
    ['Entwürfe'],
  ]);
  assert.deepEqual(parseSubscriptions('a/b\r\nc\n', utf8fs, warnings().warn), [['a', 'b'], ['c']]);
  const w = warnings();
  assert.deepEqual(parseSubscriptions('bad&Jjo\n', mutf7, w.warn), [['bad&Jjo']]);
  assert.ok(w.has(/not validly encoded/));
  assert.throws(() => parseSubscriptions('V\t3\n\nx\n', mutf7, w.warn), /unsupported subscriptions file version/);
});

test('subscriptions: tab escaping', () => {
  const s = 'a\x01b\tc\rd\ne';
  assert.equal(tabEscape(s), 'a\x011b\x01tc\x01rd\x01ne');
  assert.equal(tabUnescape(tabEscape(s)), s);
});
