// A brain owns one location and syncs it with the peer brain at the other end of a channel
// (dsync-design.md §3). Both brains run the same code; the master decides the settings, and all
// decisions both must agree on are pure functions of data both sides have.
import { hostname } from 'node:os';
import type { Channel } from '../transport/channel.js';
import { ProtocolError, expectRecord, recvList } from '../transport/channel.js';
import type { Location } from '../location/location.js';
import type { MailboxRow } from '../index/change-index.js';
import type { ExportMode, LocationMailbox } from '../location/mailbox.js';
import { clockMs, msSince, type Logger } from '../util/log.js';
import { BodySourceError, StorageError, type SaveRequest } from '../storage/types.js';
import type {
  HandshakeRecord,
  MailChangeRecord,
  MailboxRecord,
  MailboxStateRecord,
  MailboxTreeNodeRecord,
  SyncType,
} from './records.js';
import { planTree, type TreeMode } from './decide/tree-plan.js';
import { MailFeed } from './mail-feed.js';
import { planMailbox, type MessageView, type SaveAction, type SideActions, type SideView } from './decide/mailbox-plan.js';
import { planBackup } from './decide/backup-plan.js';
import { nameKey } from './decide/name-hash.js';
import { applyTreeActions } from './tree-apply.js';
import { Lookahead } from './lookahead.js';
import { forbiddenChars, makeNameNormalizer } from './names.js';
import { traceMemory, trimHeap } from '../util/memory.js';
import { NO_STRINGS, orShared } from '../util/empty.js';

/**
 * Record protocol version; 2: the tombstones (`deletes`) come before the tree nodes; 3: without
 * a common state, an expunge the peer logged counts under any UID (GUID identity), which both
 * sides' plans must agree on; 4: so it does with header-hash identity, where the hash is the
 * only one of its kind on the side that still has the mail, for a mail whose INTERNALDATE is before
 * the expunge (expunge records carry their time; see planMailbox).
 */
export const PROTOCOL = 4;

export interface MasterSettings {
  syncType: SyncType;
  /** 'send': the master is the backup source; 'recv': the master is the backup destination. */
  backup: 'none' | 'send' | 'recv';
  syncBox?: string[];
  altChar: string;
}

export interface BrainOptions {
  role: 'master' | 'slave';
  location: Location;
  channel: Channel;
  log: Logger;
  /** Required for the master; the slave adopts the master's. */
  settings?: MasterSettings;
}

export interface BrainResult {
  changesDuringSync: boolean;
  /** Mailboxes were left out because one side's format cannot hold them (names in `summary`). */
  leftOut: boolean;
  summary: string[];
}

interface Ctx {
  role: 'master' | 'slave';
  loc: Location;
  ch: Channel;
  log: Logger;
  settings: MasterSettings;
  peerId: string;
  /** This side is the backup source (never changed) / destination (made identical). */
  isSource: boolean;
  isDestination: boolean;
  open: Map<string, LocationMailbox>;
  /** Mailboxes opened and checked for changes ahead of their turn. */
  ahead: Lookahead<LocationMailbox> | null;
  /** Finished mailboxes kept open until the end of the run to record their change tokens (see settleTokens). */
  settling: LocationMailbox[];
  /** Messages held by settling handles whose store keeps its per-message data (see release). */
  settlingMessages: number;
  /** Mailboxes of the peer this store cannot hold (e.g. a folder below an mbox file). */
  unsyncable: Set<string>;
  /** The peer answered a mailbox with mailboxIgnore: it cannot hold it. */
  peerLeftOut: boolean;
  changesDuringSync: boolean;
  summary: string[];
  show: (n: string[]) => string;
  /**
   * The last mailbox's work after its barrier (expunges, flag updates, its state), still going
   * on while the next mailbox is synced; at most one at a time (see finishLater).
   */
  finishing: Promise<void> | null;
}

export async function runBrain(o: BrainOptions): Promise<BrainResult> {
  try {
    return await brain(o);
  } catch (err) {
    o.channel.abort(err as Error);
    const code = (err as { code?: unknown }).code;
    if (typeof code === 'string' && code.startsWith('SQLITE_')) {
      // SQLite's messages ("database or disk is full") do not say which file.
      throw new Error(`change index ${o.location.index.path}: ${(err as Error).message}`, { cause: err });
    }
    throw err;
  }
}

