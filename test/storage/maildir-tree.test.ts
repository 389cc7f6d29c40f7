// Mailbox tree: listing, create/delete/rename, layouts, names, subscriptions, control dirs, owners.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { StorageError, type MailStore } from '../../src/storage/types.js';
import { listTree, makeMaildir, openMaildir, tempDir, warnings, writeMail } from './helpers.js';
import { parseMailLocation } from '../../src/storage/location.js';
import { openStore } from '../../src/storage/open.js';
import { spawnSync } from 'node:child_process';

const G1 = '0123456789abcdef0123456789abcdef';
const G2 = 'fedcba9876543210fedcba9876543210';
const G3 = 'aaaaaaaaaaaaaaaabbbbbbbbbbbbbbbb';

function isCode(code: string) {
  return (e: unknown) => e instanceof StorageError && e.code === code;
}

async function names(store: MailStore): Promise<string[]> {
  return (await store.listMailboxes()).map((m) => `${m.name.join('/')}${m.selectable ? '' : ' (noselect)'}`);
}

test('maildir++: create, list with implicit parents, hidden files never mailboxes', async (t) => {
  const root = tempDir(t);
  const w = warnings();
  const store = await openMaildir(`maildir:${root}`, { warn: w.warn });
  assert.equal(store.separator, '.');
  assert.equal(store.controlDir, root);
  await store.createMailbox(['Archive'], { guid: G1, uidValidity: 100 });
  await store.createMailbox(['Entwürfe'], { guid: G2, uidValidity: 101 });
  await store.createMailbox(['a', 'b'], { guid: G3, uidValidity: 102 });
  await store.createMailbox(['inbox', 'Sub'], { guid: G1.replace('0', '9'), uidValidity: 103 });
  await assert.rejects(store.createMailbox(['Archive'], { guid: G2, uidValidity: 5 }), isCode('EXISTS'));
  // INBOX does not exist yet (the root dir did): creating it is allowed once.
  await store.createMailbox(['INBOX'], { guid: G2, uidValidity: 99 });
  await assert.rejects(store.createMailbox(['INBOX'], { guid: G2, uidValidity: 5 }), isCode('EXISTS'));
  assert.ok(fs.existsSync(path.join(root, '.Entw&APw-rfe', 'maildirfolder')));
  assert.ok(fs.existsSync(path.join(root, '.a.b', 'cur')));
  assert.ok(!fs.existsSync(path.join(root, '.a')), 'Dovecot does not create Maildir++ parents either');
  assert.equal(fs.readFileSync(path.join(root, '.Archive', 'dovecot-uidlist'), 'utf8'), `3 V100 N1 G${G1}\n`);
  // Things that are not mailboxes.
  for (const f of ['dovecot.index', 'dovecot.index.log', 'dovecot-uidvalidity', 'dsync-index.sqlite', 'dsync-index.sqlite-wal', 'subscriptions', '.hiddenfile']) {
    fs.writeFileSync(path.join(root, f), '');
  }
  fs.mkdirSync(path.join(root, '..DOVECOT-TRASHED'));
  fs.mkdirSync(path.join(root, 'plaindir'));
  fs.mkdirSync(path.join(root, '.bad&Jjo'));
  const list = await store.listMailboxes();
  assert.deepEqual(
    list.map((m) => [m.name.join('/'), m.selectable, m.guid, m.uidValidity, m.uidNext]),
    [
      ['INBOX', true, G2, 99, 1],
      ['INBOX/Sub', true, G1.replace('0', '9'), 103, 1],
      ['Archive', true, G1, 100, 1],
      ['Entwürfe', true, G2, 101, 1],
      ['a', false, undefined, undefined, undefined],
      ['a/b', true, G3, 102, 1],
      ['bad&Jjo', false, undefined, undefined, undefined],
    ].filter((x) => x[0] !== 'bad&Jjo'),
  );
  assert.ok(w.has(/\.bad&Jjo.*modified UTF-7/));
  assert.ok(fs.existsSync(path.join(root, '.INBOX.Sub')));
  // Names that cannot be stored.
  assert.match(store.invalidNameReason(['a.b'])!, /separator/);
  assert.match(store.invalidNameReason(['a', ''])!, /empty/);
  assert.match(store.invalidNameReason([])!, /empty/);
  assert.match(store.invalidNameReason(['x/y'])!, /'\/'/);
  assert.match(store.invalidNameReason(['tab\there'])!, /control characters/);
  assert.match(store.invalidNameReason(['\ud800'])!, /Unicode/);
  assert.match(store.invalidNameReason(['x'.repeat(300)])!, /too long/);
  assert.equal(store.invalidNameReason(['cur']), null);
  assert.equal(store.invalidNameReason(['Ünïcødé', '日本語', '😀']), null);
  await assert.rejects(store.createMailbox(['a.b'], { guid: G1, uidValidity: 1 }), isCode('INVALIDNAME'));
});

