// How a Maildir mailbox tells that nothing changed without a full scan: the change token (dir
// and file mtimes) and unchangedSinceScan (this handle's own changes are all there is). A miss
// here means a change made by a mail client is never synced, so every way in is tried.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Flag } from '../../src/model/flags.js';
import type { StoreMailbox } from '../../src/storage/types.js';
import { mirror } from '../helpers/mirror.js';
import { Location } from '../../src/location/location.js';
import { Logger } from '../../src/util/log.js';
import { makeMaildir, msg, openMaildir, tempDir, writeMail } from './helpers.js';
import { probeDistinctMtimes, type FsContext } from '../../src/storage/maildir/io.js';

const probeCtx = (readOnly = false): FsContext => ({ readOnly, warn: () => undefined, dirMode: 0o700, fileMode: 0o600 });

/** Sets the mtime of a mailbox's directories and files to `secs` (seconds since the epoch, may have a fraction). */
function ageMailbox(root: string, secs: number): void {
  for (const p of ['cur', 'new', 'dovecot-uidlist', 'dovecot-keywords']) {
    const full = path.join(root, p);
    if (fs.existsSync(full)) fs.utimesSync(full, secs, secs);
  }
}

// Most tests here are about the margin a change token needs where a change within a clock tick
// may leave an mtime as it was: they open the store without the probe that can lift it.
async function inboxOf(root: string, distinctMtimes: 'probe' | 'never' = 'never'): Promise<{ box: StoreMailbox; close: () => Promise<void> }> {
  const store = await openMaildir(`maildir:${root}`, { distinctMtimes });
  const box = await store.openMailbox(['INBOX']);
  return { box, close: () => store.close() };
}

/** Counts the store's scans from now on. */
function countScans(store: StoreMailbox): { n: number } {
  const count = { n: 0 };
  const scan = store.scan.bind(store);
  store.scan = (o) => {
    count.n++;
    return scan(o);
  };
  return count;
}

/** A seeded Maildir opened as a location with its index, and the index row of its INBOX. */
async function seededLocation(t: Parameters<typeof tempDir>[0], distinctMtimes: 'probe' | 'never' = 'never') {
  const root = seed(t);
  const store = await openMaildir(`maildir:${root}`, { distinctMtimes });
  const loc = Location.open(store, { indexPath: path.join(root, 'dsync-index.sqlite'), log: new Logger({ sink: { write: () => undefined } }) });
  t.after(() => loc.close());
  await loc.refreshTree();
  const row = loc.mailboxes().find((r) => r.name.join('/') === 'INBOX')!;
  return { root, loc, row };
}

function seed(t: Parameters<typeof tempDir>[0]): string {
  const root = path.join(tempDir(t), 'Maildir');
  makeMaildir(root);
  for (let i = 1; i <= 3; i++) writeMail(path.join(root, 'cur', `1000.M${i}P1.h:2,`), msg(i), 1000 + i);
  return root;
}

test('change token: stable while nothing changes, different after any change, never trusted within a tick of a change', async (t) => {
  const root = seed(t);
  const { box, close } = await inboxOf(root);
  t.after(close);
  await box.scan();
  const old = Date.now() / 1000 - 3600 + 0.25; // an hour ago, with a sub-second part
  ageMailbox(root, old);
  const t1 = await box.changeToken!();
  assert.equal(await box.changeToken!(), t1, 'nothing changed: same token');

  const changes: [string, () => void][] = [
    ['a delivery to new/', () => writeMail(path.join(root, 'new', '2000.M9P1.h'), msg(9))],
    ['a flag change (rename in cur/)', () => fs.renameSync(path.join(root, 'cur', '1000.M1P1.h:2,'), path.join(root, 'cur', '1000.M1P1.h:2,S'))],
    ['an expunge (unlink in cur/)', () => fs.unlinkSync(path.join(root, 'cur', '1000.M2P1.h:2,'))],
    ['a uidlist append', () => fs.appendFileSync(path.join(root, 'dovecot-uidlist'), '99 :1000.M99P1.h\n')],
    ['a keywords file', () => fs.writeFileSync(path.join(root, 'dovecot-keywords'), '0 $Label1\n')],
  ];
  for (const [what, change] of changes) {
    ageMailbox(root, old);
    const before = await box.changeToken!();
    change();
    const after = await box.changeToken!();
    assert.notEqual(before, null);
    assert.notEqual(after, before, what);
    // Once the change is older than a tick, its token differs from the one before it.
    ageMailbox(root, old + 1);
    assert.notEqual(await box.changeToken!(), before, `${what}, later`);
  }

  // Within a tick of the last change there is no token (a scan is needed every time).
  const now = Date.now() / 1000;
  ageMailbox(root, now - 0.01);
  assert.equal(await box.changeToken!(), null, 'mtime 10 ms ago');
  ageMailbox(root, now - 0.5);
  const settled = await box.changeToken!();
  assert.equal(await box.changeToken!(), settled, 'mtime 0.5 s ago (sub-second timestamps): trusted');
  // Whole-second timestamps (ext3, FAT) are trusted only after 2 s.
  ageMailbox(root, Math.floor(now) - 1);
  assert.equal(await box.changeToken!(), null, 'whole-second mtime 1 s ago');
  ageMailbox(root, Math.floor(now) - 3);
  const coarse = await box.changeToken!();
  assert.equal(await box.changeToken!(), coarse, 'whole-second mtime 3 s ago');
});

