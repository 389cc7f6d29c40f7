// Remote sync through a command: the other side is `dsync server`, started by any command (here
// bin/dsync itself, without ssh) and spoken to over its stdin/stdout.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { makeMessage } from '../helpers/corpus.js';
import { snapshot } from '../helpers/snapshot.js';
import { hashTree, scratchDir } from '../helpers/tmp.js';

const DSYNC = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../bin/dsync');
const tmp = () => scratchDir('dsync-remote-');

function deliver(dir: string, body: Buffer, flags = ''): void {
  for (const d of ['cur', 'new', 'tmp']) fs.mkdirSync(path.join(dir, d), { recursive: true });
  if (path.basename(dir).startsWith('.')) fs.writeFileSync(path.join(dir, 'maildirfolder'), '');
  fs.writeFileSync(path.join(dir, 'cur', `1700000000.M${Math.floor(Math.random() * 1e9)}P1.rm,S=${body.length}:2,${flags}`), body);
}

function dsync(local: string, command: string, remoteLocation: string, extra: string[] = []) {
  const args = ['-o', `mail_location=${local}`, ...extra, command, process.execPath, DSYNC, '-o', `mail_location=${remoteLocation}`];
  return spawnSync(DSYNC, args, { encoding: 'utf8' });
}

test('mirror with a dsync server over a command: both ways, conflicts, then nothing to do', async () => {
  const a = tmp();
  const b = tmp();
  for (let i = 0; i < 20; i++) deliver(i % 4 ? a : path.join(a, '.Lists'), makeMessage(`rm${i}`), i % 3 ? 'S' : '');
  const r1 = dsync(`maildir:${a}`, 'mirror', `maildir:${b}`);
  assert.equal(r1.status, 0, r1.stderr);
  assert.deepEqual(await snapshot(`maildir:${b}`), await snapshot(`maildir:${a}`));
  deliver(a, makeMessage('only-a'));
  deliver(b, makeMessage('only-b'), 'F');
  // 3 MB: spooled to disk on the way.
  deliver(path.join(b, '.Lists'), Buffer.concat([Buffer.from('Subject: big\n\n'), Buffer.alloc(3 << 20, 'x\n')]));
  const r2 = dsync(`maildir:${a}`, 'mirror', `maildir:${b}`, ['-v']);
  assert.equal(r2.status, 0, r2.stderr);
  assert.match(r2.stderr, /renumbered after a UID conflict/);
  assert.deepEqual(await snapshot(`maildir:${b}`), await snapshot(`maildir:${a}`));
  const r3 = dsync(`maildir:${a}`, 'mirror', `maildir:${b}`, ['-v']);
  assert.equal(r3.status, 0, r3.stderr);
  assert.equal(r3.stderr, '');
});

test('backup to and -R backup from a dsync server: the source is never written', async () => {
  const src = tmp();
  for (let i = 0; i < 8; i++) deliver(src, makeMessage(`bk${i}`), 'S');
  await snapshot(`maildir:${src}`);
  const dst = tmp();
  const before = await hashTree(src);
  const r = dsync(`maildir:${src}`, 'backup', `maildir:${dst}`);
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(await snapshot(`maildir:${dst}`), await snapshot(`maildir:${src}`));
  const restored = tmp();
  const back = dsync(`maildir:${restored}`, 'backup', `maildir:${src}`, ['-R']);
  assert.equal(back.status, 0, back.stderr);
  assert.deepEqual(await snapshot(`maildir:${restored}`), await snapshot(`maildir:${src}`));
  assert.equal(await hashTree(src), before);
});

test('a remote side that fails or speaks something else: clear error, exit 75, nothing changed here', async () => {
  const a = tmp();
  deliver(a, makeMessage('stay'));
  await snapshot(`maildir:${a}`);
  const bad = dsync(`maildir:${a}`, 'mirror', 'maildir:/etc/passwd/not-a-dir');
  assert.equal(bad.status, 75, bad.stderr);
  assert.match(bad.stderr, /remote/);
  const garbage = spawnSync(DSYNC, ['-o', `mail_location=maildir:${a}`, 'mirror', '/bin/echo', 'hello'], { encoding: 'utf8' });
  assert.equal(garbage.status, 75, garbage.stderr);
  assert.match(garbage.stderr, /remote dsync/);
  const died = spawnSync(DSYNC, ['-o', `mail_location=maildir:${a}`, 'mirror', '/bin/sh', '-c', 'exit 3'], { encoding: 'utf8' });
  assert.equal(died.status, 75, died.stderr);
  assert.match(died.stderr, /exited with code 3|closed the connection/);
  const snap = await snapshot(`maildir:${a}`);
  assert.equal(snap.mailboxes[0].messages.length, 1);
});

test('mail bodies spooled in a remote run go to mail_temp_dir: an unusable one is a clear error that loses nothing', async () => {
  const a = tmp();
  const b = tmp();
  deliver(a, makeMessage('here'));
  // 3 MB: more than a body the receiver keeps in memory, so it is spooled on its way to A.
  deliver(b, Buffer.concat([Buffer.from('Subject: big\n\n'), Buffer.alloc(3 << 20, 'y\n')]));
  const bad = dsync(`maildir:${a}`, 'mirror', `maildir:${b}`, ['-o', 'mail_temp_dir=/nonexistent/dsync-temp']);
  assert.notEqual(bad.status, 0, bad.stderr);
  assert.match(bad.stderr, /cannot spool a mail body .* to \/nonexistent\/dsync-temp \(mail_temp_dir\)/);
  assert.equal(bad.stderr.match(/cannot spool/g)?.length, 1, `said once, not echoed by the server too:\n${bad.stderr}`);
  assert.equal((await snapshot(`maildir:${a}`)).mailboxes[0].messages.length, 1, 'A still has its mail, and only it');
  const temp = tmp();
  const good = dsync(`maildir:${a}`, 'mirror', `maildir:${b}`, ['-o', `mail_temp_dir=${temp}`]);
  assert.equal(good.status, 0, good.stderr);
  assert.deepEqual(await snapshot(`maildir:${a}`), await snapshot(`maildir:${b}`));
  assert.deepEqual(fs.readdirSync(temp), [], 'the spool directory is gone after the run');
});

test('a local location that cannot be opened: its error alone, the remote side (already started) stopped quietly', async () => {
  const b = tmp();
  deliver(b, makeMessage('there'));
  const r = dsync('maildir:/etc/passwd/not-a-dir', 'mirror', `maildir:${b}`);
  assert.notEqual(r.status, 0, r.stderr);
  assert.match(r.stderr, /\/etc\/passwd\/not-a-dir/);
  assert.doesNotMatch(r.stderr, /remote|server|closed the connection/, 'nothing from or about the remote side');
  assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
  assert.equal((await snapshot(`maildir:${b}`)).mailboxes[0].messages.length, 1);
});
