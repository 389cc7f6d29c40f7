// A location = one mail store plus its change index. It turns what the store shows now into
// changes (new mail, flag changes, expunges, mailbox creates/renames/deletes, subscriptions),
// each with a modseq and a timestamp, and applies a peer's changes while recording which peer
// caused them (so they are never echoed back to that peer).
import { randomBytes } from '../util/builtin.js';
import { realpathSync } from 'node:fs';
import { StorageError, type MailStore, type MailboxName, type StoreMailboxInfo } from '../storage/types.js';
import { ChangeIndex, type MailboxRow } from '../index/change-index.js';
import type { MailboxDeleteRecord, MailboxTreeNodeRecord } from '../sync/records.js';
import { nameHash, nameKey } from '../sync/decide/name-hash.js';
import type { Logger } from '../util/log.js';
import { LocationMailbox } from './mailbox.js';

export interface LocationOptions {
  /** SQLite file of the change index, or ':memory:' (read-only stores). */
  indexPath: string;
  log: Logger;
  readOnly?: boolean;
  /**
   * Clock for change times, in unix milliseconds (a rename and a create in the same second must
   * still be ordered); tests may fix it. Dovecot's wire format would carry these divided by 1000.
   */
  now?: () => number;
}

export const newGuid = (): string => randomBytes(16).toString('hex');

export class Location {
  /** See needsScanBeforeTree. */
  private earlyScan: ReadonlySet<string> = new Set();
  /**
   * The open handle of each mailbox. A handle keeps the mailbox's state (highest modseq, rows) in
   * memory and writes it back with every change: a second handle would write back a stale copy
   * over the first one's (a change counted as synced, then lost from the index).
   */
  private readonly handles = new Map<string, LocationMailbox>();

  private constructor(
    readonly store: MailStore,
    readonly index: ChangeIndex,
    readonly log: Logger,
    readonly readOnly: boolean,
    readonly now: () => number,
  ) {}

  static open(store: MailStore, opts: LocationOptions): Location {
    const { index, rebuiltReason } = ChangeIndex.open(opts.indexPath);
    if (rebuiltReason) opts.log.warn(`change index ${opts.indexPath}: ${rebuiltReason}`);
    // An index copied along with a mail directory still carries the original's identity; two
    // locations must never share one, so the copy takes a new identity and forgets all peers.
    const root = realRoot(store.controlDir);
    const recorded = index.getMeta('root');
    if (recorded !== undefined && recorded !== root && opts.indexPath !== ':memory:') {
      opts.log.warn(`change index ${opts.indexPath} was made for ${recorded}; this location (${root}) gets a new identity and compares everything with its peers once`);
      index.transaction(() => {
        index.setMeta('location_id', newGuid());
        index.forgetAllPeers();
      });
    }
    if (recorded !== root) index.setMeta('root', root);
    return new Location(store, index, opts.log, opts.readOnly ?? false, opts.now ?? (() => Date.now()));
  }

  get id(): string {
    return this.index.locationId;
  }
  get separator(): string {
    return this.store.separator;
  }

