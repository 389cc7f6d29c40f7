// CPU profiles of our dsync on the benchmark corpus: the initial mirror, the first re-run after
// it and a steady-state no-change re-run, each under `node --cpu-prof`, summarised as self time
// per function and per category (fs, SQLite, hashing, our JS, GC, idle = waiting for I/O).
// With --strace also a syscall summary (`strace -f -c`, which slows the run down a lot).
//
//   node dist/bench/profile.js [--size 10k] [--seed N] [--strace] [--keep] [--out FILE]
//
// Output: Markdown on stdout and in bench/results/profile-<size>.md; the raw .cpuprofile files
// stay in the work directory with --keep (open them in Chrome DevTools / speedscope).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { spawnSync } from 'node:child_process';
import { ensureCorpus, corpusRoot, DEFAULT_SEED, MAIL_GID, MAIL_UID, SIZES, type SizeName } from './corpus.js';
import { copyTree, freezeBuild, rmrf, syncDisks, timed, type Sample } from './lib/exec.js';
import { diffExpected, diffTrees, expectedOf, readTree, type Expected } from './lib/snapshot.js';
import { applyPlan, expectedAfter, planConflicts, planIncremental } from './lib/mutate.js';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
  columnNumber: number;
}
interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
}
interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

function shortUrl(url: string): string {
  if (url === '') return '(native)';
  const m = /\/dist\/(src\/.+)\.js$/.exec(url);
  if (m) return `${m[1]}.ts`;
  const n = /node_modules\/(.+)$/.exec(url);
  if (n) return n[1]!;
  return url.replace(/^file:\/\//, '');
}

const SQLITE_NATIVE = new Set(['run', 'all', 'get', 'iterate', 'exec', 'prepare', 'pragma', 'transaction', 'Database']);
const FS_NATIVE = new Set(['open', 'close', 'read', 'write', 'writeString', 'writeBuffer', 'fsync', 'fdatasync', 'rename', 'link', 'unlink', 'stat', 'lstat', 'fstat', 'readdir', 'mkdir', 'utimes', 'futimes', 'chown', 'fchown', 'readFileUtf8', 'realpath', 'access', 'existsSync', 'internalModuleStat']);

/** What a sample was doing, from its stack (leaf first). */
function category(stack: CallFrame[]): string {
  const leaf = stack[0]!;
  if (leaf.functionName === '(idle)') return 'idle (event loop waiting: I/O in the thread pool, fsync, child)';
  if (leaf.functionName === '(garbage collector)') return 'garbage collector';
  if (leaf.functionName === '(program)') return 'V8/native (program)';
  for (let i = 0; i < stack.length; i++) {
    const f = stack[i]!;
    const u = f.url;
    if (u.includes('/node_modules/better-sqlite3/') || (u === '' && i === 0 && SQLITE_NATIVE.has(f.functionName))) return 'SQLite (better-sqlite3)';
    if (u === '' && i === 0 && FS_NATIVE.has(f.functionName)) return 'fs syscalls (sync + binding)';
    if (u.startsWith('node:internal/fs') || u === 'node:fs' || u.startsWith('node:fs')) return 'fs (node:fs JS + syscalls)';
    if (u.includes('crypto')) return 'hashing/crypto';
    if (u.startsWith('node:internal/streams') || u.startsWith('node:stream')) return 'streams';
    if (u.startsWith('node:internal/modules') || u.startsWith('node:internal/main')) return 'module loading/startup';
    if (u.includes('/dist/src/')) return `our JS: ${shortUrl(u)}`;
  }
  return 'other (node internals)';
}

interface Summary {
  totalMs: number;
  categories: [string, number][];
  self: { name: string; file: string; line: number; ms: number }[];
  inclusive: { name: string; file: string; ms: number }[];
}

export function summarize(p: CpuProfile): Summary {
  const byId = new Map<number, ProfileNode>();
  const parent = new Map<number, number>();
  for (const n of p.nodes) {
    byId.set(n.id, n);
    for (const c of n.children ?? []) parent.set(c, n.id);
  }
  const stackOf = new Map<number, CallFrame[]>();
  const stack = (id: number): CallFrame[] => {
    let s = stackOf.get(id);
    if (s) return s;
    s = [];
    for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) s.push(byId.get(cur)!.callFrame);
    stackOf.set(id, s);
    return s;
  };
  const self = new Map<string, { name: string; file: string; line: number; ms: number }>();
  const incl = new Map<string, { name: string; file: string; ms: number }>();
  const cats = new Map<string, number>();
  let total = 0;
  for (let i = 0; i < p.samples.length; i++) {
    const dt = (p.timeDeltas[i + 1] ?? p.timeDeltas[i] ?? 0) / 1000; // the delta after a sample is its duration
    const st = stack(p.samples[i]!);
    total += dt;
    const leaf = st[0]!;
    const key = `${leaf.functionName}|${leaf.url}|${leaf.lineNumber}`;
    const e = self.get(key) ?? { name: leaf.functionName || '(anonymous)', file: shortUrl(leaf.url), line: leaf.lineNumber + 1, ms: 0 };
    e.ms += dt;
    self.set(key, e);
    const c = category(st);
    cats.set(c, (cats.get(c) ?? 0) + dt);
    const seen = new Set<string>();
    for (const f of st) {
      if (!f.url.includes('/dist/src/')) continue;
      const k = `${f.functionName}|${f.url}`;
      if (seen.has(k)) continue;
      seen.add(k);
      const ie = incl.get(k) ?? { name: f.functionName || '(anonymous)', file: shortUrl(f.url), ms: 0 };
      ie.ms += dt;
      incl.set(k, ie);
    }
  }
  return {
    totalMs: total,
    categories: [...cats].sort((a, b) => b[1] - a[1]),
    self: [...self.values()].sort((a, b) => b.ms - a.ms).slice(0, 25),
    inclusive: [...incl.values()].sort((a, b) => b.ms - a.ms).slice(0, 15),
  };
}

