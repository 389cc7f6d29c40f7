// Random operation histories applied to two real Maildirs, mirrored after each round, with the
// mirror's invariants checked. Used by the property test and to replay a counterexample.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as os from 'node:os';
import { createHash, randomBytes } from 'node:crypto';
import fc from 'fast-check';
import { makeMessage } from './corpus.js';
import { readAll, snapshot, type Snapshot } from './snapshot.js';
import { mirror } from './mirror.js';
import { checkDigests, checkPeerStates } from './digest-check.js';
import { INDEX_FILE } from '../../src/sync/run.js';
import { parseMailLocation } from '../../src/storage/location.js';
import { openStore } from '../../src/storage/open.js';

const NAMES = [['A'], ['B'], ['A', 'x'], ['Ünï'], ['C']];
/** mbox cannot keep a mailbox below a mailbox (a file): the nested name lives under a plain directory. */
export const MBOX_NAMES = [['A'], ['B'], ['D', 'x'], ['Ünï'], ['C']];
const KEYWORDS = ['work', 'home', '$Junk'];

export type Op =
  | { k: 'deliver'; box: number; n: number }
  | { k: 'flag'; box: number; nth: number; flags: number; kw: number }
  | { k: 'expunge'; box: number; nth: number }
  | { k: 'create'; name: number }
  | { k: 'rename'; box: number; name: number }
  | { k: 'delete'; box: number }
  | { k: 'subscribe'; box: number; on: boolean };

export const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 5, arbitrary: fc.record({ k: fc.constant('deliver' as const), box: fc.nat(9), n: fc.integer({ min: 1, max: 3 }) }) },
  { weight: 4, arbitrary: fc.record({ k: fc.constant('flag' as const), box: fc.nat(9), nth: fc.nat(20), flags: fc.nat(31), kw: fc.nat(7) }) },
  { weight: 3, arbitrary: fc.record({ k: fc.constant('expunge' as const), box: fc.nat(9), nth: fc.nat(20) }) },
  { weight: 2, arbitrary: fc.record({ k: fc.constant('create' as const), name: fc.nat(NAMES.length - 1) }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('rename' as const), box: fc.nat(9), name: fc.nat(NAMES.length - 1) }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('delete' as const), box: fc.nat(9) }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('subscribe' as const), box: fc.nat(9), on: fc.boolean() }) },
);
export const roundArb = fc.record({ a: fc.array(opArb, { maxLength: 6 }), b: fc.array(opArb, { maxLength: 6 }) });

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex').slice(0, 16);

interface Model {
  /** Bodies that must exist somewhere after the sync (delivered and not expunged/deleted). */
  live: Set<string>;
  counter: number;
}

async function apply(loc: string, op: Op, model: Model, names: string[][]): Promise<void> {
  const store = await openStore(parseMailLocation(loc, {}), { warn: () => {} });
  try {
    const boxes = (await store.listMailboxes()).filter((b) => b.selectable).sort((x, y) => (x.name.join('/') < y.name.join('/') ? -1 : 1));
    const pick = boxes[op.k === 'create' ? 0 : op.box % boxes.length];
    switch (op.k) {
      case 'deliver': {
        for (let i = 0; i < op.n; i++) {
          const body = makeMessage(`m${model.counter++}`);
          model.live.add(sha(body));
          // Deliver through the store's own save path at UIDNEXT, as an MDA with uidlist support would.
          const mb2 = await store.openMailbox(pick.name);
          await mb2.scan();
          const uidNext = (await mb2.status()).uidNext;
          await mb2.save([{ uid: uidNext, guid: randomBytes(8).toString('hex'), flags: 0, keywords: [], internalDate: 1_700_000_000 + model.counter, body }]);
          await mb2.close();
        }
        break;
      }
      case 'flag':
      case 'expunge': {
        const mb = await store.openMailbox(pick.name);
        const msgs = await mb.scan();
        if (msgs.length > 0) {
          const m = msgs[op.nth % msgs.length];
          if (op.k === 'flag') {
            const kw = KEYWORDS.filter((_, i) => op.kw & (1 << i));
            await mb.updateFlags([{ uid: m.uid, flags: op.flags, keywords: kw }]);
          } else {
            const body = await readAll(await mb.openBody(m.uid));
            model.live.delete(sha(body));
            await mb.expunge([m.uid]);
          }
        }
        await mb.close();
        break;
      }
      case 'create': {
        const name = names[op.name];
        if (boxes.some((b) => b.name.join('/') === name.join('/'))) break;
        await store.createMailbox(name, { guid: randomBytes(16).toString('hex'), uidValidity: await store.newUidValidity() });
        break;
      }
      case 'rename': {
        const to = names[op.name];
        const all = await store.listMailboxes();
        if (pick.name[0] === 'INBOX' || all.some((b) => b.name.join('/') === to.join('/'))) break;
        const [from, dest] = [pick.name.join('/') + '/', to.join('/') + '/'];
        if (dest.startsWith(from) || from.startsWith(dest)) break;
        await store.renameMailbox(pick.name, to);
        break;
      }
      case 'delete': {
        if (pick.name[0] === 'INBOX') break;
        const mb = await store.openMailbox(pick.name);
        for (const m of await mb.scan()) model.live.delete(sha(await readAll(await mb.openBody(m.uid))));
        await mb.close();
        await store.deleteMailbox(pick.name);
        break;
      }
      case 'subscribe': {
        const subs = (await store.readSubscriptions()).filter((n) => n.join('/') !== pick.name.join('/'));
        await store.writeSubscriptions(op.on ? [...subs, pick.name] : subs);
        break;
      }
    }
  } finally {
    await store.close();
  }
}

