// What both sides must do to one mailbox, computed from the two sides' exported views
// (dsync-design.md §6.3–6.6). Pure: both brains run it on the same (master, slave) views and
// each executes its own half, so they converge without another round trip.
import { NO_STRINGS } from '../../util/empty.js';
import { mergeFlags, sameFlags, type FlagSide } from './flag-merge.js';
import { assignUids } from './uid-assign.js';
import { EMPTY_HEADER_HASH } from '../../storage/header-hash.js';

export interface MessageView extends FlagSide {
  uid: number;
  /** Identity: GUID, or header hash where GUIDs cannot be saved. */
  key: string;
  kind: 'save' | 'flags';
  /** INTERNALDATE, Unix seconds. */
  internalDate: number;
}

export interface ExpungeView {
  uid: number;
  key: string;
  /** When the side logged the expunge (its clock, Unix milliseconds); 0 when unknown. */
  at?: number;
}

export interface SideView {
  uidNext: number;
  /** Every existing message is listed (full or stateless sync); else only changed ones at or below the common UID. */
  complete: boolean;
  messages: MessageView[];
  expunges: ExpungeView[];
}

export interface SaveAction {
  uid: number;
  key: string;
  flags: number;
  keywords: string[];
  /** Where the body comes from: this side's own message (a UID move) or the peer's. */
  from: 'local' | 'peer';
  sourceUid: number;
  internalDate: number;
}

export interface SideActions {
  /** UID + identity; the executor verifies the identity before expunging. */
  expunges: ExpungeView[];
  flagUpdates: { uid: number; flags: number; keywords: string[] }[];
  saves: SaveAction[];
}

export interface MailboxPlan {
  master: SideActions;
  slave: SideActions;
  uidNext: number;
  lastCommonUid: number;
  /** Mails that got new UIDs because both sides used the same UID for different mails. */
  renumbered: number;
}

export interface PlanInput {
  master: SideView;
  slave: SideView;
  /** Agreed last common UID from the previous sync; 0 when there is no usable state. */
  lastCommonUid: number;
  /**
   * Keys identify one mail each (GUIDs). False for header hashes, which different mails can share
   * (e.g. every mail without Date and Message-ID): then two mails with one key are not duplicates.
   */
  uniqueKeys?: boolean;
}

const emptyActions = (): SideActions => ({ expunges: [], flagUpdates: [], saves: [] });

/** Keys that more than one of the messages have. */
function keysSeenTwice(list: MessageView[]): Set<string> {
  const once = new Set<string>();
  const twice = new Set<string>();
  for (const m of list) (once.has(m.key) ? twice : once).add(m.key);
  return twice;
}

