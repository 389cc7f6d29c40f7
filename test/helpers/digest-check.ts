// Checks the stored digests and peer states of a change index (see src/location/row-digest.ts) against its rows:
// a digest made at a mailbox's current modseq and UIDVALIDITY must describe its rows exactly,
// because a refresh trusts it instead of reading them.
import assert from 'node:assert/strict';
import Database from 'better-sqlite3';
import { RowDigest } from '../../src/location/row-digest.js';

/** Asserts that every current digest in the index file matches its rows; returns how many were current. */
export function checkDigests(indexFile: string, label = indexFile): number {
  const db = new Database(indexFile, { readonly: true, fileMustExist: true });
  try {
    let current = 0;
    const boxes = db.prepare('SELECT guid, highest_modseq AS modseq, uid_validity AS uidValidity FROM mailboxes').all() as { guid: string; modseq: number; uidValidity: number }[];
    for (const box of boxes) {
      const d = db.prepare('SELECT data, keyword_sets AS sets FROM digests WHERE mailbox = ? AND modseq = ? AND uid_validity = ?').get(box.guid, box.modseq, box.uidValidity) as
        | { data: Buffer; sets: string }
        | undefined;
      if (!d) continue;
      current++;
      const digest = RowDigest.decode(d.data, d.sets);
      assert.ok(digest, `${label}: mailbox ${box.guid}: its current digest does not decode`);
      const rows = db.prepare('SELECT uid, guid, flags, keywords FROM messages WHERE mailbox = ? ORDER BY uid').all(box.guid) as { uid: number; guid: string; flags: number; keywords: string }[];
      const inDigest: number[] = [];
      digest.forEachUid((u) => inDigest.push(u));
      assert.deepEqual(inDigest, rows.map((r) => r.uid), `${label}: mailbox ${box.guid}: the digest's UIDs are not the rows'`);
      for (const r of rows) {
        const kw = r.keywords === '' ? [] : r.keywords.split(' ');
        assert.ok(digest.matches(r.uid, r.guid, r.flags, kw), `${label}: mailbox ${box.guid}: the digest does not match row ${JSON.stringify(r)}`);
      }
    }
    return current;
  } finally {
    db.close();
  }
}

/**
 * Asserts that no peer state names a modseq or UIDNEXT above its mailbox's: modseqs only grow, so
 * a state above the mailbox means the mailbox's row was written back stale, and the next change
 * would get a modseq the state already counts as synced. Returns how many states were checked.
 */
export function checkPeerStates(indexFile: string, label = indexFile): number {
  const db = new Database(indexFile, { readonly: true, fileMustExist: true });
  try {
    const rows = db
      .prepare(
        `SELECT p.mailbox AS guid, p.my_modseq AS stateModseq, p.my_uid_next AS stateUidNext, m.highest_modseq AS modseq, m.uid_next AS uidNext
         FROM peer_state p JOIN mailboxes m ON m.guid = p.mailbox AND m.uid_validity = p.uid_validity`,
      )
      .all() as { guid: string; stateModseq: number; stateUidNext: number; modseq: number; uidNext: number }[];
    for (const r of rows) {
      assert.ok(r.stateModseq <= r.modseq, `${label}: mailbox ${r.guid}: the peer state names modseq ${r.stateModseq}, the mailbox is at ${r.modseq}`);
      assert.ok(r.stateUidNext <= r.uidNext, `${label}: mailbox ${r.guid}: the peer state names UIDNEXT ${r.stateUidNext}, the mailbox is at ${r.uidNext}`);
    }
    return rows.length;
  } finally {
    db.close();
  }
}
