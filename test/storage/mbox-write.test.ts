// Writing mbox files: save -> read round trips, flags and keywords, expunges, UID persistence,
// renumbering, header changes, read-only stores, locks and failure safety.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { Readable } from 'node:stream';
import { Flag } from '../../src/model/flags.js';
import { StorageError, type SaveRequest } from '../../src/storage/types.js';
import { headerHash } from '../../src/storage/header-hash.js';
import { tempDir, warnings } from './helpers.js';
import { bodyOf, fileState, openMbox, write } from './mbox-helpers.js';

const T0 = 1704103200; // 2024-01-01 10:00:00 UTC

function req(uid: number, body: string | Buffer, flags = 0, keywords: string[] = [], internalDate = T0 + uid): SaveRequest {
  return { uid, guid: `g${uid}`, flags, keywords, internalDate, body: Buffer.isBuffer(body) ? body : Buffer.from(body) };
}

const BODIES: [string, string][] = [
  ['plain', 'From: a@example.org\nSubject: plain\nDate: Mon, 1 Jan 2024 10:00:00 +0000\nMessage-ID: <p@x>\n\nHello.\n'],
  ['crlf', 'From: a@example.org\r\nSubject: crlf\r\nMessage-ID: <c@x>\r\n\r\nline 1\r\nline 2\r\n'],
  ['from lines', 'Subject: from lines\n\nFrom a@b Tue Jan  2 10:00:00 2024\n>From quoted\nFrom the start\n'],
  ['no final newline', 'Subject: no newline\n\nend'],
  ['body ends with blank lines', 'Subject: blanks\n\nx\n\n\n'],
  ['header only', 'Subject: header only\n'],
  ['header only, no newline', 'Subject: header only, no newline'],
  ['empty body', 'Subject: empty body\n\n'],
  ['nothing', ''],
  ['folded first line', ' folded\nSubject: x\n\nb\n'],
  ['8bit + NUL', 'Subject: 8bit \xe4\n\nbin\x00ary \xff\n'],
];

test('save -> read: every message comes back byte for byte, also after reopening', async (t) => {
  const dir = tempDir(t, 'dsync-mbox-');
  const store = await openMbox(`mbox:${dir}/m`);
  await store.createMailbox(['Box'], { guid: 'aa'.repeat(16), uidValidity: 1700000001 });
  const box = await store.openMailbox(['Box']);
  const bodies = BODIES.map(([, b]) => Buffer.from(b, 'latin1'));
  await box.save(bodies.map((b, i) => req(i + 1, b, i % 2 ? Flag.Seen : 0)));
  for (const s of [store, await openMbox(`mbox:${dir}/m`, { readOnly: true })]) {
    const b = await s.openMailbox(['Box']);
    const msgs = await b.scan();
    assert.deepEqual(msgs.map((m) => m.uid), bodies.map((_, i) => i + 1));
    for (let i = 0; i < bodies.length; i++) {
      assert.deepEqual(await bodyOf(b, i + 1), bodies[i], BODIES[i]![0]);
      assert.equal(msgs[i]!.size, bodies[i]!.length, BODIES[i]![0]);
      assert.equal(msgs[i]!.guid, headerHash(bodies[i]!));
      assert.equal(msgs[i]!.internalDate, T0 + i + 1);
    }
  }
  const text = fs.readFileSync(`${dir}/m/Box`, 'latin1');
  assert.match(text, /^From MAILER_DAEMON {2}\w{3} \w{3} \d\d \d\d:\d\d:\d\d \d{4}\nDate: /, 'the pseudo message of createMailbox stays first');
  assert.match(text, /X-IMAP: 1700000001 0000000011\n/);
  assert.match(text, /\nFrom MAILER-DAEMON {2}\w{3} \w{3} \d\d \d\d:\d\d:\d\d \d{4}\nFrom: a@example.org\nSubject: plain\n/);
  assert.doesNotMatch(text, /X-IMAPbase/, 'with a pseudo message, the values live in its X-IMAP header');
});

