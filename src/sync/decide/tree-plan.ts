// Mailbox tree sync (dsync-design.md §4): what each side must create, rename, delete and
// (un)subscribe so both trees end up equal. Pure and deterministic: both brains compute the same
// plan from the same (master, slave) trees and each executes its own half.
import type { MailboxDeleteRecord, MailboxTreeNodeRecord } from '../records.js';
import { nameHash, nameKey } from './name-hash.js';

export interface TreeSide {
  nodes: MailboxTreeNodeRecord[];
  deletes: MailboxDeleteRecord;
}

export type TreeAction =
  /** at: when the mailbox was created or last renamed on the side that has it, recorded with the copy. */
  | { op: 'create'; name: string[]; guid: string; uidValidity: number; at: number }
  /** at: when the winning name was given (its side's timestamp), recorded with the rename. */
  | { op: 'rename'; guid: string; from: string[]; to: string[]; at: number }
  | { op: 'delete'; guid: string; name: string[] }
  | { op: 'setGuid'; name: string[]; from: string; to: string }
  | { op: 'createDir'; name: string[] }
  | { op: 'deleteDir'; name: string[] }
  | { op: 'subscribe'; name: string[]; timestamp: number }
  | { op: 'unsubscribe'; name: string[]; timestamp: number };

export interface TreePlan {
  master: TreeAction[];
  slave: TreeAction[];
}

export type TreeMode = 'mirror' | 'backup-master-to-slave' | 'backup-slave-to-master';

interface Box {
  node: MailboxTreeNodeRecord;
  guid: string;
}

const isInbox = (name: readonly string[]) => name.length === 1 && name[0].toUpperCase() === 'INBOX';

function boxes(side: TreeSide): Map<string, Box> {
  const out = new Map<string, Box>();
  for (const n of side.nodes) if (n.existence === 'exists' && n.mailboxGuid) out.set(n.mailboxGuid, { node: n, guid: n.mailboxGuid });
  return out;
}

