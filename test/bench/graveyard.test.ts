// The benchmark's graveyard: copies are moved aside between timed runs and deleted at the end.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Graveyard } from '../../bench/lib/exec.js';

function tree(dir: string): void {
  fs.mkdirSync(path.join(dir, 'cur'), { recursive: true });
  fs.writeFileSync(path.join(dir, 'cur', 'm1'), 'x');
}

test('bury moves a tree aside (same path free again, nothing deleted) and clear deletes them all', () => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'dsync-graveyard-'));
  try {
    const g = new Graveyard(path.join(root, 'graveyard'), 0);
    const run = path.join(root, 'run');
    tree(run);
    const ino = fs.statSync(path.join(run, 'cur', 'm1')).ino;
    g.bury(run);
    assert.equal(fs.existsSync(run), false);
    const buried = fs.readdirSync(g.dir);
    assert.equal(buried.length, 1);
    // Renamed, not copied and deleted: the same inode, so no inode was freed.
    assert.equal(fs.statSync(path.join(g.dir, buried[0]!, 'cur', 'm1')).ino, ino);
    tree(run);
    g.bury(run);
    g.bury(path.join(root, 'absent')); // nothing there: nothing to do
    assert.equal(fs.readdirSync(g.dir).length, 2);
    // A second graveyard on the same directory (ab.js --prepare --work) does not collide.
    tree(run);
    new Graveyard(g.dir, 0).bury(run);
    assert.equal(fs.readdirSync(g.dir).length, 3);
    g.clear();
    assert.equal(fs.existsSync(g.dir), false);
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
});

test('bury empties the graveyard first when the file system is short of space', () => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'dsync-graveyard-'));
  try {
    const run = path.join(root, 'run');
    tree(run);
    new Graveyard(path.join(root, 'graveyard'), 0).bury(run);
    // More free space wanted than any disk has: what was buried before goes.
    const short = new Graveyard(path.join(root, 'graveyard'), Number.MAX_SAFE_INTEGER);
    tree(run);
    short.bury(run);
    assert.equal(fs.readdirSync(short.dir).length, 1);
    assert.equal(fs.existsSync(run), false);
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
});