function renderSummary(title: string, s: Summary, sample: Sample): string {
  const pct = (ms: number) => `${((ms / s.totalMs) * 100).toFixed(1)}%`;
  const out: string[] = [];
  out.push(`### ${title}`, '');
  out.push(
    `wall ${sample.wall.toFixed(2)} s, CPU ${sample.cpu.toFixed(2)} s (user ${sample.user.toFixed(2)}, sys ${sample.sys.toFixed(2)}), peak RSS ${Math.round(sample.rssKb / 1024)} MB; profiled main-thread time ${(s.totalMs / 1000).toFixed(2)} s`,
    '',
  );
  out.push('| Category (main thread) | ms | share |', '|---|---:|---:|');
  for (const [c, ms] of s.categories.slice(0, 14)) out.push(`| ${c} | ${ms.toFixed(0)} | ${pct(ms)} |`);
  out.push('', '| Top self time | file:line | ms | share |', '|---|---|---:|---:|');
  for (const f of s.self) out.push(`| \`${f.name}\` | ${f.file}:${f.line} | ${f.ms.toFixed(0)} | ${pct(f.ms)} |`);
  out.push('', '| Our functions, inclusive time | file | ms | share |', '|---|---|---:|---:|');
  for (const f of s.inclusive) out.push(`| \`${f.name}\` | ${f.file} | ${f.ms.toFixed(0)} | ${pct(f.ms)} |`);
  out.push('');
  return out.join('\n');
}

function straceSummary(file: string, top = 15): string {
  const lines = fs.readFileSync(file, 'utf8').split('\n');
  const rows = lines.filter((l) => /^\s*\d+\.\d+\s+/.test(l)).slice(0, top);
  const total = lines.find((l) => /\btotal\s*$/.test(l)) ?? '';
  return ['```', lines.slice(0, 2).join('\n'), ...rows, total, '```', ''].join('\n');
}

