// What a client could observe of a mail location, read through our own store in read-only mode:
// folders, subscriptions, UIDVALIDITY, UIDNEXT and every message's UID, flags, keywords,
// INTERNALDATE and exact bytes. Two locations that sync perfectly have equal snapshots.
import { createHash } from 'node:crypto';
import { parseMailLocation } from '../../src/storage/location.js';
import { openStore } from '../../src/storage/open.js';
import { flagNames } from '../../src/model/flags.js';

export interface MessageSnap {
  uid: number;
  flags: string[];
  keywords: string[];
  internalDate: number;
  size: number;
  sha: string;
}
export interface MailboxSnap {
  name: string;
  guid: string;
  uidValidity: number;
  uidNext: number;
  messages: MessageSnap[];
}
export interface Snapshot {
  mailboxes: MailboxSnap[];
  subscriptions: string[];
}

/** All of a body stream's bytes. */
export async function readAll(s: AsyncIterable<unknown>): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of s) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

export async function snapshot(location: string, opts: { withGuids?: boolean; withUidNext?: boolean } = {}): Promise<Snapshot> {
  const store = await openStore(parseMailLocation(location, {}), { readOnly: true, warn: () => {} });
  try {
    const mailboxes: MailboxSnap[] = [];
    for (const info of await store.listMailboxes()) {
      if (!info.selectable) continue;
      const mb = await store.openMailbox(info.name);
      try {
        const msgs = await mb.scan();
        const st = await mb.status();
        const messages: MessageSnap[] = [];
        for (const m of msgs) {
          const body = await readAll(await mb.openBody(m.uid));
          messages.push({
            uid: m.uid,
            flags: flagNames(m.flags),
            keywords: [...m.keywords].sort(),
            internalDate: m.internalDate,
            size: body.length,
            sha: createHash('sha256').update(body).digest('hex').slice(0, 16),
          });
        }
        mailboxes.push({
          name: info.name.join('/'),
          guid: opts.withGuids === false ? '' : st.guid,
          uidValidity: st.uidValidity,
          uidNext: opts.withUidNext === false ? 0 : st.uidNext,
          messages,
        });
      } finally {
        await mb.close();
      }
    }
    mailboxes.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    const subscriptions = (await store.readSubscriptions()).map((n) => n.join('/')).sort();
    return { mailboxes, subscriptions };
  } finally {
    await store.close();
  }
}