test('save: a leading From_ line is dropped and carried metadata headers are replaced (as Dovecot does)', async (t) => {
  const dir = tempDir(t, 'dsync-mbox-');
  const w = warnings();
  const store = await openMbox(`mbox:${dir}/m`, { warn: w.warn });
  const inbox = await store.openMailbox(['INBOX']);
  await inbox.save([req(1, 'From x@y Tue Jan  2 10:00:00 2024\nSubject: s\nX-UID: 77\nStatus: RO\nContent-Length: 999\nX-Keywords: evil\n\nbody\n', Flag.Flagged)]);
  const [m] = await inbox.scan();
  assert.deepEqual([m!.uid, m!.flags, m!.keywords], [1, Flag.Flagged, []]);
  assert.equal((await bodyOf(inbox, 1)).toString(), 'Subject: s\n\nbody\n');
  assert.ok(w.has(/starts with an mbox "From " line/));
  assert.ok(w.has(/carries mbox metadata headers/));
});

test('save: appends in place - only the last-UID digits of X-IMAPbase change before the old end', async (t) => {
  const dir = tempDir(t, 'dsync-mbox-');
  const store = await openMbox(`mbox:${dir}/m`);
  const inbox = await store.openMailbox(['INBOX']);
  await inbox.save([req(1, 'Subject: one\n\n1\n', Flag.Seen, ['$Label1'])]);
  const before = fs.readFileSync(`${dir}/m/inbox`);
  const ino = fs.statSync(`${dir}/m/inbox`).ino;
  assert.match(before.toString(), /^From MAILER-DAEMON {2}.*\nSubject: one\nX-IMAPbase: (\d+) 0000000001 \$Label1\nX-UID: 1\nStatus: RO\nX-Keywords: \$Label1\nContent-Length: 2\n\n1\n\n$/);
  await inbox.save([req(5, 'Subject: five\n\n5\n', 0, ['$Label1']), req(6, 'Subject: six\n\n6\n')]);
  const after = fs.readFileSync(`${dir}/m/inbox`);
  assert.equal(fs.statSync(`${dir}/m/inbox`).ino, ino, 'appended, not rewritten');
  assert.equal(after.subarray(0, before.length).toString(), before.toString().replace('0000000001', '0000000006'));
  assert.deepEqual((await inbox.scan()).map((m) => [m.uid, m.keywords]), [
    [1, ['$Label1']],
    [5, ['$Label1']],
    [6, []],
  ]);
  assert.equal((await inbox.status()).uidNext, 7);
  // A new keyword must be declared in X-IMAPbase: that needs a rewrite.
  await inbox.save([req(7, 'Subject: seven\n\n7\n', 0, ['NewKw'])]);
  assert.notEqual(fs.statSync(`${dir}/m/inbox`).ino, ino);
  assert.match(fs.readFileSync(`${dir}/m/inbox`, 'utf8'), /X-IMAPbase: \d+ 0000000007 \$Label1 NewKw\n/);
  await assert.rejects(inbox.save([req(7, 'again')]), (e: unknown) => e instanceof StorageError && e.code === 'UIDTAKEN');
});

