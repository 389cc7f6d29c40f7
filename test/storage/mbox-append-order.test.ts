// Dovecot reads an mbox under an fcntl lock that we cannot take, so it may look between any two
// of our writes. A state whose X-IMAPbase names a last UID above a mail that is not there yet
// made it take that mail, once written, for "inserted in the middle of mailbox" (its sync failed
// halfway and left a garbled mail: test/oracle/busy.test.ts). An append now raises the last UID
// only up to just below each run of consecutive UIDs it writes. A second process reads the file
// as fast as it can while saves with UID gaps go on, and checks every state it saw.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import { Flag } from '../../src/model/flags.js';
import type { SaveRequest } from '../../src/storage/types.js';
import { tempDir } from './helpers.js';
import { openMbox } from './mbox-helpers.js';

/** Reads the file in a loop until `stop` exists; prints every state that names a planned UID as used before its mail is there. */
const WATCHER = `
const fs = require('node:fs');
const [file, stop, plannedArg] = process.argv.slice(1);
const planned = plannedArg.split(',').map(Number);
const bad = new Set();
let looks = 0;
while (!fs.existsSync(stop)) {
  // Front to back until the end of the file as it is then (not a size taken before): a mail
  // that was there when X-IMAPbase was read is read too.
  let text = '';
  try {
    const fd = fs.openSync(file, 'r');
    const buf = Buffer.alloc(1 << 16);
    for (let pos = 0, n; (n = fs.readSync(fd, buf, 0, buf.length, pos)) > 0; pos += n) text += buf.toString('latin1', 0, n);
    fs.closeSync(fd);
  } catch { continue; }
  looks++;
  const base = /^X-IMAPbase: \\d+ (\\d+)/m.exec(text);
  if (!base) continue;
  const last = Number(base[1]);
  const present = new Set([...text.matchAll(/^X-UID: (\\d+)$/gm)].map((m) => Number(m[1])));
  for (const u of planned) if (u <= last && !present.has(u)) bad.add(u + ' (last UID ' + last + ')');
}
process.stdout.write(JSON.stringify({ looks, bad: [...bad] }));
`;

function req(uid: number): SaveRequest {
  return { uid, guid: `g${uid}`, flags: Flag.Seen, keywords: [], internalDate: 1_700_000_000 + uid, body: Buffer.from(`Subject: ${uid}\nMessage-ID: <${uid}@x>\n\n${'body line\n'.repeat(200)}`) };
}

test('mbox append: no state of the file names a UID as given out before its mail is in the file', async (t) => {
  const dir = tempDir(t, 'dsync-mbox-order-');
  const file = `${dir}/m/inbox`;
  const store = await openMbox(`mbox:${dir}/m:INBOX=${file}`);
  const box = await store.openMailbox(['INBOX']);
  await box.save([req(1)]);
  // Saves of runs with gaps between them and before them: 2 3 | 10 | 11 12 20 21 | 30 ...
  const batches: number[][] = [];
  for (let b = 0, u = 2; b < 40; b++) {
    const batch = [u, u + 1];
    u += 2 + (b % 3);
    batch.push(u, u + 1);
    u += 5;
    batches.push(batch);
  }
  const stop = `${dir}/stop`;
  const watcher = spawn(process.execPath, ['-e', WATCHER, file, stop, batches.flat().join(',')], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  watcher.stdout.on('data', (d: Buffer) => (out += d.toString()));
  const done = new Promise<void>((resolve) => watcher.on('exit', () => resolve()));
  t.after(() => watcher.kill());
  await new Promise((r) => setTimeout(r, 100)); // the watcher is reading
  for (const batch of batches) {
    await box.scan();
    await box.save(batch.map(req));
  }
  fs.writeFileSync(stop, '');
  await done;
  const seen = JSON.parse(out) as { looks: number; bad: string[] };
  assert.ok(seen.looks > batches.length, `the watcher read the file ${seen.looks} times`);
  assert.deepEqual(seen.bad, [], 'UIDs named as given out before their mail was there');
  // And our own reading of the result: every UID as saved.
  assert.deepEqual(
    (await box.scan()).map((m) => m.uid),
    [1, ...batches.flat()],
  );
  await store.close();
});
