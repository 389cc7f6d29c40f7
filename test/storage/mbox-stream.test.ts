// Bounded memory in the mbox store: bodies saved from streams in arbitrary pieces, bodies beyond
// the save's memory budget going through a spool file, big messages served as streams, the
// chunked From_-line (un)quoting behind both, and many concurrent readers of one mailbox.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import { Readable } from 'node:stream';
import fc from 'fast-check';
import { Flag } from '../../src/model/flags.js';
import type { SaveRequest, StoreMailbox } from '../../src/storage/types.js';
import { headerHash } from '../../src/storage/header-hash.js';
import { LineFilter, quoteFromLines, unquoteFromLines, type MboxQuoting } from '../../src/storage/mbox/parse.js';
import { tempDir, warnings } from './helpers.js';
import { bodyOf, openMbox } from './mbox-helpers.js';

const T0 = 1704103200; // 2024-01-01 10:00:00 UTC

/** A stream handing out b in pieces of the given sizes (cycled). */
function pieces(b: Buffer, sizes: number[]): Readable {
  const out: Buffer[] = [];
  for (let pos = 0, i = 0; pos < b.length; i++) {
    const n = Math.max(1, sizes[i % sizes.length]!);
    out.push(b.subarray(pos, pos + n));
    pos += n;
  }
  return Readable.from(out, { objectMode: false });
}

function req(uid: number, body: SaveRequest['body'], keywords: string[] = []): SaveRequest {
  return { uid, guid: `g${uid}`, flags: Flag.Seen, keywords, internalDate: T0 + uid, body };
}

/** The file from its first real message on (the pseudo message holds the creation time). */
function afterPseudo(file: string): string {
  const text = fs.readFileSync(file, 'latin1');
  return text.slice(text.indexOf('\nFrom MAILER-DAEMON '));
}

function tempFiles(dir: string): string[] {
  return fs.readdirSync(dir).filter((n) => n.includes('.dsync-'));
}

/** A message of about `size` bytes whose body has From_ lines (quoted and not) at awkward places. */
function bigMessage(size: number, withQuoted: boolean): Buffer {
  const parts: string[] = ['From: big@example.org\nSubject: big\nMessage-ID: <big@x>\nDate: Mon, 1 Jan 2024 10:00:00 +0000\n\n'];
  let n = parts[0]!.length;
  let i = 0;
  while (n < size) {
    const line =
      i % 97 === 0
        ? 'From someone@example.org Mon Jan  1 10:00:00 2024\n'
        : withQuoted && i % 89 === 0
          ? '>From quoted\n'
          : withQuoted && i % 83 === 0
            ? '>>From twice\n'
            : `${'line'.repeat(1 + (i % 30))} ${i}\n`;
    parts.push(line);
    n += line.length;
    i++;
  }
  return Buffer.from(parts.join(''), 'latin1');
}

test('LineFilter: (un)quoting in pieces gives what it gives on the whole', () => {
  const token = fc.constantFrom('From ', '>From ', '>>From ', '>', 'F', 'From', 'x', '\n', '\r\n', ' ', 'rom ');
  fc.assert(
    fc.property(
      fc.array(token, { maxLength: 60 }),
      fc.array(fc.integer({ min: 1, max: 9 }), { minLength: 1, maxLength: 8 }),
      fc.constantFrom<MboxQuoting>('mboxo', 'mboxrd'),
      fc.boolean(),
      (tokens, sizes, quoting, unquote) => {
        const whole = Buffer.from(tokens.join(''), 'latin1');
        const fn = (b: Buffer) => (unquote ? unquoteFromLines(b, quoting) : quoteFromLines(b, quoting));
        const f = new LineFilter(fn);
        const out: Buffer[] = [];
        for (let pos = 0, i = 0; pos < whole.length; i++) {
          const n = sizes[i % sizes.length]!;
          out.push(...f.push(whole.subarray(pos, pos + n)));
          pos += n;
        }
        out.push(...f.end());
        assert.equal(Buffer.concat(out).toString('latin1'), fn(whole).toString('latin1'));
      },
    ),
    { numRuns: 500 },
  );
});

