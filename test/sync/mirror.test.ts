// End-to-end mirror between two real Maildirs on disk, in one process.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { makeMessage } from '../helpers/corpus.js';
import { snapshot } from '../helpers/snapshot.js';
import { mirror } from '../helpers/mirror.js';
import { scratchDir } from '../helpers/tmp.js';
import { parseMailLocation } from '../../src/storage/location.js';
import { openStore } from '../../src/storage/open.js';
import type { MailStore } from '../../src/storage/types.js';
import { Flag } from '../../src/model/flags.js';
import { ChangeIndex } from '../../src/index/change-index.js';
import { INDEX_FILE } from '../../src/sync/run.js';

const tmp = () => scratchDir('dsync-mirror-');

/** Drops a mail into new/ the way a delivery agent does. */
function deliver(mailboxDir: string, body: Buffer, mtime = 1_700_000_000, name?: string): string {
  for (const d of ['cur', 'new', 'tmp']) fs.mkdirSync(path.join(mailboxDir, d), { recursive: true });
  const base = name ?? `${mtime}.M${Math.floor(Math.random() * 1e6)}P${process.pid}.test,S=${body.length}`;
  const p = path.join(mailboxDir, 'new', base);
  fs.writeFileSync(p, body);
  fs.utimesSync(p, mtime, mtime);
  return base;
}

async function withStore<T>(dir: string, fn: (s: MailStore) => Promise<T>): Promise<T> {
  const s = await openStore(parseMailLocation(`maildir:${dir}`, {}), { warn: () => {} });
  try {
    return await fn(s);
  } finally {
    await s.close();
  }
}

async function setFlags(dir: string, name: string[], uid: number, flags: number, keywords: string[] = []): Promise<void> {
  await withStore(dir, async (s) => {
    const mb = await s.openMailbox(name);
    await mb.scan();
    await mb.updateFlags([{ uid, flags, keywords }]);
    await mb.close();
  });
}

async function expunge(dir: string, name: string[], uid: number): Promise<void> {
  await withStore(dir, async (s) => {
    const mb = await s.openMailbox(name);
    await mb.scan();
    await mb.expunge([uid]);
    await mb.close();
  });
}

async function assertSynced(a: string, b: string): Promise<void> {
  assert.deepEqual(await snapshot(`maildir:${b}`), await snapshot(`maildir:${a}`));
}

async function assertNoop(a: string, b: string): Promise<void> {
  const before = await snapshot(`maildir:${a}`);
  const r = await mirror(`maildir:${a}`, `maildir:${b}`);
  assert.equal(r.exitCode, 0, r.log.join('\n'));
  assert.deepEqual(r.summary, [], 'a second mirror must change nothing');
  assert.deepEqual(await snapshot(`maildir:${a}`), before);
}

test('first mirror copies folders, mails, flags, dates and bytes into an empty Maildir', async () => {
  const a = tmp();
  const b = path.join(tmp(), 'Maildir');
  deliver(a, makeMessage(1), 1_600_000_000);
  deliver(a, makeMessage(2, { crlf: true }), 1_600_000_100);
  deliver(path.join(a, '.Archive'), makeMessage(3));
  fs.writeFileSync(path.join(a, '.Archive', 'maildirfolder'), '');
  deliver(path.join(a, '.Entw&APw-rfe'), makeMessage(4));
  const r = await mirror(`maildir:${a}`, `maildir:${b}`);
  assert.equal(r.exitCode, 0, r.log.join('\n'));
  await assertSynced(a, b);
  const snap = await snapshot(`maildir:${b}`);
  assert.deepEqual(snap.mailboxes.map((m) => m.name), ['Archive', 'Entwürfe', 'INBOX']);
  assert.deepEqual(snap.mailboxes[2].messages.map((m) => m.internalDate), [1_600_000_000, 1_600_000_100]);
  await assertNoop(a, b);
});

test('changes on both sides merge: new mail, flags, keywords, expunges', async () => {
  const a = tmp();
  const b = tmp();
  for (let i = 0; i < 5; i++) deliver(a, makeMessage(10 + i));
  assert.equal((await mirror(`maildir:${a}`, `maildir:${b}`)).exitCode, 0);
  await setFlags(a, ['INBOX'], 1, Flag.Seen);
  await setFlags(b, ['INBOX'], 1, Flag.Flagged, ['work']);
  await setFlags(b, ['INBOX'], 2, Flag.Answered);
  await expunge(a, ['INBOX'], 3);
  await expunge(b, ['INBOX'], 4);
  deliver(a, makeMessage(20));
  const r = await mirror(`maildir:${a}`, `maildir:${b}`);
  assert.equal(r.exitCode, 0, r.log.join('\n'));
  await assertSynced(a, b);
  const msgs = (await snapshot(`maildir:${a}`)).mailboxes[0].messages;
  assert.deepEqual(msgs.map((m) => m.uid), [1, 2, 5, 6]);
  assert.deepEqual(msgs[0].flags, ['\\Flagged', '\\Seen']);
  assert.deepEqual(msgs[0].keywords, ['work']);
  assert.deepEqual(msgs[1].flags, ['\\Answered']);
  await assertNoop(a, b);
});

