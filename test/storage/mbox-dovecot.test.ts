// Dovecot as the oracle for the mbox store, both ways:
//  * Dovecot writes (doveadm save / flags / expunge / mailbox create / subscribe), our store reads:
//    same mailboxes, UIDs, UIDVALIDITY/UIDNEXT, flags, keywords, bytes (as served over IMAP).
//  * our store writes, Dovecot reads: the same, and Dovecot finds nothing to fix in our files.
//  * Dovecot changes a file we wrote, we read it and change it again, Dovecot reads it again.
// Dovecot gets copies where it could write (an IMAP session may rewrite an mbox).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Flag, flagNames } from '../../src/model/flags.js';
import type { MailStore, SaveRequest, StoreMessage } from '../../src/storage/types.js';
import {
  chownTree,
  doveadm,
  dovecotSkipReason,
  oracleSession,
  withImapServer,
  writeDoveadmConfig,
} from '../helpers/dovecot.js';
import { makeTempDir, removeTree } from '../helpers/tmp.js';
import { bodyOf, crlf, fileState, openMbox } from './mbox-helpers.js';
import { createHash } from 'node:crypto';

/** Inode and content (Dovecot resets an mbox's mtime to whole seconds after reading it). */
function contentState(file: string): string {
  return `${fs.statSync(file).ino}:${createHash('sha256').update(fs.readFileSync(file)).digest('hex')}`;
}
import { warnings } from './helpers.js';

const skip = dovecotSkipReason();

function tempRoot(t: { after: (fn: () => void) => void }): string {
  const dir = makeTempDir('dsync-mbox-oracle-');
  t.after(() => removeTree(dir));
  return dir;
}

/** doveadm with a mail location; throws on failure. */
async function dc(conf: string, location: string, args: string[], input?: string): Promise<string> {
  if (input !== undefined) {
    // doveadm save reads the message from stdin: go through a file.
    const f = path.join(path.dirname(conf), `msg-${Math.random().toString(36).slice(2)}`);
    fs.writeFileSync(f, input);
    fs.chmodSync(f, 0o644);
    try {
      const { spawnSync } = await import('node:child_process');
      const home = path.join(path.dirname(conf), 'home', 'oracle');
      const r = spawnSync('doveadm', ['-c', conf, '-o', `mail_location=${location}`, ...args], {
        input: fs.readFileSync(f),
        env: { ...process.env, USER: 'oracle', HOME: home },
      });
      if (r.status !== 0) throw new Error(`doveadm ${args.join(' ')} failed: ${r.stderr}`);
      return r.stdout.toString();
    } finally {
      fs.rmSync(f, { force: true });
    }
  }
  const r = await doveadm(conf, ['-o', `mail_location=${location}`, ...args]);
  if (r.code !== 0) throw new Error(`doveadm ${args.join(' ')} failed (${r.code}): ${r.stderr}`);
  return r.stdout;
}

function parseTab(out: string): Record<string, string>[] {
  const lines = out.split('\n').filter((l) => l !== '');
  if (lines.length === 0) return [];
  const head = lines[0]!.split('\t');
  return lines.slice(1).map((l) => Object.fromEntries(l.split('\t').map((v, i) => [head[i]!, v])));
}

function ourFlags(m: StoreMessage): string {
  return [...flagNames(m.flags), ...m.keywords].sort().join(' ');
}

function theirFlags(s: string): string {
  return s
    .split(' ')
    .filter((f) => f !== '' && f !== '\\Recent')
    .sort()
    .join(' ');
}