export function planTree(master: TreeSide, slave: TreeSide, mode: TreeMode): TreePlan {
  const plan: TreePlan = { master: [], slave: [] };
  const M = boxes(master);
  const S = boxes(slave);
  const mDeleted = new Map(master.deletes.mailboxes.map((t) => [t.key, t.timestamp]));
  const sDeleted = new Map(slave.deletes.mailboxes.map((t) => [t.key, t.timestamp]));
  const sourceIsMaster = mode === 'backup-master-to-slave';
  const backup = mode !== 'mirror';

  // Final name of every mailbox GUID that survives, and who has to act.
  interface Final {
    guid: string;
    name: string[];
    uidValidity: number;
    stamp: number;
    inMaster?: Box;
    inSlave?: Box;
  }
  const finals = new Map<string, Final>();

  // Two mailboxes of the same name, each unknown to the other side (typically both INBOXes):
  // they are one mailbox; both sides adopt the larger GUID.
  const mByName = new Map([...M.values()].map((b) => [nameKey(b.node.name), b]));
  const merged = new Set<string>();
  for (const sb of S.values()) {
    const mb = mByName.get(nameKey(sb.node.name));
    if (!mb || mb.guid === sb.guid) continue;
    // INBOX always exists on both sides and can be neither deleted nor renamed: the two are one
    // mailbox whatever their GUIDs (e.g. one side lost its dovecot-uidlist and got a new GUID).
    if (!isInbox(sb.node.name)) {
      if (M.has(sb.guid) || S.has(mb.guid)) continue;
      if (!backup && (sDeleted.has(mb.guid) || mDeleted.has(sb.guid))) continue;
    }
    const winner = backup ? (sourceIsMaster ? mb.guid : sb.guid) : mb.guid > sb.guid ? mb.guid : sb.guid;
    if (mb.guid !== winner) plan.master.push({ op: 'setGuid', name: mb.node.name, from: mb.guid, to: winner });
    if (sb.guid !== winner) plan.slave.push({ op: 'setGuid', name: sb.node.name, from: sb.guid, to: winner });
    merged.add(mb.guid).add(sb.guid);
    finals.set(winner, {
      guid: winner,
      name: mb.node.name,
      uidValidity: (winner === mb.guid ? mb : sb).node.uidValidity ?? 0,
      stamp: Math.max(mb.node.lastRenamedOrCreated, sb.node.lastRenamedOrCreated),
      inMaster: mb,
      inSlave: sb,
    });
  }

  for (const [guid, mb] of M) {
    if (merged.has(guid)) continue;
    const sb = S.get(guid);
    if (sb) {
      let name = mb.node.name;
      if (nameKey(mb.node.name) !== nameKey(sb.node.name)) {
        if (backup) name = sourceIsMaster ? mb.node.name : sb.node.name;
        else if (sb.node.lastRenamedOrCreated > mb.node.lastRenamedOrCreated) name = sb.node.name;
      }
      finals.set(guid, {
        guid,
        name,
        uidValidity: mb.node.uidValidity ?? 0,
        stamp: Math.max(mb.node.lastRenamedOrCreated, sb.node.lastRenamedOrCreated),
        inMaster: mb,
        inSlave: sb,
      });
      continue;
    }
    // Only the master has it.
    if (backup) {
      if (sourceIsMaster) finals.set(guid, { guid, name: mb.node.name, uidValidity: mb.node.uidValidity ?? 0, stamp: mb.node.lastRenamedOrCreated, inMaster: mb });
      else plan.master.push({ op: 'delete', guid, name: mb.node.name });
      continue;
    }
    if (sDeleted.has(guid) && !mb.node.changedSinceSync && !isInbox(mb.node.name)) {
      plan.master.push({ op: 'delete', guid, name: mb.node.name });
      continue;
    }
    finals.set(guid, { guid, name: mb.node.name, uidValidity: mb.node.uidValidity ?? 0, stamp: mb.node.lastRenamedOrCreated, inMaster: mb });
  }
  for (const [guid, sb] of S) {
    if (merged.has(guid) || M.has(guid)) continue;
    if (backup) {
      if (!sourceIsMaster) finals.set(guid, { guid, name: sb.node.name, uidValidity: sb.node.uidValidity ?? 0, stamp: sb.node.lastRenamedOrCreated, inSlave: sb });
      else plan.slave.push({ op: 'delete', guid, name: sb.node.name });
      continue;
    }
    if (mDeleted.has(guid) && !sb.node.changedSinceSync && !isInbox(sb.node.name)) {
      plan.slave.push({ op: 'delete', guid, name: sb.node.name });
      continue;
    }
    finals.set(guid, { guid, name: sb.node.name, uidValidity: sb.node.uidValidity ?? 0, stamp: sb.node.lastRenamedOrCreated, inSlave: sb });
  }

  // Two different mailboxes may now want the same name: the most recently renamed or created
  // keeps it (ties: larger GUID), the others move aside to "<name>-<8 hex of their GUID>".
  const byName = new Map<string, Final[]>();
  for (const f of finals.values()) {
    const k = nameKey(f.name).toUpperCase() === 'INBOX' ? 'INBOX' : nameKey(f.name);
    byName.set(k, [...(byName.get(k) ?? []), f]);
  }
  const taken = new Set(byName.keys());
  for (const group of byName.values()) {
    if (group.length < 2) continue;
    group.sort((a, b) => b.stamp - a.stamp || (a.guid < b.guid ? 1 : -1));
    for (const f of group.slice(1)) {
      const base = f.name.slice();
      const last = base.length - 1;
      let candidate = [...base.slice(0, last), `${base[last]}-${f.guid.slice(0, 8)}`];
      for (let i = 2; taken.has(nameKey(candidate)); i++) candidate = [...base.slice(0, last), `${base[last]}-${f.guid.slice(0, 8)}-${i}`];
      taken.add(nameKey(candidate));
      f.name = candidate;
    }
  }

  // Renames first (parents before children), then creates.
  const ordered = [...finals.values()].sort((a, b) => a.name.length - b.name.length || (nameKey(a.name) < nameKey(b.name) ? -1 : 1));
  for (const f of ordered) {
    for (const [side, box] of [['master', f.inMaster], ['slave', f.inSlave]] as const) {
      if (box && nameKey(box.node.name) !== nameKey(f.name)) plan[side].push({ op: 'rename', guid: f.guid, from: box.node.name, to: f.name, at: f.stamp });
    }
  }
  for (const f of ordered) {
    if (!f.inMaster) plan.master.push({ op: 'create', name: f.name, guid: f.guid, uidValidity: f.uidValidity, at: f.stamp });
    if (!f.inSlave) plan.slave.push({ op: 'create', name: f.name, guid: f.guid, uidValidity: f.uidValidity, at: f.stamp });
  }

  planDirs(master, slave, mode, finals, plan);
  planSubscriptions(master, slave, mode, plan);
  if (backup) {
    if (sourceIsMaster) plan.master = [];
    else plan.slave = [];
  }
  return plan;
}

