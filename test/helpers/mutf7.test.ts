import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { decodeMUtf7, encodeMUtf7 } from './mutf7.js';

const VECTORS: Array<[string, string]> = [
  ['INBOX', 'INBOX'],
  ['Entwürfe', 'Entw&APw-rfe'],
  ['&', '&-'],
  ['Tom & Jerry', 'Tom &- Jerry'],
  ['~peter/mail/台北/日本語', '~peter/mail/&U,BTFw-/&ZeVnLIqe-'],
  ['Gelöschte Elemente', 'Gel&APY-schte Elemente'],
  ['😀', '&2D3eAA-'],
];

test('modified UTF-7 matches RFC 3501 examples and Dovecot directory names', () => {
  for (const [utf8, mutf7] of VECTORS) {
    assert.equal(encodeMUtf7(utf8), mutf7, `encode ${utf8}`);
    assert.equal(decodeMUtf7(mutf7), utf8, `decode ${mutf7}`);
  }
});

test('modified UTF-7 round-trips any string', () => {
  fc.assert(
    fc.property(fc.string({ unit: 'grapheme', maxLength: 30 }), (s) => {
      const enc = encodeMUtf7(s);
      assert.match(enc, /^[\x20-\x7e]*$/);
      assert.equal(decodeMUtf7(enc), s);
    }),
    { numRuns: 300, seed: 42 },
  );
});

test('malformed modified UTF-7 is rejected', () => {
  assert.throws(() => decodeMUtf7('abc&AMQ'));
  assert.throws(() => decodeMUtf7('&A!-'));
  assert.throws(() => decodeMUtf7('Entwürfe'), /not modified UTF-7/);
});
