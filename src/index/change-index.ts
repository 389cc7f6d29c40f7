// The change index: one SQLite database per location keeping what a mail store cannot:
// mailbox GUIDs and timestamps, per-message modseqs, a journal of flag changes and expunges
// (with the expunged GUID and which peer caused it), mailbox tombstones, subscriptions with
// their change times, and the per-peer sync state.
import Database from 'better-sqlite3';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { randomBytes } from '../util/builtin.js';
import { close, existsSync, fsync, open, renameSync, statSync, unlinkSync } from 'node:fs';
import { NO_STRINGS } from '../util/empty.js';

// 2: the digests table. An index of version 2 is not opened by an older dsync (it rebuilds it
// from the mail store instead): its changes would leave the digests stale, and one that came to
// the same modseq again (a mailbox deleted and created anew) would be trusted.
const SCHEMA_VERSION = '2';

const SCHEMA = `
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS mailboxes (
  guid TEXT PRIMARY KEY,
  name TEXT NOT NULL,
  uid_validity INTEGER NOT NULL,
  uid_next INTEGER NOT NULL,
  highest_modseq INTEGER NOT NULL,
  first_recent_uid INTEGER NOT NULL DEFAULT 1,
  last_renamed_or_created INTEGER NOT NULL,
  scan_token TEXT
);
CREATE TABLE IF NOT EXISTS messages (
  mailbox TEXT NOT NULL,
  uid INTEGER NOT NULL,
  guid TEXT NOT NULL,
  flags INTEGER NOT NULL,
  keywords TEXT NOT NULL,
  modseq INTEGER NOT NULL,
  internal_date INTEGER NOT NULL,
  size INTEGER NOT NULL,
  hdr_hash TEXT,
  PRIMARY KEY (mailbox, uid)
) WITHOUT ROWID;
-- A digest of a mailbox's messages rows (see location/row-digest.ts), valid while the mailbox's
-- highest_modseq and uid_validity are the ones it was made at.
CREATE TABLE IF NOT EXISTS digests (
  mailbox TEXT PRIMARY KEY,
  modseq INTEGER NOT NULL,
  uid_validity INTEGER NOT NULL,
  data BLOB NOT NULL,
  keyword_sets TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS changes (
  mailbox TEXT NOT NULL,
  modseq INTEGER NOT NULL,
  uid INTEGER NOT NULL,
  kind TEXT NOT NULL,
  guid TEXT NOT NULL,
  add_flags INTEGER NOT NULL,
  remove_flags INTEGER NOT NULL,
  kw_add TEXT NOT NULL,
  kw_remove TEXT NOT NULL,
  origin TEXT NOT NULL,
  ts INTEGER NOT NULL,
  hdr_hash TEXT,
  PRIMARY KEY (mailbox, modseq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tombstones (
  kind TEXT NOT NULL,
  key TEXT NOT NULL,
  ts INTEGER NOT NULL,
  PRIMARY KEY (kind, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dirs (name TEXT PRIMARY KEY, last_created INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS subscriptions (name TEXT PRIMARY KEY, subscribed INTEGER NOT NULL, ts INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS peer_state (
  peer TEXT NOT NULL,
  mailbox TEXT NOT NULL,
  uid_validity INTEGER NOT NULL,
  last_common_uid INTEGER NOT NULL,
  my_modseq INTEGER NOT NULL,
  my_uid_next INTEGER NOT NULL,
  sync_id TEXT NOT NULL,
  PRIMARY KEY (peer, mailbox)
) WITHOUT ROWID;
`;

export interface MailboxRow {
  guid: string;
  name: string[];
  uidValidity: number;
  uidNext: number;
  highestModseq: number;
  firstRecentUid: number;
  lastRenamedOrCreated: number;
  scanToken: string | null;
  /**
   * The mailbox's message count as last counted, and the highestModseq it was counted at (see
   * messageCount): every change of the message set raises highestModseq in the same transaction,
   * so a count recorded at the current highestModseq is still right. Not written by putMailbox.
   */
  counted?: { count: number; atModseq: number } | null;
}

export interface MessageRow {
  uid: number;
  guid: string;
  flags: number;
  keywords: string[];
  modseq: number;
  internalDate: number;
  size: number;
  /** dsync header hash (identity towards stores that cannot save GUIDs); computed on demand. */
  hdrHash?: string | null;
}

