// Runs bin/dsync as a real process (needs the compiled dist/, which the test run itself comes from).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, readFileSync, readdirSync, renameSync, statSync, unlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { VERSION } from '../../src/version.js';
import { makeTempDir, removeTree } from '../helpers/tmp.js';

// dist/test/cli/bin.test.js -> project root
const root = fileURLToPath(new URL('../../../', import.meta.url));
const bin = fileURLToPath(new URL('../../../bin/dsync', import.meta.url));
const realBundle = fileURLToPath(new URL('../../../dist/dsync.cjs', import.meta.url));
const realModules = fileURLToPath(new URL('../../../dist/src/cli/main.js', import.meta.url));
const mtime = (p: string) => {
  try {
    return statSync(p).mtimeMs;
  } catch {
    return -1;
  }
};

/** Runs fn on a scratch install: bin/dsync (and its package.json) copied into a temp dir, an empty dist/. */
function withScratchInstall(fn: (dir: string) => void): void {
  const dir = makeTempDir('dsync-bin-');
  try {
    mkdirSync(join(dir, 'bin'));
    mkdirSync(join(dir, 'dist'));
    copyFileSync(bin, join(dir, 'bin', 'dsync'));
    copyFileSync(join(root, 'bin', 'package.json'), join(dir, 'bin', 'package.json'));
    fn(dir);
  } finally {
    removeTree(dir);
  }
}

function run(...args: string[]) {
  return spawnSync(bin, args, { cwd: root, encoding: 'utf8', timeout: 20_000 });
}

test('bin/dsync --help: exit 0, usage on stdout', () => {
  const r = run('--help');
  assert.equal(r.error, undefined);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /^Usage: dsync \[options\] mirror LOCATION2/);
  assert.equal(r.stderr, '');
});

test('bin/dsync --version', () => {
  const r = run('--version');
  assert.equal(r.status, 0);
  assert.equal(r.stdout, `dsync ${VERSION}\n`);
});

test('bin/dsync with a usage error: exit 64, message on stderr', () => {
  const r = run('mirror');
  assert.equal(r.status, 64);
  assert.equal(r.stdout, '');
  assert.match(r.stderr, /^dsync: error: mirror needs a destination/);
});

test('bin/dsync with an unreadable config: exit 78', () => {
  const r = run('-c', '/nonexistent/dovecot.conf', 'mirror', 'maildir:/tmp/nowhere');
  assert.equal(r.status, 78);
  assert.match(r.stderr, /cannot read config file \/nonexistent\/dovecot\.conf/);
});

test('bin/dsync loads the one-file bundle when it is as new as the compiled modules, else the modules', () => {
  withScratchInstall((dir) => {
    mkdirSync(join(dir, 'dist', 'src', 'cli'), { recursive: true });
    writeFileSync(join(dir, 'package.json'), '{"type":"module"}\n');
    const bundle = join(dir, 'dist', 'dsync.cjs');
    const modules = join(dir, 'dist', 'src', 'cli', 'main.js');
    writeFileSync(modules, `export async function main() { process.stdout.write('modules\\n'); return 0; }\n`);
    const which = (env: NodeJS.ProcessEnv = {}) => {
      const r = spawnSync(process.execPath, [join(dir, 'bin', 'dsync')], { encoding: 'utf8', env: { ...process.env, DSYNC_NO_BUNDLE: '', ...env } });
      assert.equal(r.status, 0, r.stderr);
      return r.stdout.trim();
    };
    assert.equal(which(), 'modules', 'no bundle');
    writeFileSync(bundle, `exports.main = async function main() { process.stdout.write('bundle\\n'); return 0; };\n`);
    utimesSync(modules, 1_000_000, 1_000_000);
    utimesSync(bundle, 1_000_010, 1_000_010);
    assert.equal(which(), 'bundle', 'bundle newer than the modules');
    assert.equal(which({ DSYNC_NO_BUNDLE: '1' }), 'modules', 'DSYNC_NO_BUNDLE');
    utimesSync(modules, 1_000_020, 1_000_020);
    assert.equal(which(), 'modules', 'modules rebuilt after the bundle');
  });
});

