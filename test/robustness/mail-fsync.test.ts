// mail_fsync=never (Dovecot's setting, suggested for migrations): no fsync of mail files, of the
// files that list them, or of their directories; the default fsyncs them. Seen from the system
// calls of a real mirror (Maildir -> Maildir and -> mbox) under strace.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { makeMessage } from '../helpers/corpus.js';
import { putFile, tempDir } from './helpers.js';

const mirrorModule = new URL('../helpers/mirror.js', import.meta.url).href;

/** The files under root that a mirror of A into a new B fsynced (fsync or fdatasync), relative to root. */
function syncedFiles(root: string, target: string, mailFsync: string): string[] {
  const trace = path.join(root, `trace-${mailFsync}`);
  const code = `const { mirror } = await import(${JSON.stringify(mirrorModule)});
    const r = await mirror(process.argv[1], process.argv[2], { mailFsync: process.argv[3] });
    if (r.exitCode !== 0) throw new Error(r.log.join('\\n'));`;
  const r = spawnSync(
    'strace',
    ['-f', '-y', '-o', trace, '-e', 'trace=fsync,fdatasync', process.execPath, '--input-type=module', '-e', code, '--', `maildir:${path.join(root, 'a')}`, target, mailFsync],
    { encoding: 'utf8' },
  );
  assert.equal(r.status, 0, r.stderr);
  const files = new Set<string>();
  for (const l of fs.readFileSync(trace, 'utf8').split('\n')) {
    const m = /f(?:data)?sync\(\d+<([^>]*)>/.exec(l);
    if (m && m[1]!.startsWith(root)) files.add(path.relative(root, m[1]!));
  }
  return [...files].sort();
}

test('mail_fsync=never: a mirror fsyncs no mail, no uidlist, no mbox and no directory; by default it does', { timeout: 60_000 }, (t) => {
  const probe = spawnSync('strace', ['-f', '-o', '/dev/null', 'true'], { encoding: 'utf8' });
  if (probe.error || probe.status !== 0) {
    t.skip(`strace cannot trace here (${probe.error?.message ?? probe.stderr.trim()}): mail_fsync is not checked`);
    return;
  }
  const root = tempDir(t);
  for (let i = 0; i < 5; i++) putFile(path.join(root, 'a'), 'cur', `1700000000.m${i}.x:2,S`, makeMessage(`m${i}`));
  // The change index keeps its own durability: its files, and its directory, which SQLite fsyncs
  // when it creates them (the Maildir's root, the mbox root's .imap).
  const isIndex = (f: string) => /dsync-index\.sqlite/.test(f) || /^[bc]-never(\/\.imap)?$/.test(f);
  for (const [kind, target] of [
    ['Maildir', (n: string) => `maildir:${path.join(root, `b-${n}`)}`],
    ['mbox', (n: string) => `mbox:${path.join(root, `c-${n}`)}:INBOX=${path.join(root, `c-${n}`, 'inbox')}`],
  ] as const) {
    const byDefault = syncedFiles(root, target('default'), 'optimized').filter((f) => !isIndex(f));
    assert.ok(byDefault.some((f) => f.startsWith(`${kind === 'Maildir' ? 'b' : 'c'}-default`)), `${kind}: the default fsyncs the mail it writes: ${byDefault.join(', ')}`);
    const never = syncedFiles(root, target('never'), 'never').filter((f) => !isIndex(f));
    assert.deepEqual(never, [], `${kind}: mail_fsync=never fsyncs nothing but the change index`);
  }
});