async function brain(o: BrainOptions): Promise<BrainResult> {
  const { role, location: loc, channel: ch, log } = o;
  const mine: HandshakeRecord = {
    type: 'handshake',
    hostname: hostname(),
    protocol: PROTOCOL,
    locationId: loc.id,
    syncType: o.settings?.syncType ?? 'changed',
    backupSend: o.settings?.backup === 'recv',
    backupRecv: o.settings?.backup === 'send',
    syncBox: o.settings?.syncBox,
    altChar: o.settings?.altChar ?? '_',
    haveSaveGuids: loc.store.caps.saveGuids,
    nameForbidden: forbiddenChars(loc.separator),
  };
  ch.send(mine);
  // With the peer in another process, both sides check their mailboxes for changes before the
  // tree exchange, each on its own CPU, instead of taking turns in the mailbox phase; the master
  // starts while the peer's process (or ssh connection) is still starting. In one process nothing
  // is gained: the lookahead does it in the mailbox phase, alongside the waits for fsyncs. Not
  // with -f, whose tree phase scans every mailbox.
  const handshake = expectRecord(ch, 'handshake');
  const early = role === 'master' && ch.remote && o.settings!.syncType !== 'full' ? checkBeforeTree(loc, log, o.settings!.syncBox) : undefined;
  let peer: HandshakeRecord;
  try {
    peer = await handshake;
  } catch (err) {
    await closeAll(await early);
    throw err;
  }
  const checked = (await early) ?? new Map<string, LocationMailbox>();
  try {
    checkHandshake(peer, loc);
    if (role === 'slave' && ch.remote && peer.syncType !== 'full') for (const [guid, box] of await checkBeforeTree(loc, log, peer.syncBox)) checked.set(guid, box);
  } catch (err) {
    await closeAll(checked);
    throw err;
  }
  let settings: MasterSettings;
  if (role === 'master') settings = o.settings!;
  else
    settings = {
      syncType: peer.syncType,
      backup: peer.backupRecv ? 'recv' : peer.backupSend ? 'send' : 'none',
      syncBox: peer.syncBox,
      altChar: peer.altChar,
    };
  const ctx: Ctx = {
    role,
    loc,
    ch,
    log,
    settings,
    peerId: peer.locationId,
    isSource: settings.backup === 'send',
    isDestination: settings.backup === 'recv',
    open: checked,
    ahead: null,
    settling: [],
    settlingMessages: 0,
    unsyncable: new Set(),
    peerLeftOut: false,
    changesDuringSync: false,
    summary: [],
    show: (n) => n.join(loc.separator),
    finishing: null,
  };
  // Settings are described from this side's point of view from here on (the slave's 'recv' means
  // "I am the destination"), so a master that is the source has backup 'send' and isSource.
  if (role === 'master') {
    ctx.isSource = settings.backup === 'send';
    ctx.isDestination = settings.backup === 'recv';
  }

  const normalize = makeNameNormalizer(mine.nameForbidden + peer.nameForbidden, settings.altChar);
  try {
    let t0 = clockMs();
    await syncTree(ctx, normalize);
    ctx.log.debug(`mailbox tree synced in ${msSince(t0)}`);
    t0 = clockMs();
    const w0 = ctx.ch.waited && { ...ctx.ch.waited };
    if (role === 'master') await masterMailboxes(ctx);
    else await slaveMailboxes(ctx);
    // A mailbox opened ahead but never synced: a store error is for its turn, which did not come
    // (renamed meanwhile, say); anything else (an internal error) must not pass unseen.
    const unseen = (await ctx.ahead?.stop())?.find((err) => !(err instanceof StorageError));
    if (unseen) throw unseen;
    const w = ctx.ch.waited;
    const waits = w && w0 ? ` (waited ${w.count - w0.count} times for the other side, ${(w.ms - w0.ms).toFixed(1)} ms in all)` : '';
    ctx.log.debug(`mailboxes synced in ${msSince(t0)}${waits}`);
    t0 = clockMs();
    const settled = await settleTokens(ctx);
    const again = settled.retried ? ` (${settled.retried} checked again after ${TOKEN_WAIT_MS} ms)` : '';
    ctx.log.debug(`change tokens of ${settled.mailboxes} mailboxes settled${again} in ${msSince(t0)}`);
  } finally {
    // A failed run: the last mailbox's remaining work must not outlive the stores (its own
    // error, if any, is secondary to the one that stopped the run).
    await ctx.finishing?.catch(() => undefined);
    await ctx.ahead?.stop();
    for (const box of ctx.open.values()) await box.close();
    for (const box of ctx.settling) await box.close();
  }
  return { changesDuringSync: ctx.changesDuringSync, leftOut: ctx.unsyncable.size > 0 || ctx.peerLeftOut, summary: ctx.summary };
}

function checkHandshake(peer: HandshakeRecord, loc: Location): void {
  if (peer.protocol !== PROTOCOL) throw new ProtocolError(`the peer speaks protocol ${peer.protocol}, we speak ${PROTOCOL}`);
  if (peer.locationId === loc.id) throw new ProtocolError('both sides are the same location (same change index): refusing to sync a mailbox with itself');
}

// ---------------------------------------------------------------- tree

function wanted(ctx: Ctx, name: string[]): boolean {
  return wantedBy(ctx.settings.syncBox, name);
}

function wantedBy(syncBox: string[] | undefined, name: string[]): boolean {
  return !syncBox || nameKey(syncBox) === nameKey(name);
}

/** Messages whose mailbox handles the tree phase may keep open for the mailbox phase. */
const KEEP_OPEN_MESSAGES = 10_000;
/** Changed (scanned) mailboxes the lookahead may hold before their turn. */
const LOOKAHEAD_SCANNED = 2;

async function syncTree(ctx: Ctx, normalize: (n: string[]) => string[]): Promise<void> {
  const { loc, ch } = ctx;
  await loc.refreshTree();
  // Handles kept from checkBeforeTree, of mailboxes renamed or deleted since.
  await dropStaleHandles(ctx, new Set());
  // Tombstones first: whether a mailbox the peer deleted changed here since the last sync (then
  // it is kept) is the one thing in the tree that needs an up-to-date scan of its messages.
  const deletes = ctx.settings.syncBox ? { ...loc.deletes(), mailboxes: [], dirs: [], unsubscribes: [] } : loc.deletes();
  ch.send(deletes);
  const peerDeletes = await expectRecord(ch, 'deletes');
  const deletedByPeer = new Set(peerDeletes.mailboxes.map((t) => t.key));
  const full = ctx.settings.syncType === 'full';
  // Scanned now: those, mailboxes new to the index or whose UIDVALIDITY changed on disk (their
  // tree node carries it to the peer, which may create them with it), and with -f all of them.
  // Every other mailbox is scanned in its turn, when it changed. Handles stay open (their messages
  // in memory, ready for the mailbox phase) up to a budget; beyond it they are closed and reopened
  // when their turn comes, so that memory follows the largest mailbox rather than the sum of all.
  const early = loc.needsScanBeforeTree();
  let kept = 0;
  for (const box of ctx.open.values()) kept += box.heldCount;
  for (const row of loc.mailboxes()) {
    if (!wanted(ctx, row.name) || ctx.open.has(row.guid)) continue;
    if (!full && !deletedByPeer.has(row.guid) && !early.has(row.guid)) continue;
    // Renamed or deleted by another program since the listing: opening it fails as a scan would.
    let box: LocationMailbox | undefined;
    try {
      box = await loc.openMailbox(row.guid);
      if (!box) continue;
      await box.refresh(full);
    } catch (err) {
      await box?.close();
      if (vanished(ctx, box?.name ?? row.name, err)) continue;
      throw err;
    }
    if (kept + box.heldCount <= KEEP_OPEN_MESSAGES) {
      kept += box.heldCount;
      ctx.open.set(box.guid, box);
    } else {
      await box.close();
    }
    trimHeap();
  }
  traceMemory(ctx.log, 'after the tree scan');
  const localNodes = loc.treeNodes(ctx.peerId).filter((n) => wanted(ctx, n.name));
  const normToLocal = new Map<string, string[]>();
  for (const n of localNodes) {
    const norm = normalize(n.name);
    if (nameKey(norm) !== nameKey(n.name)) {
      ctx.log.warn(`mailbox name ${ctx.show(n.name)} cannot exist on the other side; it is called ${norm.join(loc.separator)} there`);
    }
    normToLocal.set(nameKey(norm), n.name);
  }
  for (const n of localNodes) ch.send(n);
  ch.send({ type: 'end' });
  const peerNodes = await recvList(ch, 'node');

  const seen = new Set<string>();
  for (const n of peerNodes) {
    if (n.mailboxGuid) {
      if (seen.has(n.mailboxGuid)) throw new ProtocolError(`the peer sent duplicate mailbox GUID ${n.mailboxGuid}`);
      seen.add(n.mailboxGuid);
    }
  }
  const norm = (nodes: MailboxTreeNodeRecord[]) => nodes.map((n) => ({ ...n, name: normalize(n.name) }));
  const myTree = { nodes: norm(localNodes), deletes };
  const peerTree = { nodes: norm(peerNodes.filter((n) => wanted(ctx, n.name))), deletes: peerDeletes };
  const master = ctx.role === 'master' ? myTree : peerTree;
  const slave = ctx.role === 'master' ? peerTree : myTree;
  const sourceIsMaster = (ctx.role === 'master') === ctx.isSource;
  const mode: TreeMode = ctx.settings.backup === 'none' ? 'mirror' : sourceIsMaster ? 'backup-master-to-slave' : 'backup-slave-to-master';
  const plan = planTree(master, slave, mode);
  const actions = ctx.role === 'master' ? plan.master : plan.slave;
  if (actions.length === 0) return;
  if (ctx.isSource) throw new Error('internal error: the backup source was asked to change its mailbox tree');
  const toLocal = (n: string[]) => normToLocal.get(nameKey(n)) ?? n;
  const res = await applyTreeActions(ctx.loc, actions, toLocal);
  await dropStaleHandles(ctx, res.touched);
  if (res.changesDuringSync) ctx.changesDuringSync = true;
  for (const guid of res.unsyncable) ctx.unsyncable.add(guid);
  ctx.summary.push(...res.summary);
}

