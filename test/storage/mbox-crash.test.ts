// Crash safety: a process killed in the middle of rewriting an mbox leaves the original intact;
// the next run breaks its dead lock, removes its temp file and works normally.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { Flag } from '../../src/model/flags.js';
import { tempDir, warnings } from './helpers.js';
import { bodyOf, openMbox, write } from './mbox-helpers.js';
import { killAfterFirstWritev } from '../helpers/stalled-child.js';

const storeModule = fileURLToPath(new URL('../../src/storage/mbox/store.js', import.meta.url));
const locationModule = fileURLToPath(new URL('../../src/storage/location.js', import.meta.url));

const sha = (f: string) => createHash('sha256').update(fs.readFileSync(f)).digest('hex');

test('crash: SIGKILL during a rewrite leaves the mbox as it was; the next run recovers', async (t) => {
  const dir = tempDir(t, 'dsync-mbox-crash-');
  const file = `${dir}/m/Big`;
  const body = 'x'.repeat(76) + '\n';
  const parts: string[] = [];
  for (let i = 1; i <= 3000; i++) {
    parts.push(`From a@b Tue Jan  2 10:00:00 2024\n${i === 1 ? 'X-IMAPbase: 1700000050 0000003000\n' : ''}X-UID: ${i}\nSubject: ${i}\n\n${body.repeat(250)}\n`);
  }
  write(file, parts.join('')); // ~60 MB
  const before = sha(file);
  const script = `${dir}/child.mjs`;
  fs.writeFileSync(
    script,
    `import { MboxStore } from ${JSON.stringify(storeModule)};
     import { parseMailLocation } from ${JSON.stringify(locationModule)};
     const store = await MboxStore.open(parseMailLocation('mbox:${dir}/m', {}), { warn: () => {} });
     const box = await store.openMailbox(['Big']);
     await box.scan();
     process.stdout.write('scanned\\n');
     await box.updateFlags([{ uid: 1, flags: ${Flag.Seen}, keywords: [] }]);
     process.stdout.write('done\\n');`,
  );
  const child = spawn(process.execPath, [script], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  // Wait until the rewrite has started writing its temp file ("Big.dsync-<pid>-<hex>.tmp.lock";
  // not the dotlock's own "Big.<pid>.<n>.tmp.lock", there for an instant), then kill.
  let temp: string | undefined;
  for (let i = 0; i < 4000 && !temp; i++) {
    temp = fs.readdirSync(`${dir}/m`).find((n) => n.startsWith('Big.dsync-') && n.endsWith('.tmp.lock') && fs.statSync(`${dir}/m/${n}`).size > 0);
    if (!temp) await sleep(2);
  }
  child.kill('SIGKILL');
  await new Promise((r) => child.once('exit', r));
  assert.ok(temp, `the child never started its rewrite (output: ${out})`);
  assert.doesNotMatch(out, /done/, 'killed before it finished');
  assert.equal(sha(file), before, 'the original is untouched');
  assert.ok(fs.existsSync(`${file}.lock`), 'its dotlock is left behind');

  const w = warnings();
  const store = await openMbox(`mbox:${dir}/m`, { warn: w.warn });
  const box = await store.openMailbox(['Big']);
  assert.equal((await box.scan()).length, 3000);
  await box.updateFlags([{ uid: 2, flags: Flag.Flagged, keywords: [] }]);
  assert.ok(w.has(/no longer exists/), w.list.join('\n'));
  assert.ok(w.has(/left by an interrupted rewrite/), w.list.join('\n'));
  assert.deepEqual(fs.readdirSync(`${dir}/m`).sort(), ['.imap', 'Big'], 'no lock or temp file left');
  const msgs = await box.scan();
  assert.deepEqual([msgs[0]!.flags, msgs[1]!.flags], [0, Flag.Flagged]);
});

/** An mbox of three mails (UIDVALIDITY 1700000050, last UID 3). */
function threeMails(file: string): string {
  const text = [1, 2, 3]
    .map((i) => `From a@b Tue Jan  2 10:00:00 2024\n${i === 1 ? 'X-IMAPbase: 1700000050 0000000003\n' : ''}X-UID: ${i}\nSubject: ${i}\n\nbody ${i}\n\n`)
    .join('');
  write(file, text);
  return text;
}

test('crash: SIGKILL in the middle of an append; readers never see the torn mail and the next writer cuts it off', async (t) => {
  const dir = tempDir(t, 'dsync-mbox-append-crash-');
  const file = `${dir}/m/Box`;
  const original = threeMails(file);
  // The child stops for good after its first block of appended bytes (4 MB of a 10 MB mail):
  // the kill lands inside the append every time.
  const out = await killAfterFirstWritev(
    dir,
    `const { MboxStore } = await import(${JSON.stringify(storeModule)});
     const { parseMailLocation } = await import(${JSON.stringify(locationModule)});
     const store = await MboxStore.open(parseMailLocation('mbox:${dir}/m', {}), { warn: () => {} });
     const box = await store.openMailbox(['Box']);
     await box.scan();
     const big = Buffer.from('Subject: big\\nMessage-ID: <big@x>\\n\\n' + ('y'.repeat(99) + '\\n').repeat(100000));
     await box.save([
       { uid: 4, guid: 'g4', flags: 0, keywords: [], internalDate: 1700000000, body: big },
       { uid: 5, guid: 'g5', flags: 0, keywords: [], internalDate: 1700000001, body: Buffer.from('Subject: small\\n\\nsmall\\n') },
     ]);`,
  );
  assert.match(out, /stalled/, 'the child appended its first block');
  assert.doesNotMatch(out, /done/);
  const tornSize = fs.statSync(file).size;
  assert.ok(tornSize > original.length + 1_000_000, `part of the mail was appended (${tornSize} bytes)`);
  assert.ok(fs.existsSync(`${file}.dsync-append.lock`), 'the record of the append is left behind');

  // A read-only look (a backup's source) sees the mailbox as before the append.
  const ro = await openMbox(`mbox:${dir}/m`, { readOnly: true, warn: () => {} });
  const roBox = await ro.openMailbox(['Box']);
  assert.deepEqual((await roBox.scan()).map((m) => m.uid), [1, 2, 3]);
  assert.equal(fs.statSync(file).size, tornSize, 'a reader changes nothing');

  // So does a writable store's scan, before it writes; its first write cuts the tail off.
  const w = warnings();
  const store = await openMbox(`mbox:${dir}/m`, { warn: w.warn });
  const box = await store.openMailbox(['Box']);
  assert.deepEqual((await box.scan()).map((m) => m.uid), [1, 2, 3]);
  await box.save([{ uid: 6, guid: 'g6', flags: 0, keywords: [], internalDate: 1700000002, body: Buffer.from('Subject: six\n\nsix\n') }]);
  assert.ok(w.has(/removed the last \d+ bytes, the unfinished part of an append that was interrupted/), w.list.join('\n'));
  const msgs = await box.scan();
  assert.deepEqual(
    msgs.map((m) => m.uid),
    [1, 2, 3, 6],
  );
  assert.equal((await bodyOf(box, 6)).toString(), 'Subject: six\n\nsix\n');
  const text = fs.readFileSync(file, 'latin1');
  // The three mails are as they were, apart from the last UID (raised to 5, then 6).
  assert.equal(text.slice(0, original.length), original.replace('0000000003', '0000000006'));
  assert.doesNotMatch(text, /big@x/);
  assert.ok(!fs.existsSync(`${file}.dsync-append.lock`), 'the record is gone');
});
