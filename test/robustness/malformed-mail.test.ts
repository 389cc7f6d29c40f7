// Malformed mail and odd files in a Maildir: the run must not fail, every message must arrive
// byte-identical on the other side, odd non-mail entries are reported by name and left alone,
// and a second run changes nothing.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import {
  assertContainsOnce,
  assertNoDuplicates,
  assertQuiet,
  assertSame,
  dsync,
  mirrorArgs,
  putFile,
  sha,
  tempDir,
  syncedOk,
} from './helpers.js';

const latin1 = (s: string) => Buffer.from(s, 'latin1');

test('malformed messages and stray files: nothing lost, copies byte-identical, odd entries named in warnings', { timeout: 60_000 }, async (t) => {
  const root = tempDir(t);
  const a = path.join(root, 'a');
  const b = path.join(root, 'b');
  const expected = new Map<string, string>(); // sha -> mailbox
  const inA = new Map<string, Buffer>(); // A's cur/ file name -> bytes (A must keep them as they are)
  const addA = (name: string, body: Buffer | string) => {
    const buf = typeof body === 'string' ? Buffer.from(body, 'utf8') : body;
    putFile(a, 'cur', name, buf);
    inA.set(name, buf);
    expected.set(sha(buf), 'INBOX');
  };
  const noHeaders = 'just a body line, there is no header block at all\nsecond line\n';
  addA(`1700000001.nohdr.robust,S=${Buffer.byteLength(noHeaders)}:2,S`, noHeaders);
  addA('1700000002.nul.robust:2,', Buffer.from('Subject: has\0NUL\nFrom: a@example.org\n\nbody\0with\0NUL bytes\0\n', 'latin1'));
  addA('1700000003.lf.robust:2,', 'Subject: bare LF\nFrom: a@example.org\n\nline one\nline two\n');
  addA('1700000004.crlf.robust:2,', 'Subject: CRLF\r\nFrom: a@example.org\r\n\r\nline one\r\nline two\r\n');
  addA('1700000005.mixed.robust:2,', 'Subject: mixed\r\nFrom: a@example.org\n\r\nline one\rline two\r\nline three\nno final newline');
  addA('1700000006.utf8hdr.robust:2,', 'Subject: Grüße aus Köln – 日本語\nFrom: Jörg Müller <j@example.org>\n\nraw UTF-8 in headers\n');
  addA('1700000007.latin1hdr.robust:2,', latin1('Subject: Gr\u00fc\u00dfe aus K\u00f6ln\nFrom: J\u00f6rg <j@example.org>\n\nLatin-1 in headers: \u00e9\u00e8\u00ff\n'));
  addA('1700000008.empty.robust:2,', Buffer.alloc(0));
  addA('1700000009.nosize.robust:2,', 'Subject: no S= in the file name\n\nx\n');
  addA('1700000010.liar.robust,S=99999,W=99999:2,', 'Subject: the S= and W= of this name are wrong\n\nx\n');
  addA('1700000011.weird2.robust:2,XYZ', 'Subject: unknown flag letters\n\nx\n');
  addA('1700000012.weird1.robust:1,foo', 'Subject: experimental info 1,foo\n\nx\n');
  addA('1700000013.kwnomap.robust:2,Sz', 'Subject: keyword letter z without dovecot-keywords\n\nx\n');
  // A regular file that is not mail: Dovecot treats every regular file in cur/ as a message.
  addA('README.txt', 'This is not an e-mail, someone dropped it here.\n');
  // Entries that are not message files at all.
  fs.mkdirSync(path.join(a, 'cur', 'subdir'));
  fs.writeFileSync(path.join(a, 'cur', 'subdir', 'inner'), 'inside a directory in cur/\n');
  fs.writeFileSync(path.join(a, 'new', '.hidden'), 'Subject: dot-file in new/\n\nx\n');
  const fifo = spawnSync('mkfifo', [path.join(a, 'cur', 'a-fifo')]);
  const haveFifo = fifo.status === 0;

  // The other direction: odd mail delivered on B.
  const addB = (name: string, body: Buffer | string) => {
    const buf = typeof body === 'string' ? Buffer.from(body, 'utf8') : body;
    putFile(b, 'new', name, buf);
    expected.set(sha(buf), 'INBOX');
  };
  addB('1700000101.bnohdr.robust', 'body only, on B\n');
  addB('1700000102.bnul.robust', Buffer.from('\0\0\0\0', 'latin1'));
  addB('1700000103.bcrlf.robust', 'Subject: B\r\n\r\nCRLF on B\r\n');
  addB('1700000104.bblank.robust', '\n\n\n');

  const args = mirrorArgs(`maildir:${a}`, `maildir:${b}`);
  const r = dsync(args);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /warning: mailbox INBOX: ignoring directory cur\/subdir/);
  assert.match(r.stderr, /warning: mailbox INBOX: ignoring stray dot-file new\/\.hidden/);
  if (haveFifo) assert.match(r.stderr, /ignoring non-regular file cur\/a-fifo/);
  assert.doesNotMatch(r.stderr, /error:/);
  // Each stray entry is reported once per run, although the mailbox is scanned more than once.
  const lines = r.stderr.split('\n').filter((l) => l.startsWith('dsync: warning: mailbox INBOX: ignoring'));
  assert.deepEqual(lines, [...new Set(lines)], r.stderr);

  const s = await assertSame(`maildir:${a}`, `maildir:${b}`);
  assertContainsOnce(s, expected, 'A');
  assertNoDuplicates(s, 'A');
  assert.equal(s.mailboxes.find((m) => m.name === 'INBOX')!.messages.length, expected.size, 'nothing besides the mails');
  const byDigest = new Map(s.mailboxes[0]!.messages.map((m) => [m.sha, m]));
  assert.deepEqual(byDigest.get(sha(noHeaders))!.flags, ['\\Seen']);
  assert.equal(byDigest.get(sha(Buffer.alloc(0)))!.size, 0);

  // A's files are untouched: same names, same bytes.
  for (const [name, body] of inA) assert.deepEqual(fs.readFileSync(path.join(a, 'cur', name)), body, `A: cur/${name}`);
  // The odd entries stay where they were and are not copied.
  assert.ok(fs.existsSync(path.join(a, 'new', '.hidden')));
  assert.ok(fs.statSync(path.join(a, 'cur', 'subdir')).isDirectory());
  assert.ok(fs.existsSync(path.join(a, 'cur', 'subdir', 'inner')));
  for (const sub of ['cur', 'new']) {
    const names = fs.readdirSync(path.join(b, sub));
    assert.ok(!names.some((n) => n.startsWith('.hidden') || n === 'subdir' || n.startsWith('a-fifo')), `B ${sub}: ${names.join(' ')}`);
  }
  // Every copy on B is byte-identical to its source.
  const shasB = new Set(fs.readdirSync(path.join(b, 'cur')).map((n) => sha(fs.readFileSync(path.join(b, 'cur', n)))));
  for (const digest of expected.keys()) assert.ok(shasB.has(digest), `B is missing a byte-identical copy of ${digest}`);

  await assertQuiet(args, `maildir:${a}`, `maildir:${b}`);
});

