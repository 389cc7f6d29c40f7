// Second copies of a mail (same GUID under two UIDs, left by an interrupted save or move) are
// found, including when only the UIDs given since the last completed sync are looked at.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Location } from '../../src/location/location.js';
import { Logger } from '../../src/util/log.js';
import { makeMaildir, msg, openMaildir, tempDir, writeMail } from '../storage/helpers.js';

test('duplicateUids: the higher UIDs of a GUID seen twice; with sinceUid only GUIDs of UIDs from there on', async (t) => {
  const root = path.join(tempDir(t), 'Maildir');
  makeMaildir(root);
  const lines = ['3 V1700000000 N7 G0123456789abcdef0123456789abcdef'];
  const guidOf = ['', 'g-one', 'g-two', 'g-three', 'g-one', 'g-five', 'g-two'];
  for (let uid = 1; uid <= 6; uid++) {
    writeMail(path.join(root, 'cur', `1000.M${uid}P1.h:2,S`), msg(uid), 1000 + uid);
    lines.push(`${uid} G${guidOf[uid]} :1000.M${uid}P1.h`);
  }
  fs.writeFileSync(path.join(root, 'dovecot-uidlist'), lines.join('\n') + '\n');
  const store = await openMaildir(`maildir:${root}`);
  const loc = Location.open(store, { indexPath: ':memory:', log: new Logger({ sink: { write: () => undefined } }) });
  t.after(() => loc.close());
  await loc.refreshTree();
  const box = (await loc.openMailbox(loc.mailboxes()[0]!.guid))!;
  await box.refresh();
  assert.deepEqual(box.duplicateUids(), [4, 6]);
  assert.deepEqual(box.duplicateUids(4), [4, 6], 'both second copies are at or above 4');
  assert.deepEqual(box.duplicateUids(5), [6], 'UID 4 was checked by an earlier sync');
  assert.deepEqual(box.duplicateUids(7), [], 'nothing new since the last sync: nothing to look at');
  // Without the rows in memory (a mailbox compared by its digest), the index finds the copies.
  box.dropRows();
  assert.deepEqual(box.duplicateUids(4), [4, 6]);
  assert.deepEqual(box.duplicateUids(5), [6]);
  assert.deepEqual(box.duplicateUids(7), []);
  assert.equal(box.loadedCount, 3, 'only the rows from UID 4 on were read');
  assert.deepEqual(box.duplicateUids(), [4, 6]);
  await box.close();
});
