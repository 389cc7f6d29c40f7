// Crash safety: a mirror killed with SIGKILL at random moments and run again converges with
// nothing lost and nothing duplicated.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as os from 'node:os';
import { createHash } from 'node:crypto';
import { spawn, spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { makeMessage, makeRng } from '../helpers/corpus.js';
import { snapshot } from '../helpers/snapshot.js';

const DSYNC = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../bin/dsync');
const ROUNDS = Number(process.env.DSYNC_CRASH_ROUNDS ?? 12);
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex').slice(0, 16);

function dsyncArgs(a: string, location2: string, extra: string[], mode: 'mirror' | 'backup'): string[] {
  return [...extra, '-o', `mail_location=maildir:${a}`, mode, location2];
}

/** Who a kill hits: the dsync process, its whole process group, or only its children (a server it started). */
type Victim = 'dsync' | 'group' | 'children';

/** Runs dsync and SIGKILLs the victim after `ms` milliseconds (if still running). */
function runAndKill(args: string[], ms: number, victim: Victim): Promise<number | null> {
  return new Promise((resolve) => {
    const child = spawn(DSYNC, args, { stdio: 'ignore', detached: true });
    const timer = setTimeout(() => {
      try {
        if (victim === 'group') process.kill(-child.pid!, 'SIGKILL');
        else if (victim === 'dsync') child.kill('SIGKILL');
        else for (const pid of childrenOf(child.pid!)) process.kill(pid, 'SIGKILL');
      } catch {
        /* already gone */
      }
    }, ms);
    child.on('exit', (code) => {
      clearTimeout(timer);
      void groupGone(child.pid!).then(() => resolve(code));
    });
  });
}

/**
 * Waits until no process of the group is left: a server whose master was killed goes on until it
 * notices, and must not be still writing when the next round (or the final check) starts.
 * SIGKILLs what is left after 20 s; gives up 5 s later (a zombie nobody reaps stays "alive").
 */
async function groupGone(pgid: number): Promise<void> {
  const alive = () => {
    try {
      process.kill(-pgid, 0);
      return true;
    } catch {
      return false;
    }
  };
  for (let waited = 0; alive() && waited < 25_000; waited += 20) {
    if (waited === 20_000) {
      try {
        process.kill(-pgid, 'SIGKILL');
      } catch {
        /* gone meanwhile */
      }
    }
    await new Promise((r) => setTimeout(r, 20));
  }
}

function childrenOf(pid: number): number[] {
  try {
    return fs
      .readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8')
      .trim()
      .split(/\s+/)
      .filter((x) => x !== '')
      .map(Number);
  } catch {
    return [];
  }
}

function runToCompletion(args: string[]): { code: number | null; stderr: string } {
  const r = spawnSync(DSYNC, args, { encoding: 'utf8' });
  return { code: r.status, stderr: r.stderr };
}

function deliver(dir: string, body: Buffer, tag: string): void {
  for (const d of ['cur', 'new', 'tmp']) fs.mkdirSync(path.join(dir, d), { recursive: true });
  if (path.basename(dir).startsWith('.')) fs.writeFileSync(path.join(dir, 'maildirfolder'), '');
  const p = path.join(dir, 'new', `1700000000.${tag}.crashtest,S=${body.length}`);
  fs.writeFileSync(p, body);
}

/** Files in cur/ and new/ of one maildir folder. */
function mailFiles(dir: string): string[] {
  const out: string[] = [];
  for (const sub of ['cur', 'new']) {
    const d = path.join(dir, sub);
    if (fs.existsSync(d)) for (const f of fs.readdirSync(d)) out.push(path.join(d, f));
  }
  return out.sort();
}

/** What runs against A (a Maildir): B's kind, and how the other side is reached. */
interface CrashSetup {
  /** Options before the command. */
  extra?: string[];
  /** B is an mbox (mail is delivered and changed on A only: B has no Maildir to deliver into). */
  mbox?: boolean;
  /** B is behind a `dsync server` started as a command; kills hit the master, the server or both. */
  remote?: boolean;
  /** `backup` instead of `mirror`: A is never written, B ends as A (its own changes undone). */
  backup?: boolean;
  /** Between runs, folders are also created, renamed and deleted on either side (Maildirs only). */
  folderOps?: boolean;
}

/** INBOX ('') and the Maildir++ folders (".Name" directories with cur/) of a Maildir. */
function foldersOf(root: string): string[] {
  const dirs = fs.existsSync(root) ? fs.readdirSync(root).filter((d) => d.startsWith('.') && fs.existsSync(path.join(root, d, 'cur'))) : [];
  return ['', ...dirs.sort()];
}

/** Every file and directory below dir with its size and mtime: what a read-only run must not change. */
function treeState(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      const st = fs.lstatSync(p);
      out.push(`${path.relative(dir, p)} ${st.size} ${st.mtimeMs}`);
      if (e.isDirectory()) walk(p);
    }
  };
  walk(dir);
  return out.sort();
}

