// The benchmark: our dsync (bin/dsync) against Dovecot's `doveadm sync` / `doveadm backup` on
// identical copies of a seeded corpus, alternating ours/Dovecot, N repetitions per cell, with a
// correctness check after every timed run. See bench/README.md.
//
//   npm run bench -- [--size 1k|10k|50k[,..]] [--reps N] [--only s1,s2] [--keep] [--no-md]
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ensureCorpus, chownR, corpusRoot, MAIL_GID, MAIL_UID, SIZES, DEFAULT_SEED, type Corpus, type SizeName } from './corpus.js';
import { copyTree, freezeBuild, Graveyard, resetAtimes, rmrf, sh, syncDisks, timed, GNU_TIME, type CopyMode, type RunResult, type Sample } from './lib/exec.js';
import { startSshd } from '../test/helpers/sshd.js';
import { doveadmCmd, doveadmRemoteCmd, doveadmSyncCmd, dovecotVersion, primeWithDovecot, writeDoveadmConfig, type DoveadmEnv } from './lib/dovecot.js';
import { diffExpected, diffTrees, expectedOf, hasNoUids, messageCount, readTree, type BodyKey, type Expected, type TreeState } from './lib/snapshot.js';
import { mboxLocation, readMboxTree } from './lib/mbox.js';
import { applyPlan, expectedAfter, planConflicts, planIncremental, type MutationPlan } from './lib/mutate.js';
import { buildLabel, describeMachine, renderSize, writeBenchmarksMd, type FloorResult, type ScenarioResult, type SizeResults, type ToolId } from './lib/report.js';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const RESULTS_DIR = path.join(REPO, 'bench', 'results');
const MD_PATH = path.join(REPO, 'BENCHMARKS.md');

const SCENARIOS = ['initial', 'rerun1', 'indexed', 'backup', 'links', 'nofsync', 'remote', 'ssh', 'nochange', 'nochange-full', 'incremental', 'incremental-next', 'remote-incremental', 'conflicts', 'convert', 'floors'] as const;
type ScenarioId = (typeof SCENARIOS)[number];
const SSH_TITLE = '(h″) initial mirror → empty, B over ssh (a private sshd on 127.0.0.1)';
/** How long after the end of (d) its next run (d′) starts. */
const NEXT_RUN_AFTER_MS = 2000;

interface Options {
  sizes: SizeName[];
  reps: number;
  initialReps: number | undefined;
  indexedReps: number;
  seed: number;
  only: Set<ScenarioId>;
  keep: boolean;
  md: boolean;
  copy: CopyMode;
  /** Longest wait for a quiet machine before each timed run, s; 0 = do not wait. */
  maxWait: number;
  /** Niceness of the timed commands (both tools alike; negative = ahead of other processes). */
  nice: number;
  /** Which tools to run (both by default; one only for quick experiments). */
  tools: Set<ToolId>;
}

const USAGE = `usage: npm run bench -- [options]
  --size LIST       corpus sizes, comma-separated: ${Object.keys(SIZES).join(', ')} (default 10k)
  --reps N          repetitions per cell (default 3)
  --initial-reps N  repetitions of the initial-sync scenarios (a), (a″), (b), (h), (h″) (default: --reps); on a
                    slow-fsync disk Dovecot's initial sync of 10k mails takes minutes
  --indexed-reps N  repetitions of (a'), the initial mirror from a Dovecot-indexed source (default 1)
  --seed N          corpus seed (default ${DEFAULT_SEED})
  --only LIST       scenarios, comma-separated: ${SCENARIOS.join(', ')} (default all)
  --copy link|cp    how each run gets its copy of the corpus / synced pair: link (default: cp -al,
                    non-message files copied; message files are immutable) or cp (cp -a, slow)
  --max-wait S      before each timed run wait up to S seconds (default 60) for the machine to be
                    quiet (other processes < 0.2 CPU incl. iowait); 0 = don't wait
  --nice N          run the timed commands (both tools, floors) under nice -n N (default -10: ahead
                    of other people's processes on a shared machine; 0 = plain)
  --tools LIST      ours,dovecot (default both); one tool only for quick experiments (results are
                    then written as <size>-partial.json)
  --keep            keep the work directory (copies, logs) for inspection
  --no-md           do not rewrite BENCHMARKS.md (bench/results/<size>.json is always written)`;

function parseOptions(argv: string[]): Options {
  const o: Options = { sizes: ['10k'], reps: 3, initialReps: undefined, indexedReps: 1, seed: DEFAULT_SEED, only: new Set(SCENARIOS), keep: false, md: true, copy: 'link', maxWait: 60, nice: -10, tools: new Set<ToolId>(['ours', 'dovecot']) };
  const num = (v: string | undefined, what: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1) throw new Error(`${what} needs a positive integer`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const [flag, inline] = a.includes('=') ? [a.slice(0, a.indexOf('=')), a.slice(a.indexOf('=') + 1)] : [a, undefined];
    const val = () => inline ?? argv[++i];
    switch (flag) {
      case '--size':
      case '--sizes': {
        const list = (val() ?? '').split(',').filter(Boolean);
        for (const s of list) if (!(s in SIZES)) throw new Error(`unknown size ${s} (${Object.keys(SIZES).join(', ')})`);
        o.sizes = list as SizeName[];
        break;
      }
      case '--reps':
        o.reps = num(val(), '--reps');
        break;
      case '--initial-reps':
        o.initialReps = num(val(), '--initial-reps');
        break;
      case '--indexed-reps':
        o.indexedReps = num(val(), '--indexed-reps');
        break;
      case '--seed':
        o.seed = num(val(), '--seed');
        break;
      case '--only': {
        const list = (val() ?? '').split(',').filter(Boolean);
        for (const s of list) if (!(SCENARIOS as readonly string[]).includes(s)) throw new Error(`unknown scenario ${s} (${SCENARIOS.join(', ')})`);
        o.only = new Set(list as ScenarioId[]);
        break;
      }
      case '--copy': {
        const v = val();
        if (v !== 'link' && v !== 'cp') throw new Error('--copy is link or cp');
        o.copy = v;
        break;
      }
      case '--max-wait': {
        const n = Number(val());
        if (!Number.isFinite(n) || n < 0) throw new Error('--max-wait needs seconds >= 0');
        o.maxWait = n;
        break;
      }
      case '--nice': {
        const n = Number(val());
        if (!Number.isInteger(n) || n < -20 || n > 19) throw new Error('--nice needs -20..19');
        o.nice = n;
        break;
      }
      case '--tools': {
        const list = (val() ?? '').split(',').filter(Boolean);
        for (const t of list) if (t !== 'ours' && t !== 'dovecot') throw new Error(`unknown tool ${t} (ours, dovecot)`);
        if (list.length === 0) throw new Error('--tools needs ours and/or dovecot');
        o.tools = new Set(list as ToolId[]);
        break;
      }
      case '--keep':
        o.keep = true;
        break;
      case '--no-md':
        o.md = false;
        break;
      case '-h':
      case '--help':
        console.log(USAGE);
        process.exit(0);
      // eslint-disable-next-line no-fallthrough
      default:
        throw new Error(`unknown option ${a}\n${USAGE}`);
    }
  }
  return o;
}