test('both sides gave the same UID to different mails: both mails get new UIDs on both sides', async () => {
  const a = tmp();
  const b = tmp();
  for (let i = 0; i < 5; i++) deliver(a, makeMessage(30 + i));
  await mirror(`maildir:${a}`, `maildir:${b}`);
  deliver(a, makeMessage(100));
  deliver(b, makeMessage(200));
  const r = await mirror(`maildir:${a}`, `maildir:${b}`);
  assert.equal(r.exitCode, 0, r.log.join('\n'));
  await assertSynced(a, b);
  const msgs = (await snapshot(`maildir:${a}`)).mailboxes[0].messages;
  assert.deepEqual(msgs.map((m) => m.uid), [1, 2, 3, 4, 5, 7, 8]);
  await assertNoop(a, b);
});

test('folder create, rename and delete on either side, and subscriptions', async () => {
  const a = tmp();
  const b = tmp();
  deliver(path.join(a, '.Projects'), makeMessage(40));
  deliver(path.join(a, '.Old'), makeMessage(41));
  await mirror(`maildir:${a}`, `maildir:${b}`);
  await withStore(a, (s) => s.renameMailbox(['Projects'], ['Work']));
  await withStore(b, (s) => s.deleteMailbox(['Old']));
  await withStore(b, (s) => s.writeSubscriptions([['INBOX'], ['Projects']]));
  const r = await mirror(`maildir:${a}`, `maildir:${b}`);
  assert.equal(r.exitCode, 0, r.log.join('\n'));
  await assertSynced(a, b);
  const snap = await snapshot(`maildir:${a}`);
  assert.deepEqual(snap.mailboxes.map((m) => m.name), ['INBOX', 'Work']);
  await assertNoop(a, b);
});

test('a folder deleted on one side survives when the other side changed it since the last sync', async () => {
  const a = tmp();
  const b = tmp();
  deliver(path.join(a, '.NewMail'), makeMessage(60));
  deliver(path.join(a, '.Flagged'), makeMessage(61));
  deliver(path.join(a, '.Gone'), makeMessage(62));
  await mirror(`maildir:${a}`, `maildir:${b}`);
  // A second run once the changes are old enough records every mailbox's change token, so the
  // deleting run could skip scanning them: it must still scan what the other side deleted.
  await new Promise((r) => setTimeout(r, 100));
  await mirror(`maildir:${a}`, `maildir:${b}`);
  await new Promise((r) => setTimeout(r, 100));
  for (const n of ['NewMail', 'Flagged', 'Gone']) await withStore(a, (s) => s.deleteMailbox([n]));
  deliver(path.join(b, '.NewMail'), makeMessage(63));
  await setFlags(b, ['Flagged'], 1, Flag.Flagged);
  const r = await mirror(`maildir:${a}`, `maildir:${b}`);
  assert.equal(r.exitCode, 0, r.log.join('\n'));
  await assertSynced(a, b);
  const snap = await snapshot(`maildir:${a}`);
  assert.deepEqual(snap.mailboxes.map((m) => m.name), ['Flagged', 'INBOX', 'NewMail']);
  assert.equal(snap.mailboxes.find((m) => m.name === 'NewMail')!.messages.length, 2);
  await assertNoop(a, b);
});

test('-m syncs only the named mailbox; -f finds differences the fast path cannot see', async () => {
  const a = tmp();
  const b = tmp();
  deliver(path.join(a, '.One'), makeMessage(50));
  deliver(path.join(a, '.Two'), makeMessage(51));
  const r = await mirror(`maildir:${a}`, `maildir:${b}`, { mailbox: 'One' });
  assert.equal(r.exitCode, 0, r.log.join('\n'));
  assert.deepEqual((await snapshot(`maildir:${b}`)).mailboxes.map((m) => m.name), ['INBOX', 'One']);
  await mirror(`maildir:${a}`, `maildir:${b}`);
  await assertSynced(a, b);
  const f = await mirror(`maildir:${a}`, `maildir:${b}`, { full: true });
  assert.equal(f.exitCode, 0);
  assert.deepEqual(f.summary, []);
});

test('a deleted change index is rebuilt with a warning and nothing is lost or duplicated', async () => {
  const a = tmp();
  const b = tmp();
  for (let i = 0; i < 3; i++) deliver(a, makeMessage(60 + i));
  await mirror(`maildir:${a}`, `maildir:${b}`);
  fs.writeFileSync(path.join(a, 'dsync-index.sqlite'), 'this is not a database');
  fs.rmSync(path.join(a, 'dsync-index.sqlite-wal'), { force: true });
  deliver(b, makeMessage(70));
  const r = await mirror(`maildir:${a}`, `maildir:${b}`);
  assert.ok(r.log.some((l) => /change index/.test(l)), r.log.join('\n'));
  await assertSynced(a, b);
  assert.equal((await snapshot(`maildir:${a}`)).mailboxes[0].messages.length, 4);
  await assertNoop(a, b);
});