test('maildir++: uidlist of a created mailbox is used by scan and save', async (t) => {
  const root = tempDir(t);
  const store = await openMaildir(`maildir:${root}`);
  await store.createMailbox(['Box'], { guid: G1, uidValidity: 4242 });
  const box = await store.openMailbox(['Box']);
  assert.deepEqual(await box.status(), { guid: G1, uidValidity: 4242, uidNext: 1 });
  await box.save([{ uid: 1, guid: 'm1', flags: 0, keywords: [], internalDate: 1, body: Buffer.from('x') }]);
  assert.equal(fs.readFileSync(path.join(root, '.Box', 'dovecot-uidlist'), 'utf8'), `3 V4242 N1 G${G1}\n1 :m1\n`);
  await assert.rejects(store.openMailbox(['Nope']), isCode('NOTFOUND'));
});

test('maildir++: rename moves the mailbox and all children; EXISTS / NOTFOUND / INBOX rules', async (t) => {
  const root = tempDir(t);
  const store = await openMaildir(`maildir:${root}`);
  await store.createMailbox(['A'], { guid: G1, uidValidity: 1 });
  await store.createMailbox(['A', 'B'], { guid: G2, uidValidity: 2 });
  await store.createMailbox(['A', 'B', 'C'], { guid: G3, uidValidity: 3 });
  await store.createMailbox(['AB'], { guid: G3.replace('a', 'c'), uidValidity: 4 });
  await store.createMailbox(['Other'], { guid: G3.replace('a', 'd'), uidValidity: 5 });
  writeMail(path.join(root, '.A.B', 'cur', 'msg:2,S'), 'x');
  await store.renameMailbox(['A'], ['X', 'Ü']);
  assert.deepEqual(await names(store), ['INBOX', 'AB', 'Other', 'X (noselect)', 'X/Ü', 'X/Ü/B', 'X/Ü/B/C']);
  assert.ok(fs.existsSync(path.join(root, '.X.&ANw-.B', 'cur', 'msg:2,S')));
  const list = await store.listMailboxes();
  assert.equal(list.find((m) => m.name.join('/') === 'X/Ü/B')!.guid, G2, 'GUID travels with the mailbox');
  await assert.rejects(store.renameMailbox(['A'], ['Z']), isCode('NOTFOUND'));
  await assert.rejects(store.renameMailbox(['AB'], ['Other']), isCode('EXISTS'));
  await assert.rejects(store.renameMailbox(['AB'], ['X', 'Ü', 'B', 'C']), isCode('EXISTS'));
  await assert.rejects(store.renameMailbox(['INBOX'], ['Y']), isCode('INVALIDNAME'));
  await assert.rejects(store.renameMailbox(['Other'], ['inbox']), isCode('INVALIDNAME'));
  await assert.rejects(store.renameMailbox(['X'], ['X', 'Y']), isCode('INVALIDNAME'));
  // A \Noselect parent (no .X directory of its own) can be renamed: its children move.
  await store.renameMailbox(['X'], ['Y']);
  assert.deepEqual(await names(store), ['INBOX', 'AB', 'Other', 'Y (noselect)', 'Y/Ü', 'Y/Ü/B', 'Y/Ü/B/C']);
});

