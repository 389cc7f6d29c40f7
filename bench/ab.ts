// A/B of builds of our dsync on the same inputs: is a change faster? Each build runs the same
// scenario on fresh copies of one settled pair, the builds alternating (the first of each round
// rotates), every result checked. Ours only; the comparison with Dovecot is run.ts's job.
//
//   node dist/bench/ab.js [--size 10k] [--scenario incremental] [--reps 7] BUILD...
//   node dist/bench/ab.js [--size 10k] [--scenario conflicts] --prepare [--work DIR] BUILD
//
// BUILD: a frozen build (a directory holding bin/dsync, as freezeBuild makes) or `.` for this
// checkout's current dist/ (frozen first, so a rebuild during the run cannot change it).
// `--freeze DIR` only freezes this checkout's dist/ into DIR and exits.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ensureCorpus, corpusRoot, MAIL_GID, MAIL_UID, DEFAULT_SEED, SIZES, type SizeName } from './corpus.js';
import { copyTree, freezeBuild, Graveyard, resetAtimes, rmrf, syncDisks, timed, type RunResult } from './lib/exec.js';
import { diffExpected, diffTrees, expectedOf, readTree, type Expected } from './lib/snapshot.js';
import { applyPlan, expectedAfter, planConflicts, planIncremental, type MutationPlan } from './lib/mutate.js';
import { median } from './lib/report.js';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const SCENARIOS = ['incremental', 'conflicts', 'nochange', 'full'] as const;
type Scenario = (typeof SCENARIOS)[number];

const USAGE = `usage: node dist/bench/ab.js [options] BUILD...
  --size ${Object.keys(SIZES).join('|')}   corpus size (default 10k)
  --scenario S      ${SCENARIOS.join(', ')} (default incremental)
  --reps N          runs per build (default 7)
  --no-check        skip the correctness check after each run (it re-hashes both sides)
  --keep            keep the work directory (deleting it makes creating files slower for minutes
                    on some file systems, see bench/README.md, "Method"; delete it later)
  --freeze DIR      only freeze this checkout's dist/ into DIR (then pass DIR as a BUILD)
  --prepare         only prepare one pair for the scenario (settled by the first build, plan
                    applied), keep it and print how to run it by hand (strace, perf...)
  --work DIR        with --prepare: reuse the work directory of an earlier --prepare (its
                    settled golden pair) to prepare a fresh pair for another run
BUILD: a directory holding bin/dsync (a frozen build), or . for this checkout's dist/`;

interface Options {
  size: SizeName;
  scenario: Scenario;
  reps: number;
  check: boolean;
  keep: boolean;
  prepare: boolean;
  work?: string;
  builds: string[];
}