test('unchangedSinceScan: true after the handle\'s own saves, flag changes and expunges; false after any change from outside', async (t) => {
  const root = seed(t);
  const { box, close } = await inboxOf(root);
  t.after(close);
  assert.equal(await box.unchangedSinceScan!(), false, 'never scanned');
  await box.scan();
  assert.equal(await box.unchangedSinceScan!(), true, 'just scanned');

  const st = await box.status();
  await box.save([{ uid: st.uidNext, guid: 'saved-guid-1', flags: Flag.Seen, keywords: [], internalDate: 1700000000, body: Buffer.from(msg('s')) }]);
  assert.equal(await box.unchangedSinceScan!(), true, 'after our save');
  await box.updateFlags([{ uid: 1, flags: Flag.Flagged, keywords: [] }]);
  assert.equal(await box.unchangedSinceScan!(), true, 'after our flag change');
  await box.expunge([2]);
  assert.equal(await box.unchangedSinceScan!(), true, 'after our expunge');
  await box.updateFlags([{ uid: 3, flags: 0, keywords: ['$Label1'] }]);
  assert.equal(await box.unchangedSinceScan!(), false, 'a new keyword rewrote dovecot-keywords: not trusted');
  await box.scan();
  assert.equal(await box.unchangedSinceScan!(), true);

  for (const [what, change] of outsideChanges(root)) {
    await box.scan();
    assert.equal(await box.unchangedSinceScan!(), true, `before ${what}`);
    await change();
    assert.equal(await box.unchangedSinceScan!(), false, what);
  }
});

test('unchangedSinceScan after dropFileMap: the compact form tells the same as the file map', async (t) => {
  const root = seed(t);
  const { box, close } = await inboxOf(root);
  t.after(close);
  await box.scan();
  const st = await box.status();
  await box.save([{ uid: st.uidNext, guid: 'saved-guid-2', flags: 0, keywords: [], internalDate: 1700000000, body: Buffer.from(msg('d')) }]);
  await box.updateFlags([{ uid: 1, flags: Flag.Seen, keywords: [] }]);
  await box.expunge([2]);
  box.dropFileMap!();
  assert.equal(await box.unchangedSinceScan!(), true, 'own save, flag change and expunge, then dropped');
  assert.equal(await box.unchangedSinceScan!(), true, 'asked twice');
  for (const [what, change] of outsideChanges(root)) {
    await box.scan();
    box.dropFileMap!();
    assert.equal(await box.unchangedSinceScan!(), true, `before ${what}`);
    await change();
    assert.equal(await box.unchangedSinceScan!(), false, what);
  }
  // A dropped map is rebuilt by whatever needs it.
  await box.scan();
  box.dropFileMap!();
  await box.updateFlags([{ uid: 1, flags: Flag.Flagged, keywords: [] }]);
  assert.equal(await box.unchangedSinceScan!(), true, 'flag change after the map was dropped (rescanned first)');
});