/**
 * Handles of renamed (also as children of a renamed parent), re-identified or deleted mailboxes
 * point at old paths: dropped, they are reopened when needed.
 */
async function dropStaleHandles(ctx: Ctx, touched: ReadonlySet<string>): Promise<void> {
  for (const [guid, box] of [...ctx.open]) {
    const row = ctx.loc.index.mailbox(guid);
    if (touched.has(guid) || !row || nameKey(row.name) !== nameKey(box.name)) {
      await box.close();
      ctx.open.delete(guid);
    }
  }
}

// ---------------------------------------------------------------- mailboxes

async function getBox(ctx: Ctx, guid: string): Promise<LocationMailbox | undefined> {
  const open = ctx.open.get(guid);
  if (open) return open;
  const box = await (ctx.ahead ? ctx.ahead.take(guid) : openAndRefresh(ctx, guid));
  if (box) ctx.open.set(guid, box);
  return box;
}

async function openAndRefresh(ctx: Ctx, guid: string): Promise<LocationMailbox | undefined> {
  let box: LocationMailbox | undefined;
  try {
    box = await ctx.loc.openMailbox(guid);
  } catch (err) {
    if (vanished(ctx, ctx.loc.index.mailbox(guid)?.name ?? [guid], err)) return undefined;
    throw err;
  }
  if (!box) return undefined;
  // Scans the mailbox if it changed since its last scan (with -f the tree phase scanned all).
  const t0 = clockMs();
  try {
    await box.refresh();
  } catch (e) {
    await box.close().catch(() => undefined);
    if (vanished(ctx, box.name, e) || lockedOut(ctx, box.name, e)) return undefined;
    throw e;
  }
  ctx.log.debug(`mailbox ${ctx.show(box.name)}: checked for changes in ${msSince(t0)}`);
  return box;
}

/**
 * A mailbox renamed or deleted by another program (an IMAP server) since the tree phase listed
 * it: left for the next run, which sees the rename or delete. True when err says so.
 */
function vanished(ctx: Ctx, name: string[], err: unknown): boolean {
  if (!(err instanceof StorageError && err.code === 'NOTFOUND')) return false;
  ctx.log.warn(`mailbox ${ctx.show(name)} vanished during the sync (renamed or deleted by another program?); run dsync again`);
  ctx.changesDuringSync = true;
  return true;
}

/** UIDs still taken after MAX_UID_RETRIES moves (a busy IMAP server): warned, the run asks to be run again. */
function uidsKeptTaken(ctx: Ctx, name: string[], err: unknown): boolean {
  if (!(err instanceof StorageError && err.code === 'UIDTAKEN')) return false;
  ctx.log.warn(`mailbox ${ctx.show(name)}: another program kept giving out the UIDs this run meant to use; the rest of its mail waits for the next run (run dsync again)`);
  ctx.changesDuringSync = true;
  return true;
}

/**
 * Another program kept the mailbox locked, or kept changing it under us, longer than we wait (a
 * busy IMAP server, a mail client holding its lock): the store wrote nothing in the attempt that
 * failed. Warned; the rest of the mailbox's changes wait for the next run. True when err says so.
 */
function lockedOut(ctx: Ctx, name: string[], err: unknown): boolean {
  if (!(err instanceof StorageError && err.code === 'LOCKED')) return false;
  // The store's message names the mailbox, mostly.
  const what = err.message.startsWith(`mailbox ${ctx.show(name)} `) ? err.message : `mailbox ${ctx.show(name)}: ${err.message}`;
  ctx.log.warn(`${what}; the rest of its changes wait for the next run (run dsync again)`);
  ctx.changesDuringSync = true;
  return true;
}

/**
 * How long to wait, once, for changes to become old enough for a change token (the Maildir
 * store trusts a token 30 ms after a change on file systems with fine timestamps, at once on
 * those that give every change after a stat a new mtime). Waiting that long at the end of a run
 * that changed mail spares the next run a scan of those mailboxes.
 */
const TOKEN_WAIT_MS = 35;

/**
 * Mailboxes this run changed could not get a change token right after the change (see
 * StoreMailbox.changeToken): without one the next run must scan them. At the end of the run a
 * refresh on the same handle only checks that nothing else changed and records the token; those
 * changed too recently for one are retried once after TOKEN_WAIT_MS. Whatever still has no token
 * (a file system with whole-second times) is scanned next time.
 */
