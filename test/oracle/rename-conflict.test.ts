// Found with the Dovecot oracle: one folder renamed differently on both sides between two syncs.
// Dovecot's dsync lets the later rename win (it knows when each rename happened). Our engine
// stamps a rename made outside dsync with the time the next sync *detects* it, so both stamps
// are "now": which name wins depends on which side happened to refresh its tree later, not on
// which rename the user made last (in the current tree: the slave's name, in both orders).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { makeMessage, writeMaildirMessage } from '../helpers/corpus.js';
import { ORACLE_USER, doveadm, doveadmSync, dovecotSkipReason, writeDoveadmConfig } from '../helpers/dovecot.js';
import { snapshot } from '../helpers/snapshot.js';
import { parseMailLocation } from '../../src/storage/location.js';
import { openStore } from '../../src/storage/open.js';
import { copyTree } from '../helpers/tmp.js';
import { giveToDovecot, loc, mirrorOk, tempMailRoot } from './fixture.js';

/** A maildir with one folder "Topic" holding one message. */
function topicMaildir(prefix: string): string {
  const root = tempMailRoot(prefix);
  writeMaildirMessage(path.join(root, '.Topic'), { body: makeMessage(`rename-conflict-${prefix}`), internalDate: 1_700_000_000 });
  fs.writeFileSync(path.join(root, '.Topic', 'maildirfolder'), '');
  return root;
}

/** Two orders: A renames Topic->ByA first and B renames Topic->ByB 1.1 s later, and the reverse. */
const ORDERS = [
  { first: 'A', expected: 'ByB' },
  { first: 'B', expected: 'ByA' },
] as const;

async function renameInOrder(rename: (pair: number, side: 'A' | 'B') => Promise<void>): Promise<void> {
  for (const [i, o] of ORDERS.entries()) await rename(i, o.first);
  await sleep(1_100); // Dovecot's rename timestamps have one-second resolution
  for (const [i, o] of ORDERS.entries()) await rename(i, o.first === 'A' ? 'B' : 'A');
}

test('doveadm sync: of two conflicting renames, the later one wins (the behaviour expected below)', { skip: dovecotSkipReason() }, async () => {
  const confDir = path.dirname(tempMailRoot('oracle-rename-conf-'));
  const conf = writeDoveadmConfig(confDir);
  const env = { USER: ORACLE_USER, HOME: path.join(confDir, 'home', ORACLE_USER) };
  const a0 = topicMaildir('oracle-rename-a0-');
  const b0 = tempMailRoot('oracle-rename-b0-');
  fs.mkdirSync(b0);
  giveToDovecot(a0);
  giveToDovecot(b0);
  assert.equal((await doveadmSync({ configPath: conf, user: ORACLE_USER, locationA: loc(a0), locationB: loc(b0), mode: 'sync' })).code, 0);
  const pairs = ORDERS.map((_, i) => {
    const a = tempMailRoot(`oracle-rename-a${i}-`);
    const b = tempMailRoot(`oracle-rename-b${i}-`);
    copyTree(a0, a);
    copyTree(b0, b);
    giveToDovecot(a);
    giveToDovecot(b);
    return { a, b };
  });
  await renameInOrder(async (i, side) => {
    const root = side === 'A' ? pairs[i]!.a : pairs[i]!.b;
    const r = await doveadm(conf, ['-o', `mail_location=${loc(root)}`, 'mailbox', 'rename', 'Topic', `By${side}`], env);
    assert.equal(r.code, 0, r.stderr);
  });
  for (const [i, o] of ORDERS.entries()) {
    const { a, b } = pairs[i]!;
    const r = await doveadmSync({ configPath: conf, user: ORACLE_USER, locationA: loc(a), locationB: loc(b), mode: 'sync' });
    assert.equal(r.code, 0, r.stderr);
    for (const root of [a, b]) {
      const names = (await snapshot(loc(root))).mailboxes.map((m) => m.name).filter((n) => n !== 'INBOX');
      assert.deepEqual(names, [o.expected], `${o.first} renamed first: the later rename, ${o.expected}, wins`);
    }
  }
});

test(
  'our mirror: of two conflicting renames made outside dsync, the later one wins',
  { skip: dovecotSkipReason() },
  async () => {
    const pairs = ORDERS.map((_, i) => ({ a: topicMaildir(`oracle-rename-ours-a${i}-`), b: tempMailRoot(`oracle-rename-ours-b${i}-`) }));
    for (const { a, b } of pairs) await mirrorOk(loc(a), loc(b));
    await renameInOrder(async (i, side) => {
      const root = side === 'A' ? pairs[i]!.a : pairs[i]!.b;
      const store = await openStore(parseMailLocation(loc(root), {}), { warn: () => {} });
      try {
        await store.renameMailbox(['Topic'], [`By${side}`]);
      } finally {
        await store.close();
      }
    });
    const got: string[] = [];
    for (const { a, b } of pairs) {
      await mirrorOk(loc(a), loc(b));
      const na = (await snapshot(loc(a))).mailboxes.map((m) => m.name);
      const nb = (await snapshot(loc(b))).mailboxes.map((m) => m.name);
      assert.deepEqual(na, nb, 'both sides agree');
      got.push(na.filter((n) => n !== 'INBOX').join(','));
    }
    assert.deepEqual(got, ORDERS.map((o) => o.expected), 'A first -> ByB wins; B first -> ByA wins');
  },
);
