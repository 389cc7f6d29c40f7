// Maildir <-> mbox conversion through the mirror: every flag, keywords, INTERNALDATE, bytes,
// non-ASCII folder names and "From " lines survive both ways; later passes apply only changes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { makeMessage } from '../helpers/corpus.js';
import { snapshot, type Snapshot } from '../helpers/snapshot.js';
import { mirror } from '../helpers/mirror.js';
import { scratchDir } from '../helpers/tmp.js';
import { parseMailLocation } from '../../src/storage/location.js';
import { openStore } from '../../src/storage/open.js';
import { Flag } from '../../src/model/flags.js';

const tmp = () => scratchDir('dsync-convert-');
/** mbox cannot keep GUIDs: compare everything else. */
const noGuids = (s: Snapshot) => ({ ...s, mailboxes: s.mailboxes.map((m) => ({ ...m, guid: '' })) });

async function corpus(dir: string): Promise<void> {
  const s = await openStore(parseMailLocation(`maildir:${dir}`, {}), { warn: () => {} });
  try {
    const boxes: [string[], number][] = [
      [['INBOX'], 6],
      [['Entwürfe'], 2],
      [['Archive', '2024'], 3],
    ];
    let n = 0;
    for (const [name, count] of boxes) {
      if (name[0] !== 'INBOX') await s.createMailbox(name, { guid: `${'ab'.repeat(15)}${String(n).padStart(2, '0')}`, uidValidity: 1000 + n });
      const mb = await s.openMailbox(name);
      await mb.scan();
      const uidNext = (await mb.status()).uidNext;
      const reqs = [];
      for (let i = 0; i < count; i++, n++) {
        reqs.push({
          uid: uidNext + i,
          guid: `conv${n}`,
          flags: [0, Flag.Seen, Flag.Seen | Flag.Flagged, Flag.Answered | Flag.Draft, Flag.Deleted | Flag.Seen][n % 5],
          keywords: n % 3 === 0 ? ['$Forwarded', 'work'] : [],
          internalDate: 1_600_000_000 + n * 3600,
          body: makeMessage(`conv-${n}`, { crlf: n % 2 === 1, fromLine: n % 4 === 0, eightBit: n % 3 === 1 }),
        });
      }
      await mb.save(reqs);
      await mb.close();
    }
    await s.writeSubscriptions([['INBOX'], ['Entwürfe']]);
  } finally {
    await s.close();
  }
}

test('Maildir -> mbox -> Maildir keeps folders, UIDs, UIDVALIDITY, flags, keywords, dates and bytes', async () => {
  const root = tmp();
  const md = path.join(root, 'Maildir');
  const mbox = `mbox:${path.join(root, 'mail')}:INBOX=${path.join(root, 'mail', 'inbox')}`;
  const md2 = path.join(root, 'Maildir2');
  await corpus(md);
  const r1 = await mirror(`maildir:${md}`, mbox);
  assert.equal(r1.exitCode, 0, r1.log.join('\n'));
  const r2 = await mirror(mbox, `maildir:${md2}`);
  assert.equal(r2.exitCode, 0, r2.log.join('\n'));
  const a = noGuids(await snapshot(`maildir:${md}`));
  assert.deepEqual(noGuids(await snapshot(mbox)), a);
  assert.deepEqual(noGuids(await snapshot(`maildir:${md2}`)), a);
  assert.deepEqual(a.mailboxes.map((m) => m.name), ['Archive/2024', 'Entwürfe', 'INBOX']);
  // Second passes change nothing. (Three independently created INBOXes converge on the largest
  // GUID pair by pair, as in Dovecot, so going back to the first pair may still merge INBOX GUIDs,
  // but moves no mail.)
  assert.deepEqual((await mirror(mbox, `maildir:${md2}`)).summary, []);
  const back = await mirror(`maildir:${md}`, mbox);
  assert.deepEqual(back.summary.filter((l) => !/merged with the peer's mailbox/.test(l)), []);
});

test('the conversion procedure: mirror, change the source, mirror again applies only the changes', async () => {
  const root = tmp();
  const md = path.join(root, 'Maildir');
  const mbox = `mbox:${path.join(root, 'mail')}:INBOX=${path.join(root, 'mail', 'inbox')}`;
  await corpus(md);
  await mirror(mbox, `maildir:${md}`);
  // The user keeps working on the old (mbox) side between passes.
  const s = await openStore(parseMailLocation(mbox, {}), { warn: () => {} });
  const mb = await s.openMailbox(['INBOX']);
  const msgs = await mb.scan();
  await mb.updateFlags([{ uid: msgs[0].uid, flags: Flag.Seen | Flag.Answered, keywords: ['later'] }]);
  await mb.expunge([msgs[1].uid]);
  await mb.save([{ uid: (await mb.status()).uidNext, guid: 'x', flags: 0, keywords: [], internalDate: 1_700_000_000, body: makeMessage('late') }]);
  await mb.close();
  await s.close();
  const r = await mirror(mbox, `maildir:${md}`);
  assert.equal(r.exitCode, 0, r.log.join('\n'));
  assert.deepEqual(r.summary.filter((l) => l.includes('INBOX')).length, 1, r.summary.join('\n'));
  assert.match(r.summary.join('\n'), /INBOX: 1 new, 1 expunged, 1 flag changes/);
  assert.deepEqual(noGuids(await snapshot(`maildir:${md}`)), noGuids(await snapshot(mbox)));
});
