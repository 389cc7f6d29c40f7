// Runs bin/dsync as a real process (needs the compiled dist/, which the test run itself comes from).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { VERSION } from '../../src/version.js';
import { makeTempDir, removeTree } from '../helpers/tmp.js';

// dist/test/cli/bin.test.js -> project root
const root = fileURLToPath(new URL('../../../', import.meta.url));
const bin = fileURLToPath(new URL('../../../bin/dsync', import.meta.url));

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
  const dir = makeTempDir('dsync-bin-');
  try {
    mkdirSync(join(dir, 'bin'));
    mkdirSync(join(dir, 'dist', 'src', 'cli'), { recursive: true });
    copyFileSync(bin, join(dir, 'bin', 'dsync'));
    writeFileSync(join(dir, 'package.json'), '{"type":"module"}\n');
    const fake = (what: string) => `export async function main() { process.stdout.write('${what}\\n'); return 0; }\n`;
    const bundle = join(dir, 'dist', 'dsync.mjs');
    const modules = join(dir, 'dist', 'src', 'cli', 'main.js');
    writeFileSync(modules, fake('modules'));
    const which = (env: NodeJS.ProcessEnv = {}) => {
      const r = spawnSync(process.execPath, [join(dir, 'bin', 'dsync')], { encoding: 'utf8', env: { ...process.env, DSYNC_NO_BUNDLE: '', ...env } });
      assert.equal(r.status, 0, r.stderr);
      return r.stdout.trim();
    };
    assert.equal(which(), 'modules', 'no bundle');
    writeFileSync(bundle, fake('bundle'));
    utimesSync(modules, 1_000_000, 1_000_000);
    utimesSync(bundle, 1_000_010, 1_000_010);
    assert.equal(which(), 'bundle', 'bundle newer than the modules');
    assert.equal(which({ DSYNC_NO_BUNDLE: '1' }), 'modules', 'DSYNC_NO_BUNDLE');
    utimesSync(modules, 1_000_020, 1_000_020);
    assert.equal(which(), 'modules', 'modules rebuilt after the bundle');
  } finally {
    removeTree(dir);
  }
});

test('the bundle and the compiled modules behave the same', (t) => {
  const mtime = (p: string) => {
    try {
      return statSync(p).mtimeMs;
    } catch {
      return -1;
    }
  };
  const bundle = fileURLToPath(new URL('../../../dist/dsync.mjs', import.meta.url));
  const modules = fileURLToPath(new URL('../../../dist/src/cli/main.js', import.meta.url));
  if (mtime(bundle) < mtime(modules)) {
    t.skip('dist/dsync.mjs is missing or older than dist/src (run `npm run build`, not only tsc)');
    return;
  }
  for (const args of [['--help'], ['--version'], ['mirror'], ['-c', '/nonexistent/dovecot.conf', 'mirror', 'maildir:/tmp/nowhere']]) {
    const viaBundle = spawnSync(bin, args, { cwd: root, encoding: 'utf8', env: { ...process.env, DSYNC_NO_BUNDLE: '' } });
    const viaModules = spawnSync(bin, args, { cwd: root, encoding: 'utf8', env: { ...process.env, DSYNC_NO_BUNDLE: '1' } });
    assert.deepEqual([viaBundle.status, viaBundle.stdout, viaBundle.stderr], [viaModules.status, viaModules.stdout, viaModules.stderr], args.join(' '));
  }
});