/** Every way a mailbox can change from outside, as [description, change] pairs, for root's INBOX. */
function outsideChanges(root: string): [string, () => Promise<void> | void][] {
  const cur = path.join(root, 'cur');
  return [
    ['a delivery to new/', () => writeMail(path.join(root, 'new', '2000.M9P1.h'), msg(9))],
    ['a file added to cur/', () => writeMail(path.join(cur, '2000.M8P1.h:2,S'), msg(8))],
    ['a flag change by a client', () => {
      const name = fs.readdirSync(cur).find((n) => n.startsWith('1000.M3P1.h'))!;
      fs.renameSync(path.join(cur, name), path.join(cur, `${name}T`));
    }],
    ['an expunge by a client', () => fs.unlinkSync(path.join(cur, fs.readdirSync(cur).find((n) => n.startsWith('1000.M1P1.h'))!))],
    ['the uidlist rewritten by another writer', () => {
      const p = path.join(root, 'dovecot-uidlist');
      const text = fs.readFileSync(p);
      fs.writeFileSync(`${p}.new`, text);
      fs.renameSync(`${p}.new`, p);
    }],
    ['the keywords file changed by another writer', () => fs.writeFileSync(path.join(root, 'dovecot-keywords'), '0 $Label1\n1 other\n')],
    ['a save through another handle', async () => {
      const other = await inboxOf(root);
      try {
        await other.box.scan();
        const n = (await other.box.status()).uidNext;
        await other.box.save([{ uid: n, guid: 'other-guid', flags: 0, keywords: [], internalDate: 1700000000, body: Buffer.from(msg('o')) }]);
      } finally {
        await other.close();
      }
    }],
  ];
}

test('mirror: changes made from outside after a sync whose mailboxes were all skipped are still found', async (t) => {
  const dir = tempDir(t, 'dsync-change-detect-');
  const a = path.join(dir, 'A');
  const b = path.join(dir, 'B');
  makeMaildir(a);
  for (let i = 1; i <= 5; i++) writeMail(path.join(a, 'cur', `1000.M${i}P1.h:2,`), msg(i), 1000 + i);
  const run = async () => {
    const r = await mirror(`maildir:${a}`, `maildir:${b}`);
    assert.equal(r.exitCode, 0, r.log.join('\n'));
  };
  await run();
  await new Promise((r) => setTimeout(r, 150)); // past a tick: the tokens are trusted from here on
  await run();
  const curB = path.join(b, 'cur');
  const namesB = () => fs.readdirSync(curB).sort();
  assert.equal(namesB().length, 5);

  // A client on A flags a mail and another expunges one, long after the last sync.
  await new Promise((r) => setTimeout(r, 150));
  const curA = path.join(a, 'cur');
  fs.renameSync(path.join(curA, '1000.M1P1.h:2,'), path.join(curA, '1000.M1P1.h:2,F'));
  fs.unlinkSync(path.join(curA, '1000.M2P1.h:2,'));
  await run();
  assert.equal(namesB().length, 4);
  assert.ok(namesB().some((n) => n.startsWith('1000.M1P1.h') && n.endsWith(':2,F')), namesB().join(' '));

  // And on B, right after that sync (tokens of the just-changed mailboxes are recent).
  writeMail(path.join(b, 'new', '3000.M7P1.h'), msg(7));
  await run();
  assert.ok(fs.readdirSync(curA).some((n) => n.startsWith('3000.M7P1.h')));
  await new Promise((r) => setTimeout(r, 150));
  writeMail(path.join(b, 'new', '3000.M8P1.h'), msg(8));
  await run();
  assert.ok(fs.readdirSync(curA).some((n) => n.startsWith('3000.M8P1.h')));
  assert.equal(fs.readdirSync(curA).length, 6);
});

test('a mailbox changed a moment ago gets no token; the same handle records one a tick later without scanning again', async (t) => {
  const { root, loc, row } = await seededLocation(t);
  const box = (await loc.openMailbox(row.guid))!;
  const scans = countScans(box.store);
  await box.refresh();
  assert.equal(scans.n, 1);
  await box.updateFlags([{ uid: 1, flags: Flag.Seen, keywords: [] }], '');
  await box.refresh();
  assert.equal(scans.n, 1, 'our own change needs no scan');
  assert.equal(box.tokenPending, true, 'changed a moment ago: no token yet');
  await new Promise((r) => setTimeout(r, 150));
  await box.refresh();
  assert.equal(scans.n, 1, 'still no scan');
  assert.equal(box.tokenPending, false);
  assert.notEqual(loc.index.mailbox(row.guid)!.scanToken, null);
  // A later handle trusts the token: no scan at all.
  await box.close();
  const again = (await loc.openMailbox(row.guid))!;
  const later = countScans(again.store);
  await again.refresh();
  assert.equal(later.n, 0);
  // Unless a client changed something meanwhile.
  writeMail(path.join(root, 'new', '2000.M9P1.h'), msg(9));
  await again.refresh();
  assert.equal(later.n, 1);
  assert.equal(again.messageCount, 4);
  await again.close();
});