async function settleTokens(ctx: Ctx): Promise<{ mailboxes: number; retried: number }> {
  const pending = ctx.settling.splice(0);
  ctx.settlingMessages = 0;
  try {
    // A refresh that found changes made during the run records them: their digest goes with them.
    // A mailbox renamed or deleted meanwhile keeps no token: the next run scans it.
    const settle = async (box: LocationMailbox) => {
      try {
        await box.refresh();
      } catch (err) {
        if (vanished(ctx, box.name, err)) return;
        // Locked by another program just now: no token, the next run scans it.
        if (err instanceof StorageError && err.code === 'LOCKED') return;
        throw err;
      }
      box.recordSummary();
    };
    for (const box of pending) await settle(box);
    const again = pending.filter((b) => b.tokenPending);
    if (again.length > 0) {
      await new Promise((r) => setTimeout(r, TOKEN_WAIT_MS));
      for (const box of again) await settle(box);
    }
    return { mailboxes: pending.length, retried: again.length };
  } finally {
    for (const box of pending) await box.close();
  }
}

/** A mailbox is done: drop its handle (and its messages) so memory follows the largest mailbox, not the sum. */
async function release(ctx: Ctx, guid: string): Promise<void> {
  const box = ctx.open.get(guid);
  if (!box) return;
  ctx.open.delete(guid);
  // A mailbox that was neither scanned nor read (unchanged, skipped) left no garbage worth a
  // look at the heap, which costs 40-90 us (process.memoryUsage), twice per mailbox of a run.
  const held = box.heldCount;
  // Kept to settle its token at the end of the run, without its messages (see dropRows). A store
  // that cannot drop its per-message data keeps it: such handles share one budget.
  const compact = box.settlesCompactly;
  if (box.tokenPending && (compact || ctx.settlingMessages + box.heldCount <= KEEP_OPEN_MESSAGES)) {
    if (!compact) ctx.settlingMessages += box.heldCount;
    box.dropRows();
    ctx.settling.push(box);
  } else {
    await box.close();
  }
  if (held > 0) trimHeap();
  traceMemory(ctx.log, `after mailbox ${ctx.show(box.name)}`);
}

function mailboxRecord(ctx: Ctx, box: LocationMailbox): MailboxRecord {
  const st = box.status();
  const state = box.peerState(ctx.peerId);
  return {
    type: 'mailbox',
    mailboxGuid: box.guid,
    uidValidity: st.uidValidity,
    uidNext: st.uidNext,
    messagesCount: st.messagesCount,
    firstRecentUid: st.firstRecentUid,
    highestModseq: st.highestModseq,
    highestPvtModseq: 0,
    haveGuids: true,
    haveSaveGuids: ctx.loc.store.caps.saveGuids,
    lastSyncId: state && state.uidValidity === st.uidValidity ? state.syncId : '',
    unchangedSinceSync: box.unchangedSince(state),
  };
}

function lostRecord(guid: string): MailboxRecord {
  return {
    type: 'mailbox',
    mailboxGuid: guid,
    uidValidity: 0,
    uidNext: 0,
    messagesCount: 0,
    firstRecentUid: 0,
    highestModseq: 0,
    highestPvtModseq: 0,
    mailboxLost: true,
    haveGuids: false,
    haveSaveGuids: false,
    lastSyncId: '',
    unchangedSinceSync: false,
  };
}

/**
 * Starts checking the mailboxes of rows for changes ahead of their turn (see Lookahead), except
 * those the tree phase left open: their handle is the one to use, and a second one checking the
 * mailbox at the same time would write back a stale copy of its state.
 */
function startLookahead(ctx: Ctx, rows: MailboxRow[]): void {
  ctx.ahead = new Lookahead<LocationMailbox>(
    rows.filter((r) => !ctx.open.has(r.guid)).map((r) => r.guid),
    (guid) => openAndRefresh(ctx, guid),
    { scanned: LOOKAHEAD_SCANNED, messages: KEEP_OPEN_MESSAGES },
  );
  ctx.ahead.pump();
}

/** The mailboxes to sync, in the order the master syncs them. */
function mailboxOrder(ctx: Ctx): MailboxRow[] {
  return inSyncOrder(ctx.loc, ctx.settings.syncBox);
}

function inSyncOrder(loc: Location, syncBox: string[] | undefined): MailboxRow[] {
  return loc
    .mailboxes()
    .filter((r) => wantedBy(syncBox, r.name))
    .sort((a, b) => (nameKey(a.name) < nameKey(b.name) ? -1 : 1));
}

/**
 * Checks this side's mailboxes for changes (a scan of those whose change token moved), in the
 * order the mailbox phase takes them. The handles are kept for the tree and mailbox phases, up to
 * KEEP_OPEN_MESSAGES messages (the others are opened again in their turn, and find the index up
 * to date). What cannot be checked now is left to its turn, which reports why: this never
 * rejects (the master may be awaiting the peer's handshake instead).
 */
async function checkBeforeTree(loc: Location, log: Logger, syncBox: string[] | undefined): Promise<Map<string, LocationMailbox>> {
  const kept = new Map<string, LocationMailbox>();
  const t0 = clockMs();
  try {
    await loc.refreshTree();
  } catch {
    return kept; // the tree phase lists the mailboxes again and reports it
  }
  let held = 0;
  let checked = 0;
  let order: MailboxRow[];
  try {
    order = inSyncOrder(loc, syncBox);
  } catch {
    return kept;
  }
  for (const row of order) {
    let box: LocationMailbox | undefined;
    try {
      box = await loc.openMailbox(row.guid);
      if (!box) continue;
      await box.refresh();
    } catch {
      await box?.close().catch(() => undefined);
      continue;
    }
    checked++;
    if (held + box.heldCount <= KEEP_OPEN_MESSAGES) {
      held += box.heldCount;
      kept.set(box.guid, box);
    } else {
      await box.close().catch(() => undefined);
    }
    trimHeap();
  }
  log.debug(`${checked} mailboxes checked for changes before the tree exchange (${kept.size} kept open), in ${msSince(t0)}`);
  return kept;
}

async function closeAll(boxes: Map<string, LocationMailbox> | undefined): Promise<void> {
  for (const box of boxes?.values() ?? []) await box.close();
}

