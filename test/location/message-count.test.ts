// A mailbox's message count is recorded in the index with the highestModseq it was counted at and
// taken from there while that still holds, so a run that changes nothing does not count rows; any
// change of the message set makes it count again.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import Database from 'better-sqlite3';
import type { LocationMailbox } from '../../src/location/mailbox.js';
import { withFirstMailbox } from './helpers.js';
import { makeMaildir, msg, tempDir, writeMail } from '../storage/helpers.js';
import { mirrorArgs, putFile, syncedOk, tempDir as tempDirOf } from '../robustness/helpers.js';
import { INDEX_FILE } from '../../src/sync/run.js';

test('messageCount: recorded with its modseq, trusted while that holds, counted again after any change', async (t) => {
  const dir = tempDir(t);
  const root = path.join(dir, 'Maildir');
  const indexPath = path.join(dir, 'index.sqlite');
  makeMaildir(root);
  for (let i = 1; i <= 3; i++) writeMail(path.join(root, 'cur', `1000.M${i}P1.h:2,S`), msg(i), 1000 + i);

  const open = <T>(fn: (box: LocationMailbox) => Promise<T>): Promise<T> => withFirstMailbox(root, indexPath, fn);
  /** A run that syncs the mailbox: scans it and, as at the end of a mailbox's sync, records its summary. */
  const sync = (record = true) =>
    open(async (box) => {
      await box.refresh(true);
      if (record) box.recordSummary();
    });
  /** A run that does not touch the mailbox: its count comes from the index, without rows. */
  const count = () => open(async (box) => box.messageCount);
  const recorded = () => {
    const db = new Database(indexPath);
    try {
      return db.prepare('SELECT message_count AS count, count_modseq AS modseq, highest_modseq AS highest FROM mailboxes').get() as { count: number; modseq: number; highest: number };
    } finally {
      db.close();
    }
  };

  await sync();
  assert.equal(await count(), 3);
  const first = recorded();
  assert.deepEqual([first.count, first.modseq], [3, first.highest]);

  // Trusted as long as the modseq holds: a recorded count that says otherwise is what is reported.
  const db = new Database(indexPath);
  db.prepare('UPDATE mailboxes SET message_count = 42').run();
  db.close();
  assert.equal(await count(), 42, 'nothing changed: the recorded count is taken, not recounted');

  // A new mail raises the modseq: counted again, even when the scan recorded no count.
  writeMail(path.join(root, 'new', '2000.M9P1.h'), msg(9), 2000);
  await sync(false);
  assert.equal(await count(), 4);
  assert.equal(recorded().count, 4);

  // An expunge made outside dsync likewise.
  fs.unlinkSync(path.join(root, 'cur', '1000.M1P1.h:2,S'));
  await sync();
  assert.equal(await count(), 3);

  // UIDVALIDITY changed outside dsync: the index forgets the mailbox's messages without a modseq
  // of their own; the count must not survive that.
  const uidlist = path.join(root, 'dovecot-uidlist');
  fs.writeFileSync(uidlist, fs.readFileSync(uidlist, 'utf8').replace(/ V\d+/, ' V1999999999'));
  for (const f of fs.readdirSync(path.join(root, 'cur'))) fs.unlinkSync(path.join(root, 'cur', f));
  await sync();
  assert.equal(await count(), 0);
});

test('after a sync every mailbox count is on record at its current modseq: the next run counts nothing', (t) => {
  const root = tempDirOf(t);
  const a = path.join(root, 'a');
  const b = path.join(root, 'b');
  for (let i = 1; i <= 3; i++) putFile(a, 'cur', `170000000${i}.m${i}.count:2,S`, `Subject: m${i}\n\nbody ${i}\n`);
  putFile(path.join(a, '.Work'), 'cur', '1700000009.m9.count:2,', 'Subject: w\n\nwork\n');
  putFile(b, 'new', '1700000010.m10.count', 'Subject: b\n\nfrom b\n');
  syncedOk(mirrorArgs(`maildir:${a}`, `maildir:${b}`));
  for (const side of [a, b]) {
    const db = new Database(path.join(side, INDEX_FILE), { readonly: true });
    try {
      const rows = db
        .prepare('SELECT m.message_count AS count, m.count_modseq AS atModseq, m.highest_modseq AS highest, (SELECT count(*) FROM messages WHERE mailbox = m.guid) AS real FROM mailboxes m')
        .all() as { count: number; atModseq: number; highest: number; real: number }[];
      assert.equal(rows.length, 2);
      for (const r of rows) assert.deepEqual([r.count, r.atModseq], [r.real, r.highest], side);
    } finally {
      db.close();
    }
  }
});