test('save: a body arriving in small pieces is stored exactly as the same body given whole', async (t) => {
  const dir = tempDir(t, 'dsync-mbox-');
  const samples = [
    'From: a@example.org\nSubject: plain\nMessage-ID: <p@x>\n\nHello.\nFrom here\n',
    'From: a@example.org\r\nSubject: crlf\r\n\r\nline 1\r\n\r\n',
    'From sender@example.org Mon Jan  1 10:00:00 2024\nSubject: with envelope\n\nbody\n',
    'Subject: header only\n',
    'Subject: header only, no newline',
    '\n\nbody after an empty header\n',
    '\r\n\r\n',
    'Subject: x\nFrom a@b Mon Jan  1 10:00:00 2024\nX: y\n\nbody\n',
    'Subject: metadata\nStatus: RO\nX-UID: 99\nContent-Length: 3\n\nabc\n',
    '',
    'F',
    'From a@b Mon Jan  1 10:00:00 2024',
  ];
  for (const quoting of ['none', 'mboxrd'] as const) {
    const w = warnings();
    const whole = await openMbox(`mbox:${dir}/${quoting}-whole`, { warn: w.warn, quoting });
    const split = await openMbox(`mbox:${dir}/${quoting}-split`, { warn: w.warn, quoting });
    for (const s of [whole, split]) await s.createMailbox(['Box'], { guid: 'ab'.repeat(16), uidValidity: 1700000002 });
    const a = await whole.openMailbox(['Box']);
    const b = await split.openMailbox(['Box']);
    const bodies = samples.map((s) => Buffer.from(s, 'latin1'));
    await a.save(bodies.map((body, i) => req(i + 1, body)));
    let uid = 1;
    for (const sizes of [[1], [2], [3, 1, 7], [64]]) {
      // Same messages again under new UIDs in both files, split differently each time.
      const first = uid + samples.length;
      await a.save(bodies.map((body, i) => req(first + i, body)));
      await b.save(bodies.map((body, i) => req(first + i, () => pieces(body, sizes))));
      uid = first;
    }
    // b lacks the first round: compare the rounds both have.
    const sa = await a.scan();
    const sb = await b.scan();
    assert.deepEqual(
      sb.map((m) => [m.uid, m.size, m.hdrHash]),
      sa.filter((m) => m.uid > samples.length).map((m) => [m.uid, m.size, m.hdrHash]),
      quoting,
    );
    for (const m of sb) assert.deepEqual(await bodyOf(b, m.uid), await bodyOf(a, m.uid), `${quoting} UID ${m.uid}`);
    const ta = afterPseudo(`${dir}/${quoting}-whole/Box`);
    const tb = afterPseudo(`${dir}/${quoting}-split/Box`);
    assert.equal(tb, ta.slice(ta.length - tb.length), `${quoting}: the files hold the same bytes`);
    assert.ok(w.has(/starts with an mbox "From " line; it is dropped/));
  }
});

