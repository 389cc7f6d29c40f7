// Reading mbox files of every flavour: mboxo, mboxrd, mboxcl2, CRLF, files written by Thunderbird,
// mutt, formail and Dovecot's headers; bad input. Every expectation about what is a message, what
// bytes it has and which headers are hidden was checked against Dovecot 2.3.19 (see parse.ts).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as fsp from 'node:fs/promises';
import { FileShrank, WindowReader } from '../../src/storage/mbox/reader.js';
import { Flag } from '../../src/model/flags.js';
import { StorageError } from '../../src/storage/types.js';
import { headerHash } from '../../src/storage/header-hash.js';
import { parseFromLine } from '../../src/storage/mbox/from-line.js';
import { hashTree, tempDir, warnings } from './helpers.js';
import { bodyOf, fileState, local, openMbox, write } from './mbox-helpers.js';

test('From_ lines: what counts as a separator (calibrated against Dovecot)', () => {
  const ok = [
    'From - Thu Jan  4 10:00:00 2024',
    'From a@b Thu Jan  4 10:00:00 2024 remote from x',
    'From a@b Thu Jan  4 10:00:00 2024 garbage',
    'From  Thu Jan  4 10:00:00 2024',
    'From a@b thu jan  4 10:00:00 2024',
    'From a@b Thu Jan 04 10:00:00 2024',
    'From a@b Thu, 4 Jan 2024 10:00:00 +0000',
    'From a@b Thu Jan  4 10:00:00 PST 2024',
    'From a@b Thu Jan  4 10:00 2024',
    'From a@b Xyz Jan  4 10:00:00 2024',
    'From MAILER-DAEMON  Fri Mar 01 12:34:56 2024\r',
  ];
  const bad = [
    'From a@b Jan  4 10:00:00 2024',
    'From a@b Thu Jan  4 10:00:00 24',
    'From a b@c Thu Jan  4 10:00:00 2024',
    'From a@b Thu Jan  4 10:00:00 MET DST 2024',
    'From a@bThu Jan  4 10:00:00 2024',
    'From Tue Jan  2 10:00:00 2024',
    'From a@b garbage',
    'From the body of a message',
    'from a@b Thu Jan  4 10:00:00 2024',
  ];
  for (const l of ok) assert.ok(parseFromLine(l), l);
  for (const l of bad) assert.equal(parseFromLine(l), null, l);
  assert.equal(parseFromLine('From a@b Thu Jan  4 10:00:00 2024')!.date, local(2024, 1, 4, 10, 0, 0));
  assert.equal(parseFromLine('From a@b Thu Jan  4 10:00:00 2024 -0800')!.date, Date.UTC(2024, 0, 4, 18) / 1000);
  assert.equal(parseFromLine('From a@b Thu, 4 Jan 2024 10:00:00 +0100')!.date, Date.UTC(2024, 0, 4, 9) / 1000);
  assert.equal(parseFromLine('From a@b Thu Jan 32 10:00:00 2024')!.date, local(2024, 2, 1, 10, 0, 0));
});

test('read: mboxo as Thunderbird writes it; ">From " stays as it is unless FROM_QUOTING asks', async (t) => {
  const dir = tempDir(t, 'dsync-mbox-');
  const file = path.join(dir, 'mail', 'Tb');
  const m1 = 'From: a@example.org\nSubject: tb1\nX-Mozilla-Status: 0001\nX-Mozilla-Status2: 00000000\nX-Mozilla-Keys:                   \n\nHi\n>From here on\n>>From deeper\nFrom the start\n';
  const m2 = 'From: b@example.org\nSubject: tb2\n\nsecond\n';
  write(file, `From - Tue Jan  2 10:00:00 2024\n${m1}\nFrom - Tue Jan  2 11:00:00 2024\n${m2}\n`);
  const store = await openMbox(`mbox:${dir}/mail`, { readOnly: true });
  const box = await store.openMailbox(['Tb']);
  const msgs = await box.scan();
  assert.deepEqual(msgs.map((m) => [m.uid, m.size, m.internalDate, m.flags]), [
    [1, Buffer.byteLength(m1), local(2024, 1, 2, 10, 0, 0), 0],
    [2, Buffer.byteLength(m2), local(2024, 1, 2, 11, 0, 0), 0],
  ]);
  assert.equal((await bodyOf(box, 1)).toString(), m1);
  assert.equal((await bodyOf(box, 2)).toString(), m2);

  const o = await openMbox(`mbox:${dir}/mail:FROM_QUOTING=mboxo`, { readOnly: true });
  const ob = await o.openMailbox(['Tb']);
  const unq = m1.replace('>From here on', 'From here on');
  assert.equal((await ob.scan())[0]!.size, Buffer.byteLength(unq));
  assert.equal((await bodyOf(ob, 1)).toString(), unq, 'mboxo: only ">From " loses its ">"');
});

