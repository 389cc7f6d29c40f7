// Results: the JSON shape, summary statistics, machine description and the Markdown report.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import type { Sample } from './exec.js';

export type ToolId = 'ours' | 'dovecot';

export interface ScenarioResult {
  id: string;
  title: string;
  /** Per tool: the samples, or why there are none. */
  ours: Sample[] | { unsupported: string };
  dovecot: Sample[] | { unsupported: string };
  notes: string[];
  /**
   * Per tool: how many of its samples produced a result that failed a correctness check without
   * failing the benchmark (only Dovecot's, in the convert scenario: see the notes for what).
   */
  wrong?: Partial<Record<ToolId, number>>;
}

export interface FloorResult {
  id: string;
  title: string;
  samples: Sample[];
}

export interface Machine {
  nproc: number;
  cpuModel: string;
  ramGiB: number;
  kernel: string;
  node: string;
  dovecot: string;
  filesystem: string;
  fsyncMs: number;
  commit: string;
}

export interface SizeResults {
  size: string;
  date: string;
  durationS: number;
  reps: number;
  seed: number;
  /** How each run got its copy: 'link' (cp -al + real copies of non-message files) or 'cp' (cp -a). */
  copy: string;
  /** Niceness of the timed commands (0 = plain). */
  nice?: number;
  machine: Machine;
  corpus: { messages: number; bytes: number; folders: number; dir: string };
  scenarios: ScenarioResult[];
  floors: FloorResult[];
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const n = s.length;
  if (n === 0) return NaN;
  return n % 2 ? s[(n - 1) / 2]! : (s[n / 2 - 1]! + s[n / 2]!) / 2;
}

function firstLine(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim().split('\n')[0]! : '';
}

/** Median latency of create+write 4 KiB+fsync+close in `dir`, ms: the cost every durable save pays. */
export function fsyncLatencyMs(dir: string, n = 40): number {
  const d = fs.mkdtempSync(path.join(dir, 'fsync-probe-'));
  const xs: number[] = [];
  const buf = Buffer.alloc(4096, 120);
  try {
    for (let i = 0; i < n; i++) {
      const t0 = performance.now();
      const fd = fs.openSync(path.join(d, `f${i}`), 'wx');
      fs.writeSync(fd, buf);
      fs.fsyncSync(fd);
      fs.closeSync(fd);
      xs.push(performance.now() - t0);
    }
  } finally {
    fs.rmSync(d, { recursive: true, force: true });
  }
  return median(xs);
}

/** The commit of the checkout, marked when src/ differs from it. Taken when the build is made: a later edit is not in the build measured. */
export function buildLabel(repoDir: string): string {
  const head = firstLine('git', ['-C', repoDir, 'rev-parse', '--short', 'HEAD']);
  const dirty = spawnSync('git', ['-C', repoDir, 'status', '--porcelain', '--', 'src'], { encoding: 'utf8' }).stdout.trim() !== '';
  return head ? `${head}${dirty ? ' (+ uncommitted changes in src/)' : ''}` : 'unknown';
}

export function describeMachine(workDir: string, dovecot: string, build: string): Machine {
  let cpuModel = 'unknown';
  try {
    const m = /^model name\s*:\s*(.+)$/m.exec(fs.readFileSync('/proc/cpuinfo', 'utf8'));
    if (m) cpuModel = m[1]!.trim();
  } catch {
    // not Linux
  }
  let filesystem = 'unknown';
  try {
    const df = spawnSync('df', ['-PT', workDir], { encoding: 'utf8' }).stdout.trim().split('\n')[1]?.split(/\s+/);
    if (df) filesystem = `${df[1]} on ${df[0]} (mounted at ${df[6]})`;
  } catch {
    // ignore
  }
  return {
    nproc: Number(firstLine('nproc', [])) || os.cpus().length,
    cpuModel,
    ramGiB: Math.round((os.totalmem() / 2 ** 30) * 10) / 10,
    kernel: `${os.type()} ${os.release()}`,
    node: process.version,
    dovecot,
    filesystem,
    fsyncMs: Math.round(fsyncLatencyMs(workDir) * 100) / 100,
    commit: build,
  };
}

// ------------------------------------------------------------------ formatting

function secs(x: number): string {
  if (!Number.isFinite(x)) return '?';
  if (x < 1) return `${x.toFixed(3)} s`;
  if (x < 10) return `${x.toFixed(2)} s`;
  return `${x.toFixed(1)} s`;
}
const mb = (kb: number) => (Number.isFinite(kb) ? `${Math.round(kb / 1024)} MB` : '?');

function cell(s: Sample[] | { unsupported: string }, what: 'wall' | 'cpu' | 'rss'): string {
  if (!Array.isArray(s)) return what === 'wall' ? s.unsupported : '—';
  if (s.length === 0) return '—';
  if (what === 'rss') return mb(median(s.map((x) => x.rssKb)));
  const xs = s.map((x) => x[what]);
  const m = median(xs);
  if (what === 'cpu') return secs(m);
  return `${secs(m)} [${secs(Math.min(...xs)).replace(' s', '')}–${secs(Math.max(...xs))}]`;
}

function ratio(a: Sample[] | { unsupported: string }, b: Sample[] | { unsupported: string }): string {
  if (!Array.isArray(a) || !Array.isArray(b) || a.length === 0 || b.length === 0) return '—';
  const r = median(a.map((x) => x.wall)) / median(b.map((x) => x.wall));
  return `**${r.toFixed(2)}×**`;
}