test('maildir++: delete keeps children (parent becomes \\Noselect); INBOX cannot be deleted', async (t) => {
  const root = tempDir(t);
  const store = await openMaildir(`maildir:${root}`);
  await store.createMailbox(['A'], { guid: G1, uidValidity: 1 });
  await store.createMailbox(['A', 'B'], { guid: G2, uidValidity: 2 });
  writeMail(path.join(root, '.A', 'cur', 'x:2,'), 'x');
  await store.deleteMailbox(['A']);
  assert.deepEqual(await names(store), ['INBOX', 'A (noselect)', 'A/B']);
  assert.ok(!fs.existsSync(path.join(root, '.A')));
  assert.deepEqual(fs.readdirSync(root).filter((n) => n.startsWith('..')), [], 'no trash left behind');
  await assert.rejects(store.deleteMailbox(['A']), isCode('NOTFOUND'));
  await assert.rejects(store.deleteMailbox(['INBOX']), isCode('INVALIDNAME'));
  await store.deleteDirectory(['A']); // no-op in Maildir++
  await store.createDirectory(['Q']); // no-op in Maildir++
  assert.deepEqual(await names(store), ['INBOX', 'A (noselect)', 'A/B']);
  // Re-creating a deleted mailbox works and gets the new GUID.
  await store.createMailbox(['A'], { guid: G3, uidValidity: 9 });
  assert.equal((await store.listMailboxes()).find((m) => m.name.join('/') === 'A')!.guid, G3);
});

test('LAYOUT=fs: nested dirs, "/" separator, dots allowed, delete keeps children, directories', async (t) => {
  const root = tempDir(t);
  const store = await openMaildir(`maildir:${root}:LAYOUT=fs`);
  assert.equal(store.separator, '/');
  await store.createMailbox(['Über', 'Sub'], { guid: G1, uidValidity: 1 });
  await store.createMailbox(['x.y'], { guid: G2, uidValidity: 2 });
  await store.createMailbox(['Über'], { guid: G3, uidValidity: 3 });
  assert.ok(fs.existsSync(path.join(root, '&ANw-ber', 'Sub', 'cur')));
  assert.ok(!fs.existsSync(path.join(root, 'x.y', 'maildirfolder')), 'no maildirfolder in the fs layout');
  assert.deepEqual(await names(store), ['INBOX', 'x.y', 'Über', 'Über/Sub']);
  assert.match(store.invalidNameReason(['cur'])!, /reserved/);
  assert.match(store.invalidNameReason(['a', 'tmp'])!, /reserved/);
  assert.match(store.invalidNameReason(['.hidden'])!, /hidden/);
  assert.match(store.invalidNameReason(['..'])!, /not a valid/);
  assert.match(store.invalidNameReason(['a/b'])!, /'\/'/);
  assert.equal(store.invalidNameReason(['a.b']), null);
  await store.deleteMailbox(['Über']);
  assert.deepEqual(await names(store), ['INBOX', 'x.y', 'Über (noselect)', 'Über/Sub']);
  assert.deepEqual(fs.readdirSync(path.join(root, '&ANw-ber')), ['Sub']);
  await assert.rejects(store.deleteDirectory(['Über']), isCode('EXISTS'));
  await store.renameMailbox(['Über'], ['Neu', 'Ober']);
  assert.deepEqual(await names(store), ['INBOX', 'Neu (noselect)', 'Neu/Ober (noselect)', 'Neu/Ober/Sub', 'x.y']);
  await store.deleteMailbox(['Neu', 'Ober', 'Sub']);
  await store.deleteDirectory(['Neu', 'Ober']);
  await store.deleteDirectory(['Neu']);
  await store.createDirectory(['D', 'E']);
  assert.deepEqual(await names(store), ['INBOX', 'D (noselect)', 'D/E (noselect)', 'x.y']);
  await assert.rejects(store.deleteDirectory(['x.y']), isCode('EXISTS'));
  await assert.rejects(store.deleteDirectory(['nope']), isCode('NOTFOUND'));
  await assert.rejects(store.renameMailbox(['nope'], ['x']), isCode('NOTFOUND'));
  await assert.rejects(store.renameMailbox(['D'], ['x.y']), isCode('EXISTS'));
});

