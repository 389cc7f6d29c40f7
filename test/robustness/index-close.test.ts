// Closing the change index folds its write-ahead log back into the database file with its own
// fsyncs (ChangeIndex.close): what this checks is their order, seen from the system calls, since
// a wrong order loses nothing until the machine goes down at the wrong moment.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import Database from 'better-sqlite3';
import { ChangeIndex } from '../../src/index/change-index.js';
import { tempDir } from './helpers.js';

/** Opens an index, writes to it, closes it; what a run does to its index, in short. */
async function writeAndClose(file: string): Promise<void> {
  const { index } = ChangeIndex.open(file);
  for (let i = 0; i < 200; i++) index.transaction(() => index.setMeta(`key-${i}`, 'x'.repeat(500)));
  assert.ok(fs.statSync(`${file}-wal`).size > 0, 'the writes went to the log');
  await index.close();
}

test('closing the index leaves the database file complete on its own: no log, every page in the file', async (t) => {
  const file = path.join(tempDir(t), 'index.sqlite');
  await writeAndClose(file);
  const wal = fs.existsSync(`${file}-wal`) ? fs.statSync(`${file}-wal`).size : 0;
  assert.equal(wal, 0, 'the log is empty or gone');
  const db = new Database(file, { readonly: true });
  try {
    const pages = (db.pragma('page_count', { simple: true }) as number) * (db.pragma('page_size', { simple: true }) as number);
    assert.equal(fs.statSync(file).size, pages, 'the file is as long as its header says');
    assert.deepEqual(db.prepare("SELECT value FROM meta WHERE key = 'key-199'").get(), { value: 'x'.repeat(500) });
  } finally {
    db.close();
  }
});

