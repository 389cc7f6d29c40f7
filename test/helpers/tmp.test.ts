import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, test } from 'node:test';
import { copyTree, hashTree, makeTempDir, removeTree } from './tmp.js';

const dirs: string[] = [];
after(() => dirs.forEach(removeTree));

function fixture(): string {
  const dir = makeTempDir('tmp-test-');
  dirs.push(dir);
  fs.mkdirSync(path.join(dir, 'a/b'), { recursive: true });
  fs.writeFileSync(path.join(dir, 'a/b/one'), 'hello\n');
  fs.writeFileSync(path.join(dir, 'two'), Buffer.from([0, 1, 2, 255]));
  fs.utimesSync(path.join(dir, 'a/b/one'), 1_600_000_000, 1_600_000_000);
  fs.utimesSync(path.join(dir, 'two'), 1_600_000_100, 1_600_000_100);
  return dir;
}

test('makeTempDir makes a fresh world-readable dir under os.tmpdir()', () => {
  const a = makeTempDir('tmp-test-');
  const b = makeTempDir('tmp-test-');
  dirs.push(a, b);
  assert.notEqual(a, b);
  assert.equal(path.dirname(a), os.tmpdir());
  assert.match(path.basename(a), /^tmp-test-/);
  assert.equal(fs.statSync(a).mode & 0o777, 0o755);
  assert.deepEqual(fs.readdirSync(a), []);
});

test('copyTree preserves bytes, modes and mtimes, so the hash is equal', async () => {
  const src = fixture();
  fs.chmodSync(path.join(src, 'two'), 0o600);
  const dst = path.join(makeTempDir('tmp-test-'), 'copy');
  dirs.push(path.dirname(dst));
  // Just below a whole second: fs.cpSync made this 1_600_000_001 s (INTERNALDATE one second later).
  fs.utimesSync(path.join(src, 'two'), 1_600_000_000.9998, 1_600_000_000.9998);
  copyTree(src, dst);
  assert.equal(fs.statSync(path.join(dst, 'a/b/one')).mtimeMs, 1_600_000_000_000);
  assert.equal(Math.floor(fs.statSync(path.join(dst, 'two')).mtimeMs / 1000), 1_600_000_000);
  assert.equal(fs.statSync(path.join(dst, 'two'), { bigint: true }).mtimeNs, fs.statSync(path.join(src, 'two'), { bigint: true }).mtimeNs);
  assert.equal(fs.statSync(path.join(dst, 'two')).mode & 0o777, 0o600);
  assert.equal(await hashTree(dst), await hashTree(src));
});

test('hashTree sees content, mtime, mode, names and new files, but not a re-read', async () => {
  const dir = fixture();
  const h0 = await hashTree(dir);
  assert.match(h0, /^[0-9a-f]{64}$/);
  fs.readFileSync(path.join(dir, 'two'));
  assert.equal(await hashTree(dir), h0, 'reading changes nothing');

  const one = path.join(dir, 'a/b/one');
  fs.writeFileSync(one, 'hellO\n');
  fs.utimesSync(one, 1_600_000_000, 1_600_000_000);
  const h1 = await hashTree(dir);
  assert.notEqual(h1, h0, 'same size, other byte');

  fs.utimesSync(one, 1_600_000_001, 1_600_000_001);
  const h2 = await hashTree(dir);
  assert.notEqual(h2, h1, 'mtime');

  fs.utimesSync(one, 1_600_000_001.4, 1_600_000_001.4);
  assert.equal(await hashTree(dir), h2, 'sub-second mtime is ignored');

  fs.chmodSync(one, 0o600);
  const h3 = await hashTree(dir);
  assert.notEqual(h3, h2, 'mode');

  fs.renameSync(one, path.join(dir, 'a/b/uno'));
  const h4 = await hashTree(dir);
  assert.notEqual(h4, h3, 'name');

  fs.mkdirSync(path.join(dir, 'empty'));
  assert.notEqual(await hashTree(dir), h4, 'an empty dir');
});

test('removeTree removes a tree and tolerates a missing one', () => {
  const dir = fixture();
  removeTree(dir);
  assert.equal(fs.existsSync(dir), false);
  removeTree(dir);
});