test('bin/dsync ignores a code cache older than the bundle (V8 would take a stale one of the same length)', () => {
  withScratchInstall((dir) => {
    const bundle = join(dir, 'dist', 'dsync.cjs');
    const source = (what: string) => `exports.main = async function main() { process.stdout.write('${what}\\n'); return 0; };\n`;
    writeFileSync(bundle, source('old'));
    // A cache of the old bundle, made as scripts/bundle.mjs makes it (same flags as bin/dsync).
    const shebang = readFileSync(bin, 'utf8').split('\n', 1)[0]!.split(/\s+/);
    const flags = shebang.slice(shebang.indexOf('node') + 1);
    const make = `const fs=require('fs'),vm=require('vm'),v8=require('v8'),{wrap}=require('module');const [b]=process.argv.slice(1);
      v8.setFlagsFromString('--no-lazy');const s=new vm.Script(wrap(fs.readFileSync(b,'utf8')),{filename:b});v8.setFlagsFromString('--lazy');
      fs.writeFileSync(b+'.cache',s.createCachedData());`;
    assert.equal(spawnSync(process.execPath, [...flags, '-e', make, bundle]).status, 0);
    const runIt = () => spawnSync(join(dir, 'bin', 'dsync'), [], { encoding: 'utf8', env: { ...process.env, DSYNC_NO_BUNDLE: '', DSYNC_LOAD_TRACE: '1' } });
    let r = runIt();
    assert.deepEqual([r.status, r.stdout, r.stderr], [0, 'old\n', 'dsync: loading the bundle with its code cache\n']);
    // Rebuilt bundle, same length, cache left behind.
    writeFileSync(bundle, source('new'));
    utimesSync(`${bundle}.cache`, 1_000_000, 1_000_000);
    r = runIt();
    assert.deepEqual([r.status, r.stdout, r.stderr], [0, 'new\n', 'dsync: loading the bundle (no code cache)\n']);
  });
});

test('bin/dsync without a build says so (exit 75); a bundle without a code cache still runs', () => {
  withScratchInstall((dir) => {
    const runIt = () => spawnSync(join(dir, 'bin', 'dsync'), ['--version'], { encoding: 'utf8', env: { ...process.env, DSYNC_NO_BUNDLE: '', DSYNC_LOAD_TRACE: '1' } });
    let r = runIt();
    assert.equal(r.status, 75);
    assert.equal(r.stderr, `dsync: ${join(dir, 'dist')} holds no compiled dsync: run \`npm install\` (or \`npm run build\`) in ${dir}\n`);
    writeFileSync(join(dir, 'dist', 'dsync.cjs'), `exports.main = async function main() { process.stdout.write('bundle\\n'); return 0; };\n`);
    r = runIt();
    assert.deepEqual([r.status, r.stdout, r.stderr], [0, 'bundle\n', 'dsync: loading the bundle (no code cache)\n']);
  });
});

test('bin/dsync runs Node without NODE_EXTRA_CA_CERTS (parsing that file costs more than the rest of the start)', () => {
  withScratchInstall((dir) => {
    writeFileSync(
      join(dir, 'dist', 'dsync.cjs'),
      `exports.main = async function main() { process.stdout.write(String(process.env.NODE_EXTRA_CA_CERTS) + '\\n'); return 0; };\n`,
    );
    // A file Node could not load: Node itself would warn about it on stderr.
    const r = spawnSync(join(dir, 'bin', 'dsync'), [], { encoding: 'utf8', env: { ...process.env, DSYNC_NO_BUNDLE: '', NODE_EXTRA_CA_CERTS: join(dir, 'no-such-ca.pem') } });
    assert.deepEqual([r.status, r.stdout, r.stderr], [0, 'undefined\n', '']);
  });
});