test('save: bodies beyond the memory budget go through a spool file, which is always removed', async (t) => {
  const dir = tempDir(t, 'dsync-mbox-');
  const store = await openMbox(`mbox:${dir}/m`);
  await store.createMailbox(['Big'], { guid: 'cd'.repeat(16), uidValidity: 1700000003 });
  const box = await store.openMailbox(['Big']);
  await box.save([req(1, Buffer.from('Subject: small\n\nsmall\n'))]);
  // 4 x 3 MB from streams: over the 8 MB budget, so the last ones are spooled. A new keyword
  // forces a rewrite, which copies them from the spool too.
  const big = [0, 1, 2, 3].map((i) => bigMessage(3_000_000 + i * 1000, true));
  await box.save(big.map((b, i) => req(2 + i, () => pieces(b, [65536, 1000, 99999]), i === 3 ? ['new'] : [])));
  assert.deepEqual(tempFiles(`${dir}/m`), []);
  await box.save(big.slice(0, 3).map((b, i) => req(10 + i, () => pieces(b, [65536]))));
  assert.deepEqual(tempFiles(`${dir}/m`), []);
  const fresh = await (await openMbox(`mbox:${dir}/m`, { readOnly: true })).openMailbox(['Big']);
  const msgs = await fresh.scan();
  assert.deepEqual(msgs.map((m) => m.uid), [1, 2, 3, 4, 5, 10, 11, 12]);
  assert.deepEqual(msgs[4]!.keywords, ['new']);
  for (const [uid, b] of [[2, big[0]!], [5, big[3]!], [12, big[2]!]] as const) {
    assert.ok((await bodyOf(fresh, uid)).equals(b), `UID ${uid}`);
    assert.equal(msgs.find((m) => m.uid === uid)!.size, b.length);
  }
  // A body that fails after others were spooled: nothing is written, the spool is gone.
  const before = fs.readFileSync(`${dir}/m/Big`);
  const failing = (): Readable =>
    Readable.from(
      (async function* () {
        yield Buffer.from('Subject: fails\n\n');
        yield Buffer.alloc(100_000, 0x61);
        throw new Error('peer went away');
      })(),
    );
  await assert.rejects(box.save([...big.slice(0, 3).map((b, i) => req(20 + i, () => pieces(b, [65536]))), req(30, failing)]), /peer went away/);
  assert.ok(fs.readFileSync(`${dir}/m/Big`).equals(before));
  assert.deepEqual(tempFiles(`${dir}/m`), []);
});

async function readAll(box: StoreMailbox, uid: number): Promise<{ chunks: number; bytes: Buffer }> {
  const chunks: Buffer[] = [];
  for await (const c of await box.openBody(uid)) chunks.push(c as Buffer);
  return { chunks: chunks.length, bytes: Buffer.concat(chunks) };
}

test('bodies: big messages are streamed in pieces, quoted or not; small ones come whole', async (t) => {
  const dir = tempDir(t, 'dsync-mbox-');
  for (const quoting of ['none', 'mboxrd', 'mboxo'] as const) {
    const store = await openMbox(`mbox:${dir}/${quoting}`, { quoting });
    const inbox = await store.openMailbox(['INBOX']);
    // mboxo cannot keep ">From " lines apart from quoted "From " lines: none in its message.
    const big = bigMessage(2_500_000, quoting !== 'mboxo');
    const small = Buffer.from('Subject: small\nMessage-ID: <s@x>\n\nFrom me\n>From you\n');
    const smallServed = quoting === 'mboxo' ? Buffer.from(small.toString().replace('>From you', 'From you')) : small;
    await inbox.save([req(1, big), req(2, small)]);
    const reader = await (await openMbox(`mbox:${dir}/${quoting}`, { readOnly: true, quoting })).openMailbox(['INBOX']);
    const msgs = await reader.scan();
    assert.deepEqual(msgs.map((m) => m.size), [big.length, smallServed.length], quoting);
    assert.equal(msgs[0]!.hdrHash, headerHash(big));
    const r = await readAll(reader, 1);
    assert.ok(r.chunks > 1, `${quoting}: streamed in pieces`);
    assert.ok(r.bytes.equals(big), `${quoting}: big body`);
    assert.ok((await bodyOf(reader, 2)).equals(smallServed), `${quoting}: small body`);
    assert.equal(await reader.readBody!(1, 256 * 1024), null, 'too big for readBody');
    assert.ok((await reader.readBody!(2, 256 * 1024))!.equals(smallServed));
    assert.equal(await reader.readBody!(99, 256 * 1024), null, 'unknown UID');
  }
});

