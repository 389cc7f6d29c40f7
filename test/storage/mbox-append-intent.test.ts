// The record of an mbox append in progress (append-intent.ts): which files it applies to, and
// what readers and the next writer make of it. The kill in the middle of a real append is in
// mbox-crash.test.ts; here the records are written by hand to set up each case exactly.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { intentPath, judgeIntent, readAppendIntent, settleAppendIntent, writeAppendIntent, type AppendIntent } from '../../src/storage/mbox/append-intent.js';
import { identityOf } from '../../src/storage/mbox/parse.js';
import { tempDir, warnings } from './helpers.js';
import { openMbox, write } from './mbox-helpers.js';

const ctx = { readOnly: false, warn: () => {} } as never;

const mail = (uid: number, extra = '') =>
  `From a@b Tue Jan  2 10:00:00 2024\n${uid === 1 ? 'X-IMAPbase: 1700000050 0000000009\n' : ''}X-UID: ${uid}\nSubject: ${uid}${extra}\n\nbody ${uid}\n\n`;

/** An mbox of mails 1 and 2, and a record of appending mail 3 (its bytes, for writing them). */
async function withRecord(file: string): Promise<{ before: string; appended: string }> {
  const before = mail(1) + mail(2);
  const appended = mail(3);
  write(file, before);
  const st = fs.statSync(file);
  await writeAppendIntent(ctx, file, { dev: st.dev, ino: st.ino, start: st.size, end: st.size + appended.length, head: Buffer.from(appended, 'latin1') });
  return { before, appended };
}

/** What the record says of the file as it is now. */
async function judged(file: string): Promise<string> {
  const fd = fs.openSync(file, 'r');
  try {
    return (await judgeIntent((await readAppendIntent(file)) as AppendIntent, fd, identityOf(fs.fstatSync(fd)))).kind;
  } finally {
    fs.closeSync(fd);
  }
}

async function uidsSeen(dir: string): Promise<number[]> {
  const store = await openMbox(`mbox:${dir}/m`, { readOnly: true, warn: () => {} });
  return (await (await store.openMailbox(['Box'])).scan()).map((m) => m.uid);
}

test('append record: a torn append is hidden from readers; a complete one left behind is simply dropped', async (t) => {
  const dir = tempDir(t, 'dsync-intent-');
  const file = `${dir}/m/Box`;
  const { appended } = await withRecord(file);
  fs.appendFileSync(file, appended.slice(0, 40));
  assert.equal(await judged(file), 'torn');
  assert.deepEqual(await uidsSeen(dir), [1, 2]);

  fs.appendFileSync(file, appended.slice(40)); // the writer finished, and was killed before removing the record
  assert.equal(await judged(file), 'complete');
  assert.deepEqual(await uidsSeen(dir), [1, 2, 3]);
  fs.appendFileSync(file, mail(4)); // and someone else appended after it
  assert.deepEqual(await uidsSeen(dir), [1, 2, 3, 4]);
  const w = warnings();
  assert.equal(await settleAppendIntent({ readOnly: false, warn: w.warn } as never, file), false);
  assert.deepEqual(w.list, []);
  assert.ok(!fs.existsSync(intentPath(file)));
  assert.deepEqual(await uidsSeen(dir), [1, 2, 3, 4]);
});

test('append record: one that no longer describes the file is ignored with a warning, and nothing is cut', async (t) => {
  const dir = tempDir(t, 'dsync-intent-');
  const file = `${dir}/m/Box`;
  const cases: [string, (appended: string) => void, RegExp][] = [
    // Another program rewrote the file in place (mail 2's flags) after our torn append.
    ['rewritten', (a) => fs.writeFileSync(file, mail(1) + mail(2, '\nStatus: RO') + a.slice(0, 40)), /changed since/],
    // Replaced by a new file (a rewrite by rename), even one with the same bytes.
    ['replaced', (a) => {
      const copy = `${file}.new`;
      fs.writeFileSync(copy, fs.readFileSync(file, 'latin1') + a.slice(0, 40));
      fs.renameSync(copy, file);
    }, /replaced/],
    // Shortened (an expunge by another program) below where the append started.
    ['shortened', () => fs.writeFileSync(file, mail(1)), /shorter/],
    // A torn append that another program appended after (its From_ line is not at our end).
    ['appended after a torn one', (a) => fs.appendFileSync(file, a.slice(0, 40) + '\n' + mail(4) + mail(5) + mail(6)), /changed since|appended to by another program/],
  ];
  for (const [what, change, why] of cases) {
    const { appended } = await withRecord(file);
    change(appended);
    const size = fs.statSync(file).size;
    const seen = await uidsSeen(dir);
    const w = warnings();
    assert.equal(await settleAppendIntent({ readOnly: false, warn: w.warn } as never, file), false, what);
    assert.ok(w.has(why), `${what}: ${w.list.join('\n')}`);
    assert.equal(fs.statSync(file).size, size, `${what}: nothing cut`);
    assert.ok(!fs.existsSync(intentPath(file)), what);
    assert.deepEqual(seen, await uidsSeen(dir), `${what}: readers saw the whole file already`);
  }
});

test('append record: a damaged one (a crash while writing it, before the append) is dropped', async (t) => {
  const dir = tempDir(t, 'dsync-intent-');
  const file = `${dir}/m/Box`;
  write(file, mail(1) + mail(2));
  fs.writeFileSync(intentPath(file), '{"v":1,"pid":12');
  assert.equal(await readAppendIntent(file), 'invalid');
  assert.deepEqual(await uidsSeen(dir), [1, 2]);
  const store = await openMbox(`mbox:${dir}/m`);
  const box = await store.openMailbox(['Box']);
  await box.updateFlags([{ uid: 1, flags: 0, keywords: ['k'] }]);
  assert.ok(!fs.existsSync(intentPath(file)));
  assert.deepEqual((await box.scan()).map((m) => m.uid), [1, 2]);
});

test('append record: renaming the mailbox cuts a torn append off first (the record names the old path)', async (t) => {
  const dir = tempDir(t, 'dsync-intent-');
  const file = `${dir}/m/Box`;
  const { before, appended } = await withRecord(file);
  fs.appendFileSync(file, appended.slice(0, 40));
  const w = warnings();
  const store = await openMbox(`mbox:${dir}/m`, { warn: w.warn });
  await store.renameMailbox(['Box'], ['Moved']);
  assert.ok(w.has(/removed the last 40 bytes/), w.list.join('\n'));
  assert.equal(fs.readFileSync(`${dir}/m/Moved`, 'latin1'), before);
  assert.deepEqual(fs.readdirSync(`${dir}/m`).filter((n) => n.includes('dsync-append')), []);
});