export function renderSize(r: SizeResults): string {
  const m = r.machine;
  const lines: string[] = [];
  lines.push(`### ${r.size}: ${r.corpus.messages.toLocaleString('en-US')} messages, ${(r.corpus.bytes / 1e6).toFixed(1)} MB, ${r.corpus.folders} folders`);
  lines.push('');
  lines.push(
    `${r.date} · n = repetitions per cell (default ${r.reps}), ours and Dovecot alternating · seed ${r.seed} · copies: ${r.copy === 'cp' ? '`cp -a`' : '`cp -al` + real copies of all non-message files'}${r.nice ? ` · timed commands under \`nice -n ${r.nice}\`` : ''} · total bench time ${Math.round(r.durationS)} s · create+write 4 KiB+fsync probe ${m.fsyncMs} ms · dsync ${m.commit}`,
  );
  lines.push('');
  lines.push('| Scenario | n | ours: wall median [min–max] | Dovecot: wall median [min–max] | ours/Dovecot | CPU (user+sys) ours / Dovecot | peak RSS ours / Dovecot |');
  lines.push('|---|---|---|---|---|---|---|');
  for (const s of r.scenarios) {
    const n = Math.max(Array.isArray(s.ours) ? s.ours.length : 0, Array.isArray(s.dovecot) ? s.dovecot.length : 0);
    const wrong = (id: ToolId) => {
      const k = s.wrong?.[id];
      const x = s[id];
      return k ? ` ⚠ ${k} of ${Array.isArray(x) ? x.length : '?'} results wrong (see notes)` : '';
    };
    lines.push(
      `| ${s.title} | ${n} | ${cell(s.ours, 'wall')}${wrong('ours')} | ${cell(s.dovecot, 'wall')}${wrong('dovecot')} | ${ratio(s.ours, s.dovecot)} | ${cell(s.ours, 'cpu')} / ${cell(s.dovecot, 'cpu')} | ${cell(s.ours, 'rss')} / ${cell(s.dovecot, 'rss')} |`,
    );
  }
  if (r.floors.length) {
    lines.push('');
    lines.push('Physical floors on the same data (as root, no sync tool involved):');
    lines.push('');
    lines.push('| Floor | n | wall median [min–max] | CPU (user+sys) |');
    lines.push('|---|---|---|---|');
    for (const f of r.floors) lines.push(`| ${f.title} | ${f.samples.length} | ${cell(f.samples, 'wall')} | ${cell(f.samples, 'cpu')} |`);
  }
  const notes = r.scenarios.flatMap((s) => s.notes.map((n) => `${s.title}: ${n}`));
  if (notes.length) {
    lines.push('');
    for (const n of notes) lines.push(`- ${n}`);
  }
  lines.push('');
  return lines.join('\n');
}

export function renderMachine(m: Machine): string {
  return [
    `- CPU: ${m.cpuModel}, nproc ${m.nproc}; RAM ${m.ramGiB} GiB`,
    `- Kernel: ${m.kernel}; file system: ${m.filesystem}`,
    `- Node ${m.node}; Dovecot ${m.dovecot}`,
  ].join('\n');
}

export const RESULTS_START = '<!-- bench:results:start (generated by `npm run bench`; edit outside these markers) -->';
export const RESULTS_END = '<!-- bench:results:end -->';

const SIZE_ORDER = ['1k', '10k', '50k'];

/** Re-renders the results part of BENCHMARKS.md from every bench/results/<size>.json; the rest of the file is kept. */
export function writeBenchmarksMd(mdPath: string, resultsDir: string): void {
  const all: SizeResults[] = [];
  for (const f of fs.readdirSync(resultsDir)) {
    if (!/^\d+k\.json$/.test(f)) continue;
    all.push(JSON.parse(fs.readFileSync(path.join(resultsDir, f), 'utf8')) as SizeResults);
  }
  all.sort((a, b) => SIZE_ORDER.indexOf(a.size) - SIZE_ORDER.indexOf(b.size));
  const parts: string[] = [RESULTS_START, ''];
  const machines = new Map<string, string>();
  for (const r of all) machines.set(renderMachine(r.machine), r.size);
  if (machines.size === 1) {
    parts.push('Machine:', '', [...machines.keys()][0]!, '');
  }
  for (const r of all) {
    if (machines.size > 1) parts.push(`Machine for ${r.size}:`, '', renderMachine(r.machine), '');
    parts.push(renderSize(r));
  }
  parts.push(RESULTS_END);
  const block = parts.join('\n');
  let text: string;
  if (fs.existsSync(mdPath)) {
    const old = fs.readFileSync(mdPath, 'utf8');
    const i = old.indexOf(RESULTS_START);
    const j = old.indexOf(RESULTS_END);
    text = i >= 0 && j > i ? old.slice(0, i) + block + old.slice(j + RESULTS_END.length) : `${old.trimEnd()}\n\n${block}\n`;
  } else {
    text = `# Benchmarks: dsync vs Dovecot's dsync\n\nHow to run and what each scenario does: [bench/README.md](bench/README.md).\n\n## Results\n\n${block}\n`;
  }
  fs.writeFileSync(mdPath, text);
}
