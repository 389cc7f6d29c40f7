// The order in which files that are not in dovecot-uidlist yet get their UIDs. Dovecot sorts
// them with maildir_filename_sort_cmp (src/lib-storage/index/maildir/maildir-filename.c): the
// leading seconds numerically, then the microseconds after 'M' in the uniqueness part (when
// both names have them), then the rest of the base name bytewise. IMAP clients treat UID order
// as arrival order, so a maildir first scanned by us must get the same UIDs it would have got
// from Dovecot (test/oracle/views.test.ts checks this against a real Dovecot).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { compareForUidOrder } from '../../src/storage/maildir/filename.js';
import { openMaildir, tempDir } from './helpers.js';

/** Base names in the order Dovecot 2.3 numbers them. */
export const DOVECOT_UID_ORDER = [
  'notimestamp', // no leading digits: seconds 0
  '999999999.M1P1.old', // 9-digit seconds (before 2001-09-09) sort before 10-digit ones
  '1700000000.M99P1.host', // same second: microseconds 99 < 123 < 300
  '1700000000.M123P1.host',
  '1700000000.V801I2M300.host', // postfix-style uniqueness, microseconds after its 'M'
  '1700000000.abc.host', // no microseconds: the rest bytewise (".a" > ".V" > ".M")
  '1700000001.M0P1.host',
];

test('new maildir files get UIDs in Dovecot order (seconds and microseconds numerically), not string order', async (t) => {
  const dir = tempDir(t);
  const root = path.join(dir, 'mail');
  for (const sub of ['cur', 'new', 'tmp']) fs.mkdirSync(path.join(root, sub), { recursive: true });
  // Reverse creation order, half of them in cur/: neither readdir nor mtime order may matter.
  [...DOVECOT_UID_ORDER].reverse().forEach((base, i) => {
    const p = i % 2 ? path.join(root, 'new', base) : path.join(root, 'cur', `${base}:2,`);
    fs.writeFileSync(p, `Subject: ${base}\n\nbody\n`);
  });
  for (const readOnly of [true, false]) {
    const store = await openMaildir(`maildir:${root}`, { readOnly });
    try {
      const box = await store.openMailbox(['INBOX']);
      const msgs = await box.scan();
      assert.deepEqual(
        msgs.map((m) => [m.uid, m.guid]),
        DOVECOT_UID_ORDER.map((b, i) => [i + 1, b]),
        readOnly ? 'read-only scan' : 'scan writing dovecot-uidlist',
      );
      await box.close();
    } finally {
      await store.close();
    }
  }
});

test('compareForUidOrder is maildir_filename_sort_cmp', () => {
  const sorted = [...DOVECOT_UID_ORDER].reverse().sort(compareForUidOrder);
  assert.deepEqual(sorted, DOVECOT_UID_ORDER);
  assert.equal(compareForUidOrder('1700000000.M5P1.x', '1700000000.M5P1.x'), 0);
  assert.ok(compareForUidOrder('1700000000.M5P1.a', '1700000000.M5P1.b') < 0, 'equal microseconds: bytewise');
  assert.ok(compareForUidOrder('1700000000.M5P1.b', '1700000000.M5P2.a') < 0, 'equal microseconds: bytewise');
  assert.ok(compareForUidOrder('1700000000.XMas.h', '1700000000.M1P1.h') < 0, "an 'M' without digits means 0 microseconds");
  assert.ok(compareForUidOrder('1700000000', '1700000000.M1P1.h') < 0, 'a shorter name with the same seconds sorts first');
});