export type ChangeKind = 'flags' | 'expunge';

export interface ChangeRow {
  modseq: number;
  uid: number;
  kind: ChangeKind;
  guid: string;
  addFlags: number;
  removeFlags: number;
  kwAdd: string[];
  kwRemove: string[];
  /** '' for changes made outside dsync, else the location id of the peer that caused it. */
  origin: string;
  ts: number;
  hdrHash?: string | null;
}

export type TombstoneKind = 'mailbox' | 'dir' | 'unsubscribe';

export interface PeerState {
  uidValidity: number;
  lastCommonUid: number;
  myModseq: number;
  myUidNext: number;
  syncId: string;
}

const encName = (n: string[]) => JSON.stringify(n);
const decName = (s: string) => JSON.parse(s) as string[];
const encKw = (k: readonly string[]) => k.join(' ');
const decKw = (s: string) => (s === '' ? NO_STRINGS : s.split(' '));

export interface OpenIndexResult {
  index: ChangeIndex;
  /** Set when an existing index could not be used and a fresh one was started. */
  rebuiltReason?: string;
}

export class ChangeIndex {
  private readonly stmts: ReturnType<ChangeIndex['prepare']>;
  /** The log was empty at open and no transaction has written to it yet (see the constructor). */
  private freshLog: boolean;
  private totalChanges: Database.Statement | undefined;

  private constructor(
    readonly db: Database.Database,
    readonly path = ':memory:',
    logEmpty = false,
  ) {
    db.pragma('journal_mode = WAL');
    this.freshLog = logEmpty;
    if (logEmpty) {
      // The first commit into an empty log writes the log's header, and with synchronous = NORMAL
      // SQLite fsyncs that header on the spot, on this (the main) thread: 1-25 ms per run here.
      // It guards nothing this index relies on: commits are not made durable before close either
      // (NORMAL), a log whose header a crash lost is ignored as a whole (this run's commits are
      // lost, as unsynced commits are under NORMAL, and the file is as the last close left it),
      // and close makes the log durable before folding it back. So the first commit runs with
      // syncs off and without automatic checkpoints (which would fold an unsynced log), and
      // restoreSyncMode restores both after it.
      db.pragma('synchronous = OFF');
      db.pragma('wal_autocheckpoint = 0');
    } else {
      this.restoreSyncMode();
    }
    db.exec(SCHEMA);
    // Columns added after the first schema, added to older indexes in place.
    for (const [table, column] of [['messages', 'hdr_hash TEXT'], ['changes', 'hdr_hash TEXT'], ['mailboxes', 'message_count INTEGER'], ['mailboxes', 'count_modseq INTEGER']]) {
      const cols = db.prepare(`PRAGMA table_info(${table})`).all() as { name: string }[];
      if (!cols.some((c) => c.name === column.split(' ')[0])) db.exec(`ALTER TABLE ${table} ADD COLUMN ${column}`);
    }
    this.stmts = this.prepare();
    const version = this.getMeta('schema_version');
    // Version 1 lacks only what SCHEMA and the columns above just added. A version and no
    // identity is an index whose creation an older dsync's run was killed in (it wrote the two in
    // separate commits): its peers have never recorded an identity for it, so a new one is safe.
    const known = version === undefined || version === '1' || version === SCHEMA_VERSION;
    const needsVersion = version !== SCHEMA_VERSION && known;
    const needsId = known && this.getMeta('location_id') === undefined;
    if (needsVersion || needsId) {
      // One commit: an index must never exist with a version and without an identity.
      db.transaction(() => {
        if (needsVersion) this.setMeta('schema_version', SCHEMA_VERSION);
        if (needsId) this.setMeta('location_id', randomBytes(16).toString('hex'));
      })();
    }
  }

