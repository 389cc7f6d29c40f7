// A mailbox's work after its barrier (expunges, flag updates, its sync state) runs while the
// sides go on with the next mailbox (see finishLater in brain.ts). When it fails, the run still
// fails with that error, both brains stop, and nothing is left running against closed stores.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { Location } from '../../src/location/location.js';
import { Logger } from '../../src/util/log.js';
import { runBrain } from '../../src/sync/brain.js';
import { bothSettled } from '../../src/sync/run.js';
import { createPipePair } from '../../src/transport/pipe.js';
import { StorageError, type MailStore, type StoreMailbox } from '../../src/storage/types.js';
import { Flag } from '../../src/model/flags.js';
import { seedMaildir } from '../helpers/seed.js';
import { openMaildir, tempDir } from '../storage/helpers.js';

const quiet = new Logger({ sink: { write: () => undefined } });

/** The store, with flag updates of one mailbox failing (after a delay: the next mailbox is under way). */
function failingFlags(store: MailStore, mailbox: string): MailStore {
  return new Proxy(store, {
    get(target, prop, receiver) {
      if (prop !== 'openMailbox') return Reflect.get(target, prop, receiver);
      return async (name: string[]) => {
        const box: StoreMailbox = await target.openMailbox(name);
        if (name.join('/') !== mailbox) return box;
        return new Proxy(box, {
          get(b, p, r) {
            if (p !== 'updateFlags') return Reflect.get(b, p, r);
            return async () => {
              await new Promise((res) => setTimeout(res, 20));
              throw new StorageError(`${mailbox}: injected failure`, 'IO');
            };
          },
        });
      };
    },
  });
}

async function sync(a: string, b: string, ia: string, ib: string, failIn?: string): Promise<unknown> {
  const la = Location.open(await openMaildir(`maildir:${a}`), { indexPath: ia, log: quiet });
  const storeB = await openMaildir(`maildir:${b}`);
  const lb = Location.open(failIn ? failingFlags(storeB, failIn) : storeB, { indexPath: ib, log: quiet });
  const [ca, cb] = createPipePair();
  try {
    await bothSettled(
      runBrain({ role: 'master', location: la, channel: ca, log: quiet, settings: { syncType: 'changed', backup: 'none', altChar: '_' } }),
      runBrain({ role: 'slave', location: lb, channel: cb, log: quiet }),
    );
    return undefined;
  } catch (err) {
    return err;
  } finally {
    la.close();
    lb.close();
  }
}

for (const failIn of ['Alpha', 'Omega'] as const) {
  const where = failIn === 'Alpha' ? 'a mailbox in the middle of the run' : 'the last mailbox';
  test(`flag updates failing in ${where} after its barrier: the run fails with that error`, async (t) => {
    const dir = tempDir(t);
    const [a, b] = [path.join(dir, 'a'), path.join(dir, 'b')];
    const [ia, ib] = [path.join(dir, 'a.sqlite'), path.join(dir, 'b.sqlite')];
    const boxes = ['Alpha', 'INBOX', 'Omega'];
    await seedMaildir(a, boxes, 3);
    assert.equal(await sync(a, b, ia, ib), undefined, 'the first mirror');
    // Flags change on A in every mailbox: B updates them after each barrier.
    const s = await openMaildir(`maildir:${a}`);
    for (const name of boxes) {
      const mb = await s.openMailbox([name]);
      await mb.scan();
      await mb.updateFlags([{ uid: 1, flags: Flag.Flagged, keywords: [] }]);
      await mb.close();
    }
    await s.close();
    const err = await sync(a, b, ia, ib, failIn);
    assert.ok(err instanceof Error, 'the run failed');
    assert.match(err.message, new RegExp(`${failIn}: injected failure`));
    // Nothing is still running: a clean run now brings B up to date.
    assert.equal(await sync(a, b, ia, ib), undefined, 'the next run');
    const sb = await openMaildir(`maildir:${b}`);
    for (const name of boxes) {
      const mb = await sb.openMailbox([name]);
      const first = (await mb.scan()).find((m) => m.uid === 1);
      assert.equal(first?.flags, Flag.Flagged, `${name}: the flag change arrived`);
      await mb.close();
    }
    await sb.close();
  });
}
