// Remote sync over a real ssh: a private sshd on loopback (test/helpers/sshd.ts) logs in as root and
// runs `node bin/dsync ... server` on the other side. Skipped, with the reason, where that cannot run.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { makeMessage, writeMaildirMessage } from '../helpers/corpus.js';
import { snapshot } from '../helpers/snapshot.js';
import { startSshd } from '../helpers/sshd.js';
import { hashTree, makeTempDir, removeTree } from '../helpers/tmp.js';

const DSYNC = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../bin/dsync');

const sshd = await startSshd();
const skip = typeof sshd === 'string' ? `ssh on loopback unavailable: ${sshd}` : false;
const dirs: string[] = [];
after(async () => {
  if (typeof sshd !== 'string') await sshd.stop();
  for (const d of dirs) removeTree(d);
});

const tmp = () => {
  const d = makeTempDir('dsync-ssh-');
  dirs.push(d);
  return d;
};

let seq = 0;
/** Delivers a message into cur/ (so that its flags live in the ":2," suffix). */
function deliver(mailbox: string, seed: string, flags = ''): string {
  if (path.basename(mailbox).startsWith('.')) {
    fs.mkdirSync(mailbox, { recursive: true });
    fs.writeFileSync(path.join(mailbox, 'maildirfolder'), '');
  }
  return writeMaildirMessage(mailbox, { body: makeMessage(seed), flags, internalDate: 1_700_000_000 + seq++ });
}

function populate(root: string, tag: string): void {
  for (let i = 0; i < 4; i++) deliver(root, `${tag}-inbox-${i}`, i % 2 ? 'S' : '');
  for (let i = 0; i < 3; i++) deliver(path.join(root, '.Archive'), `${tag}-archive-${i}`, 'S');
}

/**
 * A digest of what a mail reader sees of a maildir tree: every file except dsync's own index
 * (dsync-index.sqlite*, which records sync state and is rewritten by every run), with its bytes
 * and whole-second mtime; with `mailOnly`, only the mail files (in cur/ and new/).
 */
function mailDigest(root: string, mailOnly = false): string {
  const h = createHash('sha256');
  const walk = (rel: string): void => {
    for (const name of fs.readdirSync(path.join(root, rel)).sort()) {
      const r = rel ? `${rel}/${name}` : name;
      const st = fs.statSync(path.join(root, r));
      if (st.isDirectory()) walk(r);
      else if (!name.startsWith('dsync-index') && (!mailOnly || /(^|\/)(cur|new)\/[^/]+$/.test(r))) h.update(`${r}\0${Math.floor(st.mtimeMs / 1000)}\0`).update(fs.readFileSync(path.join(root, r)));
    }
  };
  walk('');
  return h.digest('hex');
}

/** dsync -o mail_location=LOCAL [extra] COMMAND ssh ... node bin/dsync -o mail_location=REMOTE */
function dsync(local: string, command: string, remoteLocation: string, extra: string[] = []) {
  if (typeof sshd === 'string') throw new Error('unreachable');
  const args = ['-o', `mail_location=${local}`, ...extra, command, ...sshd.sshArgv, process.execPath, DSYNC, '-o', `mail_location=${remoteLocation}`];
  return spawnSync(DSYNC, args, { encoding: 'utf8', timeout: 20_000 });
}

test('mirror over ssh: both ways, flag changes, then nothing to do', { skip }, async () => {
  const a = tmp();
  const b = tmp();
  populate(a, 'a');
  deliver(b, 'b-first', 'F');
  const r1 = dsync(`maildir:${a}`, 'mirror', `maildir:${b}`);
  assert.equal(r1.status, 0, r1.stderr);
  assert.deepEqual(await snapshot(`maildir:${b}`), await snapshot(`maildir:${a}`));

  // New mail on each side, and a flag change done by a "MUA" renaming the file's info suffix.
  deliver(a, 'a-later', 'S');
  deliver(path.join(b, '.Archive'), 'b-later');
  const cur = path.join(b, 'cur');
  const unseen = fs.readdirSync(cur).find((f) => f.endsWith(':2,'));
  assert.ok(unseen, 'an unflagged message in b/cur');
  fs.renameSync(path.join(cur, unseen), path.join(cur, `${unseen}FS`));

  const r2 = dsync(`maildir:${a}`, 'mirror', `maildir:${b}`);
  assert.equal(r2.status, 0, r2.stderr);
  const snapA = await snapshot(`maildir:${a}`);
  assert.deepEqual(await snapshot(`maildir:${b}`), snapA);
  const inbox = snapA.mailboxes.find((m) => m.name === 'INBOX')!;
  assert.equal(inbox.messages.length, 6);
  assert.ok(inbox.messages.some((m) => m.flags.includes('\\Flagged') && m.flags.includes('\\Seen')), JSON.stringify(inbox.messages));
  assert.equal(snapA.mailboxes.find((m) => m.name === 'Archive')!.messages.length, 4);

  const beforeA = mailDigest(a);
  const beforeB = mailDigest(b);
  const r3 = dsync(`maildir:${a}`, 'mirror', `maildir:${b}`);
  assert.equal(r3.status, 0, r3.stderr);
  assert.deepEqual(await snapshot(`maildir:${b}`), snapA);
  assert.deepEqual(await snapshot(`maildir:${a}`), snapA);
  assert.equal(mailDigest(a), beforeA, 'a third run changed nothing in a');
  assert.equal(mailDigest(b), beforeB, 'a third run changed nothing in b');
});

test('backup over ssh and -R backup over ssh: destination equals source, source untouched', { skip }, async () => {
  const src = tmp();
  populate(src, 'src');
  await snapshot(`maildir:${src}`);
  const before = await hashTree(src);

  // Push: the local side is the source, the remote one the destination.
  const dst = tmp();
  deliver(dst, 'dst-stray'); // a backup destination's own mail goes away
  const r = dsync(`maildir:${src}`, 'backup', `maildir:${dst}`);
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(await snapshot(`maildir:${dst}`), await snapshot(`maildir:${src}`));
  assert.equal(await hashTree(src), before, 'backup did not write its (local) source');

  // Pull: -R makes the remote side the source.
  const restored = tmp();
  const back = dsync(`maildir:${restored}`, 'backup', `maildir:${src}`, ['-R']);
  assert.equal(back.status, 0, back.stderr);
  assert.deepEqual(await snapshot(`maildir:${restored}`), await snapshot(`maildir:${src}`));
  assert.equal(await hashTree(src), before, '-R backup did not write its (remote) source');
});

test('a remote side that cannot open its location: exit 75, error names the remote, local unchanged', { skip }, async () => {
  const a = tmp();
  populate(a, 'fail');
  const before = mailDigest(a, true);
  const bad = dsync(`maildir:${a}`, 'mirror', 'maildir:/etc/passwd/x');
  assert.equal(bad.status, 75, bad.stderr);
  // The remote dsync's own error comes through ssh's stderr, then ours names the remote side.
  assert.match(bad.stderr, /\/etc\/passwd\/x: \/etc\/passwd exists and is not a directory/);
  assert.match(bad.stderr, /the remote dsync \(.*ssh.*\) closed the connection \(the remote command exited with code 75\)/);
  // The local side checks its mailboxes while the remote one starts: UIDs for mail that had none
  // (dovecot-uidlist), as any IMAP server's first look gives them, and dsync's own index may
  // appear. The mail files are as they were.
  assert.equal(mailDigest(a, true), before, 'the local mail was not touched');
});