  /** Opens (or creates) the index; a corrupt or foreign file is moved aside and a fresh one started. */
  static open(path: string): OpenIndexResult {
    // Not a real :memory: database: SQLite keeps every page of one in memory (10+ MB for a large
    // account). An unnamed database lives in a temporary file SQLite deletes on close, with the
    // usual bounded page cache.
    if (path === ':memory:') return { index: new ChangeIndex(openDatabase('')) };
    let db: Database.Database | undefined;
    try {
      // close() folds the write-ahead log back into the file and empties it: a log with content
      // means the last run did not close the index (it was killed, or the machine went down).
      // Looked at before opening, which may replay the log. No write is needed to know this, so a
      // run that changes nothing writes nothing.
      const walBytes = fileSize(`${path}-wal`);
      db = openDatabase(path);
      // A full check costs time proportional to the index; it is done when the last run did not
      // close the index cleanly, or when the file's size does not match what its header says.
      const pageBytes = (db.pragma('page_count', { simple: true }) as number) * (db.pragma('page_size', { simple: true }) as number);
      const cleanlyClosed = walBytes === 0 && statSync(path).size === pageBytes;
      if (!cleanlyClosed) {
        const ok = db.pragma('quick_check', { simple: true });
        if (ok !== 'ok') throw new Error(`integrity check failed: ${String(ok)}`);
      }
      const tables = db.prepare("SELECT name FROM sqlite_master WHERE type = 'table'").all() as { name: string }[];
      if (tables.length > 0 && !tables.some((t) => t.name === 'meta')) {
        throw new Error(`not a dsync change index (tables: ${tables.map((t) => t.name).join(', ')})`);
      }
      const index = new ChangeIndex(db, path, walBytes === 0);
      const v = index.getMeta('schema_version');
      if (v !== SCHEMA_VERSION) throw new Error(`unknown schema version ${v}`);
      return { index };
    } catch (err) {
      try {
        db?.close();
      } catch {
        /* already broken */
      }
      const aside = `${path}.corrupt-${Date.now()}`;
      for (const suffix of ['', '-wal', '-shm']) {
        if (!existsSync(path + suffix)) continue;
        if (suffix !== '' && statSync(path + suffix).size === 0) unlinkSync(path + suffix);
        else renameSync(path + suffix, aside + suffix);
      }
      const index = new ChangeIndex(openDatabase(path), path, true);
      return { index, rebuiltReason: `${(err as Error).message}; moved it to ${aside} and rebuilt the index from the mail store` };
    }
  }

