// Executes one side's half of a tree plan against its location. Renames whose target is still
// taken by another mailbox that is itself about to move go through a temporary name first.
import type { Location } from '../location/location.js';
import type { TreeAction } from './decide/tree-plan.js';
import { nameKey } from './decide/name-hash.js';
import { StorageError } from '../storage/types.js';

export interface TreeApplyResult {
  /** GUIDs whose mailbox was renamed, re-identified or deleted (open handles are stale). */
  touched: Set<string>;
  /** Something could not be applied because the store changed under us. */
  changesDuringSync: boolean;
  /** Mailboxes this store cannot hold (their names): left out of the mail sync. */
  unsyncable: Set<string>;
  summary: string[];
}

export async function applyTreeActions(
  loc: Location,
  actions: TreeAction[],
  toLocalName: (name: string[]) => string[],
): Promise<TreeApplyResult> {
  const res: TreeApplyResult = { touched: new Set(), changesDuringSync: false, unsyncable: new Set(), summary: [] };
  const sep = loc.separator;
  const show = (n: string[]) => n.join(sep);
  /** Runs one change; false when the store refused it for a reason that must not stop the run. */
  const tolerate = async (what: string, fn: () => Promise<void>): Promise<boolean> => {
    try {
      await fn();
      return true;
    } catch (err) {
      if (err instanceof StorageError && (err.code === 'EXISTS' || err.code === 'NOTFOUND')) {
        loc.log.warn(`${what}: ${err.message} (changed during the sync; run dsync again)`);
        res.changesDuringSync = true;
        return false;
      }
      if (err instanceof StorageError && err.code === 'INVALIDNAME') {
        // Running again will not help: say so once, leave the mailbox out, and go on.
        loc.log.warn(`${what}: ${err.message}; this mailbox is left out of the sync (rename it to something the other side can hold)`);
        return false;
      }
      throw err;
    }
  };

  /**
   * Renames a mailbox. A store cannot rename a mailbox to a name below its own (A to A/x), but
   * the plan may ask for it (A was renamed twice on the other side, A to C to A/x): that goes
   * through a temporary sibling name. Its children move along, as with any rename.
   */
  const rename = async (what: string, guid: string, from: string[], to: string[], at?: number): Promise<boolean> => {
    if (to.length > from.length && nameKey(to.slice(0, from.length)) === nameKey(from)) {
      const temp = [...from.slice(0, -1), `${from[from.length - 1]}-temp-${guid}`];
      if (!(await tolerate(what, () => loc.renameMailbox(guid, temp)))) return false;
    }
    return tolerate(what, () => loc.renameMailbox(guid, to, at));
  };

  for (const a of actions.filter((x) => x.op === 'setGuid')) {
    if (a.op !== 'setGuid') continue;
    await loc.setMailboxGuid(a.from, a.to);
    res.touched.add(a.from).add(a.to);
    res.summary.push(`mailbox ${show(a.name)}: merged with the peer's mailbox of the same name (GUID ${a.to})`);
  }

  // Where every mailbox should be after the renames: its current name unless the plan moves it.
  const wanted = new Map(loc.mailboxes().map((m) => [m.guid, m.name]));
  for (const a of actions) if (a.op === 'rename') wanted.set(a.guid, toLocalName(a.to));

  // Renames: move everything whose target is free; park blocked ones under temporary names.
  let pending = actions.filter((x): x is Extract<TreeAction, { op: 'rename' }> => x.op === 'rename');
  for (let round = 0; pending.length > 0 && round < pending.length * 3 + 3; round++) {
    const blocked: typeof pending = [];
    for (const r of pending) {
      const row = loc.index.mailbox(r.guid);
      if (!row) continue;
      const to = toLocalName(r.to);
      if (nameKey(row.name) === nameKey(to)) continue; // moved along with its parent
      const holder = loc.mailboxByName(to);
      if (holder && holder.guid !== r.guid) {
        blocked.push(r);
        continue;
      }
      if (await rename(`renaming ${show(row.name)} to ${show(to)}`, r.guid, row.name, to, r.at)) {
        res.summary.push(`mailbox ${show(row.name)}: renamed to ${show(to)}`);
      }
      res.touched.add(r.guid);
    }
    if (blocked.length === pending.length) {
      const r = blocked[0];
      const holder = loc.mailboxByName(toLocalName(r.to))!;
      const temp = [...holder.name.slice(0, -1), `${holder.name[holder.name.length - 1]}-temp-${holder.guid}`];
      await tolerate(`renaming ${show(holder.name)} out of the way`, () => loc.renameMailbox(holder.guid, temp));
      res.touched.add(holder.guid);
    }
    pending = blocked;
  }

  // A parent's rename takes its children along (Maildir++ and fs layouts both do); children the
  // plan keeps where they were are moved back.
  for (let round = 0; round < 3; round++) {
    let moved = false;
    for (const [guid, want] of wanted) {
      const row = loc.index.mailbox(guid);
      if (!row || nameKey(row.name) === nameKey(want)) continue;
      if (loc.mailboxByName(want)) continue;
      await rename(`moving ${show(row.name)} back to ${show(want)}`, guid, row.name, want);
      res.touched.add(guid);
      moved = true;
    }
    if (!moved) break;
  }

  for (const a of actions) {
    switch (a.op) {
      case 'create': {
        const name = toLocalName(a.name);
        if (await tolerate(`creating ${show(name)}`, () => loc.createMailbox(name, a.guid, a.uidValidity, a.at))) {
          res.summary.push(`mailbox ${show(name)}: created`);
        } else {
          res.unsyncable.add(a.guid);
        }
        break;
      }
      case 'delete': {
        const row = loc.index.mailbox(a.guid);
        if (!row) break;
        await tolerate(`deleting ${show(row.name)}`, () => loc.deleteMailbox(a.guid));
        res.touched.add(a.guid);
        res.summary.push(`mailbox ${show(row.name)}: deleted`);
        break;
      }
      case 'createDir':
        await tolerate(`creating directory ${show(a.name)}`, () => loc.createDir(toLocalName(a.name)));
        break;
      case 'deleteDir':
        await tolerate(`deleting directory ${show(a.name)}`, () => loc.deleteDir(toLocalName(a.name)));
        break;
      case 'subscribe':
      case 'unsubscribe': {
        const name = toLocalName(a.name);
        await loc.setSubscribed(name, a.op === 'subscribe', a.timestamp);
        res.summary.push(`mailbox ${show(name)}: ${a.op}d`);
        break;
      }
      default:
        break;
    }
  }
  return res;
}