async function masterMailboxes(ctx: Ctx): Promise<void> {
  const rows = mailboxOrder(ctx);
  startLookahead(ctx, rows);
  for (const row of rows) {
    const box = await getBox(ctx, row.guid);
    if (!box) continue;
    const mine = mailboxRecord(ctx, box);
    ctx.ch.send(mine);
    const theirs = await expectRecord(ctx.ch, 'mailbox');
    if (theirs.mailboxIgnore) {
      ctx.peerLeftOut = true;
      ctx.summary.push(`mailbox ${ctx.show(box.name)}: not synced, the other side cannot hold it`);
      ctx.log.debug(`mailbox ${ctx.show(box.name)}: cannot exist on the other side, not synced`);
      await release(ctx, box.guid);
      continue;
    }
    if (theirs.mailboxLost) {
      // The other side said why (renamed or deleted meanwhile, or locked by another program).
      ctx.log.warn(`mailbox ${ctx.show(box.name)}: not synced, the other side could not open it (see its warning); run dsync again`);
      ctx.changesDuringSync = true;
      await release(ctx, box.guid);
      continue;
    }
    await finishLater(ctx, box.guid, await syncMailbox(ctx, box, mine, theirs));
  }
  await finishAll(ctx);
  ctx.ch.send({ type: 'end' });
  const fin = await expectRecord(ctx.ch, 'finish');
  if (fin.error) throw new Error(`the other side failed: ${fin.error}`);
  if (fin.requireFullResync) ctx.changesDuringSync = true;
}

async function slaveMailboxes(ctx: Ctx): Promise<void> {
  // The master goes through the mailboxes in the order of its names, which the tree phase made
  // ours too: the lookahead follows the same order.
  startLookahead(ctx, mailboxOrder(ctx));
  for (;;) {
    const rec = await ctx.ch.recv();
    if (rec.type === 'end') break;
    if (rec.type !== 'mailbox') throw new ProtocolError(`expected a mailbox record, got ${rec.type}`);
    const box = await getBox(ctx, rec.mailboxGuid);
    if (!box) {
      const ignore = ctx.unsyncable.has(rec.mailboxGuid);
      ctx.ch.send({ ...lostRecord(rec.mailboxGuid), mailboxLost: !ignore, mailboxIgnore: ignore });
      if (!ignore) ctx.changesDuringSync = true;
      continue;
    }
    const mine = mailboxRecord(ctx, box);
    ctx.ch.send(mine);
    await finishLater(ctx, rec.mailboxGuid, await syncMailbox(ctx, box, mine, rec));
  }
  await finishAll(ctx);
  ctx.ch.send({ type: 'finish', requireFullResync: ctx.changesDuringSync });
}

function viewFromRecords(records: MailChangeRecord[], uidNext: number, complete: boolean, identity: 'guid' | 'hdrHash'): SideView {
  const messages: MessageView[] = [];
  const expunges: SideView['expunges'] = [];
  for (const r of records) {
    if (r.changeType === 'expunge') {
      expunges.push({ uid: r.uid, key: (identity === 'guid' ? r.guid : r.hdrHash) ?? '', at: r.changeTimestamp ?? 0 });
      continue;
    }
    let keywords = NO_STRINGS;
    let kwAdd = NO_STRINGS;
    let kwRemove = NO_STRINGS;
    if (r.keywordChanges.length > 0) {
      keywords = [];
      kwAdd = [];
      kwRemove = [];
      for (const c of r.keywordChanges) {
        const kw = c.slice(1);
        if (c[0] === '=' || c[0] === '&') keywords.push(kw);
        if (c[0] === '+' || c[0] === '&') kwAdd.push(kw);
        if (c[0] === '-') kwRemove.push(kw);
      }
      keywords = orShared(keywords.sort());
      kwAdd = orShared(kwAdd);
      kwRemove = orShared(kwRemove);
    }
    messages.push({
      uid: r.uid,
      key: (identity === 'guid' ? r.guid : r.hdrHash) ?? '',
      kind: r.changeType === 'save' ? 'save' : 'flags',
      flags: r.finalFlags,
      keywords,
      addFlags: r.addFlags,
      removeFlags: r.removeFlags,
      kwAdd,
      kwRemove,
      changedAt: r.changeTimestamp ?? 0,
      internalDate: r.receivedTimestamp ?? 0,
    });
  }
  return { uidNext, complete, messages, expunges };
}

/**
 * Sends this side's changes, receives the peer's, and plans both sides' actions. Its own function
 * so that the change records and views (two per message of a first sync) can be collected as soon
 * as the plan exists.
 */
async function exchangeChanges(ctx: Ctx, box: LocationMailbox, mode: ExportMode, mine: MailboxRecord, theirs: MailboxRecord): Promise<SidePlan> {
  const { ch } = ctx;
  const exported = box.exportChanges(ctx.peerId, mode);
  for (const r of exported.records) ch.send(r);
  ch.send({ type: 'end' });
  const peerView = viewFromRecords(await recvList(ch, 'change'), theirs.uidNext, mode.complete, box.identity);
  return ctx.settings.backup !== 'none'
    ? backupPlan(ctx, exported.view, peerView, mine, theirs)
    : mirrorPlan(ctx, exported.view, peerView, mode.lastCommonUid, box.identity === 'guid');
}

/**
 * Asks the peer for the bodies of the mails to copy from it, in the order the saves use them,
 * and answers its requests. The answers are taken from the returned feed as the saves go.
 */
function exchangeBodies(ctx: Ctx, box: LocationMailbox, saves: SaveAction[]): Promise<MailFeed> {
  const { ch } = ctx;
  for (const s of saves) if (s.from === 'peer') ch.send({ type: 'request', guid: s.key, uid: s.sourceUid });
  ch.send({ type: 'end' });
  return answerRequests(ctx, box);
}

async function answerRequests(ctx: Ctx, box: LocationMailbox): Promise<MailFeed> {
  const { ch } = ctx;
  for (const r of await recvList(ch, 'request')) {
    const body = box.openBody(r.uid ?? 0, r.guid);
    const msg = box.message(r.uid ?? 0);
    const localFile = body ? box.bodyFileOf(r.uid ?? 0, r.guid) : undefined;
    ch.send({ type: 'mail', guid: r.guid ?? '', uid: r.uid ?? 0, receivedDate: msg?.internalDate ?? 0, body, ...(localFile ? { localFile } : {}) });
  }
  ch.send({ type: 'end' });
  return new MailFeed(ch);
}

