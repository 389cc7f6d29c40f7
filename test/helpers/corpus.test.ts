import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, test } from 'node:test';
import { ensureMaildir, makeMessage, makeRng, maildirFolderPath, writeMaildirMessage } from './corpus.js';
import { makeTempDir, removeTree } from './tmp.js';

const dirs: string[] = [];
after(() => dirs.forEach(removeTree));

function headers(msg: Buffer): Map<string, string> {
  const text = msg.toString('utf8');
  const end = text.search(/\r?\n\r?\n/);
  const map = new Map<string, string>();
  for (const line of text.slice(0, end).split(/\r?\n/)) {
    const i = line.indexOf(':');
    map.set(line.slice(0, i).toLowerCase(), line.slice(i + 1).trim());
  }
  return map;
}

test('the PRNG is deterministic per seed', () => {
  const a = makeRng(7);
  const b = makeRng(7);
  const c = makeRng('7');
  const xs = [a(), a(), a()];
  assert.deepEqual([b(), b(), b()], xs);
  assert.notDeepEqual([c(), c(), c()], xs);
  for (const x of xs) assert.ok(x >= 0 && x < 1);
});

test('makeMessage is deterministic and has the RFC 5322 headers', () => {
  const m = makeMessage(1);
  assert.ok(m.equals(makeMessage(1)));
  assert.ok(!m.equals(makeMessage(2)));
  const h = headers(m);
  for (const k of ['date', 'message-id', 'from', 'to', 'subject']) assert.ok(h.get(k), `${k} header`);
  assert.ok(!Number.isNaN(Date.parse(h.get('date')!)), 'Date parses');
  assert.match(h.get('message-id')!, /^<[0-9a-f]+@corpus\.dsync\.test>$/);
  assert.ok(!m.includes('\r'), 'LF by default');
  assert.equal(m[m.length - 1], 0x0a);
  assert.ok(/^[\x00-\x7f]*$/.test(m.toString('latin1')), '7-bit by default');
});

test('makeMessage options: crlf, subject, size, fromLine, eightBit', () => {
  const crlf = makeMessage(3, { crlf: true });
  assert.ok(!/[^\r]\n/.test(crlf.toString('latin1')), 'every LF is preceded by CR');
  assert.equal(headers(makeMessage(3, { subject: 'Hello there' })).get('subject'), 'Hello there');
  for (const size of [400, 401, 1000, 4096, 65536]) {
    assert.equal(makeMessage(size, { size }).length, size, `size ${size}`);
    assert.equal(makeMessage(size, { size, crlf: true, eightBit: true }).length, size, `crlf 8bit size ${size}`);
  }
  assert.match(makeMessage(4, { fromLine: true }).toString(), /\nFrom [^\n]*\n>From /);
  const eight = makeMessage(5, { eightBit: true, size: 2000 });
  assert.ok(/[^\x00-\x7f]/.test(eight.toString('utf8')), 'has 8-bit text');
  assert.equal(headers(eight).get('content-transfer-encoding'), '8bit');
  assert.equal(eight.toString('utf8').includes('\ufffd'), false, 'valid UTF-8');
});

test('writeMaildirMessage delivers like an MDA: cur/ with sorted flags or new/, mtime = internal date', () => {
  const root = path.join(makeTempDir('corpus-test-'), 'mail');
  dirs.push(path.dirname(root));
  const body = makeMessage(9);
  const p1 = writeMaildirMessage(root, { body, flags: 'SF', internalDate: 1_700_000_000 });
  assert.equal(path.dirname(p1), path.join(root, 'cur'));
  assert.match(path.basename(p1), /^1700000000\.[^:/]+:2,FS$/);
  assert.equal(fs.statSync(p1).mtimeMs, 1_700_000_000_000);
  assert.ok(fs.readFileSync(p1).equals(body));

  const p2 = writeMaildirMessage(root, { body: 'x\n', internalDate: 1_700_000_001, basename: 'fixed.name', inNew: true });
  assert.equal(p2, path.join(root, 'new', 'fixed.name'));
  const p3 = writeMaildirMessage(root, { body: 'y\n', internalDate: 1, basename: 'noflags' });
  assert.equal(p3, path.join(root, 'cur', 'noflags:2,'));
  assert.deepEqual(fs.readdirSync(path.join(root, 'tmp')), []);
  assert.equal(fs.existsSync(path.join(root, 'dovecot-uidlist')), false);
  ensureMaildir(root);
});

test('maildirFolderPath: Maildir++ dot names in modified UTF-7, or fs layout', () => {
  assert.equal(maildirFolderPath('/m', ['INBOX']), '/m');
  assert.equal(maildirFolderPath('/m', []), '/m');
  assert.equal(maildirFolderPath('/m', ['Archive', '2024']), '/m/.Archive.2024');
  assert.equal(maildirFolderPath('/m', ['Entwürfe']), '/m/.Entw&APw-rfe');
  assert.equal(maildirFolderPath('/m', ['Archive', 'Entwürfe'], 'fs'), '/m/Archive/Entw&APw-rfe');
});
