// Scan speed of a 10,000-message folder (generous bound; the measured figures are printed).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { makeMaildir, openMaildir, tempDir } from './helpers.js';

test('perf: scanning 10,000 messages', async (t) => {
  const root = tempDir(t);
  makeMaildir(root);
  const N = 10_000;
  let ul = '3 V1 N1 Gaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n';
  for (let i = 0; i < N; i++) {
    const base = `${1700000000 + i}.M${i}P1.host,S=100,W=102`;
    fs.writeFileSync(path.join(root, 'cur', `${base}:2,${i % 3 ? 'S' : 'RSa'}`), 'x'.repeat(100));
    if (i < N - 100) ul += `${i + 1} :${base}\n`; // the last 100 are new to the uidlist
  }
  fs.writeFileSync(path.join(root, 'dovecot-uidlist'), ul);
  fs.writeFileSync(path.join(root, 'dovecot-keywords'), '0 $Junk\n');
  const store = await openMaildir(`maildir:${root}`);
  const box = await store.openMailbox(['INBOX']);
  let t0 = performance.now();
  const first = await box.scan();
  const firstMs = performance.now() - t0;
  assert.equal(first.length, N);
  assert.equal(first[N - 1]!.uid, N);
  // A rescan through a new handle, as a sync does, with the messages its index knows: their
  // files need no stat (size and date are on record) and come back with -1 for both.
  const onRecord = new Map(first.map((m) => [m.uid, m.guid]));
  const known = (uid: number, guid: string) => onRecord.get(uid) === guid;
  const times: number[] = [];
  for (let i = 0; i < 7; i++) {
    t0 = performance.now();
    const again = await (await store.openMailbox(['INBOX'])).scan({ known });
    times.push(performance.now() - t0);
    assert.equal(again.length, N);
    assert.ok(again.every((m) => m.size === -1 && m.internalDate === -1), 'known files are not stat()ed');
  }
  times.sort((a, b) => a - b);
  const median = times[3]!;
  t.diagnostic(`10k scan: first ${firstMs.toFixed(1)} ms (stat of every file + 100 new UIDs), rescan of known files: median ${median.toFixed(1)} ms, min ${times[0]!.toFixed(1)} ms`);
  assert.ok(median < 300, `rescan of known files: median ${median.toFixed(1)} ms`);
});
