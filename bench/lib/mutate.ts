// Changes made to a synced pair between two syncs, the way a mail client and an MDA change a
// maildir on disk: flag changes are renames in cur/, new mail lands in new/, expunges unlink.
// A plan is computed once from the corpus (seeded, independent of the tool), then applied to
// each tool's copy of the synced pair, locating every message by its (line-end-normalized) body.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { MAIL_GID, MAIL_UID, MessageFactory, folderDir } from '../corpus.js';
import { Rng } from './prng.js';
import { bodyShas, cloneExpected, type ExpMsg, type Expected, type TreeState } from './snapshot.js';

type Side = 'a' | 'b';

interface Target {
  folder: string;
  lfSha: string;
}

export interface Reflag extends Target {
  side: Side;
  /** System flag letters to toggle (e.g. "S", "SF") or to add (addOnly). */
  toggle: string;
  addOnly?: boolean;
  /** A keyword of the folder's dovecot-keywords to toggle (side a only). */
  keyword?: string;
}

export interface Delivery {
  side: Side;
  folder: string;
  base: string;
  buf: Buffer;
  date: number;
}

export interface MutationPlan {
  reflag: Reflag[];
  expunge: (Target & { side: Side })[];
  deliver: Delivery[];
}

/** Every message of the expected state, in a stable order. */
function allMessages(e: Expected): (ExpMsg & { folder: string })[] {
  const out: (ExpMsg & { folder: string })[] = [];
  for (const f of [...e.folders.keys()].sort()) for (const m of e.folders.get(f)!) out.push({ ...m, folder: f });
  out.sort((x, y) => (x.folder < y.folder ? -1 : x.folder > y.folder ? 1 : x.lfSha < y.lfSha ? -1 : 1));
  return out;
}

function readKeywordFile(p: string): Map<string, string> {
  const m = new Map<string, string>();
  let text = '';
  try {
    text = fs.readFileSync(p, 'utf8');
  } catch {
    return m;
  }
  for (const line of text.split('\n')) {
    const mm = /^(\d+) (.+)$/.exec(line);
    if (mm && Number(mm[1]) < 26) m.set(mm[2]!, String.fromCharCode(0x61 + Number(mm[1])));
  }
  return m;
}

/** (d): 1% re-flagged on A, `newMails` new mails on A, `expunges` expunged on B. */
export function planIncremental(corpus: Expected, corpusDir: string, seed: number, o: { newMails?: number; expunges?: number } = {}): MutationPlan {
  const rng = new Rng(seed).fork('incremental');
  const msgs = rng.shuffle(allMessages(corpus));
  const nReflag = Math.max(1, Math.round(msgs.length * 0.01));
  const nExpunge = o.expunges ?? 50;
  const reflag: Reflag[] = msgs.slice(0, nReflag).map((m) => {
    const kws = [...readKeywordFile(path.join(corpusDir, m.folder, 'dovecot-keywords')).keys()];
    return {
      side: 'a',
      folder: m.folder,
      lfSha: m.lfSha,
      toggle: rng.chance(0.3) ? 'FS' : 'S',
      keyword: kws.length > 0 && rng.chance(0.3) ? kws[0] : undefined,
    };
  });
  const expunge = msgs.slice(nReflag, nReflag + nExpunge).map((m) => ({ side: 'b' as const, folder: m.folder, lfSha: m.lfSha }));
  const factory = new MessageFactory(seed, 'incremental-new');
  const targets = [folderDir([]), folderDir([]), folderDir([]), folderDir(['Lists', 'dovecot']), folderDir(['Work'])];
  const deliver: Delivery[] = [];
  const n = o.newMails ?? 100;
  for (let i = 0; i < n; i++) {
    const date = 1_719_800_000 + i * 600;
    const g = factory.make(date);
    deliver.push({ side: 'a', folder: targets[i % targets.length]!, base: g.base, buf: g.buf, date });
  }
  return { reflag, expunge, deliver };
}

/** (e): new mail on both sides of the same folders, and the same mails flagged differently on both sides. */
export function planConflicts(corpus: Expected, seed: number, o: { perFolder?: { a: number; b: number }; flagConflicts?: number } = {}): MutationPlan {
  const rng = new Rng(seed).fork('conflicts');
  const folders = [[], ['Sent'], ['Work'], ['Archive', '2024'], ['Lists', 'node']].map(folderDir);
  // Unequal counts on purpose: with the same number of new mails (and flag changes) on both
  // sides, Dovecot's stateless quick check (same UIDNEXT, message count and HIGHESTMODSEQ on
  // both sides => "in sync") skips the mailboxes and exits 0 with the sides still different.
  const per = { a: o.perFolder?.a ?? 20, b: o.perFolder?.b ?? 15 };
  const deliver: Delivery[] = [];
  for (const side of ['a', 'b'] as const) {
    const factory = new MessageFactory(seed, `conflict-new-${side}`);
    let i = 0;
    for (const folder of folders) {
      for (let k = 0; k < per[side]; k++, i++) {
        const date = 1_719_900_000 + i * 300 + (side === 'b' ? 7 : 0);
        const g = factory.make(date);
        deliver.push({ side, folder, base: g.base, buf: g.buf, date });
      }
    }
  }
  // The same message: \Flagged added on A, \Answered added on B, in the same folders (so the
  // mailbox is not skipped by the quick check). Ours merges (both flags); Dovecot's stateless sync
  // keeps one side's flags: both are accepted when the two sides agree.
  const inFolders = new Set(folders);
  const candidates = rng.shuffle(allMessages(corpus).filter((m) => inFolders.has(m.folder) && !m.flags.includes('F') && !m.flags.includes('R')));
  const reflag: Reflag[] = [];
  for (const m of candidates.slice(0, o.flagConflicts ?? 50)) {
    reflag.push({ side: 'a', folder: m.folder, lfSha: m.lfSha, toggle: 'F', addOnly: true });
    reflag.push({ side: 'b', folder: m.folder, lfSha: m.lfSha, toggle: 'R', addOnly: true });
  }
  return { reflag, expunge: [], deliver };
}