// ------------------------------------------------------------------ tools

interface Tool {
  id: ToolId;
  label: string;
  /** How bodies must match: ours byte for byte; Dovecot stores the mail it saves with LF line ends. */
  key: BodyKey;
  /** `extra`: options of ours only (a scenario that passes them has no Dovecot cell). */
  cmd(mode: 'mirror' | 'backup', a: string, b: string, full: boolean, extra?: string[]): string[];
  /**
   * Between any two locations (`maildir:DIR`, `mbox:DIR:INBOX=FILE`): the convert scenario. For
   * Dovecot with the config whose namespace names the separator (see writeDoveadmConfig).
   */
  locCmd(mode: 'mirror' | 'backup', local: string, remote: string): string[];
  /**
   * Like cmd, with B served by a second process of the tool that it starts as a command and
   * talks to over a pipe, as it would over ssh (ours `dsync server`, Dovecot's `doveadm
   * dsync-server`): the remote protocol, without ssh's encryption.
   */
  remoteCmd(mode: 'mirror' | 'backup', a: string, b: string): string[];
  /** Like remoteCmd, through ssh: `login` is the ssh command line that logs in to the other side. */
  sshCmd(mode: 'mirror' | 'backup', a: string, b: string, login: string[]): string[];
  env: NodeJS.ProcessEnv;
}

/**
 * Folders that have child folders and hold mails themselves cannot exist in mbox (a mailbox is a
 * file there, and a file cannot have children): the convert scenario moves their mails into a
 * child folder of this name (Archive -> Archive/General), so the parent becomes a \Noselect
 * directory, as Lists already is in the corpus.
 */
const CONVERT_CHILD = 'General';

class CheckFailure extends Error {}

/**
 * Differences between two trees plus those of one of them against what it must contain, without
 * saying twice that a folder is there or missing; a folder only in one tree is marked "(empty)"
 * when it has no messages there.
 */
function mergeDiffs(pair: string[], expected: string[], trees: Record<string, TreeState>): string[] {
  const folderLine = /^folder (.+) only in (.+)$/;
  const shown = new Set(pair.map((l) => folderLine.exec(l)?.[1]).filter((x): x is string => !!x));
  const out = pair.map((l) => {
    const m = folderLine.exec(l);
    const f = m && trees[m[2]!]?.folders.get(m[1] === 'INBOX' ? '' : m[1]!);
    return f && f.messages.length === 0 ? `${l} (empty)` : l;
  });
  for (const l of expected) {
    const m = /: (?:unexpected folder (.+)|folder (.+) is missing)$/.exec(l);
    if (!m || !shown.has((m[1] ?? m[2])!)) out.push(l);
  }
  return out;
}

/** Other processes used more than 10% of one CPU on average during the sample (and > 0.1 CPU-s). */
function contaminated(s: Sample): boolean {
  return s.foreignCpu > Math.max(0.1 * s.wall, 0.1);
}

function contaminationNotes(res: ScenarioResult): string[] {
  const out: string[] = [];
  for (const [id, label] of [['ours', 'ours'], ['dovecot', 'Dovecot']] as const) {
    const s = res[id];
    if (!Array.isArray(s)) continue;
    const bad = s.filter(contaminated);
    if (bad.length) {
      out.push(`${label}: ${bad.length} of ${s.length} samples ran while other processes on the machine used CPU (up to ${Math.max(...bad.map((x) => x.foreignCpu)).toFixed(1)} CPU-s): treat with care`);
    }
  }
  return out;
}

const log = (s: string) => process.stderr.write(`${s}\n`);
const fmtS = (x: number) => (x < 1 ? `${(x * 1000).toFixed(0)} ms` : `${x.toFixed(2)} s`);

class SizeBench {
  readonly work: string;
  /** Copies done with: deleted at the end, not between timed runs (see Graveyard). */
  readonly graveyard: Graveyard;
  readonly dove: DoveadmEnv;
  /** Dovecot's config for the convert scenario: the same plus a namespace with separator '/'. */
  readonly doveConvert: DoveadmEnv;
  tools: Tool[];
  /** bin/dsync of the frozen copy of the build under test. */
  readonly bin: string;
  corpus!: Corpus;
  corpusExpected!: Expected;
  /** Per tool: the synced pair (after the initial mirror and one settling re-run) and its snapshots. */
  readonly golden = new Map<ToolId, { dir: string; a: TreeState; b: TreeState }>();
  readonly scenarios: ScenarioResult[] = [];
  readonly floors: FloorResult[] = [];
  /** The convert scenario's source tree (the corpus as mbox can hold it), made on first use. */
  convertSource?: { dir: string; expected: Expected; moved: string[] };
  /** Per tool: the settled Maildir the convert scenario starts from, and its snapshot. */
  readonly convertGolden = new Map<ToolId, { dir: string; snap: TreeState }>();