function planDirs(master: TreeSide, slave: TreeSide, mode: TreeMode, finals: Map<string, { name: string[] }>, plan: TreePlan): void {
  const dirs = (side: TreeSide) => new Map(side.nodes.filter((n) => n.existence === 'exists' && !n.mailboxGuid).map((n) => [nameKey(n.name), n]));
  const md = dirs(master);
  const sd = dirs(slave);
  const mailboxNames = new Set([...finals.values()].map((f) => nameKey(f.name)));
  // A directory with a mailbox below it stays (it is that mailbox's parent): never delete it.
  const parents = new Set<string>();
  for (const f of finals.values()) for (let i = 1; i < f.name.length; i++) parents.add(nameKey(f.name.slice(0, i)));
  const deletedBy = (side: TreeSide, name: string[]) => {
    const h = nameHash(name, side.deletes.hierarchySep);
    return side.deletes.dirs.find((t) => t.key === h)?.timestamp;
  };
  for (const [self, other, selfSide, otherSide, otherTree] of [
    [md, sd, 'master', 'slave', slave],
    [sd, md, 'slave', 'master', master],
  ] as const) {
    for (const [k, n] of self) {
      if (other.has(k) || mailboxNames.has(k)) continue;
      if (parents.has(k)) continue;
      const gone = deletedBy(otherTree, n.name);
      const source = mode === 'backup-master-to-slave' ? 'master' : mode === 'backup-slave-to-master' ? 'slave' : undefined;
      if (source ? source !== selfSide : gone !== undefined && gone >= n.lastRenamedOrCreated) plan[selfSide].push({ op: 'deleteDir', name: n.name });
      else plan[otherSide].push({ op: 'createDir', name: n.name });
    }
  }
}

function planSubscriptions(master: TreeSide, slave: TreeSide, mode: TreeMode, plan: TreePlan): void {
  const subs = (side: TreeSide) => {
    const out = new Map<string, { name: string[]; subscribed: boolean; ts: number }>();
    for (const n of side.nodes) out.set(nameKey(n.name), { name: n.name, subscribed: n.subscribed, ts: n.lastSubscriptionChange });
    return out;
  };
  const ms = subs(master);
  const ss = subs(slave);
  const unsubTs = (side: TreeSide, name: string[]) => side.deletes.unsubscribes.find((t) => t.key === nameHash(name, side.deletes.hierarchySep))?.timestamp;
  const names = new Map<string, string[]>();
  for (const m of [ms, ss]) for (const [k, v] of m) names.set(k, v.name);
  for (const [k, name] of [...names].sort()) {
    const m = ms.get(k) ?? { name, subscribed: false, ts: unsubTs(master, name) ?? 0 };
    const s = ss.get(k) ?? { name, subscribed: false, ts: unsubTs(slave, name) ?? 0 };
    if (m.subscribed === s.subscribed) continue;
    let want: boolean;
    if (mode === 'backup-master-to-slave') want = m.subscribed;
    else if (mode === 'backup-slave-to-master') want = s.subscribed;
    else if (m.ts !== s.ts) want = m.ts > s.ts ? m.subscribed : s.subscribed;
    else want = true;
    const ts = Math.max(m.ts, s.ts);
    const op = want ? 'subscribe' : 'unsubscribe';
    if (m.subscribed !== want) plan.master.push({ op, name, timestamp: ts });
    if (s.subscribed !== want) plan.slave.push({ op, name, timestamp: ts });
  }
}