function toggleLetters(have: string, toggle: string, addOnly: boolean): string {
  const s = new Set(have);
  for (const c of toggle) {
    if (s.has(c) && !addOnly) s.delete(c);
    else s.add(c);
  }
  return [...s].sort().join('');
}

/** What both sides must contain after syncing a pair that started as `base` and got `plan`. */
export function expectedAfter(base: Expected, plan: MutationPlan): Expected {
  const e = cloneExpected(base);
  const find = (t: Target): ExpMsg => {
    const m = e.folders.get(t.folder)?.find((x) => x.lfSha === t.lfSha);
    if (!m) throw new Error(`mutation plan: message ${t.lfSha} not in folder ${t.folder || 'INBOX'}`);
    return m;
  };
  const touched = new Map<ExpMsg, { orig: string; a?: string; b?: string }>();
  for (const r of plan.reflag) {
    const m = find(r);
    const t = touched.get(m) ?? { orig: m.flags };
    touched.set(m, t);
    t[r.side] = toggleLetters(t[r.side] ?? t.orig, r.toggle, !!r.addOnly);
    m.flags = toggleLetters(m.flags, r.toggle, !!r.addOnly);
    if (r.keyword) {
      const has = m.keywords.includes(r.keyword);
      m.keywords = has ? m.keywords.filter((k) => k !== r.keyword) : [...m.keywords, r.keyword].sort();
    }
  }
  // Changed on both sides: the union, or one side's flags (Dovecot takes one side).
  for (const [m, t] of touched) if (t.a !== undefined && t.b !== undefined) m.alt = [t.a, t.b];
  for (const x of plan.expunge) {
    const list = e.folders.get(x.folder)!;
    const i = list.findIndex((m) => m.lfSha === x.lfSha);
    if (i < 0) throw new Error(`mutation plan: expunged message ${x.lfSha} not in ${x.folder || 'INBOX'}`);
    list.splice(i, 1);
  }
  for (const d of plan.deliver) {
    e.folders.get(d.folder)!.push({ ...bodyShas(d.buf), flags: '', keywords: [] });
  }
  return e;
}

/** Applies the plan to a pair (dirs a and b), whose content the snapshots describe. */
export function applyPlan(plan: MutationPlan, dirs: Record<Side, string>, snaps: Record<Side, TreeState>): void {
  const where = (side: Side, t: Target): string => {
    const f = snaps[side].folders.get(t.folder);
    const m = f?.messages.find((x) => x.lfSha === t.lfSha);
    if (!m) throw new Error(`mutation: message ${t.lfSha} not found in ${side}/${t.folder || 'INBOX'}`);
    return m.rel;
  };
  const current = new Map<string, string>();
  for (const r of plan.reflag) {
    const rel = where(r.side, r);
    // Several changes to the same message (same side) follow the file's current name.
    const cur = current.get(`${r.side}\0${r.folder}\0${rel}`) ?? rel;
    const fdir = path.join(dirs[r.side], r.folder);
    const name = cur.slice(4);
    const colon = name.indexOf(':');
    const baseName = colon < 0 ? name : name.slice(0, colon);
    const info = colon < 0 ? '' : name.slice(colon + 1);
    const letters = info.startsWith('2,') ? info.slice(2) : '';
    let upper = [...letters].filter((c) => !(c >= 'a' && c <= 'z')).join('');
    let lower = [...letters].filter((c) => c >= 'a' && c <= 'z').join('');
    upper = toggleLetters(upper, r.toggle, !!r.addOnly);
    if (r.keyword) {
      const letter = readKeywordFile(path.join(fdir, 'dovecot-keywords')).get(r.keyword);
      if (!letter) throw new Error(`mutation: keyword ${r.keyword} has no letter in ${fdir}/dovecot-keywords`);
      lower = toggleLetters(lower, letter, false);
    }
    const next = `cur/${baseName}:2,${upper}${lower}`;
    if (next !== cur) fs.renameSync(path.join(fdir, cur), path.join(fdir, next));
    current.set(`${r.side}\0${r.folder}\0${rel}`, next);
  }
  for (const x of plan.expunge) fs.unlinkSync(path.join(dirs[x.side], x.folder, where(x.side, x)));
  for (const d of plan.deliver) {
    const fdir = path.join(dirs[d.side], d.folder);
    for (const sub of ['tmp', 'new']) {
      if (!fs.existsSync(path.join(fdir, sub))) {
        fs.mkdirSync(path.join(fdir, sub), { mode: 0o700 });
        fs.chownSync(path.join(fdir, sub), MAIL_UID, MAIL_GID);
      }
    }
    const tmp = path.join(fdir, 'tmp', d.base);
    fs.writeFileSync(tmp, d.buf);
    fs.chownSync(tmp, MAIL_UID, MAIL_GID);
    fs.utimesSync(tmp, d.date, d.date);
    fs.renameSync(tmp, path.join(fdir, 'new', d.base));
  }
}