  constructor(
    readonly size: SizeName,
    readonly o: Options,
  ) {
    fs.mkdirSync(corpusRoot(), { recursive: true, mode: 0o755 });
    this.work = fs.mkdtempSync(path.join(corpusRoot(), `work-${size}-`));
    fs.chmodSync(this.work, 0o755);
    this.graveyard = new Graveyard(path.join(this.work, 'graveyard'));
    try {
      this.dove = writeDoveadmConfig(path.join(this.work, 'dovecot-conf'));
      this.doveConvert = writeDoveadmConfig(path.join(this.work, 'dovecot-conf-convert'), { separator: '/' });
      this.bin = freezeBuild(REPO, path.join(this.work, 'build'));
    } catch (e) {
      rmrf(this.work); // nothing ran yet: nothing to inspect
      throw e;
    }
    const home = path.join(this.work, 'home');
    fs.mkdirSync(home);
    fs.chownSync(home, MAIL_UID, MAIL_GID);
    const oursEnv = { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: home, LANG: 'C' };
    // Same identity as Dovecot's mail processes (mail_uid 65534): no chown of what it creates.
    // Run as an installed `dsync` is run: through its #! line, which gives Node its flags.
    const ours = (args: string[]) => ['setpriv', `--reuid=${MAIL_UID}`, `--regid=${MAIL_GID}`, '--clear-groups', this.bin, ...args];
    this.tools = [
      {
        id: 'ours',
        label: 'ours',
        key: 'sha',
        env: oursEnv,
        cmd: (mode, a, b, full, extra = []) => ours([...extra, ...(full ? ['-f'] : []), '-o', `mail_location=maildir:${a}`, mode, `maildir:${b}`]),
        locCmd: (mode, local, remote) => ours(['-o', `mail_location=${local}`, mode, remote]),
        remoteCmd: (mode, a, b) => ours(['-o', `mail_location=maildir:${a}`, mode, this.bin, '-o', `mail_location=maildir:${b}`, 'server']),
        sshCmd: (mode, a, b, login) => ours(['-o', `mail_location=maildir:${a}`, mode, ...login, this.bin, '-o', `mail_location=maildir:${b}`, 'server']),
      },
      {
        id: 'dovecot',
        label: 'Dovecot',
        key: 'lfSha',
        env: this.dove.env,
        cmd: (mode, a, b, full, extra = []) => doveadmSyncCmd(this.dove, mode, a, b, full, extra),
        locCmd: (mode, local, remote) => doveadmCmd(this.doveConvert, mode, local, remote),
        remoteCmd: (mode, a, b) => doveadmRemoteCmd(this.dove, mode, a, b),
        sshCmd: (mode, a, b, login) => doveadmRemoteCmd(this.dove, mode, a, b, login),
      },
    ];
    this.tools = this.tools.filter((t) => o.tools.has(t.id));
    for (const t of this.tools) {
      fs.mkdirSync(this.toolDir(t));
      fs.chownSync(this.toolDir(t), MAIL_UID, MAIL_GID);
    }
  }

  toolDir(t: Tool): string {
    return path.join(this.work, t.id);
  }
  /** The pair every timed run works on: always the same paths (state files may remember them). */
  pair(t: Tool): { dir: string; a: string; b: string } {
    const dir = path.join(this.toolDir(t), 'run');
    return { dir, a: path.join(dir, 'a'), b: path.join(dir, 'b') };
  }

  prepare(): void {
    this.corpus = ensureCorpus(this.size, this.o.seed, { log });
    if (!this.corpus.primed) {
      const primed = path.join(this.corpus.dir, 'primed');
      log(`priming a copy with Dovecot indexes (doveadm index '*') in ${primed}`);
      rmrf(primed);
      copyTree(this.corpus.maildir, primed);
      primeWithDovecot(this.dove, primed);
      chownR(primed);
      fs.writeFileSync(path.join(this.corpus.dir, '.primed'), '');
      this.corpus.primed = primed;
    }
    const t0 = performance.now();
    const snap = readTree(this.corpus.maildir);
    if (messageCount(snap) !== this.corpus.manifest.count) {
      throw new Error(`corpus ${this.corpus.maildir}: ${messageCount(snap)} messages on disk, manifest says ${this.corpus.manifest.count}`);
    }
    this.corpusExpected = expectedOf(snap);
    log(`corpus: ${this.corpus.manifest.count} messages, ${(snap.bytes / 1e6).toFixed(1)} MB, read+hashed in ${fmtS((performance.now() - t0) / 1000)}`);
  }

  // -------------------------------------------------------------- building blocks

  /** A fresh pair: A = cp -a of `source`, B absent. */
  freshPair(t: Tool, source: string): { a: string; b: string } {
    const p = this.pair(t);
    this.graveyard.bury(p.dir);
    fs.mkdirSync(p.dir);
    fs.chownSync(p.dir, MAIL_UID, MAIL_GID);
    copyTree(source, p.a, this.o.copy);
    return p;
  }

  /** The pair as the golden (synced, settled) copy. */
  goldenPair(t: Tool): { a: string; b: string } {
    const g = this.golden.get(t.id);
    if (!g) throw new Error(`internal: no golden pair for ${t.id}`);
    const p = this.pair(t);
    this.graveyard.bury(p.dir);
    copyTree(g.dir, p.dir, this.o.copy);
    return p;
  }

  /** The command under `nice -n N` when asked to. */
  niced(cmd: string[]): string[] {
    return this.o.nice === 0 ? cmd : ['nice', '-n', String(this.o.nice), ...cmd];
  }

  async run(t: Tool, mode: 'mirror' | 'backup', a: string, b: string, full = false, extra: string[] = []): Promise<RunResult> {
    return this.timedCmd(t, t.cmd(mode, a, b, full, extra), [a, b]);
  }

  /** A timed command: atimes of the message files under `roots` reset, dirty pages flushed first. */
  async timedCmd(t: Tool, cmd: string[], roots: string[]): Promise<RunResult> {
    for (const r of roots) if (fs.existsSync(r)) resetAtimes(r);
    syncDisks();
    return timed(this.niced(cmd), { env: t.env, quiet: this.o.maxWait > 0 ? { maxWaitS: this.o.maxWait } : false });
  }

  /** An untimed mirror (setup): must succeed. */
  async untimed(t: Tool, a: string, b: string, what: string): Promise<void> {
    const r = await timed(t.cmd('mirror', a, b, false), { env: t.env, quiet: false });
    if (r.exitCode !== 0) this.fail(t, what, r);
  }

