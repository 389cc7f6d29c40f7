// Running commands: timed ones under GNU time (CPU and peak RSS), plain helpers for the setup.
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

export const GNU_TIME = '/usr/bin/time';

export interface Sample {
  /** Wall seconds, measured here around the whole command (ms resolution). */
  wall: number;
  /** CPU seconds (user, sys) and peak RSS in KiB from GNU time (%U %S %M). */
  user: number;
  sys: number;
  cpu: number;
  rssKb: number;
  exitCode: number;
  /** How many times the command ran: 1, more when it asked to be run again (exit code 2). */
  runs: number;
  /**
   * CPU seconds other user-space processes used during the run (not kernel threads, which also do
   * the tool's own writeback): other people's processes competing with the measurement.
   */
  foreignCpu: number;
  /** Seconds spent before the run waiting for the machine to become quiet (see waitForQuiet). */
  waitedS: number;
}

export interface RunResult extends Sample {
  stdout: string;
  stderr: string;
}

const CLK_TCK = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout.trim()) || 100;

/** System-wide CPU jiffies from /proc/stat: busy (without iowait), iowait, total. */
function readCpu(): { busy: number; iowait: number; total: number } {
  try {
    const f = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
    const [user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0] = f;
    const busy = user + nice + system + irq + softirq + steal;
    return { busy, iowait, total: busy + idle + iowait };
  } catch {
    return { busy: 0, iowait: 0, total: 0 };
  }
}

/**
 * CPU jiffies (own + reaped children) of every user-space process except this one, by pid.
 * Kernel threads are left out: they also do the measured tool's own I/O (writeback, journal).
 */
function userProcessCpu(): Map<number, number> {
  const out = new Map<number, number>();
  let pids: string[] = [];
  try {
    pids = fs.readdirSync('/proc').filter((x) => /^\d+$/.test(x));
  } catch {
    return out;
  }
  for (const p of pids) {
    const pid = Number(p);
    if (pid === process.pid) continue;
    try {
      const st = fs.readFileSync(`/proc/${p}/stat`, 'utf8');
      const f = st.slice(st.lastIndexOf(')') + 2).split(' ');
      // f[0] = state (field 3); ppid f[1]; flags f[6]; utime f[11], stime f[12], cutime f[13], cstime f[14]
      const ppid = Number(f[1]);
      const flags = Number(f[6]);
      if (pid === 2 || ppid === 2 || (flags & 0x00200000) !== 0) continue; // kthreadd and kernel threads
      out.set(pid, Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14]));
    } catch {
      // exited meanwhile
    }
  }
  return out;
}

/** CPU seconds used by other user-space processes between two userProcessCpu() snapshots. */
function foreignSeconds(before: Map<number, number>, after: Map<number, number>, exclude: Set<number>): number {
  let j = 0;
  for (const [pid, v] of after) {
    if (exclude.has(pid)) continue;
    j += Math.max(0, v - (before.get(pid) ?? 0));
  }
  return j / CLK_TCK;
}

