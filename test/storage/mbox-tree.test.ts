// The mbox store's tree: listing, INBOX, control files, names, create/rename/delete, subscriptions,
// mailbox GUIDs.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { StorageError } from '../../src/storage/types.js';
import { openStore } from '../../src/storage/open.js';
import { parseMailLocation } from '../../src/storage/location.js';
import { tempDir, warnings } from './helpers.js';
import { openMbox, write } from './mbox-helpers.js';
import { dotLockTempName } from '../../src/storage/maildir/lock.js';

const MSG = 'From a@b Tue Jan  2 10:00:00 2024\nX-IMAPbase: 1700000009 0000000001\nX-UID: 1\nSubject: x\n\nx\n';

function names(list: { name: string[]; selectable: boolean }[]): string[] {
  return list.map((m) => `${m.name.join('/')}${m.selectable ? '' : ' (noselect)'}`);
}

test('tree: files are mailboxes, directories \\Noselect; internal files are never listed', async (t) => {
  const dir = tempDir(t, 'dsync-mbox-');
  const root = `${dir}/mail`;
  write(`${root}/inbox`, '');
  write(`${root}/Archive`, MSG);
  write(`${root}/Lists/dev`, MSG);
  write(`${root}/Lists/.imap/dev/dovecot.index.log`, 'x');
  write(`${root}/Entw&APw-rfe`, '');
  write(`${root}/.imap/dovecot-uidvalidity`, '6b0804dc');
  write(`${root}/.subscriptions`, 'V\t2\n\nINBOX\n');
  write(`${root}/.mailboxlist`, 'Archive\n');
  write(`${root}/Archive.lock`, '123:host');
  write(`${root}/Archive.dsync-1-abcd.tmp.lock`, 'partial');
  write(`${root}/dsync-index.sqlite`, 'x');
  write(`${root}/dsync-index.sqlite-wal`, 'x');
  write(`${root}/dsync.lock`, '1 host');
  write(`${root}/INBOX/sub`, '');
  fs.mkdirSync(`${root}/Empty dir`);
  const store = await openMbox(`mbox:${root}`, { readOnly: true });
  assert.equal(store.controlDir, `${root}/.imap`);
  assert.equal(store.separator, '/');
  assert.deepEqual(store.caps, { saveGuids: false });
  assert.deepEqual(names(await store.listMailboxes()), ['INBOX', 'INBOX/sub', 'Archive', 'Empty dir (noselect)', 'Entwürfe', 'Lists (noselect)', 'Lists/dev']);
});

test('tree: INBOX is <root>/inbox without INBOX= (like Dovecot), else the INBOX= file; created on listing', async (t) => {
  const dir = tempDir(t, 'dsync-mbox-');
  const a = await openMbox(`mbox:${dir}/a`);
  assert.deepEqual(names(await a.listMailboxes()), ['INBOX']);
  assert.equal(fs.statSync(`${dir}/a/inbox`).size, 0);
  assert.equal(fs.statSync(`${dir}/a/inbox`).mode & 0o777, 0o600);
  // /var/mail/%u style.
  const b = await openStore(parseMailLocation(`mbox:${dir}/b:INBOX=${dir}/spool/%u`, { user: 'jane' }), { warn: () => undefined });
  write(`${dir}/b/inbox`, MSG); // not INBOX here, and not a second INBOX either
  assert.deepEqual(names(await b.listMailboxes()), ['INBOX']);
  assert.ok(fs.existsSync(`${dir}/spool/jane`));
  const inbox = await b.openMailbox(['inbox']);
  await inbox.save([{ uid: 1, guid: 'g', flags: 0, keywords: [], internalDate: 1704103200, body: Buffer.from('Subject: s\n\nb\n') }]);
  assert.match(fs.readFileSync(`${dir}/spool/jane`, 'utf8'), /^From MAILER-DAEMON/);
  assert.deepEqual(fs.readdirSync(`${dir}/spool`), ['jane'], 'no lock or temp file left next to the spool file');
  // Read-only and missing: not created.
  const c = await openMbox(`mbox:${dir}/b:INBOX=${dir}/spool/nobody-here`, { readOnly: true });
  assert.deepEqual((await c.listMailboxes()).map((m) => [m.name.join('/'), m.selectable]), [['INBOX', false]]);
  assert.equal(fs.existsSync(`${dir}/spool/nobody-here`), false);
});