  /** Reconciles the index's mailbox list, directories and subscriptions with the store. */
  async refreshTree(): Promise<void> {
    const initial = this.index.getMeta('tree_initialized') === undefined;
    const stamp = initial ? 0 : this.now();
    let listed: StoreMailboxInfo[];
    let boxes: (StoreMailboxInfo & { guid: string })[];
    // A mailbox listed without its GUID is opened for it; one renamed or deleted by another
    // program (an IMAP server) in between makes the listing out of date: it is made again.
    for (let attempt = 1; ; attempt++) {
      listed = await this.store.listMailboxes();
      boxes = [];
      try {
        for (const info of listed) {
          if (!info.selectable) continue;
          let guid = info.guid;
          if (!guid) {
            const mb = await this.store.openMailbox(info.name);
            try {
              guid = (await mb.status()).guid;
            } finally {
              await mb.close();
            }
          }
          boxes.push({ ...info, guid });
        }
        break;
      } catch (err) {
        if (!(err instanceof StorageError && err.code === 'NOTFOUND') || attempt === 3) throw err;
      }
    }
    // A mailbox directory copied on disk duplicates its GUID: the later name gets a new one.
    boxes.sort((a, b) => (nameKey(a.name) < nameKey(b.name) ? -1 : 1));
    const seen = new Set<string>();
    for (const b of boxes) {
      if (seen.has(b.guid) && !this.readOnly) {
        const fresh = newGuid();
        this.log.warn(`mailbox ${b.name.join(this.separator)} has the same GUID as another mailbox (copied on disk?): giving it a new GUID`);
        const mb = await this.store.openMailbox(b.name);
        try {
          await mb.setGuid(fresh);
        } finally {
          await mb.close();
        }
        b.guid = fresh;
      }
      seen.add(b.guid);
    }
    const dirs = listed.filter((i) => !i.selectable).map((i) => i.name);
    const subscribed = await this.store.readSubscriptions();

    const early = new Set<string>();
    this.index.transaction(() => {
      const known = new Map(this.index.mailboxes().map((m) => [m.guid, m]));
      for (const b of boxes) {
        const row = known.get(b.guid);
        known.delete(b.guid);
        if (!row || row.highestModseq === 0 || b.uidValidity === undefined || b.uidValidity !== row.uidValidity) early.add(b.guid);
        if (!row) {
          this.index.putMailbox({
            guid: b.guid,
            name: b.name,
            uidValidity: b.uidValidity ?? 0,
            uidNext: b.uidNext ?? 1,
            highestModseq: 0,
            firstRecentUid: 1,
            lastRenamedOrCreated: stamp,
            scanToken: null,
          });
          this.index.deleteTombstone('mailbox', b.guid);
        } else if (nameKey(row.name) !== nameKey(b.name)) {
          // Renamed outside dsync: date it by the directory's ctime (set by the rename, or by a
          // later change of the directory) rather than by when we noticed.
          const now = this.now();
          const when = b.changedAt !== undefined && b.changedAt <= now && b.changedAt > row.lastRenamedOrCreated ? Math.floor(b.changedAt) : now;
          this.index.putMailbox({ ...row, name: b.name, lastRenamedOrCreated: when });
        }
      }
      for (const gone of known.values()) {
        this.index.putTombstone('mailbox', gone.guid, this.now());
        this.index.dropMailbox(gone.guid);
      }
      const knownDirs = new Map(this.index.dirs().map((d) => [nameKey(d.name), d]));
      for (const d of dirs) {
        if (!knownDirs.delete(nameKey(d))) {
          this.index.putDir(d, stamp);
          this.index.deleteTombstone('dir', nameHash(d, this.separator));
        }
      }
      for (const d of knownDirs.values()) {
        this.index.deleteDir(d.name);
        this.index.putTombstone('dir', nameHash(d.name, this.separator), this.now());
      }
      const subs = new Set(subscribed.map(nameKey));
      const rows = new Map(this.index.subscriptions().map((s) => [nameKey(s.name), s]));
      for (const name of subscribed) {
        const r = rows.get(nameKey(name));
        if (!r || !r.subscribed) this.index.putSubscription(name, true, stamp);
      }
      for (const r of rows.values()) if (r.subscribed && !subs.has(nameKey(r.name))) this.index.putSubscription(r.name, false, this.now());
      if (initial) this.index.setMeta('tree_initialized', '1');
    });
    this.earlyScan = early;
  }

  /**
   * Mailboxes whose index row may not describe them well enough for the tree exchange, found by
   * the last refreshTree: new to the index, never scanned, or with a UIDVALIDITY on disk (or
   * none yet) that differs from the index's. The sync scans these before sending its tree.
   */
  needsScanBeforeTree(): ReadonlySet<string> {
    return this.earlyScan;
  }

  mailboxes(): MailboxRow[] {
    return this.index.mailboxes();
  }

  mailboxByName(name: MailboxName): MailboxRow | undefined {
    const k = nameKey(name);
    return this.index.mailboxes().find((m) => nameKey(m.name) === k);
  }

  /** The tree as sent to a peer: mailboxes, directories and subscription-only names. */
  treeNodes(peerId: string): MailboxTreeNodeRecord[] {
    const subs = new Map(this.index.subscriptions().map((s) => [nameKey(s.name), s]));
    const nodes: MailboxTreeNodeRecord[] = [];
    const named = new Set<string>();
    const subFields = (name: string[]) => {
      const s = subs.get(nameKey(name));
      return { subscribed: s?.subscribed ?? false, lastSubscriptionChange: s?.ts ?? 0 };
    };
    for (const m of this.index.mailboxes()) {
      const state = this.index.peerState(peerId, m.guid);
      named.add(nameKey(m.name));
      nodes.push({
        type: 'node',
        name: m.name,
        existence: 'exists',
        mailboxGuid: m.guid,
        uidValidity: m.uidValidity,
        uidNext: m.uidNext,
        lastRenamedOrCreated: m.lastRenamedOrCreated,
        ...subFields(m.name),
        changedSinceSync: !state || state.myModseq !== m.highestModseq || state.myUidNext !== m.uidNext,
      });
    }
    for (const d of this.index.dirs()) {
      if (named.has(nameKey(d.name))) continue;
      named.add(nameKey(d.name));
      nodes.push({ type: 'node', name: d.name, existence: 'exists', lastRenamedOrCreated: d.lastCreated, ...subFields(d.name) });
    }
    for (const s of subs.values()) {
      if (named.has(nameKey(s.name))) continue;
      nodes.push({ type: 'node', name: s.name, existence: 'nonexistent', lastRenamedOrCreated: 0, subscribed: s.subscribed, lastSubscriptionChange: s.ts });
    }
    nodes.sort((a, b) => (nameKey(a.name) < nameKey(b.name) ? -1 : nameKey(a.name) > nameKey(b.name) ? 1 : 0));
    return nodes;
  }

