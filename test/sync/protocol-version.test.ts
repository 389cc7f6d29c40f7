// A peer speaking another record protocol version is refused at the handshake, before anything
// else is exchanged (version 2 sends the tombstones before the tree; a version 1 peer would read
// them as a tree node and fail confusingly, or worse).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { Location } from '../../src/location/location.js';
import { Logger } from '../../src/util/log.js';
import { PROTOCOL, runBrain } from '../../src/sync/brain.js';
import { createPipePair } from '../../src/transport/pipe.js';
import { expectRecord } from '../../src/transport/channel.js';
import { makeMaildir, openMaildir, tempDir } from '../storage/helpers.js';

test('a peer with another record protocol version is refused with both versions named', async (t) => {
  const root = path.join(tempDir(t), 'Maildir');
  makeMaildir(root);
  const loc = Location.open(await openMaildir(`maildir:${root}`), { indexPath: ':memory:', log: new Logger({ sink: { write: () => undefined } }) });
  t.after(() => loc.close());
  const [ours, peer] = createPipePair();
  const master = runBrain({ role: 'master', location: loc, channel: ours, log: new Logger({ sink: { write: () => undefined } }), settings: { syncType: 'changed', backup: 'none', altChar: '_' } });
  const hello = await expectRecord(peer, 'handshake');
  assert.equal(hello.protocol, PROTOCOL);
  peer.send({ ...hello, protocol: PROTOCOL - 1, locationId: 'f'.repeat(32) });
  await assert.rejects(master, new RegExp(`the peer speaks protocol ${PROTOCOL - 1}, we speak ${PROTOCOL}`));
  // Nothing but the handshake was sent.
  await assert.rejects(peer.recv());
});