test('a flag change on a message with a weird info suffix keeps the unknown letters and syncs', { timeout: 30_000 }, async (t) => {
  const root = tempDir(t);
  const a = path.join(root, 'a');
  const b = path.join(root, 'b');
  putFile(a, 'cur', '1700000001.w.robust:2,XYZ', 'Subject: w\n\nx\n');
  putFile(a, 'cur', '1700000002.v.robust:1,foo', 'Subject: v\n\nx\n');
  const args = mirrorArgs(`maildir:${a}`, `maildir:${b}`);
  syncedOk(args);
  // A MUA marks both seen on B.
  for (const n of fs.readdirSync(path.join(b, 'cur'))) {
    fs.renameSync(path.join(b, 'cur', n), path.join(b, 'cur', `${n.split(':')[0]}:2,S`));
  }
  const r = dsync(args);
  assert.equal(r.code, 0, r.stderr);
  const s = await assertSame(`maildir:${a}`, `maildir:${b}`);
  assert.deepEqual(s.mailboxes[0]!.messages.map((m) => m.flags), [['\\Seen'], ['\\Seen']]);
  const names = fs.readdirSync(path.join(a, 'cur')).sort();
  // Unknown letters survive a flag change (sorted like Dovecot sorts them); '1,foo' becomes '2,S'.
  assert.deepEqual(names, ['1700000001.w.robust:2,SXYZ', '1700000002.v.robust:2,S']);
  await assertQuiet(args, `maildir:${a}`, `maildir:${b}`);
});