test('UIDVALIDITY conflict: the mailbox with more mails keeps its UIDVALIDITY, nothing is lost or doubled', async () => {
  const a = tmp();
  const b = tmp();
  for (let i = 0; i < 3; i++) deliver(a, makeMessage(80 + i));
  await mirror(`maildir:${a}`, `maildir:${b}`);
  // B's INBOX is recreated outside dsync with the same GUID but a new UIDVALIDITY, and one mail more.
  await withStore(b, async (s) => {
    const mb = await s.openMailbox(['INBOX']);
    await mb.scan();
    await mb.setUidValidity(12345);
    await mb.close();
  });
  deliver(b, makeMessage(90));
  const r = await mirror(`maildir:${a}`, `maildir:${b}`);
  assert.equal(r.exitCode, 0, r.log.join('\n'));
  await assertSynced(a, b);
  const inbox = (await snapshot(`maildir:${a}`)).mailboxes[0];
  assert.equal(inbox.uidValidity, 12345);
  assert.equal(inbox.messages.length, 4);
  assert.equal(new Set(inbox.messages.map((m) => m.sha)).size, 4);
  await assertNoop(a, b);
});

test('a second copy of a mail (same GUID, left by an interrupted run) is removed, never copied', async () => {
  const a = tmp();
  const b = tmp();
  deliver(a, makeMessage('dup-1'));
  await mirror(`maildir:${a}`, `maildir:${b}`);
  // As if a run died after linking a copy into cur/ but before writing its uidlist entry with G.
  await withStore(b, async (s) => {
    const mb = await s.openMailbox(['INBOX']);
    const [m] = await mb.scan();
    const body = fs.readFileSync(fs.readdirSync(path.join(b, 'cur')).map((f) => path.join(b, 'cur', f))[0]);
    await mb.save([{ uid: (await mb.status()).uidNext, guid: m.guid, flags: 0, keywords: [], internalDate: m.internalDate, body }]);
    await mb.close();
  });
  const r = await mirror(`maildir:${a}`, `maildir:${b}`);
  assert.equal(r.exitCode, 0, r.log.join('\n'));
  await assertSynced(a, b);
  assert.equal((await snapshot(`maildir:${a}`)).mailboxes[0].messages.length, 1);
  await assertNoop(a, b);
});

// Found with a live Dovecot (test/oracle/busy.test.ts): the side that applied the peer's rename
// dated it "now", later than the rename itself. A second rename on the peer made in between (by
// an IMAP user, while the run went on) then looked older than the copy of the first, lost, and
// was undone. A rename copied from the peer keeps the peer's time.
test("a rename copied from the other side keeps that side's time for it", async () => {
  const root = tmp();
  const a = path.join(root, 'a');
  const b = path.join(root, 'b');
  deliver(path.join(a, '.Old'), makeMessage('in-old'));
  assert.equal((await mirror(`maildir:${a}`, `maildir:${b}`)).exitCode, 0);
  fs.renameSync(path.join(a, '.Old'), path.join(a, '.New'));
  await new Promise((r) => setTimeout(r, 50));
  assert.equal((await mirror(`maildir:${a}`, `maildir:${b}`)).exitCode, 0);
  const stampOf = (dir: string): number => {
    const { index } = ChangeIndex.open(path.join(dir, INDEX_FILE));
    try {
      return index.mailboxes().find((m) => m.name.join('/') === 'New')!.lastRenamedOrCreated;
    } finally {
      void index.close();
    }
  };
  assert.equal(stampOf(b), stampOf(a));
});

test('-D shows what each side planned (expunges and saves with the mail\'s identity) and what a scan found gone', async () => {
  const a = tmp();
  const b = tmp();
  deliver(a, makeMessage('debug-1'));
  deliver(a, makeMessage('debug-2'));
  const first = await mirror(`maildir:${a}`, `maildir:${b}`, { debug: true });
  assert.equal(first.exitCode, 0, first.log.join('\n'));
  const guid = (dir: string, uid: number) => withStore(dir, async (s) => (await (await s.openMailbox(['INBOX'])).scan()).find((m) => m.uid === uid)!.guid);
  const g1 = (await guid(a, 1)).slice(0, 12);
  const g2 = (await guid(a, 2)).slice(0, 12);
  assert.ok(first.log.some((l) => l === `dsync: debug: mailbox INBOX: slave's plan (from common UID 0, all mails compared): 0 flag updates; save 1<-peer:1=${g1} 2<-peer:2=${g2}`), first.log.join('\n'));
  await expunge(a, ['INBOX'], 2); // by the store alone: for the change index, outside dsync
  const second = await mirror(`maildir:${a}`, `maildir:${b}`, { debug: true });
  assert.equal(second.exitCode, 0, second.log.join('\n'));
  assert.ok(second.log.includes(`dsync: debug: mailbox INBOX: gone outside dsync: 2=${g2}`), second.log.join('\n'));
  assert.ok(second.log.includes(`dsync: debug: mailbox INBOX: slave's plan (from common UID 2): 0 flag updates; expunge 2=${g2}`), second.log.join('\n'));
  const quiet = await mirror(`maildir:${a}`, `maildir:${b}`);
  assert.ok(!quiet.log.some((l) => l.includes('debug:')), 'without -D no plan is shown');
});