export function planMailbox({ master, slave, lastCommonUid: L, uniqueKeys = true }: PlanInput): MailboxPlan {
  const out = { master: emptyActions(), slave: emptyActions() };
  const mByUid = new Map(master.messages.map((m) => [m.uid, m]));
  const sByUid = new Map(slave.messages.map((m) => [m.uid, m]));
  const mExp = new Map(master.expunges.map((e) => [e.uid, e]));
  const sExp = new Map(slave.expunges.map((e) => [e.uid, e]));

  // 1. Messages both sides had at the last sync (UID <= L).
  if (L > 0) {
    const uids = new Set<number>();
    for (const src of [mByUid, sByUid, mExp, sExp]) for (const uid of src.keys()) if (uid <= L) uids.add(uid);
    for (const uid of [...uids].sort((a, b) => a - b)) {
      const m = mByUid.get(uid);
      const s = sByUid.get(uid);
      const me = mExp.get(uid);
      const se = sExp.get(uid);
      if (me || se) {
        if (se && !me && (m || !master.complete)) out.master.expunges.push(se);
        if (me && !se && (s || !slave.complete)) out.slave.expunges.push(me);
        continue;
      }
      if (m && s) {
        if (m.key !== s.key) continue; // cannot happen with agreed state; leave both alone
        const merged = mergeFlags(m, s);
        if (!sameFlags(merged, m)) out.master.flagUpdates.push({ uid, ...merged });
        if (!sameFlags(merged, s)) out.slave.flagUpdates.push({ uid, ...merged });
      } else if (m) {
        // The slave does not list it: unchanged there, or (complete view) expunged there.
        if (slave.complete) out.master.expunges.push({ uid, key: m.key });
        else out.slave.flagUpdates.push({ uid, flags: m.flags, keywords: copyKeywords(m.keywords) });
      } else if (s) {
        if (master.complete) out.slave.expunges.push({ uid, key: s.key });
        else out.master.flagUpdates.push({ uid, flags: s.flags, keywords: copyKeywords(s.keywords) });
      }
    }
  }

  // 2. Mails above the common point: new on one side, or on both (linked by identity).
  let mNew = master.messages.filter((m) => m.uid > L);
  let sNew = slave.messages.filter((m) => m.uid > L);
  if (L === 0) {
    // Without a common state, a mail whose twin the other side logged as expunged (same
    // identity, and no longer there) was expunged there: expunge it here too. Under any UID: a
    // run that found its UIDs taken by another program (a delivery, an IMAP server) saves mails
    // under other UIDs on one side and forgets the state, and an expunge made before the next run
    // must not be undone. Header hashes (Date and Message-ID) may be shared by two mails: under
    // another UID only where this side has just the one mail with the hash, never the hash of
    // mails without either header, and only for a mail that arrived (INTERNALDATE) before the
    // other side logged the expunge of its twin (a copy delivered again later, a list's resend,
    // is a new mail: losing it would be worse than a deleted mail coming back). Protocol 4.
    const gone = (list: MessageView[], exp: Map<number, ExpungeView>, otherKeys: Set<string>, mine: SideActions) => {
      const lastExpunged = new Map<string, number>();
      for (const e of exp.values()) lastExpunged.set(e.key, Math.max(lastExpunged.get(e.key) ?? 0, e.at ?? 0));
      const shared = uniqueKeys ? undefined : keysSeenTwice(list);
      const loggedUnderAnyUid = (m: MessageView): boolean => {
        const at = lastExpunged.get(m.key);
        if (at === undefined) return false;
        if (uniqueKeys) return true;
        return !shared!.has(m.key) && m.key !== EMPTY_HEADER_HASH && m.internalDate * 1000 <= at;
      };
      return list.filter((m) => {
        const e = exp.get(m.uid);
        const logged = (e && e.key === m.key) || loggedUnderAnyUid(m);
        if (logged && !otherKeys.has(m.key)) {
          mine.expunges.push({ uid: m.uid, key: m.key });
          return false;
        }
        return true;
      });
    };
    const mKeys = new Set(mNew.map((m) => m.key));
    const sKeys = new Set(sNew.map((m) => m.key));
    mNew = gone(mNew, sExp, sKeys, out.master);
    sNew = gone(sNew, mExp, mKeys, out.slave);
  }
  // The same mail twice on one side (left by an interrupted UID move): keep the lowest UID.
  if (uniqueKeys) {
    mNew = dropDuplicates(mNew, out.master);
    sNew = dropDuplicates(sNew, out.slave);
  }
  const assignment = assignUids(
    mNew.map((m) => ({ uid: m.uid, key: m.key })),
    sNew.map((m) => ({ uid: m.uid, key: m.key })),
    master.uidNext,
    slave.uidNext,
  );
  const mNewByUid = new Map(mNew.map((m) => [m.uid, m]));
  const sNewByUid = new Map(sNew.map((m) => [m.uid, m]));
  let renumbered = 0;
  for (const a of assignment.mails) {
    const m = a.masterUid !== undefined ? mNewByUid.get(a.masterUid) : undefined;
    const s = a.slaveUid !== undefined ? sNewByUid.get(a.slaveUid) : undefined;
    const merged = m && s ? mergeFlags(m, s) : { flags: (m ?? s)!.flags, keywords: copyKeywords((m ?? s)!.keywords) };
    const internalDate = (m ?? s)!.internalDate;
    if (a.finalUid !== a.masterUid && a.finalUid !== a.slaveUid) renumbered++;
    placeOn(out.master, m, s, a.finalUid, merged, internalDate, a.key);
    placeOn(out.slave, s, m, a.finalUid, merged, internalDate, a.key);
  }
  return {
    ...out,
    uidNext: assignment.uidNext,
    lastCommonUid: assignment.uidNext - 1,
    renumbered,
  };
}

/** Make `mine` hold the mail at finalUid with the merged flags. */
function placeOn(
  mine: SideActions,
  own: MessageView | undefined,
  peer: MessageView | undefined,
  finalUid: number,
  merged: { flags: number; keywords: string[] },
  internalDate: number,
  key: string,
): void {
  if (own && own.uid === finalUid) {
    if (!sameFlags(merged, own)) mine.flagUpdates.push({ uid: finalUid, ...merged });
    return;
  }
  const save: SaveAction = own
    ? { uid: finalUid, key, ...merged, from: 'local', sourceUid: own.uid, internalDate: own.internalDate }
    : { uid: finalUid, key, ...merged, from: 'peer', sourceUid: peer!.uid, internalDate };
  mine.saves.push(save);
  if (own) mine.expunges.push({ uid: own.uid, key });
}

function dropDuplicates(list: MessageView[], mine: SideActions): MessageView[] {
  const seen = new Set<string>();
  return [...list]
    .sort((a, b) => a.uid - b.uid)
    .filter((m) => {
      if (m.key === '' || !seen.has(m.key)) {
        seen.add(m.key);
        return true;
      }
      mine.expunges.push({ uid: m.uid, key: m.key });
      return false;
    });
}

function copyKeywords(k: readonly string[]): string[] {
  return k.length === 0 ? NO_STRINGS : [...k];
}
