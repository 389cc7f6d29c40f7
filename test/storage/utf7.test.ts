import { test } from 'node:test';
import assert from 'node:assert/strict';
import { decodeMUtf7, encodeMUtf7, isWellFormedUnicode } from '../../src/storage/utf7.js';

// Pairs checked against directory names Dovecot 2.3.19 created (doveadm mailbox create).
const VECTORS: [string, string][] = [
  ['INBOX', 'INBOX'],
  ['Entwürfe', 'Entw&APw-rfe'],
  ['a&b', 'a&-b'],
  ['Tab\tx', 'Tab&AAk-x'],
  ['😀x', '&2D3eAA-x'],
  ['ÄÖÜ&1', '&AMQA1gDc-&-1'],
  ['日本語', '&ZeVnLIqe-'],
  ['台北', '&U,BTFw-'],
  ['~peter/mail/日本語/台北', '~peter/mail/&ZeVnLIqe-/&U,BTFw-'], // RFC 3501 example
  ['&&', '&-&-'],
  ['', ''],
];

test('utf7: known vectors encode and decode', () => {
  for (const [plain, enc] of VECTORS) {
    assert.equal(encodeMUtf7(plain), enc, `encode ${JSON.stringify(plain)}`);
    assert.equal(decodeMUtf7(enc), plain, `decode ${enc}`);
  }
});

test('utf7: round trips of mixed, non-BMP and control characters', () => {
  const samples = [
    'Gelöschte Elemente',
    'Отправленные',
    '𝄞 music 𝄞𝄞',
    '👍🏽 & 🎉',
    'a\u0000b\u007fc',
    'ümlaut&ampersand&-dash',
    '\u00e9',
    'x'.repeat(10) + '\u{10ffff}',
    'mixed ascii ä then ascii again ö',
  ];
  for (const s of samples) {
    const e = encodeMUtf7(s);
    assert.match(e, /^[\x20-\x7e]*$/, `encoded form is printable ASCII: ${e}`);
    assert.equal(decodeMUtf7(e), s);
  }
  // Pseudo-random strings over a varied alphabet.
  const alphabet = ['a', '&', '-', ' ', 'ä', '€', '😀', '\t', '/', '.', '日', '\u{1d11e}'];
  let seed = 12345;
  const rnd = () => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) % alphabet.length);
  for (let i = 0; i < 500; i++) {
    let s = '';
    const len = i % 17;
    for (let j = 0; j < len; j++) s += alphabet[rnd()];
    assert.equal(decodeMUtf7(encodeMUtf7(s)), s);
  }
});

test('utf7: rejects malformed input', () => {
  for (const bad of ['&Jjo', 'ä', '&AGE-', '&2D0-', '&3gA-', '&,,,-', '&A-', '&AAk', 'a\tb', '&AAkA-']) {
    assert.throws(() => decodeMUtf7(bad), /modified UTF-7/, bad);
  }
});

test('utf7: well-formedness check', () => {
  assert.equal(isWellFormedUnicode('abc😀'), true);
  assert.equal(isWellFormedUnicode('a\ud800b'), false);
  assert.equal(isWellFormedUnicode('\udc00'), false);
});