test('flags and keywords: rewritten, kept across reopen, unknown Status letters preserved', async (t) => {
  const dir = tempDir(t, 'dsync-mbox-');
  const w = warnings();
  write(
    `${dir}/m/Box`,
    'From a@b Tue Jan  2 10:00:00 2024\nSubject: a\nX-IMAPbase: 1700000002 0000000002 old\nX-UID: 1\nStatus: OU\nX-Status: Az\nX-Keywords: old\n\nx\n\n' +
      'From a@b Tue Jan  2 10:00:00 2024\nSubject: b\nX-UID: 2\n\ny\n',
  );
  const store = await openMbox(`mbox:${dir}/m`, { warn: w.warn });
  const box = await store.openMailbox(['Box']);
  assert.deepEqual((await box.scan()).map((m) => [m.uid, m.flags, m.keywords]), [
    [1, Flag.Answered, ['old']],
    [2, 0, []],
  ]);
  await box.updateFlags([
    { uid: 1, flags: Flag.Seen | Flag.Flagged | Flag.Draft | Flag.Deleted, keywords: ['$Forwarded', 'bad word'] },
    { uid: 2, flags: Flag.Answered, keywords: ['old', 'Work'] },
    { uid: 99, flags: Flag.Seen, keywords: [] },
  ]);
  assert.ok(w.has(/keyword "bad word" of UID 1 cannot be stored/));
  const text = fs.readFileSync(`${dir}/m/Box`, 'utf8');
  assert.match(text, /X-IMAPbase: 1700000002 0000000002 old \$Forwarded Work\nX-UID: 1\nStatus: ROU\nX-Status: FTDz\nX-Keywords: \$Forwarded\n/);
  const again = await (await openMbox(`mbox:${dir}/m`, { readOnly: true })).openMailbox(['Box']);
  assert.deepEqual((await again.scan()).map((m) => [m.uid, m.flags, m.keywords]), [
    [1, Flag.Seen | Flag.Flagged | Flag.Draft | Flag.Deleted, ['$Forwarded']],
    [2, Flag.Answered, ['Work', 'old']],
  ]);
  assert.equal((await bodyOf(again, 1)).toString(), 'Subject: a\n\nx\n');
  // Nothing to change: no rewrite.
  const ino = fs.statSync(`${dir}/m/Box`).ino;
  await box.updateFlags([{ uid: 2, flags: Flag.Answered, keywords: ['Work', 'old'] }]);
  assert.equal(fs.statSync(`${dir}/m/Box`).ino, ino);
});

test('expunge: some, then all (a pseudo message keeps UIDVALIDITY and UIDNEXT), then save again', async (t) => {
  const dir = tempDir(t, 'dsync-mbox-');
  const store = await openMbox(`mbox:${dir}/m`);
  const inbox = await store.openMailbox(['INBOX']);
  await inbox.save([req(1, 'Subject: 1\n\n1\n'), req(2, 'Subject: 2\n\n2\n'), req(3, 'Subject: 3\n\n3\n')]);
  const { uidValidity, guid } = await inbox.status();
  await inbox.expunge([1, 42]);
  assert.deepEqual((await inbox.scan()).map((m) => m.uid), [2, 3]);
  assert.match(fs.readFileSync(`${dir}/m/inbox`, 'utf8'), /^From MAILER-DAEMON.*\nSubject: 2\nX-IMAPbase: \d+ 0000000003\nX-UID: 2\n/, 'X-IMAPbase moves to the new first message');
  await inbox.expunge([2, 3]);
  assert.deepEqual(await inbox.scan(), []);
  const text = fs.readFileSync(`${dir}/m/inbox`, 'utf8');
  assert.match(text, new RegExp(`^From MAILER_DAEMON .*\\n[^]*Subject: DON'T DELETE THIS MESSAGE -- FOLDER INTERNAL DATA\\n[^]*X-IMAP: ${uidValidity} 0000000003\\n`));
  const fresh = await (await openMbox(`mbox:${dir}/m`)).openMailbox(['INBOX']);
  assert.deepEqual(await fresh.status(), { guid, uidValidity, uidNext: 4 });
  await fresh.save([req(4, 'Subject: 4\n\n4\n')]);
  assert.deepEqual((await fresh.scan()).map((m) => m.uid), [4]);
  assert.match(fs.readFileSync(`${dir}/m/inbox`, 'utf8'), /X-IMAP: \d+ 0000000004\n/);
});