test('tree: create, rename (with Dovecot\'s index dir), delete mailboxes and directories', async (t) => {
  const dir = tempDir(t, 'dsync-mbox-');
  const root = `${dir}/m`;
  const store = await openMbox(`mbox:${root}`);
  await store.createMailbox(['Lists', 'dev'], { guid: '01'.repeat(16), uidValidity: 1700000010 });
  await store.createMailbox(['Entwürfe'], { guid: '02'.repeat(16), uidValidity: 1700000011 });
  assert.ok(fs.statSync(`${root}/Entw&APw-rfe`).isFile());
  assert.match(fs.readFileSync(`${root}/Lists/dev`, 'utf8'), /^From MAILER_DAEMON {2}.*\n[^]*X-IMAP: 1700000010 0000000000\n/);
  await assert.rejects(store.createMailbox(['Lists', 'dev'], { guid: '03'.repeat(16), uidValidity: 1 }), (e: unknown) => e instanceof StorageError && e.code === 'EXISTS');
  await assert.rejects(store.createMailbox(['Lists'], { guid: '03'.repeat(16), uidValidity: 1 }), (e: unknown) => e instanceof StorageError && e.code === 'EXISTS');
  await assert.rejects(
    store.createMailbox(['Entwürfe', 'child'], { guid: '03'.repeat(16), uidValidity: 1 }),
    (e: unknown) => e instanceof StorageError && e.code === 'INVALIDNAME' && /cannot have child mailboxes/.test(e.message),
  );
  await store.createDirectory(['Dir', 'Sub']);
  assert.ok(fs.statSync(`${root}/Dir/Sub`).isDirectory());
  await assert.rejects(store.createDirectory(['Entwürfe']), (e: unknown) => e instanceof StorageError && e.code === 'EXISTS');
  await store.createMailbox(['INBOX', 'child'], { guid: '04'.repeat(16), uidValidity: 1700000012 });
  assert.ok(fs.statSync(`${root}/INBOX/child`).isFile());

  // Rename moves Dovecot's index of the mailbox along (Dovecot keeps its state, as after its RENAME).
  write(`${root}/Lists/.imap/dev/dovecot.index.log`, 'dovecot state');
  await store.renameMailbox(['Lists', 'dev'], ['Old', 'dev2']);
  assert.ok(fs.statSync(`${root}/Old/dev2`).isFile());
  assert.equal(fs.readFileSync(`${root}/Old/.imap/dev2/dovecot.index.log`, 'utf8'), 'dovecot state');
  assert.equal(fs.existsSync(`${root}/Lists/dev`), false);
  assert.equal((await (await store.openMailbox(['Old', 'dev2'])).status()).guid, '01'.repeat(16), 'the GUID moves with the name');
  await store.renameMailbox(['Old'], ['New']); // a directory with everything below it
  assert.equal((await (await store.openMailbox(['New', 'dev2'])).status()).guid, '01'.repeat(16));
  await assert.rejects(store.renameMailbox(['New'], ['New', 'x']), (e: unknown) => e instanceof StorageError && e.code === 'INVALIDNAME');
  await assert.rejects(store.renameMailbox(['INBOX'], ['X']), (e: unknown) => e instanceof StorageError && e.code === 'INVALIDNAME');
  await assert.rejects(store.renameMailbox(['Nope'], ['X']), (e: unknown) => e instanceof StorageError && e.code === 'NOTFOUND');
  await assert.rejects(store.renameMailbox(['New', 'dev2'], ['Entwürfe']), (e: unknown) => e instanceof StorageError && e.code === 'EXISTS');

  await store.deleteMailbox(['New', 'dev2']);
  assert.equal(fs.existsSync(`${root}/New/dev2`), false);
  assert.equal(fs.existsSync(`${root}/New/.imap/dev2`), false, "Dovecot's index of the mailbox goes too");
  assert.deepEqual(fs.readdirSync(`${root}/New`), ['.imap']);
  await store.deleteDirectory(['New']);
  assert.equal(fs.existsSync(`${root}/New`), false);
  await assert.rejects(store.deleteDirectory(['Dir']), (e: unknown) => e instanceof StorageError && e.code === 'EXISTS');
  await assert.rejects(store.deleteDirectory(['Entwürfe']), (e: unknown) => e instanceof StorageError && e.code === 'EXISTS');
  await assert.rejects(store.deleteMailbox(['INBOX']), (e: unknown) => e instanceof StorageError && e.code === 'INVALIDNAME');
  await assert.rejects(store.deleteMailbox(['Dir']), (e: unknown) => e instanceof StorageError && e.code === 'NOTFOUND');
  // The parent of a renamed mailbox stays, as a directory.
  assert.deepEqual(names(await store.listMailboxes()), ['INBOX', 'INBOX/child', 'Dir (noselect)', 'Dir/Sub (noselect)', 'Entwürfe', 'Lists (noselect)']);
});

test('names: what an mbox tree can hold', async (t) => {
  const dir = tempDir(t, 'dsync-mbox-');
  const store = await openMbox(`mbox:${dir}/m`);
  for (const ok of [['INBOX'], ['inbox', 'x'], ['A', 'B', 'C'], ['Entwürfe'], ['a&b'], ['with space'], ['x.y']]) {
    assert.equal(store.invalidNameReason(ok), null, ok.join('/'));
  }
  for (const bad of [[], [''], ['a', ''], ['.hidden'], ['a/b'], ['..'], ['Archive.lock'], ['tab\there'], ['~x'], ['x'.repeat(300)]]) {
    assert.notEqual(store.invalidNameReason(bad), null, JSON.stringify(bad));
  }
  const utf8 = await openMbox(`mbox:${dir}/u:UTF-8`);
  await utf8.createMailbox(['Entwürfe'], { guid: '05'.repeat(16), uidValidity: 1700000013 });
  assert.ok(fs.existsSync(`${dir}/u/Entwürfe`));
  // INBOX=<root>/INBOX: INBOX is a file there, so it cannot have children.
  const upper = await openMbox(`mbox:${dir}/v:INBOX=${dir}/v/INBOX`);
  assert.match(upper.invalidNameReason(['INBOX', 'x'])!, /cannot have child mailboxes/);
});

