// Per-flag, per-keyword merge of one message's flags from two sides (dsync-design.md §6.4).
// Pure and symmetric: both brains call it with (master, slave) and get the same answer.
import { NO_STRINGS } from '../../util/empty.js';

export interface FlagSide {
  flags: number;
  keywords: readonly string[];
  /** Flags added / removed on this side since the last sync (0 when unknown). */
  addFlags: number;
  removeFlags: number;
  kwAdd: readonly string[];
  kwRemove: readonly string[];
  /** Wall-clock time of this side's latest change to the message (0 when unknown). */
  changedAt: number;
}

export interface MergedFlags {
  flags: number;
  keywords: string[];
}

/** Which side wins a conflict: the later change, and the master on a tie. */
export function preferredSide(master: FlagSide, slave: FlagSide): 'master' | 'slave' {
  return slave.changedAt > master.changedAt ? 'slave' : 'master';
}

function mergeBit(
  mHas: boolean,
  sHas: boolean,
  mChanged: boolean,
  sChanged: boolean,
  prefer: 'master' | 'slave',
): boolean {
  if (mHas === sHas) return mHas;
  if (mChanged && !sChanged) return mHas;
  if (sChanged && !mChanged) return sHas;
  return prefer === 'master' ? mHas : sHas;
}

export function mergeFlags(master: FlagSide, slave: FlagSide): MergedFlags {
  const prefer = preferredSide(master, slave);
  let flags = 0;
  for (let bit = 1; bit <= 0x10; bit <<= 1) {
    const on = mergeBit(
      (master.flags & bit) !== 0,
      (slave.flags & bit) !== 0,
      ((master.addFlags | master.removeFlags) & bit) !== 0,
      ((slave.addFlags | slave.removeFlags) & bit) !== 0,
      prefer,
    );
    if (on) flags |= bit;
  }
  // Most messages have no keywords at all: no sets to build.
  if (master.keywords.length + slave.keywords.length + master.kwAdd.length + master.kwRemove.length + slave.kwAdd.length + slave.kwRemove.length === 0) {
    return { flags, keywords: NO_STRINGS };
  }
  const mk = new Set(master.keywords);
  const sk = new Set(slave.keywords);
  const mChanged = new Set([...master.kwAdd, ...master.kwRemove]);
  const sChanged = new Set([...slave.kwAdd, ...slave.kwRemove]);
  const keywords: string[] = [];
  for (const kw of new Set([...mk, ...sk])) {
    if (mergeBit(mk.has(kw), sk.has(kw), mChanged.has(kw), sChanged.has(kw), prefer)) keywords.push(kw);
  }
  keywords.sort();
  return { flags, keywords };
}

export function sameFlags(a: { flags: number; keywords: readonly string[] }, b: { flags: number; keywords: readonly string[] }): boolean {
  if (a.flags !== b.flags || a.keywords.length !== b.keywords.length) return false;
  if (a.keywords.length === 0) return true;
  const s = new Set(a.keywords);
  return b.keywords.every((k) => s.has(k));
}
