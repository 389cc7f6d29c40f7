// One mailbox of a location: reconciles the store's messages with the index (journaling what
// changed outside dsync), exports changes for a peer, and applies a peer's changes.
import { generatorBody, type BodyStream } from '../util/body-stream.js';
import { BodySourceError, type SaveRequest, type StoreMailbox } from '../storage/types.js';
import type { ChangeRow, MailboxRow, MessageRow, PeerState } from '../index/change-index.js';
import type { MailChangeRecord } from '../sync/records.js';
import type { ExpungeView, MessageView, SideView } from '../sync/decide/mailbox-plan.js';
import type { Location } from './location.js';
import { headerHash } from '../storage/header-hash.js';
import { MessageRows } from './message-rows.js';
import { RowDigest } from './row-digest.js';
import { NO_STRINGS } from '../util/empty.js';

export interface ExportMode {
  /** Messages at or below this UID are common with the peer (0 = no usable state). */
  lastCommonUid: number;
  /** Journal entries above this modseq are news for the peer. */
  sinceModseq: number;
  /** List every message, not only changed ones. */
  complete: boolean;
}

interface Accumulated {
  addFlags: number;
  removeFlags: number;
  kwAdd: Set<string>;
  kwRemove: Set<string>;
  changedAt: number;
  expungedGuid?: string;
  expungedHash?: string;
}

export interface AppliedCounts {
  saved: number;
  expunged: number;
  flagged: number;
}

export class LocationMailbox {
  /** The index's messages of this mailbox, read only as far as needed (see MessageRows). */
  private rowsState: MessageRows | null = null;
  /** The modseq and UIDVALIDITY recordSummary last recorded the mailbox at. */
  private summarized = '';
  private loaded = false;
  /**
   * This handle's store scanned the mailbox in a refresh, and every change since went through
   * this handle (and is in the index): the store can tell whether anything else changed.
   */
  private storeScanned = false;
  /**
   * How mails are recognised across the two sides: by GUID, or (when a side cannot save GUIDs,
   * e.g. mbox) by dsync's header hash.
   */
  identity: 'guid' | 'hdrHash' = 'guid';
  /** Settles when no UID move is under way (body readers wait for it). */
  private moving: Promise<void> = Promise.resolve();

  /** The GUID this handle was opened as (the key of Location's handles). */
  private readonly openedAs: string;

  constructor(
    readonly location: Location,
    public row: MailboxRow,
    readonly store: StoreMailbox,
  ) {
    this.openedAs = row.guid;
  }

  get guid(): string {
    return this.row.guid;
  }
  get name(): string[] {
    return this.row.name;
  }
  get messageCount(): number {
    return this.rowsState?.count ?? this.index.messageCount(this.row);
  }

  /**
   * No change token is on record (the mailbox had just changed, or this handle changed it since;
   * see markTokenStale): the next run would have to scan it. Refreshing again at the end of the
   * run, on this same handle, avoids that: usually with the two-readdir check of a store that
   * this handle scanned, else with a scan.
   */
  get tokenPending(): boolean {
    return this.loaded && this.row.scanToken === null && typeof this.store.changeToken === 'function';
  }

  /** dropRows frees the store's per-message data too (see StoreMailbox.dropFileMap). */
  get settlesCompactly(): boolean {
    return typeof this.store.dropFileMap === 'function';
  }

  /**
   * Drops what the handle holds per message: the index rows (read again if needed) and, where
   * the store can (settlesCompactly), its file map (rescanned if needed), keeping in compact form
   * what it needs to recognise that only this handle's changes happened (see refresh): a handle
   * kept to settle its change token then costs next to nothing.
   */
  dropRows(): void {
    this.rowsState?.drop();
    this.store.dropFileMap?.();
  }

  /**
   * Records the message count and the digest of the rows in the index (after a sync of the
   * mailbox, while this handle knows them), so that the next run need not count the rows, and
   * compares a changed mailbox with the digest instead of reading every row (see refresh).
   */
  recordSummary(): void {
    const rows = this.rowsState;
    const at = `${this.row.highestModseq}/${this.row.uidValidity}`;
    if (!rows || at === this.summarized) return;
    // Only what the index holds. write() already puts memory back after a failed transaction;
    // this also keeps out a mailbox row changed in the index other than through this handle.
    const stored = this.index.mailbox(this.row.guid);
    if (!stored || stored.highestModseq !== this.row.highestModseq || stored.uidValidity !== this.row.uidValidity) return;
    if (!rows.digest && rows.complete) {
      const all = rows.loadAll();
      rows.digest = RowDigest.of(all.values(), all.size);
    }
    const digest = rows.digest;
    const count = rows.count;
    this.index.transaction(() => {
      if (count !== null) this.index.recordMessageCount(this.row, count);
      if (!digest) return;
      const made = this.index.digestMadeAt(this.row.guid);
      if (made && made.modseq === this.row.highestModseq && made.uidValidity === this.row.uidValidity) return;
      const { data, keywordSets } = digest.encode();
      this.index.putDigest(this.row.guid, this.row.highestModseq, this.row.uidValidity, data, keywordSets);
    });
    this.summarized = at;
  }

