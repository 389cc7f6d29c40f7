// UID assignment for new mails (dsync-design.md §6.5). Pure and deterministic: both brains
// compute the same final UIDs from the same (master, slave) inputs.

export interface NewMail {
  uid: number;
  /** Identity used to recognise the same mail on both sides (GUID or header hash). */
  key: string;
}

export interface Assigned {
  key: string;
  masterUid?: number;
  slaveUid?: number;
  finalUid: number;
}

export interface UidAssignment {
  mails: Assigned[];
  /** UIDNEXT both sides end with. */
  uidNext: number;
}

/**
 * A mail keeps its UID when the other side never allocated it (uid >= the other side's UIDNEXT).
 * The same mail on both sides ("linked" by key) keeps whichever UID is usable, preferring equal
 * UIDs, then the master's. Everything else gets fresh UIDs above both UIDNEXTs, in a canonical
 * order, so both sides give each mail the same new UID and no UID names two different mails.
 */
export function assignUids(master: NewMail[], slave: NewMail[], masterUidNext: number, slaveUidNext: number): UidAssignment {
  const byKey = new Map<string, NewMail[]>();
  for (const m of [...slave].sort((a, b) => a.uid - b.uid)) {
    const list = byKey.get(m.key);
    if (list) list.push(m);
    else byKey.set(m.key, [m]);
  }
  const pairs: Assigned[] = [];
  for (const m of [...master].sort((a, b) => a.uid - b.uid)) {
    const candidates = byKey.get(m.key);
    let s: NewMail | undefined;
    if (candidates && candidates.length > 0) {
      const same = candidates.findIndex((c) => c.uid === m.uid);
      s = candidates.splice(same >= 0 ? same : 0, 1)[0];
    }
    pairs.push({ key: m.key, masterUid: m.uid, slaveUid: s?.uid, finalUid: 0 });
  }
  for (const rest of byKey.values()) for (const s of rest) pairs.push({ key: s.key, slaveUid: s.uid, finalUid: 0 });

  const needNew: Assigned[] = [];
  for (const p of pairs) {
    const m = p.masterUid;
    const s = p.slaveUid;
    if (m !== undefined && s !== undefined && m === s) p.finalUid = m;
    else if (m !== undefined && m >= slaveUidNext) p.finalUid = m;
    else if (s !== undefined && s >= masterUidNext) p.finalUid = s;
    else needNew.push(p);
  }
  const low = (p: Assigned) => Math.min(p.masterUid ?? Infinity, p.slaveUid ?? Infinity);
  needNew.sort((a, b) => low(a) - low(b) || (a.key < b.key ? -1 : a.key > b.key ? 1 : 0) || (a.masterUid === undefined ? 1 : -1));
  let next = Math.max(masterUidNext, slaveUidNext);
  for (const p of pairs) if (p.finalUid >= next) next = p.finalUid + 1;
  for (const p of needNew) p.finalUid = next++;
  pairs.sort((a, b) => a.finalUid - b.finalUid);
  return { mails: pairs, uidNext: Math.max(next, masterUidNext, slaveUidNext) };
}
