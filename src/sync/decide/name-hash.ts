// Tombstones for names (directories, unsubscriptions) carry the first 128 bits of the SHA-1 of
// the name joined with the sender's hierarchy separator, as Dovecot's mailbox log does.
import { createHash } from '../../util/builtin.js';

export function nameHash(name: readonly string[], separator: string): string {
  return createHash('sha1').update(name.join(separator), 'utf8').digest('hex').slice(0, 32);
}

export const nameKey = (name: readonly string[]): string => name.join('\u0000');