  /**
   * `readOnlySource`: a backup by ours never writes its source, so a source that had no
   * dovecot-uidlist still has none (its UIDs exist only in memory while it is read). Then A's
   * UIDs cannot be compared: A and B must have the same content per folder (body, flags,
   * keywords), both must be what they must be, and every mail on B must have a UID.
   */
  check(t: Tool, what: string, a: string, b: string, expected: Expected, o: { readOnlySource?: boolean } = {}): { a: TreeState; b: TreeState } {
    const ta = readTree(a);
    const tb = readTree(b);
    const contentOnlyA = !!o.readOnlySource && hasNoUids(ta);
    const diffs = [
      ...diffTrees(ta, tb, ['A', 'B'], t.key, 20, { contentOnlyA }),
      ...diffExpected(ta, expected, 'A', t.key),
      ...diffExpected(tb, expected, 'B', t.key),
    ];
    if (diffs.length) {
      throw new CheckFailure(
        `CORRECTNESS FAILURE: ${t.label}, ${what}: the two sides are not what they must be after the sync:\n  ${diffs.slice(0, 25).join('\n  ')}` +
          `\n(pair kept in ${path.dirname(a)})`,
      );
    }
    return { a: ta, b: tb };
  }

  private fail(t: Tool, what: string, r: RunResult): never {
    throw new Error(`${t.label}, ${what}: exit code ${r.exitCode}\n--- stderr ---\n${r.stderr.trim().slice(-3000)}`);
  }

  private logSample(what: string, t: Tool, rep: number, s: Sample): void {
    const reruns = s.runs > 1 ? ` (${s.runs} runs: exit 2 = run again)` : '';
    const busy = contaminated(s) ? `  [others used ${s.foreignCpu.toFixed(1)} CPU-s meanwhile]` : '';
    const waited = s.waitedS >= 2 ? `  (waited ${s.waitedS.toFixed(0)} s for quiet)` : '';
    log(`  ${what} #${rep} ${t.label.padEnd(7)} ${fmtS(s.wall).padStart(8)}  cpu ${fmtS(s.cpu).padStart(8)}  rss ${Math.round(s.rssKb / 1024)} MB${reruns}  ✓${busy}${waited}`);
  }

  private sample(r: RunResult): Sample {
    const { stdout: _o, stderr: _e, ...s } = r;
    return s;
  }

  private noteStderr(notes: Set<string>, t: Tool, r: RunResult): void {
    for (const line of r.stderr.split('\n')) {
      const l = line.trim();
      if (l === '') continue;
      notes.add(`${t.label} said: ${l.replace(/\/tmp\/[^\s:]+/g, '…').slice(0, 200)}`);
      if (notes.size > 6) return;
    }
  }

  // -------------------------------------------------------------- scenarios

  /** (a) / (a') / (b): initial sync from an MDA-delivered (or Dovecot-indexed) tree into nothing. */
  async initial(id: 'initial' | 'indexed' | 'backup' | 'links' | 'nofsync' | 'remote' | 'ssh', reps: number, login?: string[]): Promise<void> {
    const mode = id === 'backup' ? 'backup' : 'mirror';
    const source = id === 'indexed' ? this.corpus.primed! : this.corpus.maildir;
    const title = {
      initial: '(a) initial mirror → empty',
      indexed: '(a′) initial mirror, source already indexed by Dovecot',
      backup: '(b) initial backup → empty',
      links: '(a″) initial mirror → empty with `-o dsync_hardlinks=yes` (ours only; compare with `cp -al`)',
      nofsync: '(a‴) initial mirror → empty with `-o mail_fsync=never` (both; compare with `cp -a`)',
      remote: '(h) initial mirror → empty, B behind a pipe (a server process, as over ssh)',
      ssh: SSH_TITLE,
    }[id];
    // Given to both tools; Dovecot has no dsync_hardlinks, so its cell of (a″) stays empty.
    const extra = id === 'links' ? ['-o', 'dsync_hardlinks=yes'] : id === 'nofsync' ? ['-o', 'mail_fsync=never'] : [];
    const res: ScenarioResult = { id, title, ours: [], dovecot: id === 'links' ? { unsupported: 'no such option' } : [], notes: [] };
    const rerun: ScenarioResult = { id: 'rerun1', title: '(c0) no-change re-run, 1st after the initial mirror', ours: [], dovecot: [], notes: [] };
    const wantRerun = id === 'initial' && this.o.only.has('rerun1');
    const notes = new Set<string>();
    log(`[${this.size}] ${title}`);
    for (let rep = 1; rep <= reps; rep++) {
      for (const t of this.tools) {
        const cellSamples = res[t.id];
        if (!Array.isArray(cellSamples)) continue;
        const p = this.freshPair(t, source);
        const r =
          id === 'remote'
            ? await this.timedCmd(t, t.remoteCmd(mode, p.a, p.b), [p.a, p.b])
            : id === 'ssh'
              ? await this.timedCmd(t, t.sshCmd(mode, p.a, p.b, login!), [p.a, p.b])
              : await this.run(t, mode, p.a, p.b, false, extra);
        if (r.exitCode !== 0 && t.id === 'ours' && /not (yet )?(supported|implemented)/i.test(r.stderr)) {
          res[t.id] = { unsupported: 'not supported yet' };
          log(`  ${t.label}: ${mode} not supported yet (${r.stderr.trim().split('\n').pop()})`);
          continue;
        }
        if (r.exitCode !== 0 && t.id === 'ours' && id === 'backup') {
          // Backup is the newest mode of ours: an error exit is reported in its cell, not fatal.
          // (A wrong result with exit 0 still fails the whole benchmark below.)
          const why = r.stderr.trim().split('\n').pop() ?? '';
          res[t.id] = { unsupported: `fails: exit ${r.exitCode} (${why.replace(/^dsync: (error: )?/, '').replace(/\/tmp\/[^\s:]+/g, '…')})` };
          log(`  !!! ${t.label}: ${mode} FAILED, exit ${r.exitCode}: ${why}`);
          continue;
        }
        if (r.exitCode !== 0) this.fail(t, title, r);
        this.noteStderr(notes, t, r);
        const snaps = this.check(t, `${title} #${rep}`, p.a, p.b, this.corpusExpected, { readOnlySource: mode === 'backup' });
        if (mode === 'backup' && hasNoUids(snaps.a)) {
          notes.add(
            `${t.label} leaves the backup source untouched: a source without dovecot-uidlist gets none, so B's UIDs are ones ${t.label} assigned in memory, not UIDs the source keeps (A checked by content only)`,
          );
        }
        if (id === 'links' && rep === 1) {
          const files = [...snaps.b.folders.values()].flatMap((f) => f.messages.map((m) => path.join(p.b, f.dir, m.rel)));
          const linked = files.filter((f) => fs.statSync(f).nlink > 1).length;
          notes.add(`${linked} of ${files.length} message files on B are hard links (the rest were copied)`);
        }
        cellSamples.push(this.sample(r));
        this.logSample(id, t, rep, r);
        if (wantRerun) {
          const r2 = await this.run(t, 'mirror', p.a, p.b);
          if (r2.exitCode !== 0) this.fail(t, rerun.title, r2);
          this.check(t, `${rerun.title} #${rep}`, p.a, p.b, this.corpusExpected);
          (rerun[t.id] as Sample[]).push(this.sample(r2));
          this.logSample('rerun1', t, rep, r2);
        }
        if (id === 'initial' && rep === reps) await this.makeGolden(t);
      }
    }
    for (const t of this.tools) {
      const s = res[t.id];
      if (Array.isArray(s) && s.some((x) => x.runs > 1)) res.notes.push(`${t.label} exited 2 ("run again") and was rerun in ${s.filter((x) => x.runs > 1).length} of ${s.length} repetitions (times include the reruns)`);
    }
    res.notes.push(...contaminationNotes(res), ...[...notes].slice(0, 4));
    rerun.notes.push(...contaminationNotes(rerun));
    this.scenarios.push(res);
    if (wantRerun) this.scenarios.push(rerun);
    this.savePartial();
  }