const sleepMs = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Waits until the machine is quiet: over a 1 s window, other processes use less than
 * `maxBusyCpus` CPUs (iowait counted as busy: their disk traffic competes with ours too).
 * Gives up after maxWaitS and lets the caller measure anyway (the sample's foreignCpu shows it).
 * Returns the seconds waited.
 */
export async function waitForQuiet(o: { maxWaitS?: number; maxBusyCpus?: number } = {}): Promise<number> {
  const maxWait = o.maxWaitS ?? 300;
  const limit = o.maxBusyCpus ?? 0.2;
  const t0 = performance.now();
  for (;;) {
    const a = readCpu();
    await sleepMs(1000);
    const b = readCpu();
    const dt = b.total - a.total;
    const nproc = os.cpus().length;
    const busyCpus = dt > 0 ? ((b.busy - a.busy + b.iowait - a.iowait) / dt) * nproc : 0;
    const waited = (performance.now() - t0) / 1000 - 1;
    if (busyCpus <= limit || waited >= maxWait) return Math.max(0, waited);
  }
}

function once(cmd: string[], env: NodeJS.ProcessEnv, timeoutMs: number): Promise<RunResult> {
  const tf = path.join(os.tmpdir(), `dsync-bench-time-${process.pid}-${Math.random().toString(36).slice(2)}`);
  return new Promise((resolve, reject) => {
    const procs0 = userProcessCpu();
    const t0 = performance.now();
    const child = spawn(GNU_TIME, ['-f', '%e %U %S %M', '-o', tf, '--', ...cmd], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => {
      if (stdout.length < 1e6) stdout += d.toString();
    });
    child.stderr.on('data', (d: Buffer) => {
      if (stderr.length < 1e6) stderr += d.toString();
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const wall = (performance.now() - t0) / 1000;
      const procs1 = userProcessCpu();
      let text = '';
      try {
        text = fs.readFileSync(tf, 'utf8');
        fs.rmSync(tf, { force: true });
      } catch {
        // time could not write it (killed)
      }
      // On failure GNU time writes "Command exited with non-zero status N" first.
      const last = text.trim().split('\n').pop() ?? '';
      const [, u, s, m] = last.split(' ').map(Number);
      resolve({
        wall,
        user: u ?? NaN,
        sys: s ?? NaN,
        cpu: (u ?? NaN) + (s ?? NaN),
        rssKb: m ?? NaN,
        exitCode: code ?? (signal ? 128 : 1),
        runs: 1,
        // The measured command is this process's reaped child: it is in neither snapshot's
        // survivors (our own cutime is not read), so everything counted here is someone else's.
        foreignCpu: Math.round(foreignSeconds(procs0, procs1, new Set([child.pid ?? -1])) * 100) / 100,
        waitedS: 0,
        stdout,
        stderr,
      });
    });
  });
}

/**
 * Runs cmd under GNU time. Exit code 2 ("changes during the sync, run again") reruns it, up to
 * `reruns` times, both tools alike; the sample then covers all runs (times added, RSS max).
 */
export async function timed(
  cmd: string[],
  o: { env?: NodeJS.ProcessEnv; reruns?: number; timeoutMs?: number; quiet?: { maxWaitS?: number } | false } = {},
): Promise<RunResult> {
  const env = o.env ?? process.env;
  const timeoutMs = o.timeoutMs ?? 30 * 60_000;
  const waited = o.quiet === false ? 0 : await waitForQuiet(o.quiet ?? {});
  let r = await once(cmd, env, timeoutMs);
  r.waitedS = Math.round(waited * 10) / 10;
  for (let i = 0; i < (o.reruns ?? 2) && r.exitCode === 2; i++) {
    const n = await once(cmd, env, timeoutMs);
    r = {
      wall: r.wall + n.wall,
      user: r.user + n.user,
      sys: r.sys + n.sys,
      cpu: r.cpu + n.cpu,
      rssKb: Math.max(r.rssKb, n.rssKb),
      exitCode: n.exitCode,
      runs: r.runs + 1,
      foreignCpu: r.foreignCpu + n.foreignCpu,
      waitedS: r.waitedS,
      stdout: r.stdout + n.stdout,
      stderr: r.stderr + n.stderr,
    };
  }
  return r;
}

/** Runs a setup command synchronously; throws with its stderr on failure. */
export function sh(cmd: string, args: string[], o: { env?: NodeJS.ProcessEnv } = {}): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', env: o.env ?? process.env, maxBuffer: 64 * 1024 * 1024 });
  if (r.error) throw r.error;
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (exit ${r.status}): ${(r.stderr || r.stdout).trim().slice(0, 2000)}`);
  return r.stdout;
}

export function rmrf(p: string): void {
  sh('rm', ['-rf', '--', p]);
}

/**
 * Where a benchmark puts the copies it is done with, instead of deleting them between runs. On a
 * file system like this machine's (ext4 without a journal), the inode allocator reads and skips
 * every inode freed in about the last minute (`recently_deleted` in ext4's ialloc.c), so deleting
 * a copy right before a timed run made each file the run created slower, for both tools and by a
 * varying amount (BENCHMARKS.md, Caveats). Renaming a tree frees no inode. Emptied at the end, or
 * earlier when the file system runs short of space (a rare case that brings the noise back).
 */
export class Graveyard {
  private buried = 0;

  constructor(
    readonly dir: string,
    private readonly minFreeBytes = 8e9,
  ) {}

  /** Moves p (if it exists) out of the way; it is deleted by clear(). */
  bury(p: string): void {
    if (!fs.existsSync(p)) return;
    const st = fs.statfsSync(path.dirname(this.dir));
    if (st.bavail * st.bsize < this.minFreeBytes) this.clear();
    fs.mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    // Unique across processes: an earlier run may have left its own there (ab.js --prepare --work).
    fs.renameSync(p, path.join(this.dir, `${process.pid}-${Date.now()}-${++this.buried}`));
  }

  clear(): void {
    rmrf(this.dir);
  }
}

export type CopyMode = 'link' | 'cp';

/**
 * A copy of a mail tree that every tool may change freely.
 * 'cp': `cp -a` (all bytes copied).
 * 'link' (default): `cp -al`, then every file that is not a message file (not in a cur/ or new/
 * directory: uidlists, keyword files, subscriptions, Dovecot indexes, our SQLite index, ...) is
 * replaced by a real copy with the same owner, mode and times. Maildir message files are never
 * written in place -- a flag change is a rename, an expunge an unlink, a save a new file -- so
 * sharing their inodes is safe, and the bytes both tools start from are identical. (Every check
 * re-hashes all of side A, whose message files are these shared inodes: an in-place write would
 * fail the benchmark.) On this kind of VM disk `cp -a` of the 10k corpus takes ~14 s and its
 * removal ~4 s, which would dominate the benchmark's run time.
 */
export function copyTree(src: string, dst: string, mode: CopyMode = 'link'): void {
  if (mode === 'cp') {
    sh('cp', ['-a', '--', src, dst]);
    return;
  }
  sh('cp', ['-al', '--', src, dst]);
  const walk = (dir: string, parentName: string): void => {
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) walk(p, e.name);
      else if (e.isFile() && parentName !== 'cur' && parentName !== 'new') {
        const st = fs.statSync(p);
        const tmp = `${p}.bench-copy`;
        fs.copyFileSync(p, tmp);
        fs.chownSync(tmp, st.uid, st.gid);
        fs.chmodSync(tmp, st.mode & 0o7777);
        fs.utimesSync(tmp, st.atime, st.mtime);
        fs.renameSync(tmp, p);
      }
    }
    // The renames above touched the directory: give it back its original mtime.
    const st = fs.statSync(path.join(src, path.relative(dst, dir)));
    fs.utimesSync(dir, st.atime, st.mtime);
  };
  walk(dst, '');
}

/** Flushes dirty pages from the setup so a timed run does not pay for someone else's writes. */
export function syncDisks(): void {
  sh('sync', []);
}

/**
 * A private copy of the compiled dsync (dist/src, dist/dsync.cjs and its cache, bin/, package.json, node_modules linked), so
 * the build under test cannot change while the benchmark runs (others may rebuild dist/).
 * Returns the path of its bin/dsync.
 */
export function freezeBuild(repo: string, dest: string): string {
  // A `tsc` alone after `npm run build` leaves the bundle older than the modules: bin/dsync then
  // loads the modules (~35 ms slower to start), and the figures would not be those of a build.
  const bundleAt = fs.statSync(path.join(repo, 'dist', 'dsync.cjs'), { throwIfNoEntry: false })?.mtimeMs ?? -1;
  const modulesAt = fs.statSync(path.join(repo, 'dist', 'src', 'cli', 'main.js')).mtimeMs;
  if (bundleAt < modulesAt) throw new Error(`${repo}/dist/dsync.cjs is missing or older than dist/src: run \`npm run build\` (not only tsc) first`);
  fs.mkdirSync(path.join(dest, 'dist'), { recursive: true });
  sh('cp', ['-a', '--', path.join(repo, 'dist', 'src'), path.join(dest, 'dist', 'src')]);
  // The one-file bundle bin/dsync prefers, and its code cache (cp -a keeps their mtimes, which
  // bin/dsync compares).
  for (const file of ['dsync.cjs', 'dsync.cjs.cache']) {
    const from = path.join(repo, 'dist', file);
    if (fs.existsSync(from)) sh('cp', ['-a', '--', from, path.join(dest, 'dist', file)]);
  }
  sh('cp', ['-a', '--', path.join(repo, 'bin'), path.join(dest, 'bin')]);
  fs.copyFileSync(path.join(repo, 'package.json'), path.join(dest, 'package.json'));
  fs.symlinkSync(path.join(repo, 'node_modules'), path.join(dest, 'node_modules'));
  sh('chmod', ['-R', 'a+rX', dest]);
  return path.join(dest, 'bin', 'dsync');
}

/**
 * Sets atime := mtime on every message file (cur/, new/) under root, as `cp -a` of a mail store
 * nobody has read since delivery would have them. With hard-linked copies the first run to read
 * a file would otherwise update its (shared) atime and spare every later run that cost: under
 * relatime, reading a file whose atime is not newer than its mtime dirties its inode.
 */
export function resetAtimes(root: string): number {
  let n = 0;
  const walk = (dir: string, parentName: string): void => {
    let entries: fs.Dirent[];
    try {
      entries = fs.readdirSync(dir, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) walk(p, e.name);
      else if (e.isFile() && (parentName === 'cur' || parentName === 'new')) {
        const st = fs.statSync(p);
        if (st.atimeMs !== st.mtimeMs) {
          fs.utimesSync(p, st.mtime, st.mtime);
          n++;
        }
      }
    }
  };
  walk(root, '');
  return n;
}
