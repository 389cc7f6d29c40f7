// Fills a Maildir for engine tests: mailboxes created as needed, mails saved through the store.
import { createHash } from 'node:crypto';
import { makeMessage } from './corpus.js';
import { openMaildir } from '../storage/helpers.js';

/**
 * Creates those of `boxes` that do not exist yet (GUID derived from the name, so the same name
 * gets the same GUID on either side and different names never share one) and saves n mails in
 * each, at its UIDNEXT, with GUIDs `<name>-<uid>`.
 */
export async function seedMaildir(root: string, boxes: string[], n: number, flags = 0): Promise<void> {
  const s = await openMaildir(`maildir:${root}`);
  try {
    const existing = new Set((await s.listMailboxes()).map((m) => m.name.join('/')));
    for (const [i, name] of boxes.entries()) {
      if (!existing.has(name) && name !== 'INBOX') {
        await s.createMailbox([name], { guid: createHash('md5').update(name).digest('hex'), uidValidity: 1_700_000_000 + i });
      }
      const mb = await s.openMailbox([name]);
      await mb.scan();
      const next = (await mb.status()).uidNext;
      await mb.save(Array.from({ length: n }, (_, k) => ({ uid: next + k, guid: `${name}-${next + k}`, flags, keywords: [], internalDate: 1_700_000_000 + k, body: makeMessage(`${name}-${next + k}`) })));
      await mb.close();
    }
  } finally {
    await s.close();
  }
}
