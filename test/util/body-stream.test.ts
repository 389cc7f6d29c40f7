// Body streams without node:stream: a file's bytes exactly, in bounded chunks, and its descriptor
// closed however the reader stops (read to the end, breaks off, gives up before or during a read).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { buffersBody, generatorBody, openFileBody } from '../../src/util/body-stream.js';
import { scratchDir } from '../helpers/tmp.js';

const openFds = () => fs.readdirSync('/proc/self/fd').length;
/** fs.close completes in the thread pool: give it a moment. */
const settle = () => new Promise((r) => setTimeout(r, 20));

function bigFile(): { file: string; bytes: Buffer } {
  const bytes = Buffer.alloc(600 * 1024 + 7);
  for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 31) & 0xff;
  const file = path.join(scratchDir('dsync-body-'), 'mail');
  fs.writeFileSync(file, bytes);
  return { file, bytes };
}

test('a file body yields the file exactly, in chunks of at most 256 KiB, and closes the file at the end', async () => {
  const { file, bytes } = bigFile();
  const before = openFds();
  const chunks: Buffer[] = [];
  for await (const c of await openFileBody(file)) chunks.push(c);
  assert.deepEqual(Buffer.concat(chunks), bytes);
  assert.ok(chunks.length >= 3 && chunks.every((c) => c.length <= 256 * 1024), `chunk sizes ${chunks.map((c) => c.length).join(', ')}`);
  await settle();
  assert.equal(openFds(), before);
});

test('a file body given up before, after part of, or during a read closes its file once', async () => {
  const { file, bytes } = bigFile();
  const before = openFds();
  // Before reading.
  const unread = await openFileBody(file);
  assert.equal(openFds(), before + 1);
  unread.destroy();
  unread.destroy();
  await settle();
  assert.equal(openFds(), before, 'closed without being read');
  // After the first chunk: a consumer's break.
  for await (const c of await openFileBody(file)) {
    assert.deepEqual(c, bytes.subarray(0, c.length));
    break;
  }
  await settle();
  assert.equal(openFds(), before, 'closed after a break');
  // While a read is in the thread pool: closed only after it.
  const body = await openFileBody(file);
  const it = body[Symbol.asyncIterator]();
  const pending = it.next();
  body.destroy();
  const first = await pending;
  assert.ok(first.done || Buffer.isBuffer(first.value), 'the read in flight completes');
  assert.equal((await it.next()).done, true, 'nothing more after destroy');
  await settle();
  assert.equal(openFds(), before, 'closed after the read in flight');
});

test('a missing file rejects with its ENOENT; generator and buffer bodies end their sources on destroy', async () => {
  await assert.rejects(openFileBody(path.join(scratchDir('dsync-body-'), 'gone')), (e: NodeJS.ErrnoException) => e.code === 'ENOENT');
  let released = false;
  const body = generatorBody(
    (async function* () {
      try {
        yield Buffer.from('a');
        yield Buffer.from('b');
      } finally {
        released = true;
      }
    })(),
  );
  const it = body[Symbol.asyncIterator]();
  assert.deepEqual((await it.next()).value, Buffer.from('a'));
  body.destroy();
  await settle();
  assert.ok(released, 'the generator ran its finally');
  assert.equal((await it.next()).done, true);
  const parts: Buffer[] = [];
  for await (const c of buffersBody([Buffer.from('x'), Buffer.from('y')])) parts.push(c);
  assert.equal(Buffer.concat(parts).toString(), 'xy');
});