  /** Index rows held in memory (0 until something needed them). */
  get loadedCount(): number {
    return this.rowsState ? this.rowsState.loadedCount : 0;
  }

  /**
   * Messages whose data this handle holds in memory: its rows and, once its store scanned the
   * mailbox, the store's (one entry per message, even when few rows were read). What the brain's
   * budget of open handles counts.
   */
  get heldCount(): number {
    const rows = this.loadedCount;
    return this.storeScanned ? Math.max(rows, this.messageCount) : rows;
  }

  /**
   * The rows, with the digest stored in the index if it still describes them. Made before the
   * first change to the mailbox (see nextModseq): a change moves the modseq the digest is
   * checked against.
   */
  private get rows(): MessageRows {
    if (!this.rowsState) {
      const stored = this.index.digest(this.row.guid, this.row.highestModseq, this.row.uidValidity);
      this.rowsState = new MessageRows(this.index, this.row.guid, stored ? RowDigest.decode(stored.data, stored.keywordSets) : null);
    }
    return this.rowsState;
  }

  private get index() {
    return this.location.index;
  }

  /**
   * Runs an index transaction that also changes this handle's memory (rows, digest, the mailbox
   * row). If it fails, the index rolled back but memory did not: the handle forgets what it holds
   * and reads it again from the index, and no longer counts as having scanned the store, so that a
   * later refresh scans again instead of trusting a comparison the index never recorded.
   */
  private write<T>(fn: () => T): T {
    try {
      return this.index.transaction(fn);
    } catch (err) {
      this.rowsState = null;
      this.summarized = '';
      this.storeScanned = false;
      const stored = this.index.mailbox(this.row.guid);
      if (stored) this.row = { ...stored, name: this.row.name };
      throw err;
    }
  }

  private nextModseq(): number {
    void this.rows;
    this.row.highestModseq += 1;
    return this.row.highestModseq;
  }

  /**
   * Forgets the recorded change token when the store no longer matches it (this handle changed
   * the mailbox): the mailbox then counts as unverified until a refresh (see tokenPending).
   */
  async markTokenStale(): Promise<void> {
    if (!this.loaded || this.row.scanToken === null) return;
    const token = this.store.changeToken ? await this.store.changeToken() : null;
    if (token === null || token !== this.row.scanToken) this.row.scanToken = null;
  }