test('UTF-8 location: names stored raw; subscriptions written in the same encoding', async (t) => {
  const root = tempDir(t);
  const store = await openMaildir(`maildir:${root}:UTF-8`);
  await store.createMailbox(['Entwürfe'], { guid: G1, uidValidity: 1 });
  assert.ok(fs.existsSync(path.join(root, '.Entwürfe', 'cur')));
  assert.deepEqual(await names(store), ['INBOX', 'Entwürfe']);
  await store.writeSubscriptions([['Entwürfe'], ['a&b', 'c']]);
  assert.equal(fs.readFileSync(path.join(root, 'subscriptions'), 'utf8'), 'V\t2\n\nEntwürfe\na&b\tc\n');
});

test('subscriptions via the store: v2 written atomically, v1 and v2 read', async (t) => {
  const root = tempDir(t);
  const store = await openMaildir(`maildir:${root}`);
  assert.deepEqual(await store.readSubscriptions(), []);
  await store.writeSubscriptions([['INBOX'], ['Archive'], ['Entwürfe'], ['Old', 'Archive']]);
  assert.equal(fs.readFileSync(path.join(root, 'subscriptions'), 'utf8'), 'V\t2\n\nINBOX\nArchive\nEntw&APw-rfe\nOld\tArchive\n');
  assert.deepEqual(await store.readSubscriptions(), [['INBOX'], ['Archive'], ['Entwürfe'], ['Old', 'Archive']]);
  assert.deepEqual(fs.readdirSync(root).filter((n) => n.includes('subscriptions')), ['subscriptions'], 'no temp/lock left');
  fs.writeFileSync(path.join(root, 'subscriptions'), 'INBOX\nOld.Archive\n');
  assert.deepEqual(await store.readSubscriptions(), [['INBOX'], ['Old', 'Archive']]);
  fs.writeFileSync(path.join(root, 'subscriptions'), 'V\t9\n\nx\n');
  await assert.rejects(store.readSubscriptions(), isCode('CORRUPT'));
});

test('INBOX= and CONTROL=: mail and control files in their places', async (t) => {
  const dir = tempDir(t);
  const store = await openMaildir(`maildir:${dir}/mail:INBOX=${dir}/inbox:CONTROL=${dir}/ctl`);
  assert.equal(store.controlDir, `${dir}/ctl`);
  await store.createMailbox(['Box'], { guid: G1, uidValidity: 7 });
  const inbox = await store.openMailbox(['INBOX']);
  await inbox.save([{ uid: 1, guid: 'i1', flags: 0, keywords: ['k'], internalDate: 5, body: Buffer.from('x') }]);
  await store.writeSubscriptions([['Box']]);
  const uv = await store.newUidValidity();
  assert.ok(uv > 0);
  assert.deepEqual(listTree(dir).filter((p) => !p.includes('dovecot-uidvalidity')), [
    'ctl',
    'ctl/.Box',
    'ctl/.Box/dovecot-uidlist',
    'ctl/dovecot-keywords',
    'ctl/dovecot-uidlist',
    'ctl/subscriptions',
    'inbox',
    'inbox/cur',
    'inbox/cur/i1:2,a',
    'inbox/new',
    'inbox/tmp',
    'mail',
    'mail/.Box',
    'mail/.Box/cur',
    'mail/.Box/maildirfolder',
    'mail/.Box/new',
    'mail/.Box/tmp',
  ]);
  assert.deepEqual(await names(store), ['INBOX', 'Box']);
  await store.renameMailbox(['Box'], ['Box2']);
  assert.ok(fs.existsSync(`${dir}/ctl/.Box2/dovecot-uidlist`));
  await store.deleteMailbox(['Box2']);
  assert.ok(!fs.existsSync(`${dir}/ctl/.Box2`));
  assert.ok(!fs.existsSync(`${dir}/mail/.Box2`));
});