test('subscriptions: .subscriptions in the root, version 2 written, version 1 read', async (t) => {
  const dir = tempDir(t, 'dsync-mbox-');
  const root = `${dir}/m`;
  const store = await openMbox(`mbox:${root}`);
  assert.deepEqual(await store.readSubscriptions(), []);
  await store.writeSubscriptions([['INBOX'], ['Lists', 'dev'], ['Entwürfe']]);
  assert.equal(fs.readFileSync(`${root}/.subscriptions`, 'utf8'), 'V\t2\n\nINBOX\nLists\tdev\nEntw&APw-rfe\n');
  assert.deepEqual(await store.readSubscriptions(), [['INBOX'], ['Lists', 'dev'], ['Entwürfe']]);
  fs.writeFileSync(`${root}/.subscriptions`, 'INBOX\nLists/dev\n');
  assert.deepEqual(await store.readSubscriptions(), [['INBOX'], ['Lists', 'dev']]);
});

test('mailbox GUIDs: given at creation, set later, kept across reopen and renames by other programs', async (t) => {
  const dir = tempDir(t, 'dsync-mbox-');
  const root = `${dir}/m`;
  write(`${root}/Foreign`, MSG);
  const w = warnings();
  const store = await openMbox(`mbox:${root}`, { warn: w.warn });
  await store.createMailbox(['Made'], { guid: 'ab'.repeat(16), uidValidity: 1700000020 });
  const list = await store.listMailboxes();
  const byName = Object.fromEntries(list.map((m) => [m.name.join('/'), m]));
  assert.equal(byName['Made']!.guid, 'ab'.repeat(16));
  assert.equal(byName['Made']!.uidValidity, 1700000020);
  const foreignGuid = byName['Foreign']!.guid!;
  assert.match(foreignGuid, /^[0-9a-f]{32}$/);
  // Stable: a second store (and a read-only one) gives the same GUIDs.
  const again = Object.fromEntries((await (await openMbox(`mbox:${root}`, { readOnly: true })).listMailboxes()).map((m) => [m.name.join('/'), m.guid]));
  assert.equal(again['Foreign'], foreignGuid);
  assert.equal(again['Made'], 'ab'.repeat(16));
  // Another program renames the files (mv, or Dovecot's RENAME): the UIDVALIDITY in the file finds the GUID.
  fs.renameSync(`${root}/Foreign`, `${root}/Renamed`);
  fs.mkdirSync(`${root}/Sub`);
  fs.renameSync(`${root}/Made`, `${root}/Sub/Made`);
  const after = Object.fromEntries((await (await openMbox(`mbox:${root}`)).listMailboxes()).map((m) => [m.name.join('/'), m.guid]));
  assert.equal(after['Renamed'], foreignGuid);
  assert.equal(after['Sub/Made'], 'ab'.repeat(16));
  // setGuid sticks.
  const box = await store.openMailbox(['Renamed']);
  await box.setGuid('cd'.repeat(16));
  assert.equal((await (await (await openMbox(`mbox:${root}`)).openMailbox(['Renamed'])).status()).guid, 'cd'.repeat(16));
  assert.ok(fs.existsSync(`${root}/.imap/dsync-mbox-guids`));
  // A damaged map is an error, not silently new GUIDs (which would look like deleted mailboxes).
  fs.writeFileSync(`${root}/.imap/dsync-mbox-guids`, '{"mailboxes": [');
  const broken = await openMbox(`mbox:${root}`);
  await assert.rejects(broken.listMailboxes(), (e: unknown) => e instanceof StorageError && e.code === 'CORRUPT');
});

// Found by the crash soak: a run killed while taking the dotlock of the mbox "Archive" left the
// lock's temp file next to it, and the next run listed it as a mailbox and mirrored it.
test('tree: temp files of locks a killed run left behind are not mailboxes, from this build or earlier ones', async (t) => {
  const dir = tempDir(t, 'dsync-mbox-');
  const root = `${dir}/mail`;
  write(`${root}/inbox`, '');
  write(`${root}/Archive`, MSG);
  write(`${root}/Lists/dev`, MSG);
  write(dotLockTempName(`${root}/Archive`), '123:host');
  write(dotLockTempName(`${root}/Lists/dev`), '123:host');
  write(`${root}/Archive.lock.7736.6.tmp`, '7736:host');
  write(`${root}/dsync.lock.7736.tmp`, '7736 host\n');
  const store = await openMbox(`mbox:${root}`, { readOnly: true });
  assert.deepEqual(names(await store.listMailboxes()), ['INBOX', 'Archive', 'Lists (noselect)', 'Lists/dev']);
  await store.close();
});