test("bin/dsync runs Node with glibc's malloc tuned: fixed mmap threshold, 16 MB trim threshold, one arena (page faults)", () => {
  withScratchInstall((dir) => {
    const names = ['MALLOC_MMAP_THRESHOLD_', 'MALLOC_TRIM_THRESHOLD_', 'MALLOC_ARENA_MAX'];
    writeFileSync(
      join(dir, 'dist', 'dsync.cjs'),
      `exports.main = async function main() { process.stdout.write(${JSON.stringify(names)}.map((n) => n + '=' + process.env[n]).join(' ') + '\\n'); return 0; };\n`,
    );
    // Whatever the caller's environment says: the values are bin/dsync's (see its comment and bench/README.md).
    const env = { ...process.env, DSYNC_NO_BUNDLE: '', MALLOC_ARENA_MAX: '8', MALLOC_TRIM_THRESHOLD_: '1' };
    const r = spawnSync(join(dir, 'bin', 'dsync'), [], { encoding: 'utf8', env });
    assert.deepEqual([r.status, r.stdout, r.stderr], [0, 'MALLOC_MMAP_THRESHOLD_=131072 MALLOC_TRIM_THRESHOLD_=16777216 MALLOC_ARENA_MAX=1\n', '']);
  });
});

test('the build made a code cache that bin/dsync uses', (t) => {
  if (skipWithoutFreshBundle(t)) return;
  const r = spawnSync(bin, ['--version'], { cwd: root, encoding: 'utf8', env: { ...process.env, DSYNC_NO_BUNDLE: '', DSYNC_LOAD_TRACE: '1' } });
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stderr, 'dsync: loading the bundle with its code cache\n');
});

test('the bundle and the compiled modules behave the same', (t) => {
  if (skipWithoutFreshBundle(t)) return;
  for (const args of [['--help'], ['--version'], ['mirror'], ['-c', '/nonexistent/dovecot.conf', 'mirror', 'maildir:/tmp/nowhere']]) {
    const viaBundle = spawnSync(bin, args, { cwd: root, encoding: 'utf8', env: { ...process.env, DSYNC_NO_BUNDLE: '' } });
    const viaModules = spawnSync(bin, args, { cwd: root, encoding: 'utf8', env: { ...process.env, DSYNC_NO_BUNDLE: '1' } });
    assert.deepEqual([viaBundle.status, viaBundle.stdout, viaBundle.stderr], [viaModules.status, viaModules.stdout, viaModules.stderr], args.join(' '));
  }
});

/** Skips the test (true) when the bundle is missing or older than the compiled modules. */
function skipWithoutFreshBundle(t: { skip(message: string): void }): boolean {
  if (mtime(realBundle) >= mtime(realModules)) return false;
  t.skip('dist/dsync.cjs is missing or older than dist/src (run `npm run build`, not only tsc)');
  return true;
}

/**
 * Mirrors maildir a with maildir b through bin/dsync (HOME in dir). With the hook on, the run
 * records the built-in modules it loaded (written when it exits), which modules() returns.
 */
function mirrorRecordingModules(dir: string, a: string, b: string): { sync(withHook: boolean): void; modules(): Set<string> } {
  const hook = join(dir, 'hook.cjs');
  const loaded = join(dir, 'loaded.txt');
  writeFileSync(hook, `process.on('exit', () => require('fs').writeFileSync(${JSON.stringify(loaded)}, process.moduleLoadList.join('\\n')));\n`);
  return {
    sync(withHook) {
      const env = { ...process.env, HOME: dir, NODE_OPTIONS: withHook ? `--require ${hook}` : '' };
      const r = spawnSync(bin, ['-o', `mail_location=maildir:${a}`, 'mirror', `maildir:${b}`], { encoding: 'utf8', env, timeout: 20_000 });
      assert.equal(r.status, 0, r.stderr);
      assert.equal(r.stderr, '');
    },
    modules() {
      const modules = new Set(readFileSync(loaded, 'utf8').split('\n'));
      assert.ok(modules.has('NativeModule fs'), 'the hook saw the run');
      return modules;
    },
  };
}

test('a run that changes nothing loads none of node:crypto, child_process, stream, net, perf_hooks, fs/promises (start-up time)', (t) => {
  // The compiled modules are ES modules: importing node:fs from one loads all of its lazy parts,
  // streams included. Only the bundle can keep them out.
  if (skipWithoutFreshBundle(t)) return;
  const dir = makeTempDir('dsync-bin-lazy-');
  try {
    const a = join(dir, 'a');
    for (const sub of ['cur', 'new', 'tmp']) mkdirSync(join(a, sub), { recursive: true });
    writeFileSync(join(a, 'cur', '1700000000.M1P1.host,S=20:2,S'), 'Subject: hi\n\nhello\n');
    const { sync, modules } = mirrorRecordingModules(dir, a, join(dir, 'b'));
    sync(false); // the first sync copies the mail
    sync(false); // settles the change tokens the first one could not trust yet
    sync(true);
    for (const m of ['crypto', 'child_process', 'stream', 'net', 'perf_hooks', 'fs/promises']) assert.ok(!modules().has(`NativeModule ${m}`), `node:${m} was loaded`);
  } finally {
    removeTree(dir);
  }
});