  private prepare() {
    const db = this.db;
    return {
      getMeta: db.prepare<[string], { value: string }>('SELECT value FROM meta WHERE key = ?'),
      setMeta: db.prepare('INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value'),
      allMailboxes: db.prepare('SELECT * FROM mailboxes'),
      getMailbox: db.prepare('SELECT * FROM mailboxes WHERE guid = ?'),
      putMailbox: db.prepare(
        `INSERT INTO mailboxes (guid, name, uid_validity, uid_next, highest_modseq, first_recent_uid, last_renamed_or_created, scan_token)
         VALUES (@guid, @name, @uidValidity, @uidNext, @highestModseq, @firstRecentUid, @lastRenamedOrCreated, @scanToken)
         ON CONFLICT(guid) DO UPDATE SET name = excluded.name, uid_validity = excluded.uid_validity, uid_next = excluded.uid_next,
           highest_modseq = excluded.highest_modseq, first_recent_uid = excluded.first_recent_uid,
           last_renamed_or_created = excluded.last_renamed_or_created, scan_token = excluded.scan_token`,
      ),
      delMailbox: db.prepare('DELETE FROM mailboxes WHERE guid = ?'),
      delMailboxMessages: db.prepare('DELETE FROM messages WHERE mailbox = ?'),
      delMailboxChanges: db.prepare('DELETE FROM changes WHERE mailbox = ?'),
      messages: db.prepare('SELECT uid, guid, flags, keywords, modseq, internal_date, size, hdr_hash FROM messages WHERE mailbox = ? ORDER BY uid'),
      messagesFrom: db.prepare('SELECT uid, guid, flags, keywords, modseq, internal_date, size, hdr_hash FROM messages WHERE mailbox = ? AND uid >= ? ORDER BY uid'),
      message: db.prepare('SELECT uid, guid, flags, keywords, modseq, internal_date, size, hdr_hash FROM messages WHERE mailbox = ? AND uid = ?'),
      uidsWithGuids: db.prepare('SELECT uid, guid FROM messages WHERE mailbox = ? AND guid IN (SELECT value FROM json_each(?)) ORDER BY uid'),
      getDigest: db.prepare('SELECT data, keyword_sets FROM digests WHERE mailbox = ? AND modseq = ? AND uid_validity = ?'),
      digestAt: db.prepare('SELECT modseq, uid_validity FROM digests WHERE mailbox = ?'),
      putDigest: db.prepare(
        `INSERT INTO digests (mailbox, modseq, uid_validity, data, keyword_sets) VALUES (?, ?, ?, ?, ?)
         ON CONFLICT(mailbox) DO UPDATE SET modseq = excluded.modseq, uid_validity = excluded.uid_validity, data = excluded.data, keyword_sets = excluded.keyword_sets`,
      ),
      delDigest: db.prepare('DELETE FROM digests WHERE mailbox = ?'),
      putMessage: db.prepare(
        `INSERT INTO messages (mailbox, uid, guid, flags, keywords, modseq, internal_date, size, hdr_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT(mailbox, uid) DO UPDATE SET guid = excluded.guid, flags = excluded.flags, keywords = excluded.keywords,
           modseq = excluded.modseq, internal_date = excluded.internal_date, size = excluded.size, hdr_hash = excluded.hdr_hash`,
      ),
      delMessage: db.prepare('DELETE FROM messages WHERE mailbox = ? AND uid = ?'),
      countMessages: db.prepare<[string], { n: number }>('SELECT count(*) AS n FROM messages WHERE mailbox = ?'),
      putCount: db.prepare('UPDATE mailboxes SET message_count = ?, count_modseq = ? WHERE guid = ?'),
      addChange: db.prepare(
        'INSERT INTO changes (mailbox, modseq, uid, kind, guid, add_flags, remove_flags, kw_add, kw_remove, origin, ts, hdr_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
      ),
      changesSince: db.prepare('SELECT * FROM changes WHERE mailbox = ? AND modseq > ? ORDER BY modseq'),
      tombstones: db.prepare('SELECT kind, key, ts FROM tombstones'),
      putTombstone: db.prepare(
        'INSERT INTO tombstones (kind, key, ts) VALUES (?, ?, ?) ON CONFLICT(kind, key) DO UPDATE SET ts = MAX(ts, excluded.ts)',
      ),
      delTombstone: db.prepare('DELETE FROM tombstones WHERE kind = ? AND key = ?'),
      dirs: db.prepare('SELECT name, last_created FROM dirs'),
      putDir: db.prepare('INSERT INTO dirs (name, last_created) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET last_created = excluded.last_created'),
      delDir: db.prepare('DELETE FROM dirs WHERE name = ?'),
      subscriptions: db.prepare('SELECT name, subscribed, ts FROM subscriptions'),
      putSubscription: db.prepare(
        'INSERT INTO subscriptions (name, subscribed, ts) VALUES (?, ?, ?) ON CONFLICT(name) DO UPDATE SET subscribed = excluded.subscribed, ts = excluded.ts',
      ),
      getPeerState: db.prepare('SELECT * FROM peer_state WHERE peer = ? AND mailbox = ?'),
      putPeerState: db.prepare(
        `INSERT INTO peer_state (peer, mailbox, uid_validity, last_common_uid, my_modseq, my_uid_next, sync_id) VALUES (?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT(peer, mailbox) DO UPDATE SET uid_validity = excluded.uid_validity, last_common_uid = excluded.last_common_uid,
           my_modseq = excluded.my_modseq, my_uid_next = excluded.my_uid_next, sync_id = excluded.sync_id`,
      ),
      delPeerState: db.prepare('DELETE FROM peer_state WHERE peer = ? AND mailbox = ?'),
      delPeerStatesOf: db.prepare('DELETE FROM peer_state WHERE mailbox = ?'),
    };
  }

  transaction<T>(fn: () => T): T {
    const result = this.db.transaction(fn)();
    // Until something was written: the first transactions of a run may only read.
    if (this.freshLog && ((this.totalChanges ??= this.db.prepare('SELECT total_changes()').pluck()).get() as number) > 0) this.restoreSyncMode();
    return result;
  }