test('UIDs: mail without X-UID (hand-made, or delivered by an MDA) gets UIDs written back by scan', async (t) => {
  const dir = tempDir(t, 'dsync-mbox-');
  const file = `${dir}/m/inbox`;
  write(file, 'From a@b Tue Jan  2 10:00:00 2024\nSubject: 1\n\nx\n\nFrom a@b Tue Jan  2 10:01:00 2024\nSubject: 2\n\ny\n');
  fs.chmodSync(file, 0o640);
  const store = await openMbox(`mbox:${dir}/m`);
  const inbox = await store.openMailbox(['INBOX']);
  assert.deepEqual((await inbox.scan()).map((m) => m.uid), [1, 2]);
  const { uidValidity } = await inbox.status();
  assert.match(fs.readFileSync(file, 'utf8'), new RegExp(`^From a@b Tue Jan  2 10:00:00 2024\\nSubject: 1\\nX-IMAPbase: ${uidValidity} 0000000002\\nX-UID: 1\\n`));
  assert.equal(fs.statSync(file).mode & 0o777, 0o640, 'the rewrite keeps the mode');
  // An MDA appends two messages.
  fs.appendFileSync(file, 'From c@d Tue Jan  2 11:00:00 2024\nSubject: 3\n\nz\n\nFrom c@d Tue Jan  2 11:01:00 2024\nSubject: 4\n\nw\n');
  const again = await (await openMbox(`mbox:${dir}/m`)).openMailbox(['INBOX']);
  assert.deepEqual((await again.scan()).map((m) => m.uid), [1, 2, 3, 4]);
  const ro = await (await openMbox(`mbox:${dir}/m`, { readOnly: true })).openMailbox(['INBOX']);
  assert.deepEqual((await ro.scan()).map((m) => m.uid), [1, 2, 3, 4]);
  assert.deepEqual(await ro.status(), await again.status());
  assert.equal((await bodyOf(ro, 4)).toString(), 'Subject: 4\n\nw');
});

// Dovecot takes an mbox for unchanged while its mtime in whole seconds and its size are what it
// recorded, and then reads messages at the offsets in its index. A renumber moves a message to the
// end and keeps the size: the new file must not appear, even for a moment, with the time of a
// state seen before (stamped only after the rename, it showed the time of its last write).
test('rewrite: the new file has an mtime second above every state seen before it replaces the mailbox', async (t) => {
  const dir = tempDir(t, 'dsync-mbox-');
  const file = `${dir}/m/inbox`;
  await (await openMbox(`mbox:${dir}/m`)).openMailbox(['INBOX']).then((b) => b.save([req(1, 'Subject: 1\n\n1\n'), req(2, 'Subject: 2\n\n2\n')]));
  // A state with a time ahead of the clock (as our own stamps leave it), seen by the next handle.
  const ahead = Math.floor(Date.now() / 1000) + 5;
  fs.utimesSync(file, ahead, ahead);
  const seen: { size: number; newSec: number; oldSec: number }[] = [];
  const store = await openMbox(`mbox:${dir}/m`, {
    beforeReplace: async (newFile) => {
      seen.push({ size: fs.statSync(file).size, newSec: Math.floor(fs.statSync(newFile).mtimeMs / 1000), oldSec: Math.floor(fs.statSync(file).mtimeMs / 1000) });
    },
  });
  const inbox = await store.openMailbox(['INBOX']);
  await inbox.scan();
  await inbox.renumber!([{ from: 1, to: 3 }]);
  assert.equal(seen.length, 1);
  assert.equal(fs.statSync(file).size, seen[0]!.size, 'the renumber kept the size');
  assert.ok(seen[0]!.newSec > seen[0]!.oldSec, `new file ${seen[0]!.newSec}, old one ${seen[0]!.oldSec}`);
  assert.equal(Math.floor(fs.statSync(file).mtimeMs / 1000), seen[0]!.newSec, 'the time it showed is the time it keeps');
});

test('renumber: moved messages get new UIDs and go to the end of the file (X-UIDs must ascend)', async (t) => {
  const dir = tempDir(t, 'dsync-mbox-');
  const store = await openMbox(`mbox:${dir}/m`);
  const inbox = await store.openMailbox(['INBOX']);
  await inbox.save([req(1, 'Subject: 1\n\n1\n', Flag.Seen), req(2, 'Subject: 2\n\n2\n'), req(3, 'Subject: 3\n\n3\n')]);
  await inbox.renumber!([
    { from: 1, to: 10 },
    { from: 2, to: 11 },
  ]);
  const msgs = await inbox.scan();
  assert.deepEqual(msgs.map((m) => [m.uid, m.flags]), [
    [3, 0],
    [10, Flag.Seen],
    [11, 0],
  ]);
  assert.equal((await bodyOf(inbox, 10)).toString(), 'Subject: 1\n\n1\n');
  assert.equal((await inbox.status()).uidNext, 12);
  await assert.rejects(inbox.renumber!([{ from: 3, to: 5 }]), (e: unknown) => e instanceof StorageError && e.code === 'UIDTAKEN');
});