test('read: mboxrd unquoting strips one ">" from ">+From "', async (t) => {
  const dir = tempDir(t, 'dsync-mbox-');
  write(`${dir}/m/rd`, 'From a@b Tue Jan  2 10:00:00 2024\nSubject: rd\n\n>From one\n>>From two\n>>>From three\n> From not\n\n');
  const store = await openMbox(`mbox:${dir}/m`, { readOnly: true, quoting: 'mboxrd' });
  const box = await store.openMailbox(['rd']);
  const want = 'Subject: rd\n\nFrom one\n>From two\n>>From three\n> From not\n';
  assert.equal((await box.scan())[0]!.size, want.length);
  assert.equal((await bodyOf(box, 1)).toString(), want);
});

test('read: mboxcl2 - Content-Length protects unquoted From_ lines, but only when it is exact', async (t) => {
  const dir = tempDir(t, 'dsync-mbox-');
  const body = 'line\nFrom x@y Tue Jan  2 09:00:00 2024\nstill the same message\n';
  const good = `From a@b Tue Jan  2 10:00:00 2024\nSubject: cl\nContent-Length: ${body.length}\n\n${body}\nFrom a@b Tue Jan  2 11:00:00 2024\nSubject: next\n\nx\n`;
  write(`${dir}/m/good`, good);
  // Off by one: Dovecot (and we) fall back to scanning, so the From_ line in the body splits it.
  write(`${dir}/m/bad`, good.replace(`Content-Length: ${body.length}`, `Content-Length: ${body.length + 1}`));
  const store = await openMbox(`mbox:${dir}/m`, { readOnly: true });
  const g = await store.openMailbox(['good']);
  assert.equal((await g.scan()).length, 2);
  assert.equal((await bodyOf(g, 1)).toString(), `Subject: cl\n\n${body}`);
  const b = await store.openMailbox(['bad']);
  const msgs = await b.scan();
  assert.equal(msgs.length, 3, 'a From_ line in a body without a valid Content-Length starts a new message');
  assert.equal((await bodyOf(b, 1)).toString(), 'Subject: cl\n\nline');
  assert.equal((await bodyOf(b, 2)).toString(), 'still the same message\n');
  assert.equal(msgs[1]!.internalDate, local(2024, 1, 2, 9, 0, 0));
});

test('read: mutt and formail files (Status, X-Status, Content-Length, Lines)', async (t) => {
  const dir = tempDir(t, 'dsync-mbox-');
  write(
    `${dir}/m/mutt`,
    'From alice@example.org Tue Jan  2 10:00:00 2024\nFrom: alice@example.org\nSubject: read and replied\nStatus: RO\nX-Status: AF\nContent-Length: 5\nLines: 1\n\nhello\n' +
      'From bob@example.org Tue Jan  2 10:05:00 2024\nFrom: bob@example.org\nSubject: old unread\nStatus: O\nContent-Length: 3\nLines: 1\n\nyo\n\n' +
      'From carol@example.org  Tue Jan  2 10:10:00 2024\nFrom: carol@example.org\nSubject: formail, new\n\nnew\n',
  );
  const store = await openMbox(`mbox:${dir}/m`, { readOnly: true });
  const box = await store.openMailbox(['mutt']);
  const msgs = await box.scan();
  assert.deepEqual(msgs.map((m) => [m.uid, m.flags]), [
    [1, Flag.Seen | Flag.Answered | Flag.Flagged],
    [2, 0],
    [3, 0],
  ]);
  assert.equal((await bodyOf(box, 1)).toString(), 'From: alice@example.org\nSubject: read and replied\nLines: 1\n\nhello');
  assert.equal((await bodyOf(box, 2)).toString(), 'From: bob@example.org\nSubject: old unread\nLines: 1\n\nyo\n');
  assert.equal((await bodyOf(box, 3)).toString(), 'From: carol@example.org\nSubject: formail, new\n\nnew');
  assert.equal(msgs[2]!.internalDate, local(2024, 1, 2, 10, 10, 0));
});