/**
 * Syncs a mailbox up to the barrier (the state records: the peer is done with our mails and we
 * with its). What is left is this side's own (expunges, flag updates, the sync state, no more
 * records): returned, for the caller to run while the sides go on with the next mailbox.
 * undefined when the mailbox needed nothing.
 */
async function syncMailbox(ctx: Ctx, openBox: LocationMailbox, mine: MailboxRecord, theirs: MailboxRecord): Promise<(() => Promise<void>) | undefined> {
  const t0 = clockMs();
  const waited0 = ctx.ch.waited?.ms;
  const { ch } = ctx;
  let box = openBox;
  const backup = ctx.settings.backup !== 'none';
  const name = ctx.show(box.name);
  const full = ctx.settings.syncType === 'full';
  const saved = box.peerState(ctx.peerId);
  // Both sides hold the state of the same completed sync (same id), and it still fits both.
  const stateful =
    !!saved &&
    mine.lastSyncId !== '' &&
    mine.lastSyncId === theirs.lastSyncId &&
    mine.uidValidity === theirs.uidValidity &&
    mine.uidNext > saved.lastCommonUid &&
    theirs.uidNext > saved.lastCommonUid;
  if (!full && stateful && mine.unchangedSinceSync && theirs.unchangedSinceSync && mine.uidNext === theirs.uidNext) {
    ctx.log.debug(`mailbox ${name}: unchanged on both sides, skipped`);
    return undefined;
  }
  let uidValidity = mine.uidValidity;
  if (backup) uidValidity = (ctx.isSource ? mine : theirs).uidValidity;
  else if (mine.uidValidity !== theirs.uidValidity) {
    const masterRec = ctx.role === 'master' ? mine : theirs;
    const slaveRec = ctx.role === 'master' ? theirs : mine;
    const winner = uidValidityWinner(masterRec, slaveRec);
    if (winner !== mine.uidValidity) {
      ctx.log.info(`mailbox ${name}: UIDVALIDITY ${mine.uidValidity} changed to ${winner} to match the other side`);
      await box.setUidValidity(winner);
    }
    uidValidity = winner;
  }
  const state = stateful ? saved : undefined;
  const lastCommonUid = state?.lastCommonUid ?? 0;
  const complete = full || !state;
  // Mails are recognised by GUID when both stores can keep GUIDs, else by header hash (mbox).
  box.identity = mine.haveSaveGuids && theirs.haveSaveGuids ? 'guid' : 'hdrHash';
  if (box.identity === 'hdrHash') await box.ensureHeaderHashes();
  // A second copy of a mail here (an interrupted save or move left it) is removed before the
  // comparison, so it can never be copied to the other side as a mail of its own.
  // Mails below the UIDNEXT of the last completed sync were checked by that sync.
  const checkedBelow = state && state.uidValidity === box.status().uidValidity ? state.myUidNext : 0;
  const dups = ctx.isSource ? [] : box.duplicateUids(checkedBelow);
  if (dups.length > 0) {
    ctx.log.info(`mailbox ${name}: removing ${dups.length} second copies of mails (left by an interrupted run)`);
    await box.expunge(dups, '');
  }
  const plan = await exchangeChanges(ctx, box, { lastCommonUid, sinceModseq: state?.myModseq ?? 0, complete }, mine, theirs);
  const actions = plan.actions;
  if (ctx.log.debugEnabled) ctx.log.debug(`mailbox ${name}: ${ctx.role}'s ${describePlan(actions, lastCommonUid, complete)}`);
  if (ctx.isSource && (actions.saves.length || actions.expunges.length || actions.flagUpdates.length)) {
    throw new Error('internal error: the backup source was asked to change mail');
  }
  // In ascending UID order: the order they are saved in, and so the order their bodies are asked for.
  const saves = [...actions.saves].sort((a, b) => a.uid - b.uid);
  const mails = await exchangeBodies(ctx, box, saves);

  // Saves first (a UID move copies before it expunges), then the barrier: after it the peer
  // may expunge the mails whose bodies we were reading.
  let changesDuringSync = false;
  if (plan.rebuild) {
    if (!plan.quietRebuild) ctx.log.warn(`mailbox ${name}: the destination cannot be made identical in place (${plan.rebuild}); rebuilding it from the source`);
    if (!(await box.reset(uidValidity, ctx.peerId))) {
      const { guid } = box;
      const boxName = box.name;
      await box.close();
      ctx.open.delete(guid);
      await ctx.loc.deleteMailbox(guid);
      await ctx.loc.createMailbox(boxName, guid, uidValidity);
      const fresh = await getBox(ctx, guid);
      if (!fresh) throw new Error(`mailbox ${name} could not be recreated`);
      box = fresh;
    }
    if (!plan.quietRebuild) ctx.summary.push(`mailbox ${name}: rebuilt from the source (${plan.rebuild})`);
  }
  const applied = { fromPeer: 0, moved: 0 };
  // A save's request, with the body the peer sent (taken from the feed once; kept for a retry
  // of the combined store update the slow way).
  const prepared = new Map<SaveAction, SaveRequest | null>();
  try {
    const bodyOf = async (sv: SaveAction): Promise<SaveRequest | null> => {
      const known = prepared.get(sv);
      if (known) known.uid = sv.uid; // moved up since (moveUp)
      if (known !== undefined) return known;
      const mail = await mails.take(sv.sourceUid);
      const body = mail?.body ?? null;
      if (!body) {
        ctx.log.warn(`mailbox ${name}: mail ${sv.key} vanished on the other side before it could be copied (run dsync again)`);
        changesDuringSync = true;
        return null;
      }
      const req: SaveRequest = { uid: sv.uid, guid: sv.key, flags: sv.flags, keywords: sv.keywords, internalDate: sv.internalDate, body };
      if (mail?.localFile) req.linkFrom = mail.localFile;
      return req;
    };
    const requestsOf = async (list: SaveAction[], keep: boolean): Promise<SaveRequest[]> => {
      const out: SaveRequest[] = [];
      for (const sv of list) {
        const r = await bodyOf(sv);
        if (keep) prepared.set(sv, r);
        if (r) out.push(r);
      }
      return out;
    };
    // Another program (an IMAP server, a delivery) may give out UIDs here at any moment; a save or
    // move that finds its UIDs taken changed nothing. Then the mails from saves[k] on get the next
    // free UIDs, here only (the next run sees the difference and settles it like any UID conflict).
    let uidsTaken = 0;
    const moveUp = async (err: unknown, k: number, unsaved: SaveRequest[] = [], uidNext?: number): Promise<void> => {
      if ((err !== null && !(err instanceof StorageError && err.code === 'UIDTAKEN')) || ++uidsTaken > MAX_UID_RETRIES) throw err;
      if (uidsTaken === 1) ctx.log.warn(`mailbox ${name}: another program gave out UIDs during the sync; mails from the other side get other UIDs here (run dsync again)`);
      changesDuringSync = true;
      let next = uidNext ?? (await box.store.status()).uidNext;
      for (const r of unsaved) r.uid = next++;
      for (let x = k; x < saves.length; x++) saves[x].uid = next++;
    };
    if (saves.length > 0) {
      // Mail delivered here since the plan took UIDs it meant to use (err null: no failed save yet).
      const st = await box.store.status();
      if (st.uidNext > saves[0].uid) await moveUp(null, 0, [], st.uidNext);
    }
    const isMove = (sv: SaveAction) => sv.from === 'local';
    let combined = false;
    if (box.canSaveAndRenumber && saves.some(isMove) && saves.some((sv) => !isMove(sv))) {
      // After a UID conflict moves and copies interleave: one store update for all of them.
      const moves = saves.filter((sv) => isMove(sv) && box.keyOf(sv.sourceUid) === sv.key);
      if (moves.length < saves.filter(isMove).length) changesDuringSync = true;
      const requests = await requestsOf(saves.filter((sv) => !isMove(sv)), true);
      try {
        await box.saveAndRenumber(requests, moves.map((sv) => ({ from: sv.sourceUid, to: sv.uid, flags: sv.flags, keywords: sv.keywords })), ctx.peerId);
        applied.moved += moves.length;
        applied.fromPeer += requests.length;
        combined = true;
      } catch (err) {
        // An unreadable mail on the other side: go the slow way, which skips just that mail. UIDs
        // another program took meanwhile: the same, with the next free ones (nothing was changed).
        if (!(err instanceof BodySourceError)) await moveUp(err, 0);
      }
    }
    // Otherwise in ascending UID order, in runs of the same kind: local UID moves, then saves of
    // the peer's mails (committed every 100), so every UID is above UIDNEXT when it is used.
    for (let i = 0; !combined && i < saves.length; ) {
      const from = saves[i].from;
      let j = i;
      while (j < saves.length && saves[j].from === from && j - i < 100) j++;
      const run = saves.slice(i, j);
      if (from === 'local') {
        const moves = run.filter((sv) => box.keyOf(sv.sourceUid) === sv.key);
        try {
          await box.renumber(moves.map((sv) => ({ from: sv.sourceUid, to: sv.uid, flags: sv.flags, keywords: sv.keywords })), ctx.peerId);
        } catch (err) {
          await moveUp(err, i);
          continue; // this run again, with the new UIDs
        }
        if (moves.length < run.length) changesDuringSync = true;
        applied.moved += moves.length;
        i = j;
        continue;
      }
      let requests = await requestsOf(run, false);
      const asked = requests.length;
      let saved = 0;
      for (;;) {
        try {
          saved += await saveSkippingUnreadable(ctx, box, requests, name);
          break;
        } catch (err) {
          // Those saved before the failure (one at a time, after an unreadable mail) stay saved.
          const unsaved = requests.filter((r) => box.keyOf(r.uid) !== r.guid);
          saved += requests.length - unsaved.length;
          await moveUp(err, j, unsaved);
          requests = unsaved;
        }
      }
      trimHeap();
      if (saved < asked) changesDuringSync = true;
      applied.fromPeer += saved;
      i = j;
    }
  } catch (err) {
    // Renamed or deleted here by another program while its mail was being saved, or another
    // program kept taking the UIDs we moved on to (MAX_UID_RETRIES times), or kept the mailbox
    // locked: the rest waits for the next run (nothing was changed by the attempt that failed).
    if (!vanished(ctx, box.name, err) && !uidsKeptTaken(ctx, box.name, err) && !lockedOut(ctx, box.name, err)) throw err;
    changesDuringSync = true;
  }
  prepared.clear();
  await mails.finish();
  ch.mailboxDone?.();
  const syncId = ctx.role === 'master' ? newSyncId() : '';
  ch.send({
    type: 'state',
    mailboxGuid: box.guid,
    lastUidvalidity: uidValidity,
    lastCommonUid: plan.lastCommonUid,
    lastCommonModseq: box.status().highestModseq,
    lastCommonPvtModseq: 0,
    lastMessagesCount: box.messageCount,
    changesDuringSync,
    syncId,
  });
  const peerState = await expectRecord(ch, 'state');
  const waited = waited0 === undefined ? '' : `, ${(ctx.ch.waited!.ms - waited0).toFixed(1)} ms of it waiting for the other side`;
  return () => afterBarrier(peerState, clockMs());
  async function afterBarrier(peerState: MailboxStateRecord, tBarrier: number): Promise<void> {
    const moved = new Set(actions.saves.filter((s) => s.from === 'local').map((s) => s.sourceUid));
    const keys = new Map(actions.expunges.filter((e) => !moved.has(e.uid)).map((e) => [e.uid, e.key]));
    const expungeUids = [...keys].filter(([uid, key]) => box.keyOf(uid) === key).map(([uid]) => uid);
    let expunged = 0;
    let flagged = 0;
    try {
      expunged = await box.expunge(expungeUids, ctx.peerId);
      flagged = await box.updateFlags(actions.flagUpdates, ctx.peerId);
      if (!ctx.isSource) await box.raiseUidNext(plan.uidNext);
    } catch (err) {
      if (!vanished(ctx, box.name, err) && !lockedOut(ctx, box.name, err)) throw err;
      changesDuringSync = true;
    }
    // The next run takes the count from the index instead of counting, and compares the mailbox
    // with the digest of its rows instead of reading them all.
    box.recordSummary();

    if (backup) {
      // The backup source keeps no state (its index lives in memory), so neither side does.
      if (changesDuringSync || peerState.changesDuringSync) ctx.changesDuringSync = true;
    } else if (changesDuringSync || peerState.changesDuringSync) {
      box.forgetPeerState(ctx.peerId);
      ctx.changesDuringSync = true;
    } else {
      box.savePeerState(ctx.peerId, {
        uidValidity,
        lastCommonUid: plan.lastCommonUid,
        syncId: ctx.role === 'master' ? syncId : peerState.syncId,
      });
    }
    // Our changes leave the store's change token stale, and one taken right after them would not
    // be trusted (see StoreMailbox.changeToken). The mailbox is checked once more at the end of the
    // run (settleTokens), when they are old enough; anything that changed outside dsync during the
    // sync is found and journaled then, or by the next run's scan.
    if (!ctx.isSource) await box.markTokenStale();
    const parts: string[] = [];
    if (applied.fromPeer) parts.push(`${applied.fromPeer} new`);
    if (applied.moved) parts.push(`${applied.moved} moved to new UIDs`);
    if (expunged) parts.push(`${expunged} expunged`);
    if (flagged) parts.push(`${flagged} flag changes`);
    if (plan.renumbered) parts.push(`${plan.renumbered} mails renumbered after a UID conflict`);
    if (parts.length) ctx.summary.push(`mailbox ${name}: ${parts.join(', ')}`);
    ctx.log.debug(`mailbox ${name}: synced in ${msSince(t0)} (${msSince(tBarrier)} after the barrier${waited})`);
  }
}