  deletes(): MailboxDeleteRecord {
    const t = this.index.tombstones();
    return {
      type: 'deletes',
      hierarchySep: this.separator,
      mailboxes: t.filter((x) => x.kind === 'mailbox').map((x) => ({ key: x.key, timestamp: x.ts })),
      dirs: t.filter((x) => x.kind === 'dir').map((x) => ({ key: x.key, timestamp: x.ts })),
      unsubscribes: this.index
        .subscriptions()
        .filter((s) => !s.subscribed)
        .map((s) => ({ key: nameHash(s.name, this.separator), timestamp: s.ts })),
    };
  }

  // ---- tree changes requested by the sync (recorded with the current time) ----

  /**
   * Creates a mailbox. `at` dates it: for a copy of the peer's mailbox, its creation (or last
   * rename) there, so that a rename of it on the peer made meanwhile does not look older than
   * this copy (it would lose, and be undone); by default now.
   */
  async createMailbox(name: MailboxName, guid: string, uidValidity: number, at = this.now()): Promise<void> {
    const uv = uidValidity || (await this.store.newUidValidity());
    await this.store.createMailbox(name, { guid, uidValidity: uv });
    if (uidValidity) await this.store.reserveUidValidity?.(uv);
    this.index.transaction(() => {
      this.index.putMailbox({
        guid,
        name,
        uidValidity: uv,
        uidNext: 1,
        highestModseq: 0,
        firstRecentUid: 1,
        lastRenamedOrCreated: at,
        scanToken: null,
      });
      this.index.deleteTombstone('mailbox', guid);
    });
  }

  async deleteMailbox(guid: string): Promise<void> {
    const row = this.index.mailbox(guid);
    if (!row) return;
    await this.store.deleteMailbox(row.name);
    this.index.transaction(() => {
      this.index.dropMailbox(guid);
      this.index.putTombstone('mailbox', guid, this.now());
    });
  }

  /**
   * Renames a mailbox (its children move along). `at` dates the rename: for one the peer made, its
   * time there, so that this side's copy of the rename does not look newer than a later rename
   * on the peer (which would then lose, and be undone); by default now.
   */
  async renameMailbox(guid: string, to: MailboxName, at = this.now()): Promise<void> {
    const row = this.index.mailbox(guid);
    if (!row) return;
    const from = row.name;
    await this.store.renameMailbox(from, to);
    // The store renames children with their parent: follow them in the index.
    const fromKey = nameKey(from);
    this.index.transaction(() => {
      for (const m of this.index.mailboxes()) {
        const k = nameKey(m.name);
        if (k === fromKey || (m.name.length > from.length && nameKey(m.name.slice(0, from.length)) === fromKey)) {
          this.index.putMailbox({ ...m, name: [...to, ...m.name.slice(from.length)], lastRenamedOrCreated: at });
        }
      }
    });
  }

  async setMailboxGuid(from: string, to: string): Promise<void> {
    const row = this.index.mailbox(from);
    if (!row) return;
    const mb = await this.store.openMailbox(row.name);
    try {
      await mb.setGuid(to);
    } finally {
      await mb.close();
    }
    this.index.transaction(() => {
      // Same mailbox, new identity: its messages stay, but no peer state applies any more.
      const msgs = this.index.messages(from);
      this.index.dropMailbox(from);
      this.index.deleteAllPeerStates(from);
      this.index.putMailbox({ ...row, guid: to });
      for (const m of msgs) this.index.putMessage(to, m);
    });
  }

  async createDir(name: MailboxName): Promise<void> {
    await this.store.createDirectory(name);
    this.index.putDir(name, this.now());
  }

  async deleteDir(name: MailboxName): Promise<void> {
    await this.store.deleteDirectory(name);
    this.index.transaction(() => {
      this.index.deleteDir(name);
      this.index.putTombstone('dir', nameHash(name, this.separator), this.now());
    });
  }

  async setSubscribed(name: MailboxName, subscribed: boolean, timestamp: number): Promise<void> {
    const current = await this.store.readSubscriptions();
    const k = nameKey(name);
    const rest = current.filter((n) => nameKey(n) !== k);
    await this.store.writeSubscriptions(subscribed ? [...rest, name] : rest);
    this.index.putSubscription(name, subscribed, timestamp);
  }

  /** A handle of the mailbox; one at a time (see handles): opening one that is open is an internal error. */
  async openMailbox(guid: string): Promise<LocationMailbox | undefined> {
    const row = this.index.mailbox(guid);
    if (!row) return undefined;
    const twice = () => new Error(`internal error: mailbox ${row.name.join(this.separator)} opened a second time while open`);
    if (this.handles.has(guid)) throw twice();
    const handle = await this.store.openMailbox(row.name);
    if (this.handles.has(guid)) {
      await handle.close();
      throw twice();
    }
    const box = new LocationMailbox(this, row, handle);
    this.handles.set(guid, box);
    return box;
  }

  /** Called by a handle's close. */
  handleClosed(guid: string, box: LocationMailbox): void {
    if (this.handles.get(guid) === box) this.handles.delete(guid);
  }

  async close(): Promise<void> {
    try {
      await this.index.close();
    } finally {
      await this.store.close();
    }
  }
}

function realRoot(dir: string): string {
  try {
    return realpathSync(dir);
  } catch {
    return dir;
  }
}