test('read: a CRLF mbox keeps its CRLFs and loses only the separators', async (t) => {
  const dir = tempDir(t, 'dsync-mbox-');
  write(
    `${dir}/m/crlf`,
    'From a@b Tue Jan  2 10:00:00 2024\r\nSubject: c1\r\nX-UID: 1\r\nStatus: RO\r\nContent-Length: 4\r\n\r\nab\r\n\r\n' +
      'From a@b Tue Jan  2 11:00:00 2024\r\nSubject: c2\r\n\r\nline\r\n>From x\r\n\r\n' +
      'From a@b Tue Jan  2 12:00:00 2024\r\nSubject: c3\r\n\r\nend\r\n',
  );
  const store = await openMbox(`mbox:${dir}/m`, { readOnly: true });
  const box = await store.openMailbox(['crlf']);
  const msgs = await box.scan();
  // No X-IMAPbase: every X-UID is ignored and UIDs are given in file order (as Dovecot does).
  assert.deepEqual(msgs.map((m) => [m.uid, m.flags, m.size]), [
    [1, Flag.Seen, 19],
    [2, 0, 30],
    [3, 0, 18],
  ]);
  assert.equal((await bodyOf(box, 1)).toString(), 'Subject: c1\r\n\r\nab\r\n');
  assert.equal((await bodyOf(box, 2)).toString(), 'Subject: c2\r\n\r\nline\r\n>From x\r\n');
  assert.equal((await bodyOf(box, 3)).toString(), 'Subject: c3\r\n\r\nend');
});

test('read: Dovecot metadata - X-IMAPbase, X-UID rules, keywords, pseudo message, hidden headers', async (t) => {
  const dir = tempDir(t, 'dsync-mbox-');
  const w = warnings();
  write(
    `${dir}/m/meta`,
    [
      'From MAILER_DAEMON  Mon Jan 01 10:00:00 2024',
      'Date: Mon, 1 Jan 2024 10:00:00 +0000',
      'From: Mail System Internal Data <MAILER-DAEMON@vm>',
      "Subject: DON'T DELETE THIS MESSAGE -- FOLDER INTERNAL DATA",
      'Message-ID: <1700000000@vm>',
      'X-IMAP: 1700000000 0000000020 kwA kwB',
      'Status: RO',
      '',
      'This text is part of the internal format of your mail folder.',
      '',
      'From a@b Tue Jan  2 10:00:00 2024',
      'Subject: m1',
      'X-UID: 5',
      'x-keywords: kwA',
      'Status: R',
      ' O',
      'X-Status: DTz',
      'Status : ignored second Status',
      '',
      'b1',
      '',
      'From a@b Tue Jan  2 11:00:00 2024',
      'Subject: m2',
      'X-UID: 50',
      'X-IMAPbase: 1 2',
      'X-Keywords: kwA kwC',
      'Status RO',
      '',
      'b2',
      '',
      'From a@b Tue Jan  2 12:00:00 2024',
      'Subject: m3',
      'X-UID: 4',
      '',
      'b3',
      '',
      'From a@b Tue Jan  2 13:00:00 2024',
      'Subject: m4',
      'X-Keywords: kwB',
      '',
      'b4',
      '',
    ].join('\n'),
  );
  const store = await openMbox(`mbox:${dir}/m`, { readOnly: true, warn: w.warn });
  const box = await store.openMailbox(['meta']);
  const msgs = await box.scan();
  // X-UID 5 is kept; 50 >= next UID and 4 <= the previous UID are replaced: 21, 22, then 23.
  assert.deepEqual(msgs.map((m) => [m.uid, m.flags, m.keywords]), [
    [5, Flag.Seen | Flag.Deleted | Flag.Draft, ['kwA']],
    [21, 0, []],
    [22, 0, []],
    [23, 0, ['kwB']],
  ]);
  assert.ok(w.has(/X-Keywords names keywords missing from X-IMAPbase \(kwC\)/), w.list.join('\n'));
  assert.equal((await bodyOf(box, 5)).toString(), 'Subject: m1\n\nb1\n');
  assert.equal((await bodyOf(box, 21)).toString(), 'Subject: m2\nStatus RO\n\nb2\n', 'a header without colon is not hidden');
  assert.equal((await bodyOf(box, 23)).toString(), 'Subject: m4\n\nb4');
  assert.deepEqual(await box.status(), { guid: (await box.status()).guid, uidValidity: 1700000000, uidNext: 24 });
  for (const m of msgs) assert.equal(m.guid, headerHash(await bodyOf(box, m.uid)));
  await assert.rejects(box.openBody(6), (e: unknown) => e instanceof StorageError && e.code === 'EXPUNGED');
});

