// One handle per mailbox at a time. A handle keeps its mailbox's state (highest modseq, rows) in
// memory and writes it back with each change; a second handle checking the same mailbox at the
// same time wrote back a stale copy: the peer state then named a modseq above the mailbox's, and
// the next change made outside dsync (an expunge) got that modseq and counted as already synced.
// Found by the Maildir <-> mbox property test: the lookahead opened the mailboxes the tree phase
// had kept open once more.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { Location } from '../../src/location/location.js';
import { Logger } from '../../src/util/log.js';
import { runBrain } from '../../src/sync/brain.js';
import { bothSettled } from '../../src/sync/run.js';
import { createPipePair } from '../../src/transport/pipe.js';
import { seedMaildir } from '../helpers/seed.js';
import { checkPeerStates } from '../helpers/digest-check.js';
import { openMaildir, tempDir } from '../storage/helpers.js';

const quiet = new Logger({ sink: { write: () => undefined } });

/** Mirrors a and b; returns, per side, how often each mailbox GUID was opened. */
async function sync(a: string, b: string, ia: string, ib: string): Promise<Map<string, number>[]> {
  const la = Location.open(await openMaildir(`maildir:${a}`), { indexPath: ia, log: quiet });
  const lb = Location.open(await openMaildir(`maildir:${b}`), { indexPath: ib, log: quiet });
  const counts = [la, lb].map((loc) => {
    const opened = new Map<string, number>();
    const open = loc.openMailbox.bind(loc);
    loc.openMailbox = (guid: string) => {
      opened.set(guid, (opened.get(guid) ?? 0) + 1);
      return open(guid);
    };
    return opened;
  });
  const [ca, cb] = createPipePair();
  try {
    await bothSettled(
      runBrain({ role: 'master', location: la, channel: ca, log: quiet, settings: { syncType: 'changed', backup: 'none', altChar: '_' } }),
      runBrain({ role: 'slave', location: lb, channel: cb, log: quiet }),
    );
  } finally {
    await la.close();
    await lb.close();
  }
  return counts;
}

test('a mailbox the tree phase keeps open is not opened again ahead of its turn, and peer states never name a modseq above the mailbox', async (t) => {
  const dir = tempDir(t);
  const [a, b] = [path.join(dir, 'a'), path.join(dir, 'b')];
  const [ia, ib] = [path.join(dir, 'a.sqlite'), path.join(dir, 'b.sqlite')];
  await seedMaildir(a, ['INBOX', 'Alpha'], 3);
  await sync(a, b, ia, ib);
  // New to each side's index: the tree phase scans them and keeps their handles for the mailbox phase.
  await seedMaildir(a, ['Gamma'], 2);
  await seedMaildir(b, ['Beta'], 2);
  await seedMaildir(b, ['INBOX'], 1);
  const counts = await sync(a, b, ia, ib);
  for (const [side, opened] of counts.entries()) {
    for (const [guid, n] of opened) assert.equal(n, 1, `side ${'ab'[side]}: mailbox ${guid} was opened ${n} times in one run`);
  }
  checkPeerStates(ia, 'a');
  checkPeerStates(ib, 'b');
});

test('opening a mailbox that has an open handle is an internal error; once closed it opens again', async (t) => {
  const dir = tempDir(t);
  const a = path.join(dir, 'a');
  await seedMaildir(a, ['INBOX'], 1);
  const loc = Location.open(await openMaildir(`maildir:${a}`), { indexPath: path.join(dir, 'a.sqlite'), log: quiet });
  try {
    await loc.refreshTree();
    const guid = loc.mailboxes()[0]!.guid;
    const first = await loc.openMailbox(guid);
    assert.ok(first);
    await assert.rejects(loc.openMailbox(guid), /internal error: mailbox INBOX opened a second time while open/);
    await first.close();
    const again = await loc.openMailbox(guid);
    assert.ok(again);
    await again.close();
  } finally {
    await loc.close();
  }
});
