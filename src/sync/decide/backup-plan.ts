// One-way backup of one mailbox (dsync-design.md §6.7): the destination is made identical to
// the source. Where that cannot be done in place (the destination used a UID the source needs
// for a different mail, its UIDNEXT is already past the source's, or its UIDVALIDITY differs),
// the destination mailbox is rebuilt from the source instead of failing as Dovecot does.
import { sameFlags } from './flag-merge.js';
import type { SideActions, SideView } from './mailbox-plan.js';

export interface BackupPlan {
  dest: SideActions;
  /** Recreate the destination mailbox empty (same GUID, the source's UIDVALIDITY) and refill it. */
  rebuild: boolean;
  /** Why a rebuild is needed, for the log. */
  reason?: string;
  /** The destination mailbox is empty and unused: adopting the source's UIDVALIDITY loses nothing. */
  quiet?: boolean;
  uidNext: number;
}

export function planBackup(source: SideView, dest: SideView, sameUidValidity: boolean): BackupPlan {
  const actions: SideActions = { expunges: [], flagUpdates: [], saves: [] };
  const destByUid = new Map(dest.messages.map((m) => [m.uid, m]));
  const sourceUids = new Set(source.messages.map((m) => m.uid));
  let reason: string | undefined;
  if (!sameUidValidity) reason = 'its UIDVALIDITY differs from the source';
  else if (dest.uidNext > source.uidNext) reason = `its UIDNEXT ${dest.uidNext} is already past the source's ${source.uidNext}`;
  for (const m of source.messages) {
    if (reason) break;
    const d = destByUid.get(m.uid);
    if (d && d.key !== m.key) reason = `UID ${m.uid} holds a different mail than in the source`;
    else if (!d && m.uid < dest.uidNext) reason = `UID ${m.uid} is missing and can no longer be given out`;
  }
  const all = (): SideActions => ({
    expunges: [],
    flagUpdates: [],
    saves: source.messages.map((m) => ({
      uid: m.uid,
      key: m.key,
      flags: m.flags,
      keywords: [...m.keywords],
      from: 'peer' as const,
      sourceUid: m.uid,
      internalDate: m.internalDate,
    })),
  });
  if (reason) return { dest: all(), rebuild: true, reason, quiet: dest.messages.length === 0 && dest.uidNext <= 1, uidNext: source.uidNext };
  for (const d of dest.messages) if (!sourceUids.has(d.uid)) actions.expunges.push({ uid: d.uid, key: d.key });
  for (const m of source.messages) {
    const d = destByUid.get(m.uid);
    if (d) {
      if (!sameFlags(m, d)) actions.flagUpdates.push({ uid: m.uid, flags: m.flags, keywords: [...m.keywords] });
    } else {
      actions.saves.push({ uid: m.uid, key: m.key, flags: m.flags, keywords: [...m.keywords], from: 'peer', sourceUid: m.uid, internalDate: m.internalDate });
    }
  }
  return { dest: actions, rebuild: false, uidNext: Math.max(source.uidNext, dest.uidNext) };
}