test('bodies: a big message\'s stream given up before or while it is read closes the mbox file', async (t) => {
  const dir = tempDir(t, 'dsync-mbox-');
  const store = await openMbox(`mbox:${dir}/m`, {});
  await (await store.openMailbox(['INBOX'])).save([req(1, bigMessage(2_500_000, false))]);
  const reader = await (await openMbox(`mbox:${dir}/m`, { readOnly: true })).openMailbox(['INBOX']);
  await reader.scan();
  const openFds = () => fs.readdirSync('/proc/self/fd').length;
  const settle = () => new Promise((r) => setTimeout(r, 50));
  await settle();
  const before = openFds();
  const unread = await reader.openBody(1);
  unread.destroy();
  await settle();
  assert.equal(openFds(), before, 'closed without being read');
  const partly = await reader.openBody(1);
  const it = partly[Symbol.asyncIterator]();
  assert.ok(!(await it.next()).done);
  const pending = it.next();
  partly.destroy();
  await pending.catch(() => undefined);
  await settle();
  assert.equal(openFds(), before, 'closed after part of it was read');
});

test('bodies: a mail read after another program appended to or rewrote the file comes from a fresh parse', async (t) => {
  const dir = tempDir(t, 'dsync-mbox-');
  const writer = await (await openMbox(`mbox:${dir}/m`)).openMailbox(['INBOX']);
  const bodies = [1, 2, 3].map((i) => Buffer.from(`Subject: ${i}\nMessage-ID: <${i}@x>\n\n${'y'.repeat(i * 100)}\n`));
  await writer.save(bodies.map((b, i) => req(i + 1, b)));
  const reader = await (await openMbox(`mbox:${dir}/m`, { readOnly: true })).openMailbox(['INBOX']);
  await reader.scan(); // parsed now
  const more = Buffer.from('Subject: 4\nMessage-ID: <4@x>\n\nappended\n');
  await writer.save([req(4, more)]); // appended: the file's size and times change
  assert.ok((await reader.readBody!(2, 1 << 20))!.equals(bodies[1]!));
  assert.ok((await reader.readBody!(4, 1 << 20))!.equals(more));
  await writer.expunge([1]); // rewritten: every offset moves
  assert.ok((await reader.readBody!(3, 1 << 20))!.equals(bodies[2]!));
  assert.ok((await bodyOf(reader, 2)).equals(bodies[1]!));
});

test('bodies: many concurrent readers of a mailbox nobody has read yet all get the right bytes', async (t) => {
  const dir = tempDir(t, 'dsync-mbox-');
  const store = await openMbox(`mbox:${dir}/m`);
  const inbox = await store.openMailbox(['INBOX']);
  const bodies = Array.from({ length: 300 }, (_, i) => Buffer.from(`Subject: ${i}\nMessage-ID: <${i}@x>\n\n${'x'.repeat(i * 37)}\n`));
  await inbox.save(bodies.map((b, i) => req(i + 1, b)));
  const reader = await (await openMbox(`mbox:${dir}/m`, { readOnly: true })).openMailbox(['INBOX']);
  const got = await Promise.all(bodies.map((_, i) => (i % 2 ? bodyOf(reader, i + 1) : reader.readBody!(i + 1, 1 << 20))));
  got.forEach((b, i) => assert.ok(b?.equals(bodies[i]!), `UID ${i + 1}`));
});

test('save: a spool file left by a crashed save on this host is removed; one of another host is kept', async (t) => {
  const dir = tempDir(t, 'dsync-mbox-');
  const w = warnings();
  const store = await openMbox(`mbox:${dir}/m`, { warn: w.warn });
  const inbox = await store.openMailbox(['INBOX']);
  const host = os.hostname();
  fs.writeFileSync(`${dir}/m/inbox.dsync-spool-${host}-999999999-ab12.tmp.lock`, 'half a body');
  fs.writeFileSync(`${dir}/m/inbox.dsync-spool-${host}-${process.pid}-ab12.tmp.lock`, 'ours (alive)');
  fs.writeFileSync(`${dir}/m/inbox.dsync-spool-other.host-999999999-ab12.tmp.lock`, 'not ours to judge');
  await inbox.save([req(1, Buffer.from('Subject: 1\n\n1\n'))]);
  assert.deepEqual(
    tempFiles(`${dir}/m`).sort(),
    [`inbox.dsync-spool-${host}-${process.pid}-ab12.tmp.lock`, 'inbox.dsync-spool-other.host-999999999-ab12.tmp.lock'].sort(),
  );
  assert.ok(w.has(/left by an interrupted save/));
});