test('closing the index: the log is made durable before its pages are copied, the file before the log is emptied, and the emptied log after', { timeout: 30_000 }, (t) => {
  const probe = spawnSync('strace', ['-f', '-o', '/dev/null', 'true'], { encoding: 'utf8' });
  if (probe.error || probe.status !== 0) {
    t.skip(`strace cannot trace here (${probe.error?.message ?? probe.stderr.trim()}): the order of the fsyncs is not checked`);
    return;
  }
  const dir = tempDir(t);
  const file = path.join(dir, 'index.sqlite');
  const trace = path.join(dir, 'trace');
  const mod = new URL('../../src/index/change-index.js', import.meta.url).href;
  // The index is made, then written and closed under strace: only that second part is looked at.
  const code = `const { ChangeIndex } = await import(${JSON.stringify(mod)});
    const { index } = ChangeIndex.open(process.argv[1]);
    for (let i = 0; i < 200; i++) index.transaction(() => index.setMeta('key-' + i, 'x'.repeat(500)));
    process.stderr.write('CLOSING\\n');
    await index.close();`;
  const r = spawnSync('strace', ['-f', '-y', '-o', trace, '-e', 'trace=write,pwrite64,fsync,fdatasync,ftruncate,unlink,unlinkat', process.execPath, '--input-type=module', '-e', code, '--', file], {
    encoding: 'utf8',
  });
  assert.equal(r.status, 0, r.stderr);
  const lines = fs.readFileSync(trace, 'utf8').split('\n');
  const start = lines.findIndex((l) => l.includes('CLOSING'));
  assert.ok(start > 0, 'the trace shows where closing starts');
  const wal = `${file}-wal>`;
  const db = `${file}>`;
  // One event per line from here: which call, on which file.
  const events = lines.slice(start + 1).flatMap((l) => {
    const m = /(pwrite64|fsync|fdatasync|ftruncate)\(\d+<([^>]*)>/.exec(l);
    if (!m) return [];
    const target = `${m[2]}>`;
    if (target !== wal && target !== db) return [];
    return [`${m[1] === 'fdatasync' ? 'fsync' : m[1]} ${target === wal ? 'log' : 'db'}`];
  });
  const first = (e: string) => events.indexOf(e);
  const last = (e: string) => events.lastIndexOf(e);
  assert.ok(first('pwrite64 db') >= 0, `pages are copied into the file: ${events.join(', ')}`);
  assert.ok(first('fsync log') >= 0 && first('fsync log') < first('pwrite64 db'), `log durable before the copy: ${events.join(', ')}`);
  assert.ok(last('pwrite64 db') < first('fsync db'), `file durable after the copy: ${events.join(', ')}`);
  assert.ok(first('fsync db') < first('ftruncate log'), `file durable before the log is emptied: ${events.join(', ')}`);
  assert.ok(last('fsync log') > first('ftruncate log'), `the emptied log made durable: ${events.join(', ')}`);
  assert.ok(!events.slice(first('ftruncate log')).includes('pwrite64 log'), `nothing written to the log after emptying it: ${events.join(', ')}`);
});

test('the index is usable again after a close: what was written is there, and a new run writes a new log', async (t) => {
  const file = path.join(tempDir(t), 'index.sqlite');
  await writeAndClose(file);
  const { index, rebuiltReason } = ChangeIndex.open(file);
  try {
    assert.equal(rebuiltReason, undefined);
    assert.equal(index.getMeta('key-0'), 'x'.repeat(500));
    index.setMeta('after', 'y');
  } finally {
    await index.close();
  }
  const again = ChangeIndex.open(file);
  try {
    assert.equal(again.index.getMeta('after'), 'y');
  } finally {
    await again.index.close();
  }
});

test('the first commit into an empty log does not fsync the log on the spot; once something is written, the usual settings are back', (t) => {
  const dir = tempDir(t);
  const file = path.join(dir, 'index.sqlite');
  const trace = path.join(dir, 'trace');
  const mod = new URL('../../src/index/change-index.js', import.meta.url).href;
  // A run on an index its last run closed: a transaction that only reads, then two that write.
  const code = `const { ChangeIndex } = await import(${JSON.stringify(mod)});
    const setup = ChangeIndex.open(process.argv[1]);
    setup.index.setMeta('seed', '1');
    await setup.index.close();
    const { index } = ChangeIndex.open(process.argv[1]);
    const mode = () => [index.db.pragma('synchronous', { simple: true }), index.db.pragma('wal_autocheckpoint', { simple: true })].join('/');
    const seen = [mode()];
    index.transaction(() => index.getMeta('seed'));
    seen.push(mode());
    process.stderr.write('WRITING\\n');
    index.transaction(() => index.setMeta('a', 'x'.repeat(5000)));
    index.transaction(() => index.setMeta('b', 'y'));
    process.stderr.write('CLOSING\\n');
    seen.push(mode());
    await index.close();
    console.log(seen.join(' '));`;
  const probe = spawnSync('strace', ['-f', '-o', '/dev/null', 'true'], { encoding: 'utf8' });
  const traced = !probe.error && probe.status === 0;
  const args = [process.execPath, '--input-type=module', '-e', code, '--', file];
  const r = traced
    ? spawnSync('strace', ['-f', '-y', '-o', trace, '-e', 'trace=write,fsync,fdatasync', ...args], { encoding: 'utf8' })
    : spawnSync(args[0]!, args.slice(1), { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  // synchronous/wal_autocheckpoint: off until the first write, NORMAL (1) and 10000 pages after it.
  assert.equal(r.stdout.trim(), '0/0 0/0 1/10000');
  const again = ChangeIndex.open(file);
  try {
    assert.equal(again.rebuiltReason, undefined);
    assert.equal(again.index.getMeta('a'), 'x'.repeat(5000));
  } finally {
    void again.index.close();
  }
  if (!traced) {
    t.skip(`strace cannot trace here (${probe.error?.message ?? probe.stderr.trim()}): only the settings were checked, not the system calls`);
    return;
  }
  const lines = fs.readFileSync(trace, 'utf8').split('\n');
  const from = lines.findIndex((l) => l.includes('WRITING'));
  const to = lines.findIndex((l) => l.includes('CLOSING'));
  assert.ok(from > 0 && to > from, 'the trace shows the writes');
  const syncs = lines.slice(from, to).filter((l) => /f(data)?sync\(\d+</.test(l));
  assert.deepEqual(syncs, [], 'no fsync while writing');
  assert.ok(lines.slice(to).some((l) => l.includes(`fsync(`) && l.includes(`${file}-wal>`)), 'closing makes the log durable');
});