  /** The run's settings once the log has its header. */
  private restoreSyncMode(): void {
    this.freshLog = false;
    this.db.pragma('synchronous = NORMAL');
    // The log is folded back into the database once, when the run closes the index (see close),
    // instead of whenever it passes 1,000 pages: each fold fsyncs, and a run that changes mail in
    // many mailboxes passed that several times (30-50 ms each). Up to this many pages (40 MB) it waits.
    this.db.pragma('wal_autocheckpoint = 10000');
  }

  getMeta(key: string): string | undefined {
    return this.stmts.getMeta.get(key)?.value;
  }
  setMeta(key: string, value: string): void {
    this.stmts.setMeta.run(key, value);
  }
  get locationId(): string {
    return this.getMeta('location_id')!;
  }

  mailboxes(): MailboxRow[] {
    return (this.stmts.allMailboxes.all() as any[]).map(rowToMailbox);
  }
  mailbox(guid: string): MailboxRow | undefined {
    const r = this.stmts.getMailbox.get(guid) as any;
    return r ? rowToMailbox(r) : undefined;
  }
  putMailbox(m: MailboxRow): void {
    this.stmts.putMailbox.run({ ...m, name: encName(m.name) });
  }
  /** Forgets a mailbox and everything about its messages. */
  dropMailbox(guid: string): void {
    this.stmts.delMailbox.run(guid);
    this.stmts.delMailboxMessages.run(guid);
    this.stmts.delMailboxChanges.run(guid);
    this.stmts.delPeerStatesOf.run(guid);
    this.stmts.delDigest.run(guid);
  }

  /** Every message of a mailbox, in UID order. */
  messages(mailbox: string): MessageRow[] {
    // Raw rows (arrays) are about twice as fast to fetch as objects with named columns.
    return toMessageRows(this.stmts.messages.raw(true).all(mailbox) as unknown as RawMessage[]);
  }
  /** The messages of a mailbox from a UID on, in UID order. */
  messagesFrom(mailbox: string, uid: number): MessageRow[] {
    return toMessageRows(this.stmts.messagesFrom.raw(true).all(mailbox, uid) as unknown as RawMessage[]);
  }
  message(mailbox: string, uid: number): MessageRow | undefined {
    const r = this.stmts.message.raw(true).get(mailbox, uid) as unknown as RawMessage | undefined;
    return r ? toMessageRow(r) : undefined;
  }
  /** UIDs of the messages having one of these GUIDs, ascending. */
  uidsWithGuids(mailbox: string, guids: readonly string[]): { uid: number; guid: string }[] {
    return this.stmts.uidsWithGuids.all(mailbox, JSON.stringify(guids)) as { uid: number; guid: string }[];
  }

  /** The stored digest of a mailbox's messages if it was made at this modseq and UIDVALIDITY. */
  digest(mailbox: string, modseq: number, uidValidity: number): { data: Uint8Array; keywordSets: string } | undefined {
    const r = this.stmts.getDigest.get(mailbox, modseq, uidValidity) as { data: Uint8Array; keyword_sets: string } | undefined;
    return r ? { data: r.data, keywordSets: r.keyword_sets } : undefined;
  }
  /** The modseq and UIDVALIDITY the stored digest of a mailbox was made at. */
  digestMadeAt(mailbox: string): { modseq: number; uidValidity: number } | undefined {
    const r = this.stmts.digestAt.get(mailbox) as { modseq: number; uid_validity: number } | undefined;
    return r ? { modseq: r.modseq, uidValidity: r.uid_validity } : undefined;
  }
  putDigest(mailbox: string, modseq: number, uidValidity: number, data: Uint8Array, keywordSets: string): void {
    this.stmts.putDigest.run(mailbox, modseq, uidValidity, data, keywordSets);
  }
  /**
   * The number of messages of a mailbox whose row says highestModseq. Counting walks every row of
   * the mailbox (about 0.5 ms per 1,000), so the count is recorded with the highestModseq it was
   * made at, and taken as it is while that is still the mailbox's highestModseq: a run that changes
   * nothing counts nothing.
   */
  messageCount(row: MailboxRow): number {
    if (row.counted && row.counted.atModseq === row.highestModseq) return row.counted.count;
    const count = this.stmts.countMessages.get(row.guid)?.n ?? 0;
    this.recordMessageCount(row, count);
    return count;
  }
  /** Records the count of a mailbox at its current highestModseq (see messageCount). */
  recordMessageCount(row: MailboxRow, count: number): void {
    if (row.counted && row.counted.atModseq === row.highestModseq && row.counted.count === count) return;
    row.counted = { count, atModseq: row.highestModseq };
    this.stmts.putCount.run(count, row.highestModseq, row.guid);
  }
  putMessage(mailbox: string, m: MessageRow): void {
    this.stmts.putMessage.run(mailbox, m.uid, m.guid, m.flags, encKw(m.keywords), m.modseq, m.internalDate, m.size, m.hdrHash ?? null);
  }
  deleteMessage(mailbox: string, uid: number): void {
    this.stmts.delMessage.run(mailbox, uid);
  }