test('newUidValidity: time-based start, increments, companion file renamed', async (t) => {
  const root = tempDir(t);
  const store = await openMaildir(`maildir:${root}`);
  const a = await store.newUidValidity();
  const now = Math.floor(Date.now() / 1000);
  assert.ok(Math.abs(a - now) < 5);
  const b = await store.newUidValidity();
  const c = await store.newUidValidity();
  assert.deepEqual([b, c], [a + 1, a + 2]);
  const files = fs.readdirSync(root).filter((n) => n.startsWith('dovecot-uidvalidity')).sort();
  const hex = c.toString(16).padStart(8, '0');
  assert.deepEqual(files, ['dovecot-uidvalidity', `dovecot-uidvalidity.${hex}`]);
  assert.equal(fs.readFileSync(path.join(root, 'dovecot-uidvalidity'), 'utf8'), hex);
  // Dovecot-made state is continued; concurrent allocations never collide.
  fs.unlinkSync(path.join(root, `dovecot-uidvalidity.${hex}`));
  fs.writeFileSync(path.join(root, 'dovecot-uidvalidity.6b07f44e'), '');
  fs.writeFileSync(path.join(root, 'dovecot-uidvalidity'), '6b07f44e');
  const many = await Promise.all(Array.from({ length: 20 }, () => store.newUidValidity()));
  assert.deepEqual([...many].sort((x, y) => x - y), Array.from({ length: 20 }, (_, i) => 0x6b07f44e + 1 + i));
});

test('reserveUidValidity: later UIDVALIDITYs are above one a mailbox got from elsewhere; a lower one changes nothing', async (t) => {
  const root = tempDir(t);
  const store = await openMaildir(`maildir:${root}`);
  const a = await store.newUidValidity();
  await store.reserveUidValidity!(a + 100);
  assert.equal(await store.newUidValidity(), a + 101);
  await store.reserveUidValidity!(a + 50);
  assert.equal(await store.newUidValidity(), a + 102);
  // In a directory without a counter yet, the reserved value is where it starts.
  const fresh = await openMaildir(`maildir:${tempDir(t)}`);
  await fresh.reserveUidValidity!(0xfffffff0);
  assert.equal(await fresh.newUidValidity(), 0xfffffff1);
});

test('owner: as root, created files are chowned to the given owner or the root dir owner', async (t) => {
  if (process.getuid?.() !== 0) {
    t.skip('needs root');
    return;
  }
  const dir = tempDir(t);
  const root = path.join(dir, 'M');
  const loc = parseMailLocation(`maildir:${root}`, {});
  const store = await openStore(loc, { owner: { uid: 65534, gid: 65534 }, warn: () => undefined });
  await store.createMailbox(['Box'], { guid: G1, uidValidity: 1 });
  const box = await store.openMailbox(['Box']);
  await box.save([{ uid: 1, guid: 'g', flags: 0, keywords: ['kw'], internalDate: 1, body: Buffer.from('x') }]);
  await store.writeSubscriptions([['Box']]);
  await (await store.openMailbox(['INBOX'])).scan();
  for (const p of listTree(root)) {
    const st = fs.lstatSync(path.join(root, p));
    assert.deepEqual([p, st.uid, st.gid], [p, 65534, 65534]);
  }
  // No owner given: the existing root's owner is used.
  const root2 = path.join(dir, 'M2');
  fs.mkdirSync(root2);
  fs.chownSync(root2, 65534, 65534);
  const s2 = await openStore(parseMailLocation(`maildir:${root2}`, {}), { warn: () => undefined });
  await s2.createMailbox(['X'], { guid: G2, uidValidity: 1 });
  for (const p of listTree(root2)) assert.equal(fs.lstatSync(path.join(root2, p)).uid, 65534, p);
});