/** Every message as Dovecot serves it over IMAP (BODY.PEEK[]), per mailbox, from a copy. */
async function imapBodies(root: string, inboxFile: string, mailboxes: string[]): Promise<Map<string, Map<number, Buffer>>> {
  const parent = makeTempDir('dsync-mbox-imap-');
  try {
    const copy = path.join(parent, 'mail');
    fs.cpSync(root, copy, { recursive: true, preserveTimestamps: true });
    const inbox = path.join(copy, path.relative(root, inboxFile));
    chownTree(parent);
    return await withImapServer([{ name: 'u', mailLocation: `mbox:${copy}:INBOX=${inbox}` }], async (server) => {
      const c = await oracleSession(server);
      const out = new Map<string, Map<number, Buffer>>();
      try {
        for (const mb of mailboxes) {
          await c.mailboxOpen(mb, { readOnly: true });
          const msgs = new Map<number, Buffer>();
          if ((c.mailbox && typeof c.mailbox === 'object' ? c.mailbox.exists : 0) > 0) {
            for await (const m of c.fetch('1:*', { uid: true, source: true })) msgs.set(m.uid, m.source!);
          }
          out.set(mb, msgs);
        }
      } finally {
        await c.logout();
      }
      return out;
    });
  } finally {
    removeTree(parent);
  }
}

async function compare(store: MailStore, conf: string, location: string, name: string[], bodies?: Map<number, Buffer>): Promise<StoreMessage[]> {
  const box = await store.openMailbox(name);
  const ours = await box.scan();
  const theirs = parseTab(await dc(conf, location, ['-f', 'tab', 'fetch', 'uid flags size.physical date.received', 'mailbox', name.join('/'), 'all']));
  assert.deepEqual(
    theirs.map((r) => [Number(r['uid']), theirFlags(r['flags']!)]),
    ours.map((m) => [m.uid, ourFlags(m)]),
    `UIDs and flags of ${name.join('/')}`,
  );
  const st = await box.status();
  const [their] = parseTab(await dc(conf, location, ['-f', 'tab', 'mailbox', 'status', 'uidvalidity uidnext messages', name.join('/')]));
  assert.deepEqual([st.uidValidity, st.uidNext, ours.length], [Number(their!['uidvalidity']), Number(their!['uidnext']), Number(their!['messages'])], `status of ${name.join('/')}`);
  if (bodies) {
    assert.deepEqual([...bodies.keys()], ours.map((m) => m.uid), `IMAP UIDs of ${name.join('/')}`);
    for (const m of ours) {
      const mine = await bodyOf(box, m.uid);
      assert.equal(crlf(mine).toString('latin1'), bodies.get(m.uid)!.toString('latin1'), `bytes of ${name.join('/')} UID ${m.uid}`);
    }
  }
  await box.close();
  return ours;
}

const MESSAGES = [
  'From: a@example.org\nSubject: one\nDate: Mon, 1 Jan 2024 10:00:00 +0000\nMessage-ID: <one@x>\n\nHello\nFrom the body\nFrom x@y Tue Jan  2 10:00:00 2024\n>From quoted\n',
  'From: b@example.org\r\nSubject: crlf\r\nMessage-ID: <two@x>\r\n\r\nline 1\r\nline 2\r\n',
  'Subject: three\nMessage-ID: <three@x>\n\nno final newline',
  'Subject: four\n\nfour\n\n\n',
  'Subject: five\nX-Something: else\n\nfive\n',
];

