// With the peer in another process, both sides check their mailboxes for changes before the tree
// exchange and keep the handles for the run (checkBeforeTree in brain.ts); the master does so while
// the peer's process starts. The run must come out as it would without that, also when another
// program renames or deletes a mailbox between that check and the tree phase. The two brains run
// here in one process, joined by the byte-stream channel of remote runs.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { PassThrough } from 'node:stream';
import { Location } from '../../src/location/location.js';
import { Logger } from '../../src/util/log.js';
import { runBrain } from '../../src/sync/brain.js';
import { bothSettled } from '../../src/sync/run.js';
import { StreamChannel } from '../../src/transport/stream.js';
import { Flag } from '../../src/model/flags.js';
import { seedMaildir } from '../helpers/seed.js';
import { snapshot } from '../helpers/snapshot.js';
import { openMaildir, tempDir } from '../storage/helpers.js';

/**
 * Mirrors a (master) and b (slave); the slave starts after `meanwhile` has run, which is called
 * once the master logged that it checked its mailboxes while waiting. Returns both sides' logs
 * (the slave's lines marked).
 */
async function sync(a: string, b: string, ia: string, ib: string, meanwhile?: () => Promise<void>): Promise<string[]> {
  const lines: string[] = [];
  let checked: () => void = () => undefined;
  const checkedNow = new Promise<void>((r) => (checked = r));
  const log = new Logger({
    sink: {
      write: (s: string) => {
        lines.push(s.trimEnd());
        if (s.includes('checked for changes before the tree exchange')) checked();
      },
    },
    verbose: true,
    debug: true,
  });
  const slaveLines: string[] = [];
  const slaveLog = new Logger({ sink: { write: (s: string) => slaveLines.push(s.trimEnd()) }, debug: true });
  const la = Location.open(await openMaildir(`maildir:${a}`), { indexPath: ia, log });
  const lb = Location.open(await openMaildir(`maildir:${b}`), { indexPath: ib, log: slaveLog });
  const [toA, toB] = [new PassThrough(), new PassThrough()];
  const [ca, cb] = [new StreamChannel(toA, toB, { peerName: 'side B' }), new StreamChannel(toB, toA, { peerName: 'side A' })];
  try {
    const master = runBrain({ role: 'master', location: la, channel: ca, log, settings: { syncType: 'changed', backup: 'none', altChar: '_' } });
    const slave = (async () => {
      if (meanwhile) {
        await checkedNow;
        await meanwhile();
      }
      return runBrain({ role: 'slave', location: lb, channel: cb, log: slaveLog });
    })();
    const [res] = await bothSettled(master, slave);
    assert.equal(res.changesDuringSync, false, lines.join('\n'));
  } finally {
    ca.dispose();
    cb.dispose();
    await la.close();
    await lb.close();
  }
  return [...lines, ...slaveLines.map((l) => `slave: ${l}`)];
}

test('a master waiting for its remote peer checks its mailboxes meanwhile; changes made before, and a rename and a delete by another program after that check, all come out right', async (t) => {
  const dir = tempDir(t);
  const [a, b] = [path.join(dir, 'a'), path.join(dir, 'b')];
  const [ia, ib] = [path.join(dir, 'a.sqlite'), path.join(dir, 'b.sqlite')];
  await seedMaildir(a, ['INBOX', 'Alpha', 'Gone', 'Omega'], 3);
  await sync(a, b, ia, ib);
  // Changes on A before the run: a flag, an expunge, new mail.
  const s = await openMaildir(`maildir:${a}`);
  const inbox = await s.openMailbox(['INBOX']);
  await inbox.scan();
  await inbox.updateFlags([{ uid: 1, flags: Flag.Seen, keywords: ['work'] }]);
  await inbox.expunge([2]);
  await inbox.close();
  await s.close();
  await seedMaildir(a, ['Omega', 'Alpha'], 2);
  // While the master waits: another program renames Alpha and deletes Gone on A, after the
  // master checked them, and delivers to INBOX.
  const lines = await sync(a, b, ia, ib, async () => {
    const other = await openMaildir(`maildir:${a}`);
    await other.renameMailbox(['Alpha'], ['Beta']);
    await other.deleteMailbox(['Gone']);
    await other.close();
    await seedMaildir(a, ['INBOX'], 1);
  });
  const waited = lines.filter((l) => l.includes('before the tree exchange'));
  assert.equal(waited.length, 2, lines.join('\n'));
  assert.match(waited[0]!, /^dsync: debug: 4 mailboxes checked for changes before the tree exchange \(4 kept open\)/);
  assert.match(waited[1]!, /^slave: dsync: debug: 4 mailboxes checked for changes before the tree exchange \(4 kept open\)/);
  // The mailbox phase checked only the renamed one again (its handle had the old name).
  assert.deepEqual(lines.filter((l) => /^dsync: debug: .*: checked for changes in/.test(l)).map((l) => l.replace(/ in [\d.]+ ms/, '')), ['dsync: debug: mailbox Beta: checked for changes'], lines.join('\n'));
  assert.ok(!lines.some((l) => l.includes('vanished')), lines.join('\n'));
  // A second run has nothing to do, and both sides are the same.
  await sync(a, b, ia, ib);
  const [sa, sb] = [await snapshot(`maildir:${a}`), await snapshot(`maildir:${b}`)];
  assert.deepEqual(sb, sa);
  assert.deepEqual(sa.mailboxes.map((m) => m.name).sort(), ['Beta', 'INBOX', 'Omega']);
  assert.equal(sa.mailboxes.find((m) => m.name === 'Beta')!.messages.length, 5);
  const inboxA = sa.mailboxes.find((m) => m.name === 'INBOX')!;
  assert.deepEqual(inboxA.messages.map((m) => m.uid), [1, 3, 4]);
  assert.equal(inboxA.messages[0]!.flags.length, 1);
  assert.equal(sa.mailboxes.find((m) => m.name === 'Omega')!.messages.length, 5);
});