test('errors: permission problems become StorageError PERM naming the path', async (t) => {
  const root = tempDir(t);
  const store = await openMaildir(`maildir:${root}`);
  await store.createMailbox(['Box'], { guid: G1, uidValidity: 1 });
  fs.chmodSync(path.join(root, '.Box', 'cur'), 0o500);
  t.after(() => fs.existsSync(path.join(root, '.Box', 'cur')) && fs.chmodSync(path.join(root, '.Box', 'cur'), 0o700));
  if (process.getuid?.() !== 0) {
    const box = await store.openMailbox(['Box']);
    await assert.rejects(
      box.save([{ uid: 1, guid: 'g', flags: 0, keywords: [], internalDate: 1, body: Buffer.from('x') }]),
      (e: unknown) => e instanceof StorageError && e.code === 'PERM' && e.message.includes('.Box'),
    );
    return;
  }
  // Root ignores permissions: run the same save in a child process as nobody.
  fs.chmodSync(root, 0o755);
  spawnSync('chown', ['-R', '65534:65534', root]);
  const script = `
    import { parseMailLocation } from ${JSON.stringify(new URL('../../src/storage/location.js', import.meta.url).href)};
    import { openStore } from ${JSON.stringify(new URL('../../src/storage/open.js', import.meta.url).href)};
    const store = await openStore(parseMailLocation(${JSON.stringify(`maildir:${root}`)}, {}), { warn: () => {} });
    const box = await store.openMailbox(['Box']);
    try {
      await box.save([{ uid: 1, guid: 'g', flags: 0, keywords: [], internalDate: 1, body: Buffer.from('x') }]);
      console.log('saved');
    } catch (e) { console.log(JSON.stringify({ name: e.name, code: e.code, message: e.message })); }
  `;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { uid: 65534, gid: 65534, encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  const err = JSON.parse(r.stdout.trim()) as { name: string; code: string; message: string };
  assert.equal(err.name, 'StorageError');
  assert.equal(err.code, 'PERM');
  assert.ok(err.message.includes(path.join(root, '.Box', 'cur')), err.message);
  assert.deepEqual(fs.readdirSync(path.join(root, '.Box', 'tmp')), [], 'the tmp file was cleaned up');
});

test('errors: OS error codes map to StorageError codes', async () => {
  const { toStorageError } = await import('../../src/storage/maildir/io.js');
  const mk = (code: string) => Object.assign(new Error(`${code}: boom`), { code });
  assert.deepEqual(
    ['EACCES', 'EPERM', 'ENOSPC', 'EDQUOT', 'ENOENT', 'EIO', 'EMFILE'].map((c) => toStorageError(mk(c), 'write', '/x/y').code),
    ['PERM', 'PERM', 'NOSPACE', 'NOSPACE', 'NOTFOUND', 'IO', 'IO'],
  );
  assert.match(toStorageError(mk('EIO'), 'write', '/x/y').message, /^write \/x\/y: EIO: boom$/);
  const se = new StorageError('x', 'LOCKED');
  assert.equal(toStorageError(se, 'a', 'b'), se);
});

test('errors: a mailbox whose tmp/ is a file fails the save cleanly', async (t) => {
  const root = tempDir(t);
  const store = await openMaildir(`maildir:${root}`);
  await store.createMailbox(['Box'], { guid: G1, uidValidity: 1 });
  fs.rmSync(path.join(root, '.Box', 'tmp'), { recursive: true });
  fs.writeFileSync(path.join(root, '.Box', 'tmp'), '');
  const box = await store.openMailbox(['Box']);
  await assert.rejects(
    box.save([{ uid: 1, guid: 'g', flags: 0, keywords: [], internalDate: 1, body: Buffer.from('x') }]),
    (e: unknown) => e instanceof StorageError && e.message.includes(path.join(root, '.Box', 'tmp')),
  );
  assert.deepEqual(fs.readdirSync(path.join(root, '.Box', 'cur')), []);
});

test('listing: Maildir++ .INBOX.x children and a mailbox dir without cur', async (t) => {
  const root = tempDir(t);
  makeMaildir(root);
  makeMaildir(path.join(root, '.INBOX.Drafts'));
  fs.mkdirSync(path.join(root, '.NoCur'));
  const store = await openMaildir(`maildir:${root}`);
  assert.deepEqual(await names(store), ['INBOX', 'INBOX/Drafts', 'NoCur (noselect)']);
  await assert.rejects(store.openMailbox(['NoCur']), isCode('NOTFOUND'));
  await store.createMailbox(['NoCur'], { guid: G1, uidValidity: 1 });
  assert.deepEqual(await names(store), ['INBOX', 'INBOX/Drafts', 'NoCur']);
});