test('read: header-only messages, From_ line right after From_ line, no final newline', async (t) => {
  const dir = tempDir(t, 'dsync-mbox-');
  write(
    `${dir}/m/odd`,
    'From a@b Tue Jan  2 10:00:00 2024\nSubject: hdronly\nX-UID: 5\n\n' +
      'From a@b Tue Jan  2 10:01:00 2024\n' +
      'From a@b Tue Jan  2 10:02:00 2024\nyy\n\n' +
      'From a@b Tue Jan  2 10:03:00 2024\nSubject: p\n\nline\nFrom a@b Tue Jan  2 10:04:00 2024\nSubject: last\n\nend',
  );
  const store = await openMbox(`mbox:${dir}/m`, { readOnly: true });
  const box = await store.openMailbox(['odd']);
  const msgs = await box.scan();
  assert.deepEqual(msgs.map((m) => m.uid), [1, 2, 3, 4, 5]);
  const bodies = await Promise.all(msgs.map(async (m) => (await bodyOf(box, m.uid)).toString()));
  assert.deepEqual(bodies, ['Subject: hdronly\n', '', 'yy\n', 'Subject: p\n\nline', 'Subject: last\n\nend']);
  assert.deepEqual(msgs.map((m) => m.size), bodies.map((b) => b.length));
});

test('bad input: a file that does not start with "From " is refused, naming it, and left alone', async (t) => {
  const dir = tempDir(t, 'dsync-mbox-');
  write(`${dir}/m/notes`, 'just some notes\nFrom a@b Tue Jan  2 10:00:00 2024\n');
  write(`${dir}/m/blank-first`, '\nFrom a@b Tue Jan  2 10:00:00 2024\nSubject: x\n\ny\n');
  const before = [fileState(`${dir}/m/notes`), fileState(`${dir}/m/blank-first`)];
  const store = await openMbox(`mbox:${dir}/m`);
  for (const name of ['notes', 'blank-first']) {
    const box = await store.openMailbox([name]);
    await assert.rejects(box.scan(), (e: unknown) => e instanceof StorageError && e.code === 'CORRUPT' && e.message.includes(`${dir}/m/${name}`) && /not an mbox file/.test(e.message));
    await assert.rejects(box.status(), /not an mbox file/);
    await assert.rejects(box.updateFlags([{ uid: 1, flags: Flag.Seen, keywords: [] }]), /not an mbox file/);
  }
  // Listed (so that a damaged mbox never looks deleted), without GUID: opening it fails loudly.
  const list = await store.listMailboxes();
  assert.deepEqual(list.filter((m) => m.name[0] !== 'INBOX').map((m) => [m.name.join('/'), m.selectable, m.guid]), [
    ['blank-first', true, undefined],
    ['notes', true, undefined],
  ]);
  assert.deepEqual([fileState(`${dir}/m/notes`), fileState(`${dir}/m/blank-first`)], before);
  assert.deepEqual(fs.readdirSync(`${dir}/m`).sort(), ['.imap', 'blank-first', 'inbox', 'notes'], 'no temp or lock files left');
});