  /**
   * (h″): the initial mirror over real ssh, to the private sshd of the test suite (as root, with
   * a key of its own; both tools log in with a copy of that key their user can read). Without
   * sshd the cells say why.
   */
  async overSsh(reps: number): Promise<void> {
    const sshd = await startSshd(10_000);
    if (typeof sshd === 'string') {
      const why = { unsupported: `no sshd: ${sshd}` };
      this.scenarios.push({ id: 'ssh', title: SSH_TITLE, ours: why, dovecot: why, notes: [] });
      log(`  (h″) skipped: ${sshd}`);
      return;
    }
    try {
      const key = path.join(this.work, 'ssh_key');
      const k = sshd.sshArgv.indexOf('-i');
      fs.copyFileSync(sshd.sshArgv[k + 1]!, key);
      fs.chownSync(key, MAIL_UID, MAIL_GID);
      fs.chmodSync(key, 0o600);
      const login = sshd.sshArgv.map((w, i) => (i === k + 1 ? key : w));
      await this.initial('ssh', reps, login);
      this.scenarios.at(-1)?.notes.unshift(
        'the server side runs under sshd, not as a child of the timed command: the CPU and RSS columns are the local side\'s, and the server\'s CPU counts as "other processes" in the notes below',
      );
    } finally {
      await sshd.stop();
    }
  }

  /** Settles the just-synced pair (one more untimed mirror) and keeps it as the golden pair. */
  async makeGolden(t: Tool): Promise<void> {
    const p = this.pair(t);
    await this.untimed(t, p.a, p.b, 'settling re-run');
    const snaps = this.check(t, 'settling re-run', p.a, p.b, this.corpusExpected);
    const gdir = path.join(this.toolDir(t), 'golden');
    this.graveyard.bury(gdir);
    fs.renameSync(p.dir, gdir);
    // Snapshot paths are relative to the folder; the pair is always copied back to p.dir.
    this.golden.set(t.id, { dir: gdir, a: snaps.a, b: snaps.b });
  }

  async ensureGoldens(): Promise<void> {
    for (const t of this.tools) {
      if (this.golden.has(t.id)) continue;
      log(`  (untimed) initial mirror for ${t.label}'s synced pair`);
      const p = this.freshPair(t, this.corpus.maildir);
      await this.untimed(t, p.a, p.b, 'initial mirror (untimed)');
      this.check(t, 'initial mirror (untimed)', p.a, p.b, this.corpusExpected);
      await this.makeGolden(t);
    }
  }

  /**
   * (c) / (d) / (e): a mirror run on a copy of the synced pair, after `plan` changed it. With
   * `next`, each run is followed by another on the same pair, timed on its own: what the first
   * left for the next run to do (a tool may verify its own changes at once, or leave that to the
   * next run).
   */
  async fromGolden(
    id: ScenarioId,
    title: string,
    plan: MutationPlan | null,
    full: boolean,
    next?: { id: ScenarioId; title: string },
    o: { remote?: boolean } = {},
  ): Promise<void> {
    await this.ensureGoldens();
    const expected = plan ? expectedAfter(this.corpusExpected, plan) : this.corpusExpected;
    const res: ScenarioResult = { id, title, ours: [], dovecot: [], notes: [] };
    const after: ScenarioResult | null = next ? { id: next.id, title: next.title, ours: [], dovecot: [], notes: [] } : null;
    const notes = new Set<string>();
    log(`[${this.size}] ${title}`);
    for (let rep = 1; rep <= this.o.reps; rep++) {
      for (const t of this.tools) {
        const p = this.goldenPair(t);
        // A copy is not the steady state: our change tokens include the uidlist's inode, which
        // a copy changes (Dovecot's index does not look at inodes). One untimed mirror on the copy
        // brings each tool back to its steady state before the changes are made.
        await this.untimed(t, p.a, p.b, 'settling mirror on the copy');
        if (plan) {
          const g = this.golden.get(t.id)!;
          applyPlan(plan, { a: p.a, b: p.b }, { a: g.a, b: g.b });
        }
        const r = o.remote ? await this.timedCmd(t, t.remoteCmd('mirror', p.a, p.b), [p.a, p.b]) : await this.run(t, 'mirror', p.a, p.b, full);
        const ended = Date.now();
        if (r.exitCode !== 0) this.fail(t, title, r);
        this.noteStderr(notes, t, r);
        this.check(t, `${title} #${rep}`, p.a, p.b, expected);
        (res[t.id] as Sample[]).push(this.sample(r));
        this.logSample(id, t, rep, r);
        if (after) {
          // Not at once: a tool may distrust directory times within a second or two of a change
          // (Dovecot's Maildir does), and runs from cron are minutes apart.
          await new Promise((resolve) => setTimeout(resolve, Math.max(0, NEXT_RUN_AFTER_MS - (Date.now() - ended))));
          const r2 = await this.run(t, 'mirror', p.a, p.b, full);
          if (r2.exitCode !== 0) this.fail(t, after.title, r2);
          this.check(t, `${after.title} #${rep}`, p.a, p.b, expected);
          (after[t.id] as Sample[]).push(this.sample(r2));
          this.logSample(after.id, t, rep, r2);
        }
      }
    }
    for (const t of this.tools) {
      const s = res[t.id] as Sample[];
      if (s.some((x) => x.runs > 1)) res.notes.push(`${t.label} exited 2 ("run again") and was rerun in ${s.filter((x) => x.runs > 1).length} of ${s.length} repetitions (times include the reruns)`);
    }
    res.notes.push(...contaminationNotes(res), ...[...notes].slice(0, 4));
    this.scenarios.push(res);
    if (after) {
      after.notes.push(...contaminationNotes(after));
      this.scenarios.push(after);
    }
    this.savePartial();
  }