test('dovecot oracle: our store reads mboxes Dovecot wrote', { skip }, async (t) => {
  const dir = tempRoot(t);
  const conf = writeDoveadmConfig(path.join(dir, 'conf'));
  const root = path.join(dir, 'dc');
  fs.mkdirSync(root);
  chownTree(root);
  const loc = `mbox:${root}:INBOX=${root}/inbox`;
  await dc(conf, loc, ['mailbox', 'create', 'Lists/dev', 'Entwürfe', 'a&b', 'Empty']);
  for (const m of MESSAGES) await dc(conf, loc, ['save', '-m', 'INBOX'], m);
  await dc(conf, loc, ['save', '-m', 'Lists/dev'], MESSAGES[0]);
  await dc(conf, loc, ['save', '-m', 'Entwürfe'], MESSAGES[2]);
  await dc(conf, loc, ['flags', 'add', '\\Seen $Label1 Custom', 'mailbox', 'INBOX', 'uid', '1:2']);
  await dc(conf, loc, ['flags', 'add', '\\Flagged \\Deleted \\Answered \\Draft', 'mailbox', 'INBOX', 'uid', '3']);
  await dc(conf, loc, ['flags', 'remove', 'Custom', 'mailbox', 'INBOX', 'uid', '2']);
  await dc(conf, loc, ['expunge', 'mailbox', 'INBOX', 'uid', '4']);
  await dc(conf, loc, ['mailbox', 'subscribe', 'INBOX', 'Entwürfe', 'a&b']);
  // Dovecot's own view, before we touch anything.
  const bodies = await imapBodies(root, `${root}/inbox`, ['INBOX', 'Lists/dev', 'Entwürfe', 'Empty']);
  const files = ['inbox', 'Lists/dev', 'Entw&APw-rfe', 'a&-b', 'Empty'].map((f) => path.join(root, f));
  const before = files.map(fileState);

  const w = warnings();
  const store = await openMbox(loc, { readOnly: true, warn: w.warn });
  const list = await store.listMailboxes();
  assert.deepEqual(list.map((m) => `${m.name.join('/')}${m.selectable ? '' : ' (noselect)'}`), ['INBOX', 'Empty', 'Entwürfe', 'Lists (noselect)', 'Lists/dev', 'a&b']);
  const theirList = (await dc(conf, loc, ['mailbox', 'list'])).split('\n').filter(Boolean).sort();
  assert.deepEqual(theirList, ['Empty', 'Entwürfe', 'INBOX', 'Lists', 'Lists/dev', 'a&b']);
  const inbox = await compare(store, conf, loc, ['INBOX'], bodies.get('INBOX'));
  assert.deepEqual(inbox.map((m) => [m.uid, ourFlags(m)]), [
    [1, '$Label1 Custom \\Seen'],
    [2, '$Label1 \\Seen'],
    [3, '\\Answered \\Deleted \\Draft \\Flagged'],
    [5, ''],
  ]);
  await compare(store, conf, loc, ['Lists', 'dev'], bodies.get('Lists/dev'));
  await compare(store, conf, loc, ['Entwürfe'], bodies.get('Entwürfe'));
  assert.deepEqual(await store.readSubscriptions(), [['INBOX'], ['Entwürfe'], ['a&b']]);
  assert.deepEqual(files.map(fileState), before, 'a read-only store left Dovecot\'s files alone');
  assert.deepEqual(w.list, []);
  // Message GUIDs are dsync header hashes; Dovecot's own mbox GUIDs are a different MD5.
  const { headerHash } = await import('../../src/storage/header-hash.js');
  assert.equal(inbox[0]!.guid, headerHash(Buffer.from(MESSAGES[0]!)));
});