function checkUidsStable(snap: Snapshot, seen: Map<string, string>): void {
  for (const mb of snap.mailboxes) {
    for (const m of mb.messages) {
      const k = `${mb.guid || mb.name}/${mb.uidValidity}/${m.uid}`;
      const prev = seen.get(k);
      assert.ok(prev === undefined || prev === m.sha, `UID ${m.uid} of ${mb.name} names two different mails`);
      seen.set(k, m.sha);
    }
  }
}

/** Location strings for the two sides, given their directories (default: two Maildirs). */
export type Locations = (a: string, b: string) => [string, string];
const maildirs: Locations = (a, b) => [`maildir:${a}`, `maildir:${b}`];

export async function runHistory(
  rounds: { a: Op[]; b: Op[] }[],
  locations: Locations = maildirs,
  names = NAMES,
  opts: { hardLinks?: boolean; streamBudget?: number } = {},
): Promise<void> {
      const root = fs.mkdtempSync(path.join(os.tmpdir(), 'dsync-prop-'));
      const [a, b] = locations(path.join(root, 'a'), path.join(root, 'b'));
      // mbox keeps no message GUIDs: compare everything else.
      const view = async (loc: string) => {
        const snap = await snapshot(loc);
        return a.startsWith('maildir:') && b.startsWith('maildir:') ? snap : { ...snap, mailboxes: snap.mailboxes.map((m) => ({ ...m, guid: '' })) };
      };
      const model: Model = { live: new Set(), counter: 0 };
      const uids = new Map<string, string>();
      let digestsChecked = 0;
      try {
        // Both sides start with the same INBOX so their INBOX GUIDs merge on the first run.
        await mirror(a, b, opts);
        for (const r of rounds) {
          for (const op of r.a) await apply(a, op, model, names);
          for (const op of r.b) await apply(b, op, model, names);
          const res = await mirror(a, b, { ...opts, debug: !!process.env.DSYNC_HISTORY_TRACE });
          if (process.env.DSYNC_HISTORY_TRACE) console.log(JSON.stringify(r), res.summary, res.log);
          assert.equal(res.exitCode, 0, res.log.join('\n'));
          const sa = await view(a);
          const sb = await view(b);
          assert.deepEqual(sb, sa, 'both sides must be equal after a mirror');
          // A digest the next refresh would trust must describe the rows exactly.
          for (const side of ['a', 'b']) {
            const file = path.join(root, side, INDEX_FILE);
            if (fs.existsSync(file)) {
              digestsChecked += checkDigests(file, side);
              checkPeerStates(file, side);
            }
          }
          const present = new Set(sa.mailboxes.flatMap((m) => m.messages.map((x) => x.sha)));
          for (const s of model.live) assert.ok(present.has(s), `mail ${s} was lost`);
          checkUidsStable(sa, uids);
          // Everything present now is the new baseline of what must not be lost.
          model.live = present;
        }
        if (a.startsWith('maildir:') && rounds.length > 0) assert.ok(digestsChecked > 0, 'no digest was checked: is the index where this test looks?');
        const before = await view(a);
        const again = await mirror(a, b, opts);
        assert.equal(again.exitCode, 0);
        assert.deepEqual(again.summary, [], 'a second mirror must be a no-op');
        assert.deepEqual(await view(a), before);
      } finally {
        fs.rmSync(root, { recursive: true, force: true });
      }
}