test('bad input: truncated last message, missing final newline, corrupt X-IMAPbase', async (t) => {
  const dir = tempDir(t, 'dsync-mbox-');
  const w = warnings();
  write(
    `${dir}/m/cut`,
    'From a@b Tue Jan  2 10:00:00 2024\nX-IMAPbase: 1700000005 0000000002\nX-UID: 1\nSubject: ok\n\nfine\n\n' +
      'From a@b Tue Jan  2 10:01:00 2024\nX-UID: 2\nSubject: cut\nContent-Length: 5000\n\nthe rest of this message was lo',
  );
  write(`${dir}/m/corrupt`, 'From a@b Tue Jan  2 10:00:00 2024\nX-IMAPbase: garbage\nX-UID: 7\nSubject: a\n\nx\n\nFrom a@b Tue Jan  2 10:00:00 2024\nX-UID: 9\nSubject: b\n\ny\n');
  const ro = await openMbox(`mbox:${dir}/m`, { readOnly: true, warn: w.warn });
  const cut = await ro.openMailbox(['cut']);
  assert.deepEqual((await cut.scan()).map((m) => m.uid), [1, 2]);
  assert.equal((await bodyOf(cut, 2)).toString(), 'Subject: cut\n\nthe rest of this message was lo');
  assert.ok(w.has(/shorter than its Content-Length says: the file looks truncated/), w.list.join('\n'));

  const c = await ro.openMailbox(['corrupt']);
  assert.deepEqual((await c.scan()).map((m) => m.uid), [1, 2]);
  assert.ok(w.has(/ignoring a bad X-IMAPbase header "garbage"/));
  const roStatus = await c.status();
  assert.equal((await c.status()).uidValidity, roStatus.uidValidity, 'read-only: a stable stand-in UIDVALIDITY');

  // Writable: the new UIDVALIDITY and the UIDs are written back, as Dovecot does.
  const rw = await openMbox(`mbox:${dir}/m`, { warn: w.warn });
  const c2 = await rw.openMailbox(['corrupt']);
  const st = await c2.status();
  assert.equal(st.uidValidity, roStatus.uidValidity, 'the read-only stand-in UIDVALIDITY is the one written');
  assert.deepEqual(st.uidNext, 3);
  const text = fs.readFileSync(`${dir}/m/corrupt`, 'utf8');
  assert.match(text, new RegExp(`^From a@b Tue Jan  2 10:00:00 2024\\nSubject: a\\nX-IMAPbase: ${st.uidValidity} 0000000002\\nX-UID: 1\\n`));
  const again = await (await openMbox(`mbox:${dir}/m`, { readOnly: true })).openMailbox(['corrupt']);
  assert.deepEqual(await again.status(), st);
  assert.deepEqual((await again.scan()).map((m) => m.uid), [1, 2]);
});

test('read-only: UIDs for mail without X-UID are given in memory, nothing is written', async (t) => {
  const dir = tempDir(t, 'dsync-mbox-');
  write(`${dir}/m/inbox`, 'From a@b Tue Jan  2 10:00:00 2024\nSubject: 1\n\nx\n\nFrom a@b Tue Jan  2 10:00:00 2024\nSubject: 2\n\ny\n');
  write(`${dir}/m/Sub/box`, '');
  const before = hashTree(dir);
  for (let i = 0; i < 2; i++) {
    const store = await openMbox(`mbox:${dir}/m`, { readOnly: true });
    const list = await store.listMailboxes();
    assert.deepEqual(list.map((m) => [m.name.join('/'), m.selectable]), [['INBOX', true], ['Sub', false], ['Sub/box', true]]);
    const inbox = await store.openMailbox(['INBOX']);
    assert.deepEqual((await inbox.scan()).map((m) => m.uid), [1, 2]);
    const st = await inbox.status();
    assert.equal(st.uidNext, 3);
    assert.match(st.guid, /^[0-9a-f]{32}$/);
    const box = await store.openMailbox(['Sub', 'box']);
    assert.deepEqual(await box.scan(), []);
    assert.equal(list.find((m) => m.name.join('/') === 'Sub/box')!.guid, (await box.status()).guid);
    await store.close();
  }
  assert.equal(hashTree(dir), before, 'a read-only store writes nothing, not even a lock file');
});

test('reader: a file that shrank while it is read says so (FileShrank: the caller reads it again), it does not hand out a short window', async (t) => {
  const dir = tempDir(t);
  const file = path.join(dir, 'box');
  fs.writeFileSync(file, Buffer.alloc(3 << 20, 0x61));
  const fh = await fsp.open(file, 'r');
  try {
    const r = new WindowReader(fh, 3 << 20);
    await r.ensure(0, 10);
    assert.equal(r.byteAt(5), 0x61);
    fs.truncateSync(file, 1 << 20); // Dovecot compacts the mbox in place meanwhile
    await assert.rejects(r.ensure(2 << 20, 10), FileShrank);
  } finally {
    await fh.close();
  }
});