async function main(): Promise<void> {
  let size: SizeName = '10k';
  let seed = DEFAULT_SEED;
  let strace = false;
  let keep = false;
  let out: string | undefined;
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--size') {
      const v = argv[++i] ?? '';
      if (!(v in SIZES)) throw new Error(`--size: ${Object.keys(SIZES).join(', ')}`);
      size = v as SizeName;
    } else if (a === '--seed') seed = Number(argv[++i]);
    else if (a === '--strace') strace = true;
    else if (a === '--keep') keep = true;
    else if (a === '--out') out = argv[++i];
    else throw new Error(`unknown argument ${a}`);
  }
  if (process.getuid?.() !== 0) throw new Error('run as root (the tool runs as uid 65534 like in the benchmark)');
  const corpus = ensureCorpus(size, seed, { log: (s) => process.stderr.write(`${s}\n`) });
  const work = fs.mkdtempSync(path.join(corpusRoot(), `profile-${size}-`));
  fs.chmodSync(work, 0o755);
  const profDir = path.join(work, 'profiles');
  for (const d of [profDir, path.join(work, 'pair'), path.join(work, 'home')]) {
    fs.mkdirSync(d);
    fs.chownSync(d, MAIL_UID, MAIL_GID);
  }
  const BIN = freezeBuild(REPO, path.join(work, 'build'));
  const a = path.join(work, 'pair', 'a');
  const b = path.join(work, 'pair', 'b');
  copyTree(corpus.maildir, a);
  // The compiled modules rather than the one-file bundle, so that samples name our source files
  // (module loading then costs ~20 ms more than in a normal run).
  const env = { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: path.join(work, 'home'), LANG: 'C', DSYNC_NO_BUNDLE: '1' };
  const asMailUser = ['setpriv', `--reuid=${MAIL_UID}`, `--regid=${MAIL_GID}`, '--clear-groups'];
  const dsyncArgs = ['-o', `mail_location=maildir:${a}`, 'mirror', `maildir:${b}`];
  const parts: string[] = [];
  parts.push(`## Profile of our dsync, ${size} corpus (${corpus.manifest.count} messages, ${(corpus.manifest.totalBytes / 1e6).toFixed(0)} MB)`, '');
  const head = spawnSync('git', ['-C', REPO, 'rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).stdout.trim();
  const dirty = spawnSync('git', ['-C', REPO, 'status', '--porcelain', '--', 'src'], { encoding: 'utf8' }).stdout.trim() !== '';
  parts.push(`${new Date().toISOString()} · dsync ${head || '?'}${dirty ? ' (+ uncommitted changes in src/)' : ''} · \`node --cpu-prof\` (main thread only: thread-pool I/O shows up as idle; modules of dist/src, not the bundle) · regenerate: \`node dist/bench/profile.js --size ${size}${strace ? ' --strace' : ''}\``, '');

  const corpusExpected = expectedOf(readTree(corpus.maildir));
  const incremental = planIncremental(corpusExpected, corpus.maildir, seed);
  const afterIncremental = expectedAfter(corpusExpected, incremental);
  // On the pair as the incremental run left it.
  const conflicts = planConflicts(afterIncremental, seed);
  const settle = async (): Promise<void> => {
    await new Promise((r) => setTimeout(r, 2500));
    const r = await timed([...asMailUser, BIN, ...dsyncArgs], { env, reruns: 0, quiet: false });
    if (r.exitCode !== 0) throw new Error(`settling run: exit ${r.exitCode}: ${r.stderr}`);
    await new Promise((res) => setTimeout(res, 2500));
  };
  const runs: { id: string; title: string; full?: boolean; before?: () => void | Promise<void>; expected: Expected }[] = [
    { id: 'initial', title: 'Initial mirror → empty', expected: corpusExpected },
    { id: 'rerun1', title: 'No-change re-run, 1st after the initial mirror', expected: corpusExpected },
    // Steady state: our change tokens ignore directories modified in the last 2 s, so one more
    // run (> 2 s after the last change) settles the tokens first.
    { id: 'nochange', title: 'No-change re-run, steady state', expected: corpusExpected, before: settle },
    { id: 'full', title: 'No-change re-run with -f', full: true, expected: corpusExpected },
    {
      id: 'incremental',
      title: `Incremental: ${incremental.reflag.length} re-flagged + ${incremental.deliver.length} new on A, ${incremental.expunge.length} expunged on B`,
      before: () => applyPlan(incremental, { a, b }, { a: readTree(a), b: readTree(b) }),
      expected: afterIncremental,
    },
    {
      id: 'conflicts',
      title: `Conflicts: ${conflicts.deliver.filter((d) => d.side === 'a').length} new on A + ${conflicts.deliver.filter((d) => d.side === 'b').length} new on B in the same folders, ${conflicts.reflag.length / 2} mails flagged on both sides`,
      before: () => applyPlan(conflicts, { a, b }, { a: readTree(a), b: readTree(b) }),
      expected: expectedAfter(afterIncremental, conflicts),
    },
  ];
  for (const r of runs) {
    await r.before?.();
    syncDisks();
    const args = r.full ? ['-f', ...dsyncArgs] : dsyncArgs;
    const res = await timed([...asMailUser, process.execPath, '--max-semi-space-size=4', '--expose-gc', '--cpu-prof', `--cpu-prof-dir=${profDir}`, `--cpu-prof-name=${r.id}.cpuprofile`, BIN, ...args], { env, reruns: 0 });
    if (res.exitCode !== 0) throw new Error(`${r.title}: exit ${res.exitCode}: ${res.stderr}`);
    const ta = readTree(a);
    const tb = readTree(b);
    const d = [...diffTrees(ta, tb), ...diffExpected(ta, r.expected, 'A'), ...diffExpected(tb, r.expected, 'B')];
    if (d.length) throw new Error(`${r.title}: wrong result after the run:\n${d.join('\n')}`);
    const prof = JSON.parse(fs.readFileSync(path.join(profDir, `${r.id}.cpuprofile`), 'utf8')) as CpuProfile;
    parts.push(renderSummary(r.title, summarize(prof), res));
    process.stderr.write(`${r.title}: ${res.wall.toFixed(2)} s\n`);
  }
  if (strace) {
    parts.push('### System calls (`strace -f -c`, all threads; strace inflates the times)', '');
    for (const r of [
      { id: 'nochange', title: 'No-change re-run (steady state)', fresh: false },
      { id: 'initial', title: 'Initial mirror → empty', fresh: true },
    ]) {
      if (!r.fresh) await settle();
      if (r.fresh) {
        rmrf(path.join(work, 'pair'));
        fs.mkdirSync(path.join(work, 'pair'));
        fs.chownSync(path.join(work, 'pair'), MAIL_UID, MAIL_GID);
        copyTree(corpus.maildir, a);
      }
      syncDisks();
      const f = path.join(work, `strace-${r.id}.txt`);
      const res = await timed(['strace', '-f', '-c', '-o', f, ...asMailUser, BIN, ...dsyncArgs], { env, reruns: 0 });
      if (res.exitCode !== 0) throw new Error(`strace ${r.title}: exit ${res.exitCode}: ${res.stderr}`);
      parts.push(`${r.title} (under strace: wall ${res.wall.toFixed(2)} s):`, '', straceSummary(f));
    }
  }
  const md = parts.join('\n');
  const outPath = out ?? path.join(REPO, 'bench', 'results', `profile-${size}.md`);
  fs.mkdirSync(path.dirname(outPath), { recursive: true });
  fs.writeFileSync(outPath, md);
  console.log(md);
  if (keep) process.stderr.write(`kept ${work} (profiles in ${profDir})\n`);
  else rmrf(work);
}

main().catch((e) => {
  process.stderr.write(`profile failed: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(1);
});