  // -------------------------------------------------------------- (g) convert

  /**
   * The corpus as mbox can hold it: a `cp -al` copy in which every folder that has child folders
   * and mails of its own (Archive, Work, Work/Projects, Personal) has its mails moved into the
   * child folder CONVERT_CHILD (its Maildir++ directory renamed), subscriptions renamed alike.
   * Same messages, bytes, flags and keywords as the corpus.
   */
  mboxableSource(): { dir: string; expected: Expected; moved: string[] } {
    if (this.convertSource) return this.convertSource;
    const dir = path.join(this.work, 'convert-source');
    copyTree(this.corpus.maildir, dir, this.o.copy);
    const dirs = fs.readdirSync(dir).filter((n) => n.startsWith('.') && fs.existsSync(path.join(dir, n, 'cur')));
    const parents = dirs.filter((d) => dirs.some((c) => c.startsWith(`${d}.`)));
    for (const d of parents) fs.renameSync(path.join(dir, d), path.join(dir, `${d}.${CONVERT_CHILD}`));
    // Subscriptions: version 2 ("V\t2", empty line, names with '\t' between levels).
    const subPath = path.join(dir, 'subscriptions');
    const lines = fs.readFileSync(subPath, 'utf8').split('\n');
    if (!lines[0]?.startsWith('V\t')) throw new Error(`${subPath}: expected a version 2 subscriptions file`);
    const renamed = lines.map((l, i) => (i > 0 && l !== '' && parents.includes('.' + l.split('\t').join('.')) ? `${l}\t${CONVERT_CHILD}` : l));
    fs.writeFileSync(subPath, renamed.join('\n'));
    chownR(dir);
    const expected = expectedOf(readTree(dir));
    let n = 0;
    for (const list of expected.folders.values()) n += list.length;
    if (n !== this.corpus.manifest.count) throw new Error(`internal: the convert source has ${n} messages, the corpus ${this.corpus.manifest.count}`);
    const moved = parents.map((d) => d.slice(1).replaceAll('.', '/'));
    this.convertSource = { dir, expected, moved };
    return this.convertSource;
  }

  /**
   * Each tool's settled Maildir for the convert scenario: the mbox-able source after an initial
   * mirror by that tool and one more mirror (as (c)–(e) use; untimed), i.e. with that tool's
   * dovecot-uidlist files and its own index, as a store the tool has been serving looks. For
   * Dovecot with the convert config (separator '/'), so its list index is the one it converts with.
   */
  async ensureConvertGoldens(): Promise<void> {
    const src = this.mboxableSource();
    for (const t of this.tools) {
      if (this.convertGolden.has(t.id)) continue;
      log(`  (untimed) initial mirror + settling mirror of the mbox-able corpus for ${t.label}`);
      const p = this.freshPair(t, src.dir);
      for (const what of ['initial mirror', 'settling mirror']) {
        const r = await timed(t.locCmd('mirror', `maildir:${p.a}`, `maildir:${p.b}`), { env: t.env, quiet: false });
        if (r.exitCode !== 0) this.fail(t, `convert: ${what} (untimed)`, r);
      }
      const snaps = this.check(t, 'convert: settled source (untimed)', p.a, p.b, src.expected);
      const gdir = path.join(this.toolDir(t), 'convert-golden');
      this.graveyard.bury(gdir);
      fs.renameSync(p.a, gdir);
      this.graveyard.bury(this.pair(t).dir);
      this.convertGolden.set(t.id, { dir: gdir, snap: snaps.a });
    }
  }

  /**
   * A check of the convert scenario. Ours: a difference fails the benchmark (CheckFailure), as
   * everywhere. Dovecot: it is the reference we measure against, not the code under test, so a
   * wrong result is counted in the cell and described in the notes, and the run goes on.
   */
  private verdict(t: Tool, res: ScenarioResult, diffs: string[], what: string, kept: string, notes: Set<string>): void {
    if (diffs.length === 0) return;
    if (t.id === 'ours') {
      throw new CheckFailure(`CORRECTNESS FAILURE: ${t.label}, ${what}:\n  ${diffs.slice(0, 25).join('\n  ')}\n(files kept in ${kept})`);
    }
    res.wrong = { ...res.wrong, [t.id]: (res.wrong?.[t.id] ?? 0) + 1 };
    const short = diffs.slice(0, 6).map((d) => d.replace(/\/tmp\/[^\s:]+/g, '…'));
    notes.add(`${t.label}'s result differs from what the check expects (recorded, not fatal; ${diffs.length}${diffs.length > 20 ? '+' : ''} differences): ${short.join('; ')}${diffs.length > 6 ? '; …' : ''}`);
    log(`  !!! ${t.label}: ${what}: the result differs from what the check expects (recorded, not fatal):\n    ${diffs.slice(0, 10).join('\n    ')}`);
  }