/**
 * Runs a synced mailbox's remaining work (see syncMailbox) while the caller goes on with the next
 * mailbox: the sides need not wait for each other's expunges and flag updates. The previous one
 * is awaited first (and its error, if any, thrown), so at most one is in flight; finishAll awaits
 * the last. The handle is released once its work is done.
 */
async function finishLater(ctx: Ctx, guid: string, rest: (() => Promise<void>) | undefined): Promise<void> {
  await finishAll(ctx);
  if (!rest) {
    await release(ctx, guid);
    return;
  }
  const p = rest().then(() => release(ctx, guid));
  p.catch(() => undefined); // awaited (and thrown) by the next finishLater or finishAll
  ctx.finishing = p;
}

async function finishAll(ctx: Ctx): Promise<void> {
  const p = ctx.finishing;
  ctx.finishing = null;
  await p;
}

/** Times a mailbox's saves move to other UIDs because another program took theirs, before giving up. */
const MAX_UID_RETRIES = 10;

/**
 * Saves a batch; if a mail's body cannot be read on the other side (unreadable file, I/O error),
 * that mail is skipped with a warning and the others are still saved. Returns how many were saved.
 */
async function saveSkippingUnreadable(ctx: Ctx, box: LocationMailbox, requests: SaveRequest[], name: string): Promise<number> {
  try {
    await box.save(requests);
    return requests.length;
  } catch (err) {
    if (!(err instanceof BodySourceError)) throw err;
  }
  let saved = 0;
  for (const r of requests) {
    if (box.keyOf(r.uid) === r.guid) continue; // saved before the failure
    try {
      await box.save([r]);
      saved++;
    } catch (err) {
      if (!(err instanceof BodySourceError)) throw err;
      ctx.log.warn(`mailbox ${name}: mail ${r.guid} was not copied: ${err.message} (run dsync again once it is readable)`);
    }
  }
  return saved;
}

