// Flow control of the byte-stream channel (remote runs): a receiver holds at most its budget of
// received bodies in memory, makes the sender wait beyond it, and spools to disk when its brain
// wants more records without opening what it holds. Two real channels over in-memory pipes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { PassThrough, type Readable } from 'node:stream';
import { StreamChannel } from '../../src/transport/stream.js';
import type { MailRecord, SyncRecord } from '../../src/sync/records.js';

const BODY = 100 << 10;
const BUDGET = 1 << 20;
const MAILS = 40;

/** Spool files go under TMPDIR: a private one per test, to count them. */
function privateTmp(t: { after: (fn: () => void) => void }): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dsync-flow-'));
  const before = process.env.TMPDIR;
  process.env.TMPDIR = dir;
  t.after(() => {
    if (before === undefined) delete process.env.TMPDIR;
    else process.env.TMPDIR = before;
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return dir;
}

function spoolFiles(tmp: string): string[] {
  return fs.readdirSync(tmp).flatMap((d) => fs.readdirSync(path.join(tmp, d)).map((f) => path.join(tmp, d, f)));
}

function pair(budget: number) {
  const toReceiver = new PassThrough();
  const toSender = new PassThrough();
  const sender = new StreamChannel(toSender, toReceiver, { peerName: 'receiver' });
  const receiver = new StreamChannel(toReceiver, toSender, { peerName: 'sender', memoryBudget: budget });
  return { sender, receiver };
}

const bodyOf = (i: number): Buffer => Buffer.alloc(BODY, String.fromCharCode(97 + (i % 26)));

function sendMails(sender: StreamChannel): void {
  for (let i = 0; i < MAILS; i++) {
    sender.send({ type: 'mail', guid: `g${i}`, uid: i + 1, receivedDate: 0, body: () => bodyOf(i) });
  }
  sender.send({ type: 'end' });
}

async function bytesOf(rec: SyncRecord): Promise<Buffer> {
  assert.equal(rec.type, 'mail');
  const src = await (rec as MailRecord).body!();
  if (Buffer.isBuffer(src)) return src;
  const chunks: Buffer[] = [];
  for await (const c of src as Readable) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

const settle = () => new Promise((resolve) => setTimeout(resolve, 50));

test('a receiver that does not open its bodies stops reading at its budget, and the sender waits', { timeout: 20_000 }, async (t) => {
  const tmp = privateTmp(t);
  const { sender, receiver } = pair(BUDGET);
  sendMails(sender);
  let flushed = false;
  void sender.flush().then(() => (flushed = true));
  await settle();
  assert.ok(receiver.heldBytes > BUDGET / 2, `it read up to its budget (${receiver.heldBytes})`);
  assert.ok(receiver.heldBytes <= BUDGET + BODY, `and no further (${receiver.heldBytes} held)`);
  assert.equal(flushed, false, 'the sender is still waiting to write');
  // Taking and opening the mails one at a time lets the rest through, all from memory.
  for (let i = 0; i < MAILS; i++) {
    const rec = await receiver.recv();
    assert.ok((await bytesOf(rec)).equals(bodyOf(i)), `mail ${i + 1} arrived intact`);
    assert.ok(receiver.heldBytes <= BUDGET + BODY);
  }
  assert.equal((await receiver.recv()).type, 'end');
  await sender.flush();
  assert.deepEqual(spoolFiles(tmp), [], 'nothing went to disk');
  receiver.dispose();
  sender.dispose();
});

test('a receiver that takes every record before opening any gets them all, the excess spooled to disk', { timeout: 20_000 }, async (t) => {
  const tmp = privateTmp(t);
  const { sender, receiver } = pair(BUDGET);
  sendMails(sender);
  const recs: SyncRecord[] = [];
  for (let i = 0; i < MAILS; i++) {
    recs.push(await receiver.recv());
    assert.ok(receiver.heldBytes <= BUDGET + BODY, `held ${receiver.heldBytes} after ${i + 1} records`);
  }
  assert.equal((await receiver.recv()).type, 'end');
  await sender.flush();
  const spooled = spoolFiles(tmp);
  assert.ok(spooled.length >= MAILS - BUDGET / BODY - 1, `${spooled.length} bodies spooled`);
  for (let i = 0; i < MAILS; i++) assert.ok((await bytesOf(recs[i]!)).equals(bodyOf(i)), `mail ${i + 1} intact`);
  assert.equal(receiver.heldBytes, 0, 'opened bodies no longer count');
  receiver.mailboxDone();
  assert.deepEqual(spoolFiles(tmp), [], "the mailbox's spool files are removed when it is done");
  receiver.dispose();
  sender.dispose();
});

test('the end of a mailbox releases bodies that were never opened', { timeout: 20_000 }, async (t) => {
  privateTmp(t);
  const { sender, receiver } = pair(BUDGET);
  sendMails(sender);
  await settle();
  assert.ok(receiver.heldBytes > BUDGET / 2);
  receiver.mailboxDone();
  assert.equal(receiver.heldBytes, 0);
  // Reading resumed: the rest arrives, and counts anew.
  let n = 0;
  while ((await receiver.recv()).type === 'mail') n++;
  assert.equal(n, MAILS);
  await sender.flush();
  receiver.dispose();
  sender.dispose();
});

test('the sender reads the next bodies while it writes one; the mails still arrive in order, a failed read where it belongs', { timeout: 20_000 }, async () => {
  const { sender, receiver } = pair(BUDGET);
  let reading = 0;
  let most = 0;
  const slowBody = (i: number) => async (): Promise<Buffer> => {
    reading++;
    most = Math.max(most, reading);
    await new Promise((r) => setTimeout(r, 20)); // a read that waits for the disk
    reading--;
    if (i === 5) throw new Error('mail 5 cannot be read');
    return bodyOf(i);
  };
  for (let i = 0; i < 5; i++) sender.send({ type: 'mail', guid: `g${i}`, uid: i + 1, receivedDate: 0, body: slowBody(i) });
  const t0 = Date.now();
  for (let i = 0; i < 5; i++) {
    const rec = await receiver.recv();
    assert.equal((rec as MailRecord).uid, i + 1);
    assert.ok((await bytesOf(rec)).equals(bodyOf(i)), `mail ${i + 1}'s body`);
  }
  assert.ok(most > 1, `bodies were read ${most} at a time`);
  assert.ok(Date.now() - t0 < 5 * 20, `5 reads of 20 ms overlapped (${Date.now() - t0} ms)`);
  // A mail that cannot be read arrives in its place without bytes: its body rejects with the
  // sender's reason, as a body the receiver could not read itself would (BodySourceError), and
  // the mails after it still come.
  sender.send({ type: 'mail', guid: 'g5', uid: 6, receivedDate: 0, body: slowBody(5) });
  sender.send({ type: 'mail', guid: 'g6', uid: 7, receivedDate: 0, body: slowBody(6) });
  const failed = (await receiver.recv()) as MailRecord;
  assert.equal(failed.uid, 6);
  await assert.rejects(Promise.resolve().then(failed.body!), (err: Error) => err.name === 'BodySourceError' && /^sender: mail 5 cannot be read$/.test(err.message));
  assert.ok((await bytesOf(await receiver.recv())).equals(bodyOf(6)), 'the mail after it');
  sender.dispose();
  receiver.dispose();
});

test('a streamed body whose read fails, at its first chunk or further in, arrives as a failed body (a spooled part removed); the mails after it still come', async (t) => {
  const tmp = privateTmp(t);
  const { sender, receiver } = pair(BUDGET);
  async function* failing(after: number, size: number): AsyncGenerator<Buffer> {
    for (let i = 0; i < after; i++) yield Buffer.alloc(size, 'x');
    throw new Error(`gone after ${after} chunks`);
  }
  const cases = [
    { after: 0, size: 1000 },
    { after: 2, size: 1000 },
    { after: 2, size: 800 << 10 }, // over the spool limit: the part received went to a file
  ];
  for (const [i, c] of cases.entries()) {
    sender.send({ type: 'mail', guid: `bad${i}`, uid: 2 * i + 1, receivedDate: 0, body: () => failing(c.after, c.size) as never });
    sender.send({ type: 'mail', guid: `good${i}`, uid: 2 * i + 2, receivedDate: 0, body: () => bodyOf(i) });
  }
  for (const [i, c] of cases.entries()) {
    const failed = (await receiver.recv()) as MailRecord;
    assert.equal(failed.uid, 2 * i + 1);
    await assert.rejects(Promise.resolve().then(failed.body!), (err: Error) => err.name === 'BodySourceError' && err.message === `sender: gone after ${c.after} chunks`);
    assert.ok((await bytesOf(await receiver.recv())).equals(bodyOf(i)), `the mail after failure ${i}`);
  }
  await sender.flush();
  assert.deepEqual(spoolFiles(tmp), [], 'the spooled part of the failed body is gone');
  sender.dispose();
  receiver.dispose();
});

test('a body that ends with a malformed failure mark is a protocol error, not a failed mail', async () => {
  const input = new PassThrough();
  const receiver = new StreamChannel(input, new PassThrough(), { peerName: 'the peer' });
  input.write('DSYNC-TS 1\n');
  input.write(`${JSON.stringify({ type: 'mail', guid: 'g', uid: 1, receivedDate: 0, hasBody: true })}\n5\nhello!not json\n`);
  await assert.rejects(receiver.recv(), /the peer sent a bad body end "not json"/);
  receiver.dispose();
});