  /** (g): Maildir -> mbox (backup into a new mbox), then that mbox -> a new Maildir. */
  async convert(): Promise<void> {
    const src = this.mboxableSource();
    await this.ensureConvertGoldens();
    const toMbox: ScenarioResult = { id: 'convert-mbox', title: '(g) convert Maildir → mbox: backup into a new mbox', ours: [], dovecot: [], notes: [] };
    const toMaildir: ScenarioResult = { id: 'convert-maildir', title: '(g) convert back mbox → Maildir: backup of that mbox into a new Maildir', ours: [], dovecot: [], notes: [] };
    const notes1 = new Set<string>();
    const notes2 = new Set<string>();
    log(`[${this.size}] (g) convert Maildir → mbox → Maildir`);
    for (let rep = 1; rep <= this.o.reps; rep++) {
      for (const t of this.tools) {
        if (!Array.isArray(toMbox[t.id])) continue; // failed in an earlier repetition
        const g = this.convertGolden.get(t.id)!;
        const dir = this.pair(t).dir;
        this.graveyard.bury(dir);
        fs.mkdirSync(dir);
        fs.chownSync(dir, MAIL_UID, MAIL_GID);
        const a = path.join(dir, 'a');
        const m = path.join(dir, 'mbox');
        const c = path.join(dir, 'c');
        copyTree(g.dir, a, this.o.copy);
        const steps = [
          { res: toMbox, notes: notes1, id: 'convert→mbox', cmd: t.locCmd('backup', `maildir:${a}`, mboxLocation(m)), roots: [a] },
          { res: toMaildir, notes: notes2, id: 'convert→maildir', cmd: t.locCmd('backup', mboxLocation(m), `maildir:${c}`), roots: [] },
        ];
        for (const [i, step] of steps.entries()) {
          const r = await this.timedCmd(t, step.cmd, step.roots);
          if (r.exitCode !== 0) {
            if (t.id === 'ours') this.fail(t, step.res.title, r);
            const why = (r.stderr.trim().split('\n').pop() ?? '').replace(/\/tmp\/[^\s:]+/g, '…');
            log(`  !!! ${t.label}: ${step.res.title}: exit ${r.exitCode}: ${why}`);
            for (const res of steps.slice(i).map((s) => s.res)) res[t.id] = { unsupported: `fails: exit ${r.exitCode} (${why.slice(0, 150)})` };
            break;
          }
          this.noteStderr(step.notes, t, r);
          let diffs: string[];
          if (i === 0) {
            // The source is unchanged; the mbox holds the same folders, subscriptions, UIDVALIDITY
            // and (UID, flags, keywords, body) per folder as the source, and the corpus content.
            const ta = readTree(a);
            const { tree: tm, problems } = readMboxTree(m);
            diffs = [
              ...diffTrees(g.snap, ta, ['the source before', 'the source after'], 'sha'),
              ...problems,
              ...mergeDiffs(diffTrees(ta, tm, ['A (Maildir)', 'M (mbox)'], t.key), diffExpected(tm, src.expected, 'M (mbox)', t.key), { 'M (mbox)': tm }),
            ];
          } else {
            // Back in Maildir: everything as in the original source, UIDs and UIDVALIDITY included.
            const tc = readTree(c);
            diffs = mergeDiffs(diffTrees(g.snap, tc, ['A (original Maildir)', 'C (Maildir from the mbox)'], t.key), diffExpected(tc, src.expected, 'C (Maildir from the mbox)', t.key), {
              'C (Maildir from the mbox)': tc,
            });
          }
          this.verdict(t, step.res, diffs, `${step.res.title} #${rep}`, dir, step.notes);
          (step.res[t.id] as Sample[]).push(this.sample(r));
          this.logSample(step.id, t, rep, r);
        }
      }
    }
    const layout = `mbox layout \`mbox:DIR:INBOX=DIR/inbox\``;
    toMbox.notes.push(
      `source: each tool's own settled Maildir of the corpus (after its initial mirror and one more mirror: its dovecot-uidlist files and its own index), with the mails of ${src.moved.join(', ')} moved into a child folder ${CONVERT_CHILD} (an mbox mailbox cannot have children); ${layout}; Dovecot with \`namespace inbox { separator = / }\` (it refuses different separators otherwise)`,
    );
    for (const res of [toMbox, toMaildir]) {
      for (const t of this.tools) {
        const s = res[t.id];
        if (Array.isArray(s) && s.some((x) => x.runs > 1)) res.notes.push(`${t.label} exited 2 ("run again") and was rerun in ${s.filter((x) => x.runs > 1).length} of ${s.length} repetitions (times include the reruns)`);
      }
    }
    toMbox.notes.push(...contaminationNotes(toMbox), ...[...notes1].slice(0, 4));
    toMaildir.notes.push(...contaminationNotes(toMaildir), ...[...notes2].slice(0, 4));
    this.scenarios.push(toMbox, toMaildir);
    this.savePartial();
  }

  /** (f): what copying the same bytes costs without any sync logic. */
  async physicalFloors(): Promise<void> {
    log(`[${this.size}] (f) physical floors`);
    const dst = path.join(this.work, 'floor', 'copy');
    fs.mkdirSync(path.dirname(dst), { recursive: true });
    const src = this.corpus.maildir;
    const floors: { id: string; title: string; cmd: string[] }[] = [
      { id: 'cp-a', title: '(f) `cp -a` (page cache only, nothing made durable)', cmd: ['cp', '-a', src, dst] },
      { id: 'cp-a-sync', title: '(f) `cp -a` + `sync -f` (copy made durable)', cmd: ['sh', '-c', 'cp -a "$1" "$2" && sync -f "$2"', 'sh', src, dst] },
      { id: 'cp-al', title: '(f) `cp -al` (hard links, no data copied)', cmd: ['cp', '-al', src, dst] },
    ];
    for (const f of floors) {
      const samples: Sample[] = [];
      for (let rep = 1; rep <= this.o.reps; rep++) {
        this.graveyard.bury(dst);
        syncDisks();
        const r = await timed(this.niced(f.cmd), { quiet: this.o.maxWait > 0 ? { maxWaitS: this.o.maxWait } : false });
        if (r.exitCode !== 0) throw new Error(`${f.title}: exit ${r.exitCode}: ${r.stderr}`);
        samples.push(this.sample(r));
        log(`  ${f.id.padEnd(10)} #${rep} ${fmtS(r.wall).padStart(8)}  cpu ${fmtS(r.cpu)}`);
      }
      this.floors.push({ id: f.id, title: f.title, samples });
    }
    this.graveyard.bury(dst);
  }