interface SidePlan {
  actions: SideActions;
  uidNext: number;
  lastCommonUid: number;
  renumbered: number;
  /** Set (to the reason) when the backup destination must be recreated. */
  rebuild?: string;
  /** The rebuild only gives an empty, unused mailbox the source's UIDVALIDITY: not worth a warning. */
  quietRebuild?: boolean;
}

function mirrorPlan(ctx: Ctx, myView: SideView, peerView: SideView, lastCommonUid: number, uniqueKeys: boolean): SidePlan {
  const plan = planMailbox({
    master: ctx.role === 'master' ? myView : peerView,
    slave: ctx.role === 'master' ? peerView : myView,
    lastCommonUid,
    uniqueKeys,
  });
  return { actions: ctx.role === 'master' ? plan.master : plan.slave, uidNext: plan.uidNext, lastCommonUid: plan.lastCommonUid, renumbered: plan.renumbered };
}

function backupPlan(ctx: Ctx, myView: SideView, peerView: SideView, mine: MailboxRecord, theirs: MailboxRecord): SidePlan {
  const source = ctx.isSource ? myView : peerView;
  if (ctx.isSource) {
    return { actions: { expunges: [], flagUpdates: [], saves: [] }, uidNext: source.uidNext, lastCommonUid: source.uidNext - 1, renumbered: 0 };
  }
  const p = planBackup(source, myView, mine.uidValidity === theirs.uidValidity);
  return { actions: p.dest, uidNext: p.uidNext, lastCommonUid: p.uidNext - 1, renumbered: 0, rebuild: p.rebuild ? p.reason : undefined, quietRebuild: p.quiet };
}

/**
 * This side's planned actions, for -D: every expunge and save with the mail's identity (the first
 * 12 characters), so a run's decisions about one mail can be followed in its log.
 */
function describePlan(a: SideActions, lastCommonUid: number, complete: boolean): string {
  const id = (key: string) => key.slice(0, 12);
  const parts = [`${a.flagUpdates.length} flag updates`];
  if (a.expunges.length) parts.push(`expunge ${a.expunges.map((e) => `${e.uid}=${id(e.key)}`).join(' ')}`);
  if (a.saves.length) parts.push(`save ${a.saves.map((s) => `${s.uid}<-${s.from === 'local' ? 'here' : 'peer'}:${s.sourceUid}=${id(s.key)}`).join(' ')}`);
  return `plan (from common UID ${lastCommonUid}${complete ? ', all mails compared' : ''}): ${parts.join('; ')}`;
}

/** The mailbox with more messages keeps its UIDVALIDITY; on a tie the higher value wins. */
export function uidValidityWinner(master: MailboxRecord, slave: MailboxRecord): number {
  if (master.messagesCount !== slave.messagesCount) return master.messagesCount > slave.messagesCount ? master.uidValidity : slave.uidValidity;
  return Math.max(master.uidValidity, slave.uidValidity);
}

/**
 * An id for one sync of a mailbox: it only has to differ from the ids of this pair's earlier
 * syncs, so the time and 32 random bits of Math.random do; node:crypto would cost more to load
 * (~6 ms) than a whole mailbox with a few changes takes to sync.
 */
function newSyncId(): string {
  const hex8 = (n: number) => (n >>> 0).toString(16).padStart(8, '0');
  return hex8(Date.now() / 1000) + hex8(Math.random() * 0x1_0000_0000);
}
