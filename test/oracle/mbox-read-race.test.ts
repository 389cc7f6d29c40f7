// Our mbox reader takes no lock. Dovecot rewrites an mbox in place (after an expunge it moves
// every later message back), holding its dotlock and fcntl write lock throughout; between two of
// its writes the file holds states that never existed as a whole. A parse made there (the file's
// identity unchanged during the parse) saw messages missing, or a message twice and every later
// one under new UIDs, or a message with a stranger's bytes: a sync would take that for expunges
// and new mail. The reader now waits while another process holds a write lock (before, 6 of 11
// runs of this test and its first versions failed, most of them under load), and one that may
// write takes the dotlock when the file changes during every read (Dovecot's changes come one
// right after the other here).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { makeMessage } from '../helpers/corpus.js';
import { dovecotSkipReason } from '../helpers/dovecot.js';
import { openMbox } from '../storage/mbox-helpers.js';
import { headerHash } from '../../src/storage/header-hash.js';
import type { StoreMessage } from '../../src/storage/types.js';
import { giveToDovecot, inBox, mboxLoc, serveLive, session, T0, tempMailRoot } from './fixture.js';

const skip = dovecotSkipReason();
const SECONDS = 25;

test('mbox: a parse made while Dovecot appends, expunges and changes flags through IMAP sees only states the file really had', { skip, timeout: 120_000 }, async (t) => {
  const root = tempMailRoot('mbox-race-');
  fs.mkdirSync(root, { recursive: true });
  const box0 = await (await openMbox(mboxLoc(root), { warn: () => undefined })).openMailbox(['INBOX']);
  const reqs = [];
  for (let i = 1; i <= 400; i++) reqs.push({ uid: i, guid: `g${i}`, flags: 0, keywords: [], internalDate: T0 + i, body: makeMessage(`race-${i}`, { size: 500 + ((i * 7919) % 4000) }) });
  await box0.save(reqs);
  /** UID -> header hash: the mail at that UID, as long as it exists. */
  const keyOf = new Map((await box0.scan()).map((m) => [m.uid, m.guid]));
  assert.equal(keyOf.size, 400);
  giveToDovecot(root);

  const expungeAsked = new Set<number>();
  const appended = new Set<string>();
  const sizeOf = new Map<number, number>();
  const bad: string[] = [];
  let parses = 0;
  let stop = false;
  const problems = await serveLive([{ name: 'u', root, format: 'mbox' }], async (server) => {
    await session(server.port, 'u', async (c) => {
      const user = (async () => {
        for (let k = 0; !stop && bad.length === 0; k++) {
          await inBox(c, ['INBOX'], async () => {
            const uids = ((await c.search({ all: true }, { uid: true })) || []) as number[];
            const uid = uids[(k * 37) % uids.length]!;
            if (k % 4 === 1) {
              const body = makeMessage(`race-append-${k}`, { size: 500 + ((k * 7919) % 4000) });
              appended.add(headerHash(body));
              await c.append('INBOX', body, [], new Date((T0 + k) * 1000));
            } else if (k % 4 === 3 && uids.length > 100) {
              expungeAsked.add(uid); // before the command: the mail may go at any moment from here
              await c.messageDelete(String(uid), { uid: true });
            } else if (k % 2) await c.messageFlagsAdd(String(uid), ['\\Flagged', `$Label${k % 7}`], { uid: true });
            else await c.messageFlagsRemove(String(uid), ['\\Flagged', `$Label${(k + 3) % 7}`], { uid: true });
          });
        }
      })();
      const deadline = Date.now() + SECONDS * 1000;
      let previous: StoreMessage[] = [];
      while (Date.now() < deadline && bad.length < 20) {
        const box = await (await openMbox(mboxLoc(root), { warn: () => undefined })).openMailbox(['INBOX']);
        let msgs: StoreMessage[];
        try {
          msgs = await box.scan();
        } catch (e) {
          bad.push(`parse ${parses + 1} failed: ${(e as Error).message}`);
          break;
        }
        const asked = new Set(expungeAsked); // asked before the parse ended: maybe gone
        parses++;
        const before = bad.length;
        const seen = new Set<number>();
        for (const m of msgs) {
          seen.add(m.uid);
          if (!keyOf.has(m.uid) && appended.has(m.guid)) keyOf.set(m.uid, m.guid);
          if (keyOf.get(m.uid) !== m.guid) bad.push(`UID ${m.uid} holds ${m.guid}, expected ${keyOf.get(m.uid)}`);
          if (sizeOf.has(m.uid) && sizeOf.get(m.uid) !== m.size) bad.push(`UID ${m.uid} has ${m.size} bytes, had ${sizeOf.get(m.uid)}`);
          sizeOf.set(m.uid, m.size);
        }
        for (const uid of keyOf.keys()) if (!seen.has(uid) && !asked.has(uid)) bad.push(`UID ${uid} missing`);
        if (bad.length > before) {
          const from = Math.min(...bad.slice(before).map((b) => Number(/UID (\d+)/.exec(b)![1]))) - 2;
          const show = (list: StoreMessage[]) => list.filter((m) => m.uid >= from).slice(0, 30).map((m) => `${m.uid}:${m.guid.slice(0, 6)}:${m.size}`).join(' ');
          t.diagnostic(`parse ${parses}: ${bad.slice(before, before + 5).join('; ')}\n  before: ${show(previous)}\n  now:    ${show(msgs)}`);
        }
        previous = msgs;
      }
      stop = true;
      await user.catch((e: Error) => bad.push(`the IMAP user stopped: ${e.message}`));
    });
  });
  t.diagnostic(`${parses} parses while Dovecot expunged ${expungeAsked.size} mails and appended ${appended.size}`);
  assert.deepEqual({ bad: bad.slice(0, 20), problems }, { bad: [], problems: [] }, 'every parse shows each mail under its UID, whole; no complaint from Dovecot');
  assert.ok(parses > 20 && expungeAsked.size > 20 && appended.size > 20, 'the parses and the user overlapped');
});