function parse(argv: string[]): Options | null {
  const o: Options = { size: '10k', scenario: 'incremental', reps: 7, check: true, keep: false, prepare: false, builds: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const value = (): string => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value\n${USAGE}`);
      return v;
    };
    if (a === '--size') {
      const v = value();
      if (!(v in SIZES)) throw new Error(`--size: one of ${Object.keys(SIZES).join(', ')}`);
      o.size = v as SizeName;
    } else if (a === '--scenario') {
      const v = value();
      if (!(SCENARIOS as readonly string[]).includes(v)) throw new Error(`--scenario: one of ${SCENARIOS.join(', ')}`);
      o.scenario = v as Scenario;
    } else if (a === '--reps') o.reps = Math.max(1, Number(value()) | 0);
    else if (a === '--no-check') o.check = false;
    else if (a === '--keep') o.keep = true;
    else if (a === '--prepare') o.prepare = true;
    else if (a === '--work') o.work = path.resolve(value());
    else if (a === '--freeze') {
      const dest = path.resolve(value());
      console.log(freezeBuild(REPO, dest));
      return null;
    } else if (a.startsWith('-')) throw new Error(`unknown option ${a}\n${USAGE}`);
    else o.builds.push(a);
  }
  if (o.builds.length === 0) throw new Error(USAGE);
  if (o.work && !o.prepare) throw new Error('--work goes with --prepare');
  return o;
}

const log = (s: string): void => void process.stderr.write(`${s}\n`);
const ms = (s: number): string => `${(s * 1000).toFixed(0)} ms`;

async function main(): Promise<void> {
  const o = parse(process.argv.slice(2));
  if (!o) return;
  if (process.getuid?.() !== 0) throw new Error('run as root (the tool runs as uid 65534, as in the benchmark)');
  const corpus = ensureCorpus(o.size, DEFAULT_SEED, { log });
  const reuse = o.work !== undefined;
  const work = o.work ?? fs.mkdtempSync(path.join(corpusRoot(), `ab-${o.size}-`));
  const home = path.join(work, 'home');
  if (!reuse) {
    fs.chmodSync(work, 0o755);
    fs.mkdirSync(home);
    fs.chownSync(home, MAIL_UID, MAIL_GID);
  } else if (!fs.existsSync(path.join(work, 'golden'))) throw new Error(`--work ${work}: no golden pair there (made by --prepare)`);
  const bins = o.builds.map((b, i) => (b === '.' && !(reuse && fs.existsSync(path.join(work, `build-${i}`))) ? freezeBuild(REPO, path.join(work, `build-${i}`)) : b === '.' ? path.join(work, `build-${i}`, 'bin', 'dsync') : path.join(path.resolve(b), 'bin', 'dsync')));
  bins.forEach((b, i) => {
    if (!fs.existsSync(b)) throw new Error(`${b}: no such file (a BUILD is a directory holding bin/dsync)`);
    // What bin/dsync loads (bundle or modules) matters for start-up: say it.
    const r = spawnSync(b, ['--help'], { env: { ...process.env, DSYNC_LOAD_TRACE: '1' }, encoding: 'utf8' });
    log(`[ab] build ${i}: ${b}: ${(r.stderr.split('\n')[0] ?? '').replace(/^dsync: /, '')}`);
  });
  const env = { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: home, LANG: 'C' };
  // Every run works on the same paths (our index remembers them).
  const run = path.join(work, 'run');
  const a = path.join(run, 'a');
  const b = path.join(run, 'b');
  const golden = path.join(work, 'golden');
  // Copies done with are deleted at the end, not before the next timed run (see Graveyard).
  const graveyard = new Graveyard(path.join(work, 'graveyard'));
  const dsync = (bin: string, full: boolean): string[] => [
    'nice', '-n', '-10', 'setpriv', `--reuid=${MAIL_UID}`, `--regid=${MAIL_GID}`, '--clear-groups',
    bin, ...(full ? ['-f'] : []), '-o', `mail_location=maildir:${a}`, 'mirror', `maildir:${b}`,
  ];
  const untimed = async (bin: string, what: string): Promise<void> => {
    const r = await timed(dsync(bin, false), { env, quiet: false, reruns: 0 });
    if (r.exitCode !== 0) throw new Error(`${what}: exit ${r.exitCode}: ${r.stderr}`);
  };

  // The settled pair: an initial mirror by the first build, then one more run >2 s later so that
  // every change token is trusted (a steady state), kept as the golden copy.
  if (!reuse) {
    fs.mkdirSync(run);
    fs.chownSync(run, MAIL_UID, MAIL_GID);
    copyTree(corpus.maildir, a);
    log(`[ab] settling a ${o.size} pair with ${bins[0]}`);
    await untimed(bins[0]!, 'initial mirror');
    await new Promise((r) => setTimeout(r, 2500));
    await untimed(bins[0]!, 'settling run');
    await new Promise((r) => setTimeout(r, 2500));
    copyTree(run, golden);
  }

  const base = expectedOf(readTree(corpus.maildir));
  let plan: MutationPlan | null = null;
  let expected: Expected = base;
  if (o.scenario === 'incremental') plan = planIncremental(base, corpus.maildir, DEFAULT_SEED);
  else if (o.scenario === 'conflicts') plan = planConflicts(base, DEFAULT_SEED);
  if (plan) expected = expectedAfter(base, plan);
  // The copies have the golden pair's file names, so one snapshot locates the plan's targets.
  const snaps = plan ? { a: readTree(path.join(golden, 'a'), { hash: true }), b: readTree(path.join(golden, 'b'), { hash: true }) } : null;

  if (o.prepare) {
    // Prepared as for a timed run, at the same paths (our index remembers them; a copy of a
    // prepared pair would not do: our change tokens include the uidlist's inode).
    graveyard.bury(run);
    copyTree(golden, run);
    await untimed(bins[0]!, 'settling run on the copy');
    if (plan && snaps) applyPlan(plan, { a, b }, snaps);
    resetAtimes(a);
    resetAtimes(b);
    syncDisks();
    const cmd = dsync(bins[0]!, o.scenario === 'full').map((x) => (/^[\w@%+=:,./-]+$/.test(x) ? x : `'${x}'`)).join(' ');
    console.log(
      `prepared the ${o.scenario} pair in ${run}; run it once with:\n  env -i PATH=$PATH HOME=${home} LANG=C ${cmd}\n` +
        `prepare it again with:\n  node dist/bench/ab.js --size ${o.size} --scenario ${o.scenario} --prepare --work ${work} ${o.builds[0]}\nremove ${work} when done`,
    );
    return;
  }

  const samples: RunResult[][] = bins.map(() => []);
  for (let rep = 0; rep < o.reps; rep++) {
    for (let k = 0; k < bins.length; k++) {
      const i = (rep + k) % bins.length;
      graveyard.bury(run);
      copyTree(golden, run);
      // A copy is not the steady state (our change tokens include the uidlist's inode): one
      // untimed run of the build under test settles it, as in run.ts.
      await untimed(bins[i]!, 'settling run on the copy');
      if (plan && snaps) applyPlan(plan, { a, b }, snaps);
      resetAtimes(a);
      resetAtimes(b);
      syncDisks();
      const r = await timed(dsync(bins[i]!, o.scenario === 'full'), { env, reruns: 0 });
      if (r.exitCode !== 0) throw new Error(`build ${i} (${bins[i]}): exit ${r.exitCode}: ${r.stderr}`);
      if (o.check) {
        const ta = readTree(a);
        const tb = readTree(b);
        const d = [...diffTrees(ta, tb), ...diffExpected(ta, expected, 'A'), ...diffExpected(tb, expected, 'B')];
        if (d.length) throw new Error(`build ${i} (${bins[i]}): wrong result (pair kept in ${run}):\n${d.slice(0, 20).join('\n')}`);
      }
      samples[i]!.push(r);
      const busy = r.foreignCpu > 0.1 ? `  [others used ${r.foreignCpu.toFixed(1)} CPU-s]` : '';
      log(`  #${rep + 1} build ${i}: ${ms(r.wall)}  cpu ${ms(r.cpu)}  rss ${Math.round(r.rssKb / 1024)} MB${busy}`);
    }
  }

  const firstMedian = median(samples[0]!.map((s) => s.wall));
  console.log(`\n${o.scenario}, ${o.size}, ${o.reps} runs per build (median [min–max]):`);
  bins.forEach((bin, i) => {
    const w = samples[i]!.map((s) => s.wall);
    const cpu = median(samples[i]!.map((s) => s.cpu));
    const rss = median(samples[i]!.map((s) => s.rssKb)) / 1024;
    const ratio = median(w) / firstMedian;
    console.log(
      `  build ${i}: wall ${ms(median(w))} [${ms(Math.min(...w))}–${ms(Math.max(...w))}]  cpu ${ms(cpu)}  rss ${rss.toFixed(0)} MB  ` +
        `${i === 0 ? '' : `${ratio.toFixed(2)}× build 0  `}${bin}`,
    );
  });
  if (o.keep) console.log(`kept ${work}: remove it when done`);
  else rmrf(work);
}

main().catch((e) => {
  process.stderr.write(`ab failed: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(1);
});