  /** Compares the store with the index and journals every difference as a change made outside dsync. */
  async refresh(force = false): Promise<void> {
    // Nothing on disk changed since the last scan: the index is up to date.
    const token = this.store.changeToken ? await this.store.changeToken() : null;
    if (!force && token !== null && token === this.row.scanToken) {
      this.loaded = true;
      return;
    }
    // Our own changes since our last scan do not need a scan to be known: when they are all
    // that changed, only the new token is recorded (none if the store cannot give one yet).
    if (!force && this.storeScanned && this.store.unchangedSinceScan && (await this.store.unchangedSinceScan())) {
      this.row.scanToken = token;
      this.index.putMailbox(this.row);
      this.loaded = true;
      return;
    }
    const status = await this.store.status();
    const fresh = this.index.mailbox(this.row.guid);
    if (fresh) this.row = { ...fresh, name: this.row.name };
    const reset = this.row.uidValidity !== status.uidValidity;
    // The index's rows of this mailbox: kept in memory in step with every change made through
    // this handle, so a rescan after the sync does not read them again. With a digest of them,
    // only the rows of messages that differ from it are read.
    const rows = reset ? new MessageRows(this.index, this.row.guid, RowDigest.empty(), true) : this.rows;
    const digest = rows.complete ? null : rows.digest;
    if (!digest) rows.loadAll();
    // Files of messages the index knows need no stat: their size and date are on record.
    const scanned = await this.store.scan({
      known: digest ? (uid, guid) => digest.hasGuid(uid, guid) : (uid, guid) => rows.get(uid)?.guid === guid,
    });
    this.storeScanned = true;
    const now = this.location.now();
    this.write(() => {
      if (reset) {
        // The mailbox was recreated or its UIDs reset outside dsync: nothing we knew holds.
        if (this.row.uidValidity !== 0) this.location.log.warn(`mailbox ${this.name.join(this.location.separator)}: UIDVALIDITY changed from ${this.row.uidValidity} to ${status.uidValidity} outside dsync`);
        this.index.dropMailbox(this.row.guid);
        this.index.deleteAllPeerStates(this.row.guid);
        this.row.uidValidity = status.uidValidity;
        // Its messages went without a modseq of their own: the recorded count no longer holds.
        this.row.counted = null;
        this.rowsState = rows;
      }
      const initial = rows.count === 0 && this.row.highestModseq === 0;
      // Rows that no scanned message has: those messages are gone. With a digest, found before its
      // entries change (scanned UIDs are unique and ascending).
      const gone: MessageRow[] = [];
      /** Rows whose UID now holds another mail (for -D). */
      const replaced: MessageRow[] = [];
      if (digest) {
        let k = 0;
        digest.forEachUid((uid) => {
          while (k < scanned.length && scanned[k]!.uid < uid) k++;
          if (k < scanned.length && scanned[k]!.uid === uid) return;
          const old = rows.get(uid);
          if (old) gone.push(old);
        });
      }
      for (let i = 0; i < scanned.length; i++) {
        const m = scanned[i]!;
        const keywords = normalizedKeywords(m.keywords);
        if (digest && digest.matches(m.uid, m.guid, m.flags, keywords)) continue;
        const old = rows.get(m.uid);
        if (old && old.guid !== m.guid) {
          replaced.push(old);
          this.journalExpunge(old, '', now);
          rows.remove(m.uid);
        } else if (old) {
          if (old.flags === m.flags && sameKeywords(old.keywords, keywords)) continue;
          const modseq = this.nextModseq();
          this.journalFlags(m.uid, old, m.flags, keywords, '', now, modseq);
          const row = { ...old, flags: m.flags, keywords, modseq };
          this.index.putMessage(this.row.guid, row);
          rows.put(row);
          continue;
        }
        if (m.size < 0 || m.internalDate < 0) throw new Error(`internal error: the store did not stat new mail ${m.uid} in ${this.name.join('/')}`);
        const row: MessageRow = {
          uid: m.uid,
          guid: m.guid,
          flags: m.flags,
          keywords,
          modseq: initial ? 1 : this.nextModseq(),
          internalDate: m.internalDate,
          size: m.size,
          hdrHash: m.hdrHash ?? null,
        };
        this.index.putMessage(this.row.guid, row);
        rows.put(row);
      }
      if (initial && scanned.length > 0 && this.row.highestModseq === 0) this.row.highestModseq = 1;
      // Every scanned UID now has a row: with all rows read, any further row is a message that is gone.
      if (!digest && rows.count! > scanned.length) {
        const seen = new Set<number>();
        for (let i = 0; i < scanned.length; i++) seen.add(scanned[i]!.uid);
        rows.loadAll().forEach((m) => {
          if (!seen.has(m.uid)) gone.push(m);
        });
      }
      for (const m of gone) {
        this.journalExpunge(m, '', now);
        rows.remove(m.uid);
      }
      const log = this.location.log;
      if (gone.length + replaced.length > 0 && log.debugEnabled) {
        log.debug(`mailbox ${this.name.join(this.location.separator)}: gone outside dsync: ${[...replaced, ...gone].map((m) => `${m.uid}=${(m.hdrHash ?? m.guid).slice(0, 12)}`).join(' ')}`);
      }
      const maxUid = scanned.length ? scanned[scanned.length - 1].uid : 0;
      this.row.uidNext = Math.max(status.uidNext, maxUid + 1);
      this.row.scanToken = token;
      this.index.putMailbox(this.row);
    });
    this.loaded = true;
  }

  private journalExpunge(m: MessageRow, origin: string, ts: number): void {
    const modseq = this.nextModseq();
    this.index.addChange(this.row.guid, {
      modseq,
      uid: m.uid,
      kind: 'expunge',
      guid: m.guid,
      addFlags: 0,
      removeFlags: 0,
      kwAdd: [],
      kwRemove: [],
      origin,
      ts,
      hdrHash: m.hdrHash ?? null,
    });
    this.index.deleteMessage(this.row.guid, m.uid);
  }