test('mailbox header: raiseUidNext (in place), setUidValidity, setGuid, reset', async (t) => {
  const dir = tempDir(t, 'dsync-mbox-');
  const store = await openMbox(`mbox:${dir}/m`);
  await store.createMailbox(['Box'], { guid: 'bb'.repeat(16), uidValidity: 1700000003 });
  const box = await store.openMailbox(['Box']);
  const ino = fs.statSync(`${dir}/m/Box`).ino;
  await box.raiseUidNext(50);
  assert.equal(fs.statSync(`${dir}/m/Box`).ino, ino);
  assert.deepEqual(await box.status(), { guid: 'bb'.repeat(16), uidValidity: 1700000003, uidNext: 50 });
  await box.raiseUidNext(10); // only grows
  assert.equal((await box.status()).uidNext, 50);
  await box.save([req(50, 'Subject: x\n\nx\n')]);
  await box.setUidValidity(1800000000);
  assert.deepEqual(await box.status(), { guid: 'bb'.repeat(16), uidValidity: 1800000000, uidNext: 51 });
  await box.setGuid('CC'.repeat(16));
  const reopened = await (await openMbox(`mbox:${dir}/m`)).openMailbox(['Box']);
  assert.deepEqual(await reopened.status(), { guid: 'cc'.repeat(16), uidValidity: 1800000000, uidNext: 51 });
  await reopened.reset!(1900000000);
  assert.deepEqual(await reopened.scan(), []);
  assert.deepEqual(await reopened.status(), { guid: 'cc'.repeat(16), uidValidity: 1900000000, uidNext: 1 });
  await assert.rejects(reopened.setGuid('xyz'), /invalid mailbox GUID/);
});

test('read-only: every change is refused and nothing is written', async (t) => {
  const dir = tempDir(t, 'dsync-mbox-');
  write(`${dir}/m/inbox`, 'From a@b Tue Jan  2 10:00:00 2024\nSubject: 1\n\nx\n');
  write(`${dir}/m/Box`, 'From a@b Tue Jan  2 10:00:00 2024\nX-IMAPbase: 1700000004 0000000001\nX-UID: 1\nSubject: 1\n\nx\n');
  const before = [fileState(`${dir}/m/inbox`), fileState(`${dir}/m/Box`), fs.readdirSync(`${dir}/m`).sort().join()];
  const store = await openMbox(`mbox:${dir}/m`, { readOnly: true });
  const box = await store.openMailbox(['Box']);
  await box.scan();
  const perm = (e: unknown) => e instanceof StorageError && e.code === 'PERM';
  await assert.rejects(box.save([req(2, 'x')]), perm);
  await assert.rejects(box.updateFlags([{ uid: 1, flags: Flag.Seen, keywords: [] }]), perm);
  await assert.rejects(box.expunge([1]), perm);
  await assert.rejects(box.renumber!([{ from: 1, to: 5 }]), perm);
  await assert.rejects(box.raiseUidNext(9), perm);
  await assert.rejects(box.setUidValidity(5), perm);
  await assert.rejects(box.setGuid('dd'.repeat(16)), perm);
  await assert.rejects(store.createMailbox(['New'], { guid: 'ee'.repeat(16), uidValidity: 5 }), perm);
  await assert.rejects(store.renameMailbox(['Box'], ['Other']), perm);
  await assert.rejects(store.deleteMailbox(['Box']), perm);
  await assert.rejects(store.writeSubscriptions([['Box']]), perm);
  await assert.rejects(store.newUidValidity(), perm);
  assert.deepEqual([fileState(`${dir}/m/inbox`), fileState(`${dir}/m/Box`), fs.readdirSync(`${dir}/m`).sort().join()], before);
});

