// A mail saved under a file name that is not its GUID keeps its GUID only in its uidlist entry,
// written after the file is placed in cur/. The save first records name -> GUID durably
// (dsync-pending-guids), so that a run killed in between does not turn the mail into a different
// one (its name as GUID: a second copy once synced): the next scan takes the GUID from the record.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { SaveRequest } from '../../src/storage/types.js';
import { makeMaildir, msg, openMaildir, tempDir, writeMail } from './helpers.js';

const PENDING = 'dsync-pending-guids';

function req(uid: number, guid: string, body: string): SaveRequest {
  return { uid, guid, flags: 0, keywords: [], internalDate: 1704103200 + uid, body: Buffer.from(body) };
}

test('a save records the GUID of a mail placed under another name before placing it, and drops the record once listed', async (t) => {
  const root = tempDir(t);
  const store = await openMaildir(`maildir:${root}`);
  const box = await store.openMailbox(['INBOX']);
  // What the record held each time a file was placed into cur/.
  const seen: { target: string; record: string }[] = [];
  const mb = box as unknown as { place: (tmp: string, target: string) => void };
  const place = mb.place.bind(box);
  mb.place = (tmp, target) => {
    let record = '';
    try {
      record = fs.readFileSync(path.join(root, PENDING), 'utf8');
    } catch {
      /* none */
    }
    seen.push({ target: path.basename(target), record });
    return place(tmp, target);
  };
  const odd = 'odd/guid:1'; // storable, but no file name
  const usable = '1704103300.M5P5.usable';
  await box.save([req(1, usable, msg(1)), req(2, odd, msg(2))]);

  assert.equal(seen.length, 2);
  assert.equal(seen[0]!.target.split(':')[0], usable);
  assert.equal(seen[0]!.record, '', 'a mail named by its GUID needs no record');
  const base = seen[1]!.target.split(':')[0]!;
  assert.notEqual(base, odd);
  assert.equal(seen[1]!.record, `${base}\t${odd}\n`, 'the pair was on record before the file was placed');
  assert.equal(fs.existsSync(path.join(root, PENDING)), false, 'dropped once the uidlist lists the mail');
  assert.match(fs.readFileSync(path.join(root, 'dovecot-uidlist'), 'utf8'), new RegExp(`^2 G${odd.replace('/', '\\/')} :${base.replace(/[.,=]/g, '\\$&')}$`, 'm'));
  await box.close();
});

test('a scan takes the GUID of a file the uidlist does not list from the record a killed save left', async (t) => {
  const root = tempDir(t);
  makeMaildir(root);
  const listed = '1704103300.M5P5.listed';
  writeMail(path.join(root, 'cur', `${listed}:2,S`), msg(1), 1704103301);
  fs.writeFileSync(path.join(root, 'dovecot-uidlist'), `3 V1704103000 N2 G0123456789abcdef0123456789abcdef\n1 :${listed}\n`);
  // The state a save killed between placing the file and writing the uidlist leaves.
  const placed = '1704103400.M7P4242Q1.host,S=40,W=41';
  writeMail(path.join(root, 'cur', `${placed}:2,`), msg(2), 1704103402);
  const unrelated = '1704103500.M8P4242Q2.host';
  writeMail(path.join(root, 'cur', `${unrelated}:2,`), msg(3), 1704103403);
  // A torn last line (killed while appending) is not taken.
  fs.writeFileSync(path.join(root, PENDING), `${placed}\todd/guid:2\n${unrelated}\todd/gu`);

  const store = await openMaildir(`maildir:${root}`);
  const box = await store.openMailbox(['INBOX']);
  const got = (await box.scan()).map((m) => [m.uid, m.guid]);
  assert.deepEqual(got, [
    [1, listed],
    [2, 'odd/guid:2'],
    [3, unrelated],
  ]);
  assert.match(fs.readFileSync(path.join(root, 'dovecot-uidlist'), 'utf8'), /^2 Godd\/guid:2 :1704103400\.M7P4242Q1\.host,S=40,W=41$/m);
  assert.equal(fs.existsSync(path.join(root, PENDING)), false, 'the record is used up');
  await box.close();

  // Read-only, the record is used the same way, in memory.
  fs.writeFileSync(path.join(root, 'dovecot-uidlist'), `3 V1704103000 N2 G0123456789abcdef0123456789abcdef\n1 :${listed}\n`);
  fs.writeFileSync(path.join(root, PENDING), `${placed}\todd/guid:2\n`);
  const ro = await openMaildir(`maildir:${root}`, { readOnly: true });
  const rbox = await ro.openMailbox(['INBOX']);
  assert.deepEqual((await rbox.scan()).map((m) => [m.uid, m.guid]), got);
  await rbox.close();
});