/** `rounds` random kills of a mirror run, then the checks. */
async function crashRounds(rounds: number, setup: CrashSetup, seed: string): Promise<void> {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'dsync-crash-'));
  const a = path.join(root, 'a');
  const b = path.join(root, 'b');
  const locationB = setup.mbox ? `mbox:${b}:INBOX=${b}/inbox` : `maildir:${b}`;
  const location2 = setup.remote ? `${DSYNC} -o mail_location=${locationB} server` : locationB;
  const args = dsyncArgs(a, location2, setup.extra ?? [], setup.backup ? 'backup' : 'mirror');
  const rng = makeRng(process.env.DSYNC_CRASH_SEED ?? seed);
  // An mbox folder cannot have subfolders.
  const folders = setup.mbox ? ['', '.Archive', '.Lists'] : ['', '.Archive', '.Lists', '.Lists.dev'];
  const writable = setup.mbox ? [a] : [a, b];
  // Mail that must be there at the end. With backup, only A's counts: B's own goes.
  const live = new Set<string>();
  const counts = (side: string) => !setup.backup || side === a;
  let n = 0;
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rng() * xs.length)]!;
  const addMail = (side: string, count: number, into?: string) => {
    for (let i = 0; i < count; i++) {
      const folder = into ?? pick(folders);
      const body = makeMessage(`crash-${n}`, { size: 2000 + Math.floor(rng() * 30000) });
      deliver(path.join(side, folder), body, `n${n++}`);
      if (counts(side)) live.add(sha(body));
    }
  };
  const view = async (loc: string) => {
    const snap = await snapshot(loc);
    // A backup source that no Dovecot maintains has no uidlist (it is never written): its UIDs
    // are given in memory by each run, so mails are compared by content, flags and keywords.
    if (setup.backup) {
      return snap.mailboxes.map((m) => ({ name: m.name, messages: m.messages.map((x) => `${x.sha} ${x.flags.join(',')} ${x.keywords.join(',')}`).sort() }));
    }
    // mbox keeps no mailbox GUIDs of its own: compare everything else.
    return setup.mbox ? { ...snap, mailboxes: snap.mailboxes.map((m) => ({ ...m, guid: '' })) } : snap;
  };
  const contents = (snap: Awaited<ReturnType<typeof view>>): { name: string; shas: string[] }[] =>
    Array.isArray(snap)
      ? snap.map((m) => ({ name: m.name, shas: m.messages.map((x) => x.split(' ')[0]!) }))
      : snap.mailboxes.map((m) => ({ name: m.name, shas: m.messages.map((x) => x.sha) }));
  try {
    addMail(a, 300);
    addMail(writable.at(-1)!, 50);
    for (let round = 0; round < rounds; round++) {
      // Changes on both sides between attempts: new mail, flag changes and expunges done by a "MUA".
      addMail(writable[Math.floor(rng() * writable.length)]!, 5 + Math.floor(rng() * 20));
      for (const side of writable) {
        const files = (setup.folderOps ? foldersOf(side) : folders).flatMap((f) => mailFiles(path.join(side, f)));
        for (const f of files) {
          const r = rng();
          if (r < 0.03 && f.includes('/cur/')) {
            if (counts(side)) live.delete(sha(fs.readFileSync(f)));
            fs.unlinkSync(f);
          } else if (r < 0.1 && f.includes('/cur/')) {
            const base = f.split(':2,')[0];
            fs.renameSync(f, `${base}:2,${rng() < 0.5 ? 'S' : 'FS'}`);
          }
        }
      }
      if (setup.folderOps && rng() < 0.3) {
        // A folder created with mail in it, or one deleted (its mail with it), or renamed.
        const side = pick(writable);
        const boxes = foldersOf(side).slice(1);
        const op = rng();
        if (op < 0.4 || boxes.length === 0) {
          addMail(side, 1 + Math.floor(rng() * 3), `.New${n}`);
        } else if (op < 0.7) {
          const victim = path.join(side, pick(boxes));
          if (counts(side)) for (const f of mailFiles(victim)) live.delete(sha(fs.readFileSync(f)));
          fs.rmSync(victim, { recursive: true });
        } else {
          const from = pick(boxes);
          fs.renameSync(path.join(side, from), path.join(side, `${from}-r${n++}`));
        }
      }
      const victim: Victim = setup.remote ? pick(['dsync', 'group', 'children'] as const) : 'dsync';
      const before = setup.backup ? treeState(a) : [];
      await runAndKill(args, 20 + Math.floor(rng() * 600), victim);
      if (setup.backup) assert.deepEqual(treeState(a), before, 'the backup source was changed');
    }
    let last = runToCompletion(args);
    for (let i = 0; i < 3 && last.code === 2; i++) last = runToCompletion(args);
    assert.equal(last.code, 0, last.stderr);
    const sa = await view(`maildir:${a}`);
    const sb = await view(locationB);
    assert.deepEqual(sb, sa);
    const present = contents(sa).flatMap((m) => m.shas);
    for (const mb of contents(sa)) {
      const dups = mb.shas.filter((x, i) => mb.shas.indexOf(x) !== i);
      assert.deepEqual(dups, [], `duplicate mails in ${mb.name}`);
    }
    // Expunges done on one side while the other had never seen the mail may resurrect it, but a
    // mail nobody expunged must never be lost.
    const have = new Set(present);
    for (const s of live) assert.ok(have.has(s), `mail ${s} was lost`);
    const again = runToCompletion(args);
    assert.equal(again.code, 0, again.stderr);
    assert.deepEqual(await view(`maildir:${a}`), sa);
  } finally {
    if (process.env.DSYNC_CRASH_KEEP) console.log(`kept ${root}`);
    else {
      // A failed removal is reported, never thrown: it would hide the run's own error.
      try {
        fs.rmSync(root, { recursive: true, force: true, maxRetries: 5, retryDelay: 200 });
      } catch (err) {
        console.log(`could not remove ${root}: ${(err as Error).message}`);
      }
    }
  }
}