  private journalFlags(uid: number, old: MessageRow, flags: number, keywords: string[], origin: string, ts: number, modseq: number): void {
    const oldKw = new Set(old.keywords);
    const newKw = new Set(keywords);
    this.index.addChange(this.row.guid, {
      modseq,
      uid,
      kind: 'flags',
      guid: old.guid,
      addFlags: flags & ~old.flags,
      removeFlags: old.flags & ~flags,
      kwAdd: keywords.filter((k) => !oldKw.has(k)),
      kwRemove: old.keywords.filter((k) => !newKw.has(k)),
      origin,
      ts,
    });
  }

  /** The identity of the message at uid (see `identity`), or undefined if there is none. */
  keyOf(uid: number): string | undefined {
    const m = this.rows.get(uid);
    return m ? this.key(m) : undefined;
  }

  private key(m: MessageRow): string {
    return this.identity === 'guid' ? m.guid : (m.hdrHash ?? '');
  }

  /** Computes (once, then kept in the index) the header hash of every message lacking one. */
  async ensureHeaderHashes(): Promise<void> {
    const missing = [...this.rows.loadAll().values()].filter((m) => !m.hdrHash);
    if (missing.length === 0) return;
    // Several at once (reads overlap in the thread pool); small mails in one read, large ones
    // streamed only up to the end of their header.
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < missing.length) {
        const m = missing[next++]!;
        const whole = this.store.readBody ? await this.store.readBody(m.uid, SMALL_BODY) : null;
        m.hdrHash = headerHash(whole ?? (await readHeader(await this.store.openBody(m.uid))));
      }
    };
    await Promise.all(Array.from({ length: Math.min(HASH_PARALLELISM, missing.length) }, worker));
    this.index.transaction(() => {
      for (const m of missing) this.index.putMessage(this.row.guid, m);
    });
  }

  status() {
    return {
      uidValidity: this.row.uidValidity,
      uidNext: this.row.uidNext,
      highestModseq: this.row.highestModseq,
      messagesCount: this.messageCount,
      firstRecentUid: this.row.firstRecentUid,
    };
  }

  peerState(peerId: string): PeerState | undefined {
    return this.index.peerState(peerId, this.row.guid);
  }

  /** True when nothing changed here since the last completed sync with this peer. */
  unchangedSince(state: PeerState | undefined): boolean {
    return !!state && state.uidValidity === this.row.uidValidity && state.myModseq === this.row.highestModseq && state.myUidNext === this.row.uidNext;
  }

  /**
   * UIDs of second copies of a mail in this mailbox (same GUID; left by an interrupted save or
   * move). GUIDs name one mail each, so only the lowest UID is kept; not for header hashes,
   * which different mails may share.
   */
  duplicateUids(sinceUid = 0): number[] {
    if (this.identity !== 'guid') return [];
    // A second copy always has the higher UID, given after the copy it duplicates. When the
    // caller knows that every UID below sinceUid was checked before (the last completed sync),
    // only GUIDs of mails from sinceUid on can be second copies: usually none, so no set of every
    // GUID in the mailbox is built.
    const rows = this.rows;
    if (sinceUid > 0 && !rows.complete) {
      // Without every row in memory: the recent GUIDs from their rows, their copies from the index.
      const recent = new Set<string>();
      for (const m of rows.from(sinceUid)) recent.add(m.guid);
      if (recent.size === 0) return [];
      return secondCopies(this.index.uidsWithGuids(this.row.guid, [...recent]));
    }
    const all = rows.loadAll();
    let candidates: Set<string> | null = null;
    if (sinceUid > 0) {
      const recent = new Set<string>();
      // forEach: no iterator objects per message in this per-mailbox pass over every message.
      all.forEach((m) => {
        if (m.uid >= sinceUid) recent.add(m.guid);
      });
      if (recent.size === 0) return [];
      candidates = recent;
    }
    const list: MessageRow[] = [];
    all.forEach((m) => {
      if (!candidates || candidates.has(m.guid)) list.push(m);
    });
    return secondCopies(list);
  }

  /** The change records to send to a peer, and the same data as this side's view for the planner. */
  exportChanges(peerId: string, mode: ExportMode): { records: MailChangeRecord[]; view: SideView } {
    if (!this.loaded) throw new Error('mailbox not refreshed');
    const acc = new Map<number, Accumulated>();
    for (const c of this.index.changesSince(this.row.guid, mode.sinceModseq)) {
      if (c.origin === peerId) continue;
      accumulate(acc, c);
    }
    const records: MailChangeRecord[] = [];
    const messages: MessageView[] = [];
    const expunges: ExpungeView[] = [];
    for (const [uid, a] of acc) {
      if (a.expungedGuid === undefined || this.rows.has(uid)) continue;
      if (mode.lastCommonUid > 0 && uid > mode.lastCommonUid) continue;
      const key = this.identity === 'guid' ? a.expungedGuid : a.expungedHash;
      if (key) expunges.push({ uid, key, at: a.changedAt });
    }
    expunges.sort((x, y) => x.uid - y.uid);
    const expIter = expunges[Symbol.iterator]();
    let nextExp = expIter.next();
    const pushExpungesBelow = (uid: number) => {
      while (!nextExp.done && nextExp.value.uid < uid) {
        const e = nextExp.value;
        const id = this.identity === 'guid' ? { guid: e.key } : { hdrHash: e.key };
        records.push({ type: 'change', changeType: 'expunge', uid: e.uid, ...id, modseq: 0, addFlags: 0, removeFlags: 0, finalFlags: 0, keywordChanges: [], changeTimestamp: e.at ?? 0 });
        nextExp = expIter.next();
      }
    };
    const visit = (m: MessageRow): void => {
      const a = acc.get(m.uid);
      const isNew = m.uid > mode.lastCommonUid;
      if (!isNew && !mode.complete && !a) return;
      pushExpungesBelow(m.uid);
      const kwAdd = a && a.kwAdd.size > 0 ? [...a.kwAdd] : NO_STRINGS;
      const kwRemove = a && a.kwRemove.size > 0 ? [...a.kwRemove] : NO_STRINGS;
      const keywordChanges =
        m.keywords.length + kwAdd.length + kwRemove.length === 0
          ? NO_STRINGS
          : [
              ...m.keywords.map((k) => (kwAdd.includes(k) ? `&${k}` : `=${k}`)),
              ...kwAdd.filter((k) => !m.keywords.includes(k)).map((k) => `+${k}`),
              ...kwRemove.map((k) => `-${k}`),
            ];
      records.push({
        type: 'change',
        changeType: isNew ? 'save' : 'flags',
        uid: m.uid,
        guid: m.guid,
        hdrHash: m.hdrHash ?? undefined,
        modseq: m.modseq,
        addFlags: a?.addFlags ?? 0,
        removeFlags: a?.removeFlags ?? 0,
        finalFlags: m.flags,
        keywordChanges,
        receivedTimestamp: m.internalDate,
        virtualSize: m.size,
        changeTimestamp: a?.changedAt ?? 0,
      });
      messages.push({
        uid: m.uid,
        key: this.key(m),
        kind: isNew ? 'save' : 'flags',
        flags: m.flags,
        keywords: m.keywords,
        addFlags: a?.addFlags ?? 0,
        removeFlags: a?.removeFlags ?? 0,
        kwAdd,
        kwRemove,
        changedAt: a?.changedAt ?? 0,
        internalDate: m.internalDate,
      });
    };
    const rows = this.rows;
    if (mode.complete || rows.complete) {
      rows.loadAll().forEach(visit);
    } else {
      // Only changed messages and those the peer has not seen are sent: just their rows are read.
      const changed = [...acc.keys()].filter((uid) => uid <= mode.lastCommonUid).sort((x, y) => x - y);
      for (const uid of changed) {
        const m = rows.get(uid);
        if (m) visit(m);
      }
      for (const m of rows.from(mode.lastCommonUid + 1)) visit(m);
    }
    pushExpungesBelow(Infinity);
    return { records, view: { uidNext: this.row.uidNext, complete: mode.complete, messages, expunges } };
  }

  /**
   * Exact bytes of a message for the peer; null if it is gone. The body is read later, perhaps
   * while this side moves the mail to another UID, so the UID is looked up again by GUID at read time.
   */
  openBody(uid: number, key?: string): (() => Promise<Buffer | BodyStream>) | null {
    const m = this.rows.get(uid);
    if (!m || (key !== undefined && this.key(m) !== key)) return null;
    const want = m.guid;
    // One small closure per mail: a first sync queues one for every mail of the mailbox.
    return () => this.readBodyOf(uid, want);
  }

  /**
   * For a peer in this process that saves by hard link (dsync_hardlinks): the current path of
   * the file holding this mail's bytes, looked up when the peer saves it. undefined when the store
   * offers no files.
   */
  bodyFileOf(uid: number, key?: string): (() => string | null) | undefined {
    if (!this.store.bodyFile) return undefined;
    const m = this.rows.get(uid);
    if (!m || (key !== undefined && this.key(m) !== key)) return undefined;
    const want = m.guid;
    return () => {
      const now = this.currentUid(uid, want);
      return now === undefined ? null : (this.store.bodyFile?.(now) ?? null);
    };
  }

  /** The UID of mail `guid`, last seen as `uid` (it may have moved to another UID since). */
  private currentUid(uid: number, guid: string): number | undefined {
    return this.rows.get(uid)?.guid === guid ? uid : this.uidOfGuid(guid);
  }

  private async readBodyOf(uid: number, guid: string): Promise<Buffer | BodyStream> {
    const resolve = () => this.currentUid(uid, guid);
    // A small mail is read in one go (no stream machinery), through the thread pool so that reads
    // of files not in the page cache overlap; anything else is streamed.
    const now = resolve();
    if (now !== undefined && this.store.readBody) {
      try {
        const buf = await this.store.readBody(now, SMALL_BODY);
        if (buf) return buf;
      } catch {
        /* fall back to the stream, which retries after a move */
      }
    }
    return lazyStream(async () => {
      const first = resolve();
      if (first !== undefined) {
        try {
          return await this.store.openBody(first);
        } catch {
          // Moved to another UID just now (the store knows before our map does): look again
          // once the move is recorded. Never wait up front: the move may itself be waiting
          // for the peer to read our mails.
        }
      }
      await this.moving;
      const later = resolve();
      if (later === undefined) throw new Error(`mail ${guid} was expunged while it was being copied`);
      return this.store.openBody(later);
    });
  }

  private uidOfGuid(guid: string): number | undefined {
    const rows = this.rows;
    if (!rows.complete) return this.index.uidsWithGuids(this.row.guid, [guid])[0]?.uid;
    for (const m of rows.loadAll().values()) if (m.guid === guid) return m.uid;
    return undefined;
  }

  message(uid: number): MessageRow | undefined {
    return this.rows.get(uid);
  }

  // ---- applying a peer's changes (journaled with the peer as origin) ----

  /**
   * Before this handle changes a mailbox it trusted by its change token (no scan of its own),
   * the store scans it now, as the change would make it do anyway. If the token is the recorded
   * one before and after that scan, the store saw exactly what the index holds: the handle then
   * counts as having scanned it, and the end-of-run check can be the cheap unchangedSinceScan
   * instead of a rescan.
   */
  private async adoptStoreScan(): Promise<void> {
    if (this.storeScanned || !this.loaded || this.row.scanToken === null) return;
    if (!this.store.changeToken || !this.store.unchangedSinceScan) return;
    if ((await this.store.changeToken()) !== this.row.scanToken) return;
    await this.store.scan({ known: () => true });
    if ((await this.store.changeToken()) === this.row.scanToken) this.storeScanned = true;
  }

  /** Saves mails with explicit UIDs (ascending, at or above UIDNEXT). */
  async save(requests: (SaveRequest & { size?: number })[]): Promise<void> {
    if (requests.length === 0) return;
    await this.adoptStoreScan();
    await this.store.save(requests);
    this.recordSaves(requests);
  }

  private recordSaves(requests: (SaveRequest & { size?: number })[]): void {
    if (requests.length === 0) return;
    this.write(() => {
      for (const r of requests) {
        const row: MessageRow = {
          uid: r.uid,
          guid: r.guid,
          flags: r.flags,
          keywords: [...r.keywords].sort(),
          modseq: this.nextModseq(),
          internalDate: r.internalDate,
          size: r.size ?? 0,
          hdrHash: this.identity === 'hdrHash' ? r.guid : null,
        };
        this.index.putMessage(this.row.guid, row);
        this.rows.put(row);
      }
      this.row.uidNext = Math.max(this.row.uidNext, ...requests.map((r) => r.uid + 1));
      this.index.putMailbox(this.row);
    });
  }

  get canSaveAndRenumber(): boolean {
    return typeof this.store.saveAndRenumber === 'function';
  }

  /** Saves the peer's mails and moves local ones to new UIDs in one store update. */
  async saveAndRenumber(
    requests: SaveRequest[],
    moves: { from: number; to: number; flags: number; keywords: string[] }[],
    origin: string,
  ): Promise<void> {
    let done!: () => void;
    this.moving = new Promise<void>((r) => (done = r));
    try {
      await this.adoptStoreScan();
      await this.store.saveAndRenumber!(requests, moves.map(({ from, to }) => ({ from, to })));
      this.recordSaves(requests);
      this.recordMoves(moves, origin);
    } finally {
      done();
    }
    await this.updateFlags(moves.map((m) => ({ uid: m.to, flags: m.flags, keywords: m.keywords })), origin);
  }

  /** Gives local messages new UIDs (ascending, at or above UIDNEXT) atomically where the store can. */
  async renumber(moves: { from: number; to: number; flags: number; keywords: string[] }[], origin: string): Promise<void> {
    if (moves.length === 0) return;
    if (!this.store.renumber) {
      const requests: SaveRequest[] = [];
      for (const m of moves) {
        const old = this.rows.get(m.from);
        const body = this.openBody(m.from);
        if (!old || !body) continue;
        requests.push({ uid: m.to, guid: old.guid, flags: m.flags, keywords: m.keywords, internalDate: old.internalDate, body });
      }
      await this.save(requests);
      await this.expunge(moves.map((m) => m.from), origin);
      return;
    }
    let done!: () => void;
    this.moving = new Promise<void>((r) => (done = r));
    try {
      await this.adoptStoreScan();
      await this.store.renumber(moves.map(({ from, to }) => ({ from, to })));
      this.recordMoves(moves, origin);
    } finally {
      done();
    }
    // The move keeps the old flags; the merged ones are applied like any flag update.
    await this.updateFlags(moves.map((m) => ({ uid: m.to, flags: m.flags, keywords: m.keywords })), origin);
  }

  private recordMoves(moves: { from: number; to: number }[], origin: string): void {
    if (moves.length === 0) return;
    const now = this.location.now();
    this.write(() => {
      for (const m of moves) {
        const old = this.rows.get(m.from);
        if (!old) continue;
        this.journalExpunge(old, origin, now);
        this.rows.remove(m.from);
        const row: MessageRow = { ...old, uid: m.to, modseq: this.nextModseq() };
        this.index.putMessage(this.row.guid, row);
        this.rows.put(row);
      }
      this.row.uidNext = Math.max(this.row.uidNext, ...moves.map((m) => m.to + 1));
      this.index.putMailbox(this.row);
    });
  }

  async expunge(uids: number[], origin: string): Promise<number> {
    const present = uids.filter((u) => this.rows.has(u));
    if (present.length === 0) return 0;
    await this.adoptStoreScan();
    await this.store.expunge(present);
    const now = this.location.now();
    this.write(() => {
      for (const uid of present) {
        this.journalExpunge(this.rows.get(uid)!, origin, now);
        this.rows.remove(uid);
      }
      this.index.putMailbox(this.row);
    });
    return present.length;
  }

  async updateFlags(updates: { uid: number; flags: number; keywords: string[] }[], origin: string): Promise<number> {
    const real = updates.filter((u) => {
      const m = this.rows.get(u.uid);
      return m && (m.flags !== u.flags || !sameKeywords(m.keywords, u.keywords));
    });
    if (real.length === 0) return 0;
    await this.adoptStoreScan();
    await this.store.updateFlags(real);
    const now = this.location.now();
    this.write(() => {
      for (const u of real) {
        const old = this.rows.get(u.uid)!;
        const keywords = [...u.keywords].sort();
        const modseq = this.nextModseq();
        this.journalFlags(u.uid, old, u.flags, keywords, origin, now, modseq);
        const row = { ...old, flags: u.flags, keywords, modseq };
        this.index.putMessage(this.row.guid, row);
        this.rows.put(row);
      }
      this.index.putMailbox(this.row);
    });
    return real.length;
  }

  /** Empties the mailbox and restarts its UIDs at 1 (rebuilding a backup destination). */
  async reset(uidValidity: number, origin: string): Promise<boolean> {
    if (!this.store.reset) return false;
    await this.store.reset(uidValidity);
    await this.location.store.reserveUidValidity?.(uidValidity);
    const now = this.location.now();
    this.write(() => {
      for (const m of this.rows.loadAll().values()) this.journalExpunge(m, origin, now);
      this.index.deleteAllPeerStates(this.row.guid);
      this.row.uidValidity = uidValidity;
      this.row.uidNext = 1;
      this.index.putMailbox(this.row);
    });
    this.rowsState = new MessageRows(this.index, this.row.guid, RowDigest.empty(), true);
    return true;
  }

  async setUidValidity(uidValidity: number): Promise<void> {
    await this.store.setUidValidity(uidValidity);
    await this.location.store.reserveUidValidity?.(uidValidity);
    this.write(() => {
      this.index.deleteAllPeerStates(this.row.guid);
      this.row.uidValidity = uidValidity;
      this.index.putMailbox(this.row);
    });
  }

  async raiseUidNext(uidNext: number): Promise<void> {
    if (uidNext <= this.row.uidNext) {
      const st = await this.store.status();
      if (st.uidNext >= uidNext) return;
    }
    await this.store.raiseUidNext(uidNext);
    this.row.uidNext = Math.max(this.row.uidNext, uidNext);
    this.index.putMailbox(this.row);
  }

  savePeerState(peerId: string, state: Omit<PeerState, 'myModseq' | 'myUidNext'>): void {
    this.index.putPeerState(peerId, this.row.guid, { ...state, myModseq: this.row.highestModseq, myUidNext: this.row.uidNext });
  }

  forgetPeerState(peerId: string): void {
    this.index.deletePeerState(peerId, this.row.guid);
  }

  async close(): Promise<void> {
    this.location.handleClosed(this.openedAs, this);
    await this.store.close();
  }
}

