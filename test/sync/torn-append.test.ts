// A mirror into an mbox killed in the middle of appending a mail (found by the crash soak, seed
// 142, Maildir <-> mbox: the next run exited 0 with a 5 KB mail on the mbox side against 27 KB on
// the Maildir side). Appends are made in place; read as it is, the cut-short mail has the header
// hash and the UID of the mail it was meant to be, so the next run took it for that mail. Now the
// record of the append hides the torn tail and the next writer cuts it off: the next run copies
// the mail again, whole.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { makeMessage } from '../helpers/corpus.js';
import { mirror } from '../helpers/mirror.js';
import { snapshot } from '../helpers/snapshot.js';
import { scratchDir } from '../helpers/tmp.js';
import { putFile } from '../robustness/helpers.js';
import { killAfterFirstWritev } from '../helpers/stalled-child.js';

const mirrorModule = new URL('../helpers/mirror.js', import.meta.url).href;

test('a mirror killed while appending a mail to an mbox: the next run copies that mail again, whole', { timeout: 60_000 }, async () => {
  const root = scratchDir('dsync-torn-append-');
  const a = path.join(root, 'a');
  const b = path.join(root, 'b');
  const specB = `mbox:${b}:INBOX=${b}/inbox`;
  putFile(a, 'cur', '1700000000.first.x:2,S', makeMessage('first'));
  assert.equal((await mirror(`maildir:${a}`, specB)).exitCode, 0);
  // A mail of 10 MB: its append takes several writes of 4 MB.
  const big = Buffer.concat([makeMessage('big'), Buffer.from(('z'.repeat(99) + '\n').repeat(100_000))]);
  putFile(a, 'cur', '1700000100.big.x:2,S', big);

  // The mirror in a child that stops for good after the first write of the append, then is killed.
  const out = await killAfterFirstWritev(
    root,
    `const { mirror } = await import(${JSON.stringify(mirrorModule)});
     await mirror(${JSON.stringify(`maildir:${a}`)}, ${JSON.stringify(specB)});`,
  );
  assert.match(out, /stalled/, 'the child began the append');
  assert.doesNotMatch(out, /done/);
  assert.ok(fs.existsSync(`${b}/inbox.dsync-append.lock`), 'the record of the append is left behind');

  let r = await mirror(`maildir:${a}`, specB);
  if (r.exitCode === 2) r = await mirror(`maildir:${a}`, specB);
  assert.equal(r.exitCode, 0, r.log.join('\n'));
  const sa = await snapshot(`maildir:${a}`);
  const sb = await snapshot(specB);
  const strip = (s: typeof sa) => s.mailboxes.map((m) => ({ name: m.name, messages: m.messages }));
  assert.deepEqual(strip(sb), strip(sa), 'both sides hold the same mails, the big one whole');
  assert.ok(sb.mailboxes[0]!.messages.some((m) => m.size === big.length));
  assert.ok(r.log.some((l) => /removed the last \d+ bytes, the unfinished part of an append/.test(l)), r.log.join('\n'));
  assert.deepEqual((await mirror(`maildir:${a}`, specB)).summary, [], 'then nothing to do');
});