test('an incremental run that copies a mail too large for one buffer, changes flags and expunges loads no stream or fs/promises modules', (t) => {
  if (skipWithoutFreshBundle(t)) return;
  const dir = makeTempDir('dsync-bin-lazy-big-');
  try {
    const a = join(dir, 'a');
    const b = join(dir, 'b');
    for (const sub of ['cur', 'new', 'tmp']) mkdirSync(join(a, sub), { recursive: true });
    writeFileSync(join(a, 'cur', '1700000000.M1P1.host,S=20:2,S'), 'Subject: one\n\nhello\n');
    writeFileSync(join(a, 'cur', '1700000000.M2P1.host,S=20:2,'), 'Subject: two\n\nhello\n');
    const { sync, modules } = mirrorRecordingModules(dir, a, b);
    sync(false);
    sync(false);
    // New on A: a 600 KB mail (streamed, not read at once) and a flag change; on B an expunge.
    const big = Buffer.concat([Buffer.from('Subject: big\n\n'), Buffer.alloc(600 * 1024, 'x\n')]);
    writeFileSync(join(a, 'new', '1700000100.M3P1.host'), big);
    renameSync(join(a, 'cur', '1700000000.M2P1.host,S=20:2,'), join(a, 'cur', '1700000000.M2P1.host,S=20:2,F'));
    const bCur = join(b, 'cur');
    const one = readdirSync(bCur).find((n) => readFileSync(join(bCur, n), 'utf8').includes('Subject: one'));
    assert.ok(one, 'the first sync copied the mail');
    unlinkSync(join(bCur, one));
    sync(true);
    const copied = readdirSync(bCur).map((n) => readFileSync(join(bCur, n)));
    assert.ok(copied.some((c) => c.equals(big)), 'the large mail was copied byte for byte');
    assert.equal(readdirSync(join(a, 'cur')).length + readdirSync(join(a, 'new')).length, 2, 'the expunge reached A');
    for (const m of ['stream', 'fs/promises', 'internal/fs/streams']) assert.ok(!modules().has(`NativeModule ${m}`), `node:${m} was loaded`);
  } finally {
    removeTree(dir);
  }
});

test('-D says how long each phase took (opening, tree, each mailbox and its part after the barrier, settling, closing)', () => {
  const dir = makeTempDir('dsync-bin-timing-');
  try {
    const a = join(dir, 'a');
    for (const sub of ['cur', 'new', 'tmp']) mkdirSync(join(a, sub), { recursive: true });
    writeFileSync(join(a, 'cur', '1700000000.M1P1.host,S=20:2,S'), 'Subject: hi\n\nhello\n');
    const r = spawnSync(bin, ['-D', '-o', `mail_location=maildir:${a}`, 'mirror', `maildir:${join(dir, 'b')}`], {
      encoding: 'utf8',
      env: { ...process.env, HOME: dir },
      timeout: 20_000,
    });
    assert.equal(r.status, 0, r.stderr);
    const ms = String.raw`in \d+\.\d ms$`;
    for (const line of [
      `${a}: store, lock and change index opened ${ms}`,
      `mailbox tree synced ${ms}`,
      `mailbox INBOX: checked for changes ${ms}`,
      String.raw`mailbox INBOX: synced in \d+\.\d ms \(\d+\.\d ms after the barrier\)$`,
      `mailboxes synced ${ms}`,
      String.raw`change tokens of 1 mailboxes settled( \(1 checked again after \d+ ms\))? ` + ms,
      `${a}: change index and store closed ${ms}`,
    ]) {
      assert.match(r.stderr, new RegExp(`^dsync: debug: ${line}`, 'm'));
    }
  } finally {
    removeTree(dir);
  }
});