test('a handle that trusted the token and then changed the mailbox records the new token without a rescan, unless a client changed it too', async (t) => {
  const { root, loc, row } = await seededLocation(t);
  // A first scan, and a token recorded once the files are old enough.
  const first = (await loc.openMailbox(row.guid))!;
  await first.refresh();
  await new Promise((r) => setTimeout(r, 150));
  await first.refresh();
  assert.equal(first.tokenPending, false, 'token recorded');
  await first.close();

  /**
   * A handle trusted by the token; `meanwhile` runs, then the sync changes a flag and the handle
   * is settled as at the end of a run. Returns the scans that settling needed.
   */
  const changeAndSettle = async (flags: number, meanwhile: () => void = () => undefined) => {
    const box = (await loc.openMailbox(row.guid))!;
    const scans = countScans(box.store);
    await box.refresh();
    assert.equal(scans.n, 0, 'trusted by its token');
    meanwhile();
    await box.updateFlags([{ uid: 1, flags, keywords: [] }], 'peer');
    await box.markTokenStale();
    box.dropRows();
    const before = scans.n;
    await new Promise((r) => setTimeout(r, 150));
    await box.refresh();
    const result = { settleScans: scans.n - before, tokenPending: box.tokenPending, messages: box.messageCount };
    await box.close();
    return result;
  };
  const own = await changeAndSettle(Flag.Flagged);
  assert.equal(own.settleScans, 0, 'no rescan to record the token');
  assert.equal(own.tokenPending, false);
  // The same, but a client delivered a mail between the token check and the change.
  const client = await changeAndSettle(Flag.Seen, () => writeMail(path.join(root, 'new', '3000.M7P1.h'), msg(7)));
  assert.equal(client.settleScans, 1, 'rescanned at the end: the store saw more than the index knew');
  assert.equal(client.messages, 4, "the client's mail is in the index");
});

test('the mtime probe names the device only where changes after a stat always get a new mtime, and leaves nothing behind', (t) => {
  const dir = tempDir(t);
  assert.equal(probeDistinctMtimes(probeCtx(true), dir), null, 'read-only: no probe');
  assert.equal(probeDistinctMtimes(probeCtx(), path.join(dir, 'missing')), null, 'cannot write there: null');
  const dev = probeDistinctMtimes(probeCtx(), dir);
  assert.deepEqual(fs.readdirSync(dir), [], 'the probe file is gone');
  if (dev === null) {
    t.skip('this file system gives coarse timestamps (no Linux 6.13+ multigrain times): change tokens keep their margin');
    return;
  }
  assert.equal(dev, fs.statSync(dir).dev);
  // What the probe promises, on directories as a mailbox's cur/ is one: each change made right
  // after a stat gets an mtime of its own, however fast they come.
  const sub = path.join(dir, 'cur');
  fs.mkdirSync(sub);
  let last = fs.statSync(sub).mtimeMs;
  for (let i = 0; i < 300; i++) {
    fs.writeFileSync(path.join(sub, `f${i}`), '');
    const now = fs.statSync(sub).mtimeMs;
    assert.ok(now > last, `change ${i}: mtime ${now} after ${last}`);
    last = now;
  }
});

test('where the file system gives distinct mtimes, a mailbox changed a moment ago gets its token at once', async (t) => {
  if (probeDistinctMtimes(probeCtx(), tempDir(t)) === null) {
    t.skip('this file system gives coarse timestamps: covered by the margin tests above');
    return;
  }
  const { root, loc, row } = await seededLocation(t, 'probe');
  const box = (await loc.openMailbox(row.guid))!;
  const scans = countScans(box.store);
  await box.refresh();
  await box.updateFlags([{ uid: 1, flags: Flag.Seen, keywords: [] }], '');
  await box.refresh();
  assert.equal(scans.n, 1, 'our own change needs no scan');
  assert.equal(box.tokenPending, false, 'token recorded without waiting for a tick');
  await box.close();
  // A client's change right after that token is still seen.
  writeMail(path.join(root, 'new', '2000.M9P1.h'), msg(9));
  const again = (await loc.openMailbox(row.guid))!;
  const later = countScans(again.store);
  await again.refresh();
  assert.equal(later.n, 1, 'the delivery changed the token');
  assert.equal(again.messageCount, 4);
  await again.close();
});
