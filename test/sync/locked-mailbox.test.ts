// A mailbox another program keeps locked longer than we wait (a mail client holding its lock on
// an mbox, a stuck process) is left for the next run: a warning, the other mailboxes synced, exit
// 2 (run again); once the lock is gone, the next run syncs it. Before, the whole run failed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { makeMessage } from '../helpers/corpus.js';
import { mirror } from '../helpers/mirror.js';
import { snapshot } from '../helpers/snapshot.js';
import { scratchDir } from '../helpers/tmp.js';
import { parseMailLocation } from '../../src/storage/location.js';
import { openStore } from '../../src/storage/open.js';
import { Flag } from '../../src/model/flags.js';
import { flockSkipReason, holdLock, release } from '../helpers/flock.js';

const skip = flockSkipReason;

/** Saves `count` new mails into each named Maildir mailbox (created if missing). */
async function deliver(root: string, boxes: [string[], number][], seed: string): Promise<void> {
  const s = await openStore(parseMailLocation(`maildir:${root}`, {}), { warn: () => {} });
  try {
    for (const [name, count] of boxes) {
      if (!(await s.listMailboxes()).some((m) => m.name.join('/') === name.join('/'))) {
        await s.createMailbox(name, { guid: randomBytes(16).toString('hex'), uidValidity: 1_700_000_000 });
      }
      const mb = await s.openMailbox(name);
      await mb.scan();
      const uidNext = (await mb.status()).uidNext;
      await mb.save(
        Array.from({ length: count }, (_, i) => ({
          uid: uidNext + i,
          guid: `${seed}-${name.join('.')}-${i}`,
          flags: Flag.Seen,
          keywords: [],
          internalDate: 1_700_000_000 + i,
          body: makeMessage(`${seed}-${name.join('.')}-${i}`),
        })),
      );
      await mb.close();
    }
  } finally {
    await s.close();
  }
}

/** Clears the flags of one mail in a Maildir mailbox. */
async function unflag(root: string, name: string[], uid: number): Promise<void> {
  const s = await openStore(parseMailLocation(`maildir:${root}`, {}), { warn: () => {} });
  try {
    const mb = await s.openMailbox(name);
    await mb.scan();
    await mb.updateFlags([{ uid, flags: 0, keywords: [] }]);
    await mb.close();
  } finally {
    await s.close();
  }
}

for (const mode of ['-s', '-x'] as const) {
  const what = mode === '-s' ? 'a shared lock (a reader)' : 'a write lock (a writer)';
  test(`mirror into an mbox that another program keeps under ${what}: that mailbox waits for the next run, the others are synced`, { skip }, async (t) => {
    const root = scratchDir('dsync-locked-');
    const md = path.join(root, 'Maildir');
    const mboxRoot = path.join(root, 'mail');
    const mbox = `mbox:${mboxRoot}:INBOX=${path.join(mboxRoot, 'inbox')}`;
    await deliver(md, [[['INBOX'], 3], [['Other'], 2]], 'first');
    const r1 = await mirror(`maildir:${md}`, mbox);
    assert.equal(r1.exitCode, 0, r1.log.join('\n'));

    // New mail (an mbox takes it by appending, which a reader's lock does not stop) and a flag
    // change (the mbox is rewritten, which waits for every other lock holder).
    await deliver(md, [[['INBOX'], 2], [['Other'], 2]], 'second');
    await unflag(md, ['INBOX'], 1);
    const holder = await holdLock(path.join(mboxRoot, 'inbox'), mode);
    t.after(() => release(holder));
    const r2 = await mirror(`maildir:${md}`, mbox, { mboxLockTimeoutMs: 1000 });
    assert.equal(r2.exitCode, 2, r2.log.join('\n'));
    assert.ok(
      r2.log.some((l) => /mailbox INBOX.*(kept busy by another program|being written by another program).*run dsync again/.test(l)),
      `a warning names the locked mailbox:\n${r2.log.join('\n')}`,
    );
    // (Read once the lock is gone: a reader waits for a writer's lock.)
    release(holder);
    const between = await snapshot(mbox);
    const box = (name: string) => between.mailboxes.find((m) => m.name === name)!.messages;
    assert.equal(box('Other').length, 4, 'the unlocked mailbox is synced');
    // A reader's lock lets the new mail be appended; the flag change waits. A writer's lock keeps
    // us from even reading the file.
    const expected = mode === '-s' ? [1, 2, 3, 4, 5] : [1, 2, 3];
    assert.deepEqual(
      box('INBOX').map((m) => [m.uid, m.flags]),
      expected.map((uid) => [uid, ['\\Seen']]),
      'the locked mailbox waits',
    );

    const r3 = await mirror(`maildir:${md}`, mbox);
    assert.equal(r3.exitCode, 0, r3.log.join('\n'));
    const after = await snapshot(mbox);
    assert.deepEqual(
      after.mailboxes.map((m) => [m.name, m.messages.length]),
      [
        ['INBOX', 5],
        ['Other', 4],
      ],
    );
    assert.deepEqual(after.mailboxes[0]!.messages[0]!.flags, [], 'the flag change arrived');
  });
}