  addChange(mailbox: string, c: ChangeRow): void {
    this.stmts.addChange.run(mailbox, c.modseq, c.uid, c.kind, c.guid, c.addFlags, c.removeFlags, encKw(c.kwAdd), encKw(c.kwRemove), c.origin, c.ts, c.hdrHash ?? null);
  }
  changesSince(mailbox: string, modseq: number): ChangeRow[] {
    return (this.stmts.changesSince.all(mailbox, modseq) as any[]).map((r) => ({
      modseq: r.modseq,
      uid: r.uid,
      kind: r.kind,
      guid: r.guid,
      addFlags: r.add_flags,
      removeFlags: r.remove_flags,
      kwAdd: decKw(r.kw_add),
      kwRemove: decKw(r.kw_remove),
      origin: r.origin,
      ts: r.ts,
      hdrHash: r.hdr_hash,
    }));
  }

  tombstones(): { kind: TombstoneKind; key: string; ts: number }[] {
    return this.stmts.tombstones.all() as any[];
  }
  putTombstone(kind: TombstoneKind, key: string, ts: number): void {
    this.stmts.putTombstone.run(kind, key, ts);
  }
  deleteTombstone(kind: TombstoneKind, key: string): void {
    this.stmts.delTombstone.run(kind, key);
  }

  dirs(): { name: string[]; lastCreated: number }[] {
    return (this.stmts.dirs.all() as any[]).map((r) => ({ name: decName(r.name), lastCreated: r.last_created }));
  }
  putDir(name: string[], lastCreated: number): void {
    this.stmts.putDir.run(encName(name), lastCreated);
  }
  deleteDir(name: string[]): void {
    this.stmts.delDir.run(encName(name));
  }

  subscriptions(): { name: string[]; subscribed: boolean; ts: number }[] {
    return (this.stmts.subscriptions.all() as any[]).map((r) => ({ name: decName(r.name), subscribed: r.subscribed === 1, ts: r.ts }));
  }
  putSubscription(name: string[], subscribed: boolean, ts: number): void {
    this.stmts.putSubscription.run(encName(name), subscribed ? 1 : 0, ts);
  }

  peerState(peer: string, mailbox: string): PeerState | undefined {
    const r = this.stmts.getPeerState.get(peer, mailbox) as any;
    if (!r) return undefined;
    return { uidValidity: r.uid_validity, lastCommonUid: r.last_common_uid, myModseq: r.my_modseq, myUidNext: r.my_uid_next, syncId: r.sync_id };
  }
  putPeerState(peer: string, mailbox: string, s: PeerState): void {
    this.stmts.putPeerState.run(peer, mailbox, s.uidValidity, s.lastCommonUid, s.myModseq, s.myUidNext, s.syncId);
  }
  deletePeerState(peer: string, mailbox: string): void {
    this.stmts.delPeerState.run(peer, mailbox);
  }
  /** Forgets every peer (the index now describes another location). */
  forgetAllPeers(): void {
    this.db.exec('DELETE FROM peer_state');
  }
  deleteAllPeerStates(mailbox: string): void {
    this.stmts.delPeerStatesOf.run(mailbox);
  }