function accumulate(acc: Map<number, Accumulated>, c: ChangeRow): void {
  let a = acc.get(c.uid);
  if (!a) {
    a = { addFlags: 0, removeFlags: 0, kwAdd: new Set(), kwRemove: new Set(), changedAt: 0 };
    acc.set(c.uid, a);
  }
  a.changedAt = Math.max(a.changedAt, c.ts);
  if (c.kind === 'expunge') {
    a.expungedGuid = c.guid;
    a.expungedHash = c.hdrHash ?? undefined;
    return;
  }
  // A later add cancels an earlier remove of the same flag and vice versa.
  a.addFlags = (a.addFlags & ~c.removeFlags) | c.addFlags;
  a.removeFlags = (a.removeFlags & ~c.addFlags) | c.removeFlags;
  for (const k of c.kwAdd) {
    a.kwRemove.delete(k);
    a.kwAdd.add(k);
  }
  for (const k of c.kwRemove) {
    a.kwAdd.delete(k);
    a.kwRemove.add(k);
  }
}

/** Sorted and without duplicates (as stored in the index); the input array is returned when it already is. */
function normalizedKeywords(k: readonly string[]): string[] {
  if (k.length === 0) return NO_STRINGS;
  for (let i = 1; i < k.length; i++) if (!(k[i - 1]! < k[i]!)) return [...new Set(k)].sort();
  return k as string[];
}

