// Runs bin/dsync as a real process (needs the compiled dist/, which the test run itself comes from).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { VERSION } from '../../src/version.js';

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