test('locking: a live foreign dotlock makes changes wait, then fail with LOCKED; stale and dead ones are broken', async (t) => {
  const dir = tempDir(t, 'dsync-mbox-');
  const w = warnings();
  const store = await openMbox(`mbox:${dir}/m`, { warn: w.warn, lockTimeoutMs: 300 });
  const inbox = await store.openMailbox(['INBOX']);
  await inbox.save([req(1, 'Subject: 1\n\n1\n')]);
  const file = `${dir}/m/inbox`;
  const before = fileState(file);
  // pid 1 on this host is alive (and not us).
  fs.writeFileSync(`${file}.lock`, `1:${(await import('node:os')).hostname()}`);
  const t0 = Date.now();
  await assert.rejects(
    inbox.updateFlags([{ uid: 1, flags: Flag.Seen, keywords: [] }]),
    (e: unknown) => e instanceof StorageError && e.code === 'LOCKED' && /is locked by another program/.test(e.message) && e.message.includes(`${file}.lock`),
  );
  assert.ok(Date.now() - t0 >= 250, 'it waited');
  await assert.rejects(inbox.save([req(2, 'x')]), (e: unknown) => e instanceof StorageError && e.code === 'LOCKED');
  assert.equal(fileState(file), before);
  assert.ok(fs.existsSync(`${file}.lock`), 'a foreign lock is left alone');
  // Reading needs no lock.
  assert.deepEqual((await inbox.scan()).map((m) => m.uid), [1]);
  // Older than the stale time: overridden.
  const old = new Date(Date.now() - 10 * 60_000);
  fs.utimesSync(`${file}.lock`, old, old);
  await inbox.updateFlags([{ uid: 1, flags: Flag.Seen, keywords: [] }]);
  assert.ok(w.has(/overriding stale lock/));
  // Left by a process that is gone.
  fs.writeFileSync(`${file}.lock`, `999999999:${(await import('node:os')).hostname()}`);
  await inbox.updateFlags([{ uid: 1, flags: 0, keywords: [] }]);
  assert.ok(w.has(/no longer exists/));
  assert.equal(fs.existsSync(`${file}.lock`), false);
});

test('failure safety: a save whose body fails writes nothing; a rewrite keeps owner and mode', async (t) => {
  const dir = tempDir(t, 'dsync-mbox-');
  const store = await openMbox(`mbox:${dir}/m`);
  const inbox = await store.openMailbox(['INBOX']);
  await inbox.save([req(1, 'Subject: 1\n\n1\n')]);
  const file = `${dir}/m/inbox`;
  const before = fileState(file);
  const failing: SaveRequest = {
    ...req(2, ''),
    body: () =>
      new Readable({
        read() {
          this.destroy(new Error('peer went away'));
        },
      }),
  };
  await assert.rejects(inbox.save([req(2, 'Subject: 2\n\n2\n'), { ...failing, uid: 3 }]), /peer went away/);
  assert.equal(fileState(file), before);
  assert.deepEqual(fs.readdirSync(`${dir}/m`).sort(), ['.imap', 'inbox']);
  if (process.getuid?.() === 0) {
    fs.chownSync(file, 1234, 5678);
    fs.chmodSync(file, 0o660);
    await inbox.updateFlags([{ uid: 1, flags: Flag.Seen, keywords: [] }]);
    const st = fs.statSync(file);
    assert.deepEqual([st.uid, st.gid, st.mode & 0o777], [1234, 5678, 0o660]);
  }
  assert.deepEqual(fs.readdirSync(`${dir}/m`).sort(), ['.imap', 'inbox'], 'no temp files left');
  // A crashed rewrite's temp file (its process is gone) is cleaned up by the next rewrite.
  const w = warnings();
  const s2 = await openMbox(`mbox:${dir}/m`, { warn: w.warn });
  fs.writeFileSync(`${file}.dsync-999999999-abcd.tmp.lock`, 'half a mailbox');
  await (await s2.openMailbox(['INBOX'])).updateFlags([{ uid: 1, flags: 0, keywords: [] }]);
  assert.deepEqual(fs.readdirSync(`${dir}/m`).sort(), ['.imap', 'inbox']);
  assert.ok(w.has(/left by an interrupted rewrite/));
});

