// dsync's header hash (src/storage/header-hash.ts) against real Dovecot: the expected values are the
// hdr_hash fields Dovecot 2.3.19 sent (protocol 3.5, hash version 3) for these exact messages in a
// captured mbox <-> maildir dsync run.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { EMPTY_HEADER_HASH, hashedHeaderBytes, headerHash, normalizeHashedBytes } from '../../src/storage/header-hash.js';

/** [name, message bytes (latin1 escapes), hdr_hash sent by Dovecot]. */
const DOVECOT_VECTORS: [string, string, string][] = [
  ['plain', 'Date: Mon, 1 Jan 2024 10:00:00 +0000\nMessage-ID: <one@x>\nSubject: s\n\nbody\n', 'e3c43e295ad107f8bf0804357fc01360'],
  ['crlf', 'Date: Mon, 1 Jan 2024 10:00:00 +0000\r\nMessage-ID: <one@x>\r\nSubject: s\r\n\r\nbody\r\n', 'e3c43e295ad107f8bf0804357fc01360'],
  ['none', 'Subject: nothing\n\nbody\n', '68b329da9893e34099c7d8ad5cb9c940'],
  ['order', 'Message-ID: <two@x>\nFrom: a\nDate: Tue, 2 Jan 2024 10:00:00 +0000\n\nb\n', 'a11651b09edb4b73167cdd3c7f4ba88a'],
  ['case', 'date: Tue, 2 Jan 2024 10:00:00 +0000\nMESSAGE-ID: <three@x>\n\nb\n', 'bc6c9db6b9bae9ef14e780658a0f2fe9'],
  ['spacecolon', 'Date : Tue, 2 Jan 2024 10:00:00 +0000\nMessage-ID:<four@x>\n\nb\n', 'e7e7baed38ff43239e57a0e81b457360'],
  ['folded', 'Date: Tue,\n 2 Jan 2024\n\t10:00:00 +0000\nMessage-ID:\n <five@x>\n\nb\n', 'f4975d07aeb4025ea6fe38842c4a3b1b'],
  ['eightbit', 'Date: Tue, 2 Jan 2024 10:00:00 +0000 (Mitteleurop\xc3\xa4ische Zeit)\nMessage-ID: <six??\xc3\xbc?@x>\n\nb\n', '25665792bf8ab7c9528fe72d7b3b5352'],
  ['qspace', 'Date: ? ? ?\nMessage-ID: <a ? b>\n\nb\n', '980c2893ed58a9f72249bea430daa32f'],
  ['ctrl', 'Date: x\x01\x02y\x00z\rw\nMessage-ID: <tab\there>\x7f\n\nb\n', 'cc86da0f939ca314b1393418ac7972b3'],
  ['dup', 'Date: one\nDate: two\nMessage-ID: <m1>\nMessage-ID: <m2>\n\nb\n', 'f617424daa75921e1e550780ef150f5e'],
  ['hdronly', 'Date: Wed, 3 Jan 2024 10:00:00 +0000\nMessage-ID: <seven@x>\n', '533e2a8430d46ff263cd21bda7e05fc7'],
  ['hdronly_nonl', 'Date: Wed, 3 Jan 2024 10:00:00 +0000\nMessage-ID: <eight@x>', 'b968cc4be86996312298970e3f917da8'],
  ['onlyid', 'Message-ID: <nine@x>\nSubject: x\n\nbody\n', 'f4d1cdccadfd7dcb0b9fc69ebb9cf267'],
  ['trailsp', 'Date: Wed, 3 Jan 2024 10:00:00 +0000   \nMessage-ID:   <ten@x>  \n\nb\n', 'a993eaed6f93a037e7e20e26d9d875f3'],
  ['bodyhdr', 'Subject: s\n\nDate: not a header\nMessage-ID: <body@x>\n', '68b329da9893e34099c7d8ad5cb9c940'],
  ['crinline', 'Date: a\rb\r\nMessage-ID: <c\r\r\n\r\nb\r\n', '02a87db7b799bcfdc997031f6183d40b'],
  ['nocolon', 'Date\nMessage-ID <x>\nDate: real\n\nb\n', 'b1bea2a66d8a2110479541625311736e'],
  ['resent', 'Resent-Date: x\nX-Date: y\nDate-Foo: z\nMessage-IDs: <w>\nDate: d\n\nb\n', 'dba5e0ee8e4e0cfac6a36e16f1c7ecd6'],
  ['empty', '', '68b329da9893e34099c7d8ad5cb9c940'],
  ['lfcrlf', 'Date: d\r\n\nMessage-ID: <after-blank@x>\n\nb\n', 'dba5e0ee8e4e0cfac6a36e16f1c7ecd6'],
];

test('header hash: matches every hdr_hash Dovecot sent (version 3, Date + Message-ID)', () => {
  for (const [name, text, want] of DOVECOT_VECTORS) {
    assert.equal(headerHash(Buffer.from(text, 'latin1')), want, name);
  }
});

test('header hash: a mail with neither header hashes to md5("\\n")', () => {
  assert.equal(EMPTY_HEADER_HASH, createHash('md5').update('\n').digest('hex'));
  assert.equal(headerHash(Buffer.from('Subject: x\n\nDate: in the body\n')), EMPTY_HEADER_HASH);
  assert.equal(headerHash(Buffer.alloc(0)), EMPTY_HEADER_HASH);
});

test('header hash: LF and CRLF give the same hash; only the header block counts', () => {
  const lf = Buffer.from('Date: Mon, 1 Jan 2024 10:00:00 +0000\nMessage-ID: <a@b>\n\nbody\n');
  const crlf = Buffer.from('Date: Mon, 1 Jan 2024 10:00:00 +0000\r\nMessage-ID: <a@b>\r\n\r\nother body\r\n');
  assert.equal(headerHash(lf), headerHash(crlf));
  assert.deepEqual(hashedHeaderBytes(crlf).toString(), 'Date: Mon, 1 Jan 2024 10:00:00 +0000\nMessage-ID: <a@b>\n\n');
});

test('header hash: the byte rules of each version', () => {
  const raw = Buffer.from('a b\t?\x01\xff?  ?c', 'latin1');
  assert.equal(normalizeHashedBytes(raw, 1).toString('latin1'), raw.toString('latin1'));
  assert.equal(normalizeHashedBytes(raw, 2).toString('latin1'), 'a b\t?  ?c');
  assert.equal(normalizeHashedBytes(raw, 3).toString('latin1'), 'ab\t??c');
  assert.equal(normalizeHashedBytes(raw, 4).toString('latin1'), 'ab??c');
  // Other header names can be hashed too.
  const m = Buffer.from('Subject: hi\nDate: x\n\n');
  assert.equal(headerHash(m, { headers: ['Subject'] }), createHash('md5').update('Subject:hi\n\n').digest('hex'));
  assert.equal(headerHash(m, { version: 1 }), createHash('md5').update('Date: x\n\n').digest('hex'));
});
