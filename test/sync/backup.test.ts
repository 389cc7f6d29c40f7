// backup and -R between real Maildirs: the destination becomes identical, the source never changes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { makeMessage } from '../helpers/corpus.js';
import { snapshot } from '../helpers/snapshot.js';
import { mirror } from '../helpers/mirror.js';
import { hashTree, scratchDir } from '../helpers/tmp.js';
import { parseMailLocation } from '../../src/storage/location.js';
import { openStore } from '../../src/storage/open.js';
import { Flag } from '../../src/model/flags.js';

const tmp = () => scratchDir('dsync-backup-');

function deliver(dir: string, body: Buffer, flags = ''): void {
  for (const d of ['cur', 'new', 'tmp']) fs.mkdirSync(path.join(dir, d), { recursive: true });
  if (path.basename(dir).startsWith('.')) fs.writeFileSync(path.join(dir, 'maildirfolder'), '');
  const name = `1700000000.M${Math.floor(Math.random() * 1e9)}P1.bk,S=${body.length}`;
  fs.writeFileSync(path.join(dir, 'cur', `${name}:2,${flags}`), body);
}

async function onStore(dir: string, fn: (s: Awaited<ReturnType<typeof openStore>>) => Promise<void>): Promise<void> {
  const s = await openStore(parseMailLocation(`maildir:${dir}`, {}), { warn: () => {} });
  try {
    await fn(s);
  } finally {
    await s.close();
  }
}

/** A source that Dovecot (or a first scan) has already given uidlists, like a real mail store. */
async function seededSource(): Promise<string> {
  const src = tmp();
  for (let i = 0; i < 4; i++) deliver(src, makeMessage(`bk${i}`), i % 2 ? 'S' : '');
  deliver(path.join(src, '.Archive'), makeMessage('bk-arch'), 'FS');
  await snapshot(`maildir:${src}`); // read-only: does not write uidlists
  await onStore(src, async (s) => {
    for (const info of await s.listMailboxes()) {
      const mb = await s.openMailbox(info.name);
      await mb.scan();
      await mb.close();
    }
    await s.writeSubscriptions([['INBOX'], ['Archive']]);
  });
  return src;
}

test('backup makes the destination identical and leaves the source byte-identical', async () => {
  const src = await seededSource();
  const dst = path.join(tmp(), 'backup');
  const before = await hashTree(src);
  const r = await mirror(`maildir:${src}`, `maildir:${dst}`, { backup: true });
  assert.equal(r.exitCode, 0, r.log.join('\n'));
  assert.deepEqual(await snapshot(`maildir:${dst}`), await snapshot(`maildir:${src}`));
  assert.equal(await hashTree(src), before, 'the source must not change');
});

test('backup reverts destination changes: flags, new mail, new folders, expunges', async () => {
  const src = await seededSource();
  const dst = tmp();
  await mirror(`maildir:${src}`, `maildir:${dst}`, { backup: true });
  await onStore(dst, async (s) => {
    const mb = await s.openMailbox(['INBOX']);
    const msgs = await mb.scan();
    await mb.updateFlags([{ uid: msgs[0].uid, flags: Flag.Flagged, keywords: ['junk'] }]);
    await mb.expunge([msgs[1].uid]);
    await mb.close();
    await s.createMailbox(['Scratch'], { guid: 'f'.repeat(32), uidValidity: 5 });
  });
  deliver(dst, makeMessage('dest-only'));
  const before = await hashTree(src);
  const r = await mirror(`maildir:${src}`, `maildir:${dst}`, { backup: true });
  assert.equal(r.exitCode, 0, r.log.join('\n'));
  assert.deepEqual(await snapshot(`maildir:${dst}`), await snapshot(`maildir:${src}`));
  assert.equal(await hashTree(src), before);
  assert.ok(r.log.some((l) => /rebuild/.test(l)), 'the expunged UID cannot be refilled in place: the mailbox is rebuilt and this is said');
  const again = await mirror(`maildir:${src}`, `maildir:${dst}`, { backup: true });
  assert.deepEqual(again.summary, []);
});

test('backup -R restores the local side from the remote one', async () => {
  const src = await seededSource();
  const local = tmp();
  deliver(local, makeMessage('local-only'));
  const before = await hashTree(src);
  const r = await mirror(`maildir:${local}`, `maildir:${src}`, { backup: true, reverse: true });
  assert.equal(r.exitCode, 0, r.log.join('\n'));
  assert.deepEqual(await snapshot(`maildir:${local}`), await snapshot(`maildir:${src}`));
  assert.equal(await hashTree(src), before);
});

test('backup from a read-only source directory works and writes nothing there', async () => {
  const src = await seededSource();
  const dst = tmp();
  fs.chmodSync(src, 0o555);
  try {
    const r = await mirror(`maildir:${src}`, `maildir:${dst}`, { backup: true });
    assert.equal(r.exitCode, 0, r.log.join('\n'));
    assert.deepEqual(await snapshot(`maildir:${dst}`), await snapshot(`maildir:${src}`));
  } finally {
    fs.chmodSync(src, 0o755);
  }
});