test(`mirror killed at ${ROUNDS} random moments converges without loss or duplicates`, { timeout: 300_000 }, async () => {
  await crashRounds(ROUNDS, {}, 'crash');
});

// New mails are hard links to the other side's files here: a kill between linking and recording
// must leave neither a lost mail nor one that shows up twice.
const LINK_ROUNDS = Math.max(1, Math.round(ROUNDS / 2));
test(`mirror with dsync_hardlinks killed at ${LINK_ROUNDS} random moments converges without loss or duplicates`, { timeout: 300_000 }, async () => {
  await crashRounds(LINK_ROUNDS, { extra: ['-o', 'dsync_hardlinks=yes'] }, 'crash-links');
});

// Maildir -> mbox: a kill may hit an mbox rewrite (flag changes, expunges) or an append.
test(`mirror Maildir <-> mbox killed at ${LINK_ROUNDS} random moments converges without loss or duplicates`, { timeout: 300_000 }, async () => {
  await crashRounds(LINK_ROUNDS, { mbox: true }, 'crash-mbox');
});

// The other side a `dsync server` behind a pipe: the master dies alone (the server then reads
// the end of its input while it may be saving), the server alone (as when ssh dies: the master
// reads the end of its input), or both at once.
test(`remote mirror killed at ${LINK_ROUNDS} random moments (the master, the server or both) converges without loss or duplicates`, { timeout: 300_000 }, async () => {
  await crashRounds(LINK_ROUNDS, { remote: true }, 'crash-remote');
});

// Backup: a kill must never leave the source changed, and B ends as A whatever was done to it.
test(`backup killed at ${LINK_ROUNDS} random moments never changes the source and converges`, { timeout: 300_000 }, async () => {
  await crashRounds(LINK_ROUNDS, { backup: true }, 'crash-backup');
});

// Folders created, renamed and deleted on both sides between the kills: the tree's changes and
// tombstones must survive a kill as the mails' do (a deleted folder whose mail changed on the
// other side is kept there, so no mail nobody deleted is lost).
test(`mirror with folder creates, renames and deletes killed at ${LINK_ROUNDS} random moments converges`, { timeout: 300_000 }, async () => {
  await crashRounds(LINK_ROUNDS, { folderOps: true }, 'crash-folders');
});