test('bodies while another process rewrites the file: a changed file is re-read, not served stale', async (t) => {
  const dir = tempDir(t, 'dsync-mbox-');
  const store = await openMbox(`mbox:${dir}/m`);
  const inbox = await store.openMailbox(['INBOX']);
  await inbox.save([req(1, 'Subject: 1\n\none\n'), req(2, 'Subject: 2\n\ntwo\n')]);
  await inbox.scan();
  // Someone else (say Dovecot) expunges UID 1: the offsets we know are wrong now.
  const other = await (await openMbox(`mbox:${dir}/m`)).openMailbox(['INBOX']);
  await other.expunge([1]);
  assert.equal((await bodyOf(inbox, 2)).toString(), 'Subject: 2\n\ntwo\n');
  await assert.rejects(inbox.openBody(1), (e: unknown) => e instanceof StorageError && e.code === 'EXPUNGED');
});

test('performance: a 20,000-message mbox scans and rewrites in reasonable time', async (t) => {
  const dir = tempDir(t, 'dsync-mbox-');
  const parts: string[] = [];
  for (let i = 1; i <= 20000; i++) {
    parts.push(`From a@b Tue Jan  2 10:00:00 2024\nFrom: a@example.org\nSubject: message ${i}\nMessage-ID: <${i}@x>\nDate: Tue, 2 Jan 2024 10:00:00 +0000\n\n${'body line\n'.repeat(20)}\n`);
  }
  write(`${dir}/m/big`, parts.join(''));
  const store = await openMbox(`mbox:${dir}/m`);
  const box = await store.openMailbox(['big']);
  let t0 = Date.now();
  const msgs = await box.scan(); // parses, gives UIDs, rewrites once
  const first = Date.now() - t0;
  assert.equal(msgs.length, 20000);
  t0 = Date.now();
  const again = await (await (await openMbox(`mbox:${dir}/m`, { readOnly: true })).openMailbox(['big'])).scan();
  const second = Date.now() - t0;
  assert.equal(again[19999]!.uid, 20000);
  t.diagnostic(`first scan (parse + rewrite + parse) ${first} ms, plain scan ${second} ms`);
  assert.ok(second < 15000, `scan took ${second} ms`);
});

test('save: dates outside years 1970..9999 and From_ lines in headers cannot break the file apart', async (t) => {
  const dir = tempDir(t, 'dsync-mbox-');
  const w = warnings();
  const store = await openMbox(`mbox:${dir}/m`, { warn: w.warn });
  const inbox = await store.openMailbox(['INBOX']);
  await inbox.save([
    req(1, 'Subject: ancient\n\nx\n', 0, [], -1e11),
    req(2, 'Subject: far future\n\ny\n', 0, [], 1e13),
    req(3, 'Subject: sneaky\nFrom evil@x Tue Jan  2 10:00:00 2024\nX-UID: 99\nStatus: RO\n\nbody\n'),
    req(4, 'Subject: last\n\nz\n'),
  ]);
  const again = await (await openMbox(`mbox:${dir}/m`, { readOnly: true })).openMailbox(['INBOX']);
  const msgs = await again.scan();
  assert.deepEqual(msgs.map((m) => m.uid), [1, 2, 3, 4]);
  assert.equal(msgs[0]!.internalDate, 0);
  assert.equal(new Date(msgs[1]!.internalDate * 1000).getFullYear(), 9999);
  assert.equal((await bodyOf(again, 3)).toString(), 'Subject: sneaky\n>From evil@x Tue Jan  2 10:00:00 2024\n\nbody\n');
  assert.ok(w.has(/has "From " lines in its header/));
});