  async runAll(): Promise<void> {
    const only = this.o.only;
    const initialReps = this.o.initialReps ?? this.o.reps;
    if (only.has('initial') || only.has('rerun1')) await this.initial('initial', initialReps);
    if (only.has('indexed')) await this.initial('indexed', this.o.indexedReps);
    if (only.has('backup')) await this.initial('backup', initialReps);
    if (only.has('links')) await this.initial('links', initialReps);
    if (only.has('nofsync')) await this.initial('nofsync', initialReps);
    if (only.has('remote')) await this.initial('remote', initialReps);
    if (only.has('ssh')) await this.overSsh(initialReps);
    if (only.has('nochange')) await this.fromGolden('nochange', '(c) no-change re-run (steady state)', null, false);
    if (only.has('nochange-full')) await this.fromGolden('nochange-full', '(c) no-change re-run with `-f` (full)', null, true);
    if (only.has('incremental') || only.has('incremental-next')) {
      const plan = planIncremental(this.corpusExpected, this.corpus.maildir, this.o.seed);
      const title = `(d) incremental: ${plan.reflag.length} re-flagged + ${plan.deliver.length} new on A, ${plan.expunge.length} expunged on B`;
      const next = only.has('incremental-next') ? { id: 'incremental-next' as const, title: `(d′) the next run after (d), ${NEXT_RUN_AFTER_MS / 1000} s later, nothing changed since` } : undefined;
      await this.fromGolden('incremental', title, plan, false, next);
    }
    if (only.has('remote-incremental')) {
      const plan = planIncremental(this.corpusExpected, this.corpus.maildir, this.o.seed);
      await this.fromGolden('remote-incremental', '(h′) incremental as (d), B behind a pipe (a server process, as over ssh)', plan, false, undefined, { remote: true });
    }
    if (only.has('conflicts')) {
      const plan = planConflicts(this.corpusExpected, this.o.seed);
      const na = plan.deliver.filter((d) => d.side === 'a').length;
      const nb = plan.deliver.length - na;
      const title = `(e) conflicts: ${na} new on A + ${nb} new on B in the same 5 folders, ${plan.reflag.length / 2} mails flagged on both sides`;
      await this.fromGolden('conflicts', title, plan, false);
    }
    if (only.has('convert')) await this.convert();
    if (only.has('floors')) await this.physicalFloors();
    // The runs shared the corpus's message inodes (copy mode link): make sure none was written to.
    const d = diffExpected(readTree(this.corpus.maildir, { cache: false }), this.corpusExpected, 'corpus', 'sha');
    if (d.length) throw new CheckFailure(`CORRECTNESS FAILURE: the corpus changed during the benchmark (a message file written in place?):\n  ${d.join('\n  ')}`);
  }

  /** The results so far, in case a later scenario fails: bench/results/<size>-partial.json. */
  savePartial(): void {
    const partial = { size: this.size, partial: true, scenarios: this.scenarios, floors: this.floors };
    fs.writeFileSync(path.join(RESULTS_DIR, `${this.size}-partial.json`), JSON.stringify(partial, null, 2) + '\n');
  }

  cleanup(): void {
    if (this.o.keep) log(`work directory kept: ${this.work}`);
    else rmrf(this.work);
  }
}

async function main(): Promise<number> {
  const o = parseOptions(process.argv.slice(2));
  if (typeof process.getuid !== 'function' || process.getuid() !== 0) {
    throw new Error('the benchmark must run as root (Dovecot drops to mail_uid 65534, and both tools run as that user)');
  }
  if (!fs.existsSync(GNU_TIME)) throw new Error(`${GNU_TIME} is missing: apt-get install time`);
  for (const c of ['doveadm', 'setpriv']) sh('sh', ['-c', `command -v ${c}`]);
  fs.mkdirSync(RESULTS_DIR, { recursive: true });
  const dv = dovecotVersion();
  // Now, not per size: `npm run bench` has just built dist/ from this checkout.
  const build = buildLabel(REPO);
  // Work directories are deleted after the last size, not between sizes: the mass deletion would
  // slow the next size's first runs (see Graveyard).
  const finished: SizeBench[] = [];
  try {
    await benchSizes(o, dv, build, finished);
  } finally {
    for (const b of finished) b.cleanup();
  }
  if (o.md) {
    writeBenchmarksMd(MD_PATH, RESULTS_DIR);
    log(`wrote ${path.relative(process.cwd(), MD_PATH) || MD_PATH} and bench/results/*.json`);
  }
  return 0;
}

async function benchSizes(o: Options, dv: string, build: string, finished: SizeBench[]): Promise<void> {
  for (const size of o.sizes) {
    const t0 = performance.now();
    const b = new SizeBench(size, o);
    let ok = false;
    try {
      b.prepare();
      const machine = describeMachine(b.work, dv, build);
      await b.runAll();
      const res: SizeResults = {
        size,
        date: new Date().toISOString().replace(/\.\d+Z$/, 'Z'),
        durationS: (performance.now() - t0) / 1000,
        reps: o.reps,
        seed: o.seed,
        copy: o.copy,
        nice: o.nice,
        machine,
        corpus: { messages: b.corpus.manifest.count, bytes: b.corpus.manifest.totalBytes, folders: b.corpus.manifest.folders.length, dir: b.corpus.dir },
        scenarios: b.scenarios,
        floors: b.floors,
      };
      // A run of only some scenarios must not replace the full results BENCHMARKS.md is made from.
      const complete = SCENARIOS.every((x) => o.only.has(x)) && o.tools.size === 2;
      fs.writeFileSync(path.join(RESULTS_DIR, complete ? `${size}.json` : `${size}-partial.json`), JSON.stringify(res, null, 2) + '\n');
      if (complete) fs.rmSync(path.join(RESULTS_DIR, `${size}-partial.json`), { force: true });
      console.log(`\n${renderSize(res)}`);
      ok = true;
    } finally {
      if (ok) finished.push(b);
      else log(`work directory kept for inspection: ${b.work}`);
    }
  }
}

main().then(
  (code) => process.exit(code),
  (err) => {
    if (err instanceof CheckFailure) {
      log(`\n${'!'.repeat(78)}\n${err.message}\n${'!'.repeat(78)}`);
    } else {
      log(`bench failed: ${err instanceof Error ? err.message : String(err)}`);
    }
    process.exit(1);
  },
);