/** Of rows in ascending UID order, the UIDs of second copies: every row but the first of a GUID. */
function secondCopies(rows: readonly { uid: number; guid: string }[]): number[] {
  const seen = new Set<string>();
  const dups: number[] = [];
  for (const m of rows) {
    if (seen.has(m.guid)) dups.push(m.uid);
    else seen.add(m.guid);
  }
  return dups;
}

function sameKeywords(a: readonly string[], b: readonly string[]): boolean {
  if (a.length !== b.length) return false;
  if (a.length === 0) return true;
  if (a.length === 1) return a[0] === b[0];
  const s = new Set(a);
  return b.every((k) => s.has(k));
}

/** Header hashes computed at once (see ensureHeaderHashes). */
const HASH_PARALLELISM = 16;

/** Mails up to this size are handed over as one buffer. */
const SMALL_BODY = 256 * 1024;

/** A stream that opens its source only when first read, so thousands can be queued cheaply. */
function lazyStream(open: () => Promise<BodyStream>): BodyStream {
  return generatorBody(
    (async function* () {
      try {
        // Ending this generator early (destroy, or a consumer's break) ends this loop, which
        // gives the opened stream up too.
        for await (const chunk of await open()) yield chunk;
      } catch (err) {
        throw new BodySourceError(`cannot read the message: ${(err as Error).message}`, { cause: err });
      }
    })(),
  );
}

/** The header block of a message (up to the first empty line), read from its stream. */
async function readHeader(stream: BodyStream): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let total = 0;
  try {
    for await (const chunk of stream) {
      const b = chunk as Buffer;
      chunks.push(b);
      total += b.length;
      const all = chunks.length === 1 ? b : Buffer.concat(chunks);
      if (all.indexOf('\n\n') >= 0 || all.indexOf('\r\n\r\n') >= 0 || total > 1 << 20) break;
    }
  } finally {
    stream.destroy();
  }
  return Buffer.concat(chunks);
}