  /**
   * Folds the write-ahead log back into the database file and empties it, so that the file is
   * complete on its own (and its size checkable, see open). What SQLite's own checkpoint does,
   * in the same order (the log durable before a page of it is copied, the file durable before
   * the log is emptied), but with the fsyncs in the thread pool instead of on the main thread:
   * the two sides of a local sync close at the same time. One fsync more than SQLite's: the
   * emptied log is made durable too, so that no old page of it can come back after a crash under
   * the next run's log.
   */
  async close(): Promise<void> {
    const db = this.db;
    const log = `${this.path}-wal`;
    try {
      // A run that wrote nothing has nothing to fold back (and makes nothing durable).
      if (this.path === ':memory:' || fileSize(log) === 0) return;
      // With synchronous = OFF the checkpoints below sync nothing themselves.
      db.pragma('synchronous = OFF');
      try {
        await fsyncFile(log);
        const copied = db.pragma('wal_checkpoint(PASSIVE)') as { busy: number; log: number; checkpointed: number }[];
        const all = copied[0] !== undefined && copied[0].busy === 0 && copied[0].checkpointed >= copied[0].log;
        if (all) await fsyncFile(this.path);
        // Not all copied (cannot happen to a database this process holds alone): SQLite's own,
        // with its fsyncs, copies the rest.
        else db.pragma('synchronous = NORMAL');
        db.pragma('wal_checkpoint(TRUNCATE)');
        await fsyncFile(log);
      } finally {
        db.pragma('synchronous = NORMAL');
      }
    } finally {
      // Also after a failed fsync: closing folds what is left the way SQLite does.
      db.close();
    }
  }
}

type RawMessage = [number, string, number, string, number, number, number, string | null];

function toMessageRow(r: RawMessage): MessageRow {
  return { uid: r[0], guid: r[1], flags: r[2], keywords: decKw(r[3]), modseq: r[4], internalDate: r[5], size: r[6], hdrHash: r[7] };
}

function toMessageRows(rows: RawMessage[]): MessageRow[] {
  const out: MessageRow[] = new Array(rows.length);
  for (let i = 0; i < rows.length; i++) out[i] = toMessageRow(rows[i]!);
  return out;
}

function rowToMailbox(r: any): MailboxRow {
  return {
    guid: r.guid,
    name: decName(r.name),
    uidValidity: r.uid_validity,
    uidNext: r.uid_next,
    highestModseq: r.highest_modseq,
    firstRecentUid: r.first_recent_uid,
    lastRenamedOrCreated: r.last_renamed_or_created,
    scanToken: r.scan_token,
    counted: r.message_count === null || r.count_modseq === null ? null : { count: r.message_count, atModseq: r.count_modseq },
  };
}

/**
 * Opens a database for this process alone. dsync's own lock file keeps any other dsync away from
 * a location while it runs, so SQLite need not lock the file for every statement: in exclusive
 * mode it locks once, and in WAL mode it then keeps the log's index in its own memory instead of
 * a shared -shm file. Must be set before the first read.
 */
function openDatabase(path: string): Database.Database {
  const db = new Database(path, { nativeBinding: sqliteAddon() });
  db.pragma('locking_mode = EXCLUSIVE');
  return db;
}

let addonPath: string | undefined;

/**
 * better-sqlite3's native addon, where npm puts it (build/Release of the package, whether built
 * or downloaded prebuilt). Named to the constructor, it spares every run the `bindings` package,
 * which finds the addon by trying paths up from the caller's file (~3 ms), and which, called from
 * the one-file bundle, would search the wrong directory.
 */
function sqliteAddon(): string {
  if (addonPath !== undefined) return addonPath;
  // import.meta.url: the module's URL; in the bundle, the bundle's path (scripts/bundle.mjs).
  const pkg = createRequire(import.meta.url).resolve('better-sqlite3/package.json');
  const addon = join(dirname(pkg), 'build', 'Release', 'better_sqlite3.node');
  if (!existsSync(addon)) throw new Error(`the SQLite module is incomplete: ${addon} is missing (run \`npm install\` again)`);
  return (addonPath = addon);
}

/** fsync(2) of a file, in the thread pool; nothing when it does not exist. */
function fsyncFile(p: string): Promise<void> {
  return new Promise((resolve, reject) =>
    open(p, 'r', (err, fd) => {
      if (err) return err.code === 'ENOENT' ? resolve() : reject(err);
      fsync(fd, (syncErr) => close(fd, () => (syncErr ? reject(syncErr) : resolve())));
    }),
  );
}

/** Size of a file, 0 when it does not exist. */
function fileSize(p: string): number {
  try {
    return statSync(p).size;
  } catch {
    return 0;
  }
}