test('dovecot oracle: Dovecot reads what our store wrote, and finds nothing to fix', { skip }, async (t) => {
  const dir = tempRoot(t);
  const conf = writeDoveadmConfig(path.join(dir, 'conf'));
  const root = path.join(dir, 'ours');
  fs.mkdirSync(root);
  chownTree(root); // our files then belong to the mail user too
  const loc = `mbox:${root}:INBOX=${root}/inbox`;
  const store = await openMbox(loc);
  await store.createMailbox(['Archive', '2024'], { guid: '11'.repeat(16), uidValidity: 1700000001 });
  await store.createMailbox(['Entwürfe'], { guid: '22'.repeat(16), uidValidity: 1700000002 });
  await store.createMailbox(['Empty'], { guid: '33'.repeat(16), uidValidity: 1700000003 });
  const inbox = await store.openMailbox(['INBOX']);
  const reqs: SaveRequest[] = MESSAGES.map((m, i) => ({
    uid: i + 1,
    guid: `g${i}`,
    flags: [Flag.Seen, Flag.Answered | Flag.Seen, Flag.Flagged | Flag.Draft, Flag.Deleted, 0][i]!,
    keywords: [[], ['$Forwarded'], ['$Junk', 'Work'], [], ['Work']][i]!,
    internalDate: 1704103200 + i * 3600,
    body: Buffer.from(m),
  }));
  await inbox.save(reqs.slice(0, 3));
  await inbox.save(reqs.slice(3));
  await inbox.updateFlags([{ uid: 2, flags: Flag.Seen, keywords: ['$Forwarded', 'Later'] }]);
  await inbox.expunge([4]);
  await inbox.renumber!([{ from: 1, to: 10 }]);
  await inbox.raiseUidNext(20);
  const archive = await store.openMailbox(['Archive', '2024']);
  await archive.save([{ ...reqs[0]!, uid: 3 }, { ...reqs[1]!, uid: 4 }]);
  await archive.expunge([3, 4]);
  const drafts = await store.openMailbox(['Entwürfe']);
  await drafts.save([{ ...reqs[2]!, uid: 7, flags: Flag.Draft, keywords: [] }]);
  await store.writeSubscriptions([['INBOX'], ['Entwürfe'], ['Archive', '2024']]);

  const files = ['inbox', 'Archive/2024', 'Entw&APw-rfe', 'Empty'].map((f) => path.join(root, f));
  const before = files.map(contentState);
  const bodies = await imapBodies(root, `${root}/inbox`, ['INBOX', 'Archive/2024', 'Entwürfe', 'Empty']);
  assert.deepEqual((await dc(conf, loc, ['mailbox', 'list'])).split('\n').filter(Boolean).sort(), ['Archive', 'Archive/2024', 'Empty', 'Entwürfe', 'INBOX']);
  assert.deepEqual((await dc(conf, loc, ['mailbox', 'list', '-s'])).split('\n').filter(Boolean).sort(), ['Archive/2024', 'Entwürfe', 'INBOX']);
  const msgs = await compare(store, conf, loc, ['INBOX'], bodies.get('INBOX'));
  assert.deepEqual(msgs.map((m) => [m.uid, ourFlags(m)]), [
    [2, '$Forwarded Later \\Seen'],
    [3, '$Junk Work \\Draft \\Flagged'],
    [5, 'Work'],
    [10, '\\Seen'],
  ]);
  assert.equal((await inbox.status()).uidNext, 20);
  const a = await compare(store, conf, loc, ['Archive', '2024'], bodies.get('Archive/2024'));
  assert.deepEqual(a, []);
  assert.equal((await archive.status()).uidNext, 5, 'the pseudo message keeps UIDNEXT of an emptied mailbox');
  await compare(store, conf, loc, ['Entwürfe'], bodies.get('Entwürfe'));
  await compare(store, conf, loc, ['Empty'], bodies.get('Empty'));
  // doveadm's reads above found our files clean: Dovecot rewrote nothing (it only reset the mtime).
  assert.deepEqual(files.map(contentState), before);
  // INTERNALDATE: the From_ line date, local time.
  const dates = parseTab(await dc(conf, loc, ['-f', 'tab', 'fetch', 'uid date.received', 'mailbox', 'INBOX', 'uid', '2']));
  const d = new Date((1704103200 + 3600) * 1000);
  const pad = (n: number) => String(n).padStart(2, '0');
  assert.equal(dates[0]!['date.received'], `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`);
});

