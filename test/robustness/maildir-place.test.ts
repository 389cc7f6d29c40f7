// A mail saved into a Maildir goes from tmp/ to cur/ with one rename (as Dovecot does), not a
// link and an unlink: system calls are what an initial sync mostly costs on a VM (~15-20 us each).
// Seen from the system calls of a real mirror under strace.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { makeMessage } from '../helpers/corpus.js';
import { putFile, tempDir } from './helpers.js';

const mirrorModule = new URL('../helpers/mirror.js', import.meta.url).href;

test('a mirror moves each new mail from tmp/ to cur/ with one rename: no link, no unlink', { timeout: 60_000 }, (t) => {
  const probe = spawnSync('strace', ['-f', '-o', '/dev/null', 'true'], { encoding: 'utf8' });
  if (probe.error || probe.status !== 0) {
    t.skip(`strace cannot trace here (${probe.error?.message ?? probe.stderr.trim()}): the placing of mails is not checked`);
    return;
  }
  const root = tempDir(t);
  const n = 6;
  for (let i = 0; i < n; i++) putFile(path.join(root, 'a'), 'cur', `1700000000.m${i}.x:2,S`, makeMessage(`m${i}`));
  const trace = path.join(root, 'trace');
  const code = `const { mirror } = await import(${JSON.stringify(mirrorModule)});
    const r = await mirror(process.argv[1], process.argv[2]);
    if (r.exitCode !== 0) throw new Error(r.log.join('\\n'));`;
  const b = path.join(root, 'b');
  const r = spawnSync(
    'strace',
    ['-f', '-o', trace, '-e', 'trace=link,linkat,unlink,unlinkat,rename,renameat,renameat2', process.execPath, '--input-type=module', '-e', code, '--', `maildir:${path.join(root, 'a')}`, `maildir:${b}`],
    { encoding: 'utf8' },
  );
  assert.equal(r.status, 0, r.stderr);
  // (A probe file the store makes once in tmp/ to learn the file system's time granularity aside.)
  const calls = fs
    .readFileSync(trace, 'utf8')
    .split('\n')
    .filter((l) => (l.includes(`${b}/tmp/`) || l.includes(`${b}/cur/`)) && !l.includes('mtime-probe'));
  const renames = calls.filter((l) => /rename(at2?)?\(/.test(l) && l.includes(`${b}/tmp/`) && l.includes(`${b}/cur/`));
  assert.equal(renames.length, n, calls.join('\n'));
  assert.deepEqual(calls.filter((l) => /\b(link|linkat|unlink|unlinkat)\(/.test(l)), [], 'no link into cur/, no unlink of tmp/');
  assert.deepEqual(fs.readdirSync(path.join(b, 'tmp')), []);
  assert.equal(fs.readdirSync(path.join(b, 'cur')).length, n);
});
