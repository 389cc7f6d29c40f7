// Shared helpers for the location tests.
import { Location } from '../../src/location/location.js';
import type { LocationMailbox } from '../../src/location/mailbox.js';
import { Logger } from '../../src/util/log.js';
import { openMaildir } from '../storage/helpers.js';

export const quiet = new Logger({ sink: { write: () => undefined } });

/** One "run" on the first mailbox of a one-mailbox Maildir: opens it with its index file, runs fn, closes everything. */
export async function withFirstMailbox<T>(root: string, indexPath: string, fn: (box: LocationMailbox) => Promise<T>): Promise<T> {
  const loc = Location.open(await openMaildir(`maildir:${root}`), { indexPath, log: quiet });
  try {
    await loc.refreshTree();
    const box = (await loc.openMailbox(loc.mailboxes()[0]!.guid))!;
    try {
      return await fn(box);
    } finally {
      await box.close();
    }
  } finally {
    await loc.close();
  }
}