test('dovecot oracle: Dovecot changes a file we wrote, we change it again, Dovecot reads it', { skip }, async (t) => {
  const dir = tempRoot(t);
  const conf = writeDoveadmConfig(path.join(dir, 'conf'));
  const root = path.join(dir, 'shared');
  fs.mkdirSync(root);
  chownTree(root);
  const loc = `mbox:${root}:INBOX=${root}/inbox`;
  const store = await openMbox(loc);
  const inbox = await store.openMailbox(['INBOX']);
  await inbox.save(MESSAGES.map((m, i) => ({ uid: i + 1, guid: `g${i}`, flags: 0, keywords: [], internalDate: 1704103200 + i, body: Buffer.from(m) })));
  // Dovecot: flags (it pads its headers and rewrites in place), a keyword, an expunge, a new mail.
  await dc(conf, loc, ['flags', 'add', '\\Seen Dove', 'mailbox', 'INBOX', 'uid', '1:3']);
  await dc(conf, loc, ['expunge', 'mailbox', 'INBOX', 'uid', '2']);
  await dc(conf, loc, ['save', '-m', 'INBOX'], 'Subject: from dovecot\nMessage-ID: <dc@x>\n\nhello\nFrom x@y Tue Jan  2 10:00:00 2024\n');
  const fresh = await (await openMbox(loc)).openMailbox(['INBOX']);
  assert.deepEqual((await fresh.scan()).map((m) => [m.uid, ourFlags(m)]), [
    [1, 'Dove \\Seen'],
    [3, 'Dove \\Seen'],
    [4, ''],
    [5, ''],
    [6, ''],
  ]);
  assert.equal((await bodyOf(fresh, 6)).toString(), 'Subject: from dovecot\nMessage-ID: <dc@x>\n\nhello\nFrom x@y Tue Jan  2 10:00:00 2024\n');
  // We change it again.
  await fresh.updateFlags([{ uid: 1, flags: Flag.Flagged, keywords: ['Dove', 'Ours'] }]);
  await fresh.expunge([3]);
  await fresh.save([{ uid: 7, guid: 'x', flags: Flag.Seen, keywords: ['Ours'], internalDate: 1704103300, body: Buffer.from('Subject: ours again\n\nbye\n') }]);
  const bodies = await imapBodies(root, `${root}/inbox`, ['INBOX']);
  const msgs = await compare(store, conf, loc, ['INBOX'], bodies.get('INBOX'));
  assert.deepEqual(msgs.map((m) => [m.uid, ourFlags(m)]), [
    [1, 'Dove Ours \\Flagged'],
    [4, ''],
    [5, ''],
    [6, ''],
    [7, 'Ours \\Seen'],
  ]);
});

test('dovecot oracle: Dovecot waits for our dotlock on an mbox', { skip }, async (t) => {
  const dir = tempRoot(t);
  const conf = writeDoveadmConfig(path.join(dir, 'conf'));
  const root = path.join(dir, 'locked');
  fs.mkdirSync(root);
  chownTree(root);
  const loc = `mbox:${root}:INBOX=${root}/inbox`;
  const store = await openMbox(loc);
  const inbox = await store.openMailbox(['INBOX']);
  await inbox.save([{ uid: 1, guid: 'g', flags: 0, keywords: [], internalDate: 1704103200, body: Buffer.from('Subject: x\n\nx\n') }]);
  const { DotLock } = await import('../../src/storage/maildir/lock.js');
  const lock = await DotLock.acquire({ readOnly: false, warn: () => undefined, dirMode: 0o755, fileMode: 0o644 }, `${root}/inbox`);
  const t0 = Date.now();
  const flagging = dc(conf, loc, ['flags', 'add', '\\Answered', 'mailbox', 'INBOX', 'uid', '1']);
  await new Promise((r) => setTimeout(r, 1500));
  assert.doesNotMatch(fs.readFileSync(`${root}/inbox`, 'utf8'), /X-Status: A/, 'Dovecot has not written while we hold the lock');
  await lock.release();
  await flagging;
  assert.ok(Date.now() - t0 >= 1400, 'doveadm waited for the lock');
  assert.match(fs.readFileSync(`${root}/inbox`, 'utf8'), /X-Status: A/);
  const fresh = await (await openMbox(loc, { readOnly: true })).openMailbox(['INBOX']);
  assert.equal((await fresh.scan())[0]!.flags, Flag.Answered);
});
