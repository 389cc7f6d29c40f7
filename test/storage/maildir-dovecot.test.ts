// Dovecot as an oracle: a maildir written by our store must look the same to Dovecot 2.3
// (UIDs, flags, GUIDs, mailbox GUID/UIDVALIDITY/UIDNEXT, subscriptions), and a maildir written by
// Dovecot must look the same to our store. Dovecot always gets a *copy* (it writes indexes).
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { Flag, flagNames } from '../../src/model/flags.js';
import type { MailStore, StoreMessage } from '../../src/storage/types.js';
import { openMaildir, tempDir, warnings } from './helpers.js';

function findDoveadm(): string | null {
  for (const dir of (process.env['PATH'] ?? '').split(':').concat(['/usr/bin', '/usr/local/bin'])) {
    const p = path.join(dir, 'doveadm');
    if (dir && fs.existsSync(p)) return p;
  }
  return null;
}

interface Dovecot {
  run(args: string[], input?: string): string;
}

function setupDovecot(t: TestContext, dir: string, maildir: string, extra = ''): Dovecot | null {
  const doveadm = findDoveadm();
  if (!doveadm) {
    t.skip('doveadm not installed');
    return null;
  }
  if (process.getuid?.() !== 0) {
    t.skip('running doveadm standalone with mail_uid needs root');
    return null;
  }
  const home = path.join(dir, 'home');
  fs.mkdirSync(home, { recursive: true });
  fs.mkdirSync(path.join(dir, 'run'), { recursive: true });
  fs.mkdirSync(path.join(dir, 'state'), { recursive: true });
  const conf = path.join(dir, 'dovecot.conf');
  fs.writeFileSync(
    conf,
    [
      `base_dir = ${dir}/run`,
      `state_dir = ${dir}/state`,
      `log_path = ${dir}/dovecot.log`,
      'mail_uid = 65534',
      'mail_gid = 65534',
      'first_valid_uid = 1',
      'first_valid_gid = 1',
      'ssl = no',
      'namespace inbox {',
      '  inbox = yes',
      '  separator = /',
      '  prefix =',
      '}',
      'passdb {',
      '  driver = static',
      '  args = password=x',
      '}',
      'userdb {',
      '  driver = static',
      `  args = uid=65534 gid=65534 home=${home}`,
      '}',
      '',
    ].join('\n'),
  );
  fs.chmodSync(dir, 0o755);
  spawnSync('chown', ['-R', '65534:65534', dir]);
  const env = { ...process.env, HOME: home, USER: 'dsynctest' };
  return {
    run(args: string[], input?: string): string {
      const r = spawnSync(doveadm, ['-c', conf, '-o', `mail_location=maildir:${maildir}${extra}`, ...args], {
        env,
        input,
        encoding: 'utf8',
      });
      if (r.status !== 0) throw new Error(`doveadm ${args.join(' ')} failed (${r.status}): ${r.stderr}${r.stdout}`);
      return r.stdout;
    },
  };
}

function parseTab(out: string): Record<string, string>[] {
  const lines = out.split('\n').filter((l) => l !== '');
  const head = lines[0]!.split('\t');
  return lines.slice(1).map((l) => Object.fromEntries(l.split('\t').map((v, i) => [head[i]!, v])));
}

function ourFlagString(m: StoreMessage): string {
  return [...flagNames(m.flags), ...m.keywords].sort().join(' ');
}

function dovecotFlagString(s: string): string {
  return s
    .split(' ')
    .filter((f) => f !== '' && f !== '\\Recent')
    .sort()
    .join(' ');
}

async function compareMailbox(store: MailStore, dc: Dovecot, name: string[]): Promise<StoreMessage[]> {
  const box = await store.openMailbox(name);
  const ours = await box.scan();
  const theirs = parseTab(dc.run(['-f', 'tab', 'fetch', 'uid flags guid size.physical date.received', 'mailbox', name.join('/'), 'all']));
  assert.deepEqual(
    theirs.map((r) => [Number(r['uid']), r['guid'], dovecotFlagString(r['flags']!), Number(r['size.physical'])]),
    ours.map((m) => [m.uid, m.guid, ourFlagString(m), m.size]),
    `messages of ${name.join('/')}`,
  );
  return ours;
}

test('dovecot oracle: Dovecot reads what our store wrote', async (t) => {
  const dir = tempDir(t, 'dsync-oracle-');
  const ours = path.join(dir, 'ours');
  const copy = path.join(dir, 'copy');
  const dc = setupDovecot(t, dir, copy);
  if (!dc) return;
  const store = await openMaildir(`maildir:${ours}`);
  await store.createMailbox(['Archive', '2024'], { guid: '11111111111111111111111111111111', uidValidity: 1700000001 });
  await store.createMailbox(['Entwürfe'], { guid: '22222222222222222222222222222222', uidValidity: 1700000002 });
  const inbox = await store.openMailbox(['INBOX']);
  const body = (n: number) => `From: a@example.org\nSubject: m${n}\nMessage-ID: <m${n}@x>\n\nbody ${n}\n`;
  const sized = (n: number, g: string) => `${g},S=${Buffer.byteLength(body(n))},W=${Buffer.byteLength(body(n)) + 5}`;
  await inbox.save([
    { uid: 1, guid: sized(1, '1704103200.M1P1.corpus'), flags: Flag.Seen, keywords: [], internalDate: 1704103200, body: Buffer.from(body(1)) },
    { uid: 2, guid: '1704189600.M2P1.corpus', flags: Flag.Answered | Flag.Seen, keywords: ['$Forwarded'], internalDate: 1704189600, body: Buffer.from(body(2)) },
    { uid: 3, guid: '1704276000.M3P1.corpus,S=1', flags: Flag.Flagged, keywords: ['$Junk', 'Work'], internalDate: 1704276000, body: Buffer.from(body(3)) },
    { uid: 7, guid: 'some-imap-guid-without-size', flags: Flag.Deleted | Flag.Draft, keywords: [], internalDate: 1704362400, body: Buffer.from(body(4)) },
    { uid: 8, guid: 'expunge-me', flags: 0, keywords: [], internalDate: 1704362400, body: Buffer.from(body(5)) },
  ]);
  await inbox.updateFlags([{ uid: 2, flags: Flag.Seen, keywords: ['$Forwarded', 'Work'] }]);
  await inbox.expunge([8]);
  await inbox.raiseUidNext(20);
  const drafts = await store.openMailbox(['Entwürfe']);
  await drafts.save([{ uid: 5, guid: 'draft-guid', flags: Flag.Draft, keywords: [], internalDate: 1704535200, body: Buffer.from(body(6)) }]);
  await store.writeSubscriptions([['INBOX'], ['Entwürfe'], ['Archive', '2024']]);
  const inboxStatus = await inbox.status();

  fs.cpSync(ours, copy, { recursive: true, preserveTimestamps: true });
  spawnSync('chown', ['-R', '65534:65534', copy]);

  const msgs = await compareMailbox(store, dc, ['INBOX']);
  assert.deepEqual(msgs.map((m) => m.uid), [1, 2, 3, 7]);
  await compareMailbox(store, dc, ['Entwürfe']);
  await compareMailbox(store, dc, ['Archive', '2024']);
  // INTERNALDATE as Dovecot sees it.
  const dates = parseTab(dc.run(['-f', 'tab', 'fetch', 'uid date.received', 'mailbox', 'INBOX', 'all']));
  assert.equal(dates[0]!['date.received'], '2024-01-01 10:00:00');

  const status = parseTab(dc.run(['-f', 'tab', 'mailbox', 'status', 'guid uidvalidity uidnext messages', '*']));
  const byName = Object.fromEntries(status.map((r) => [r['mailbox'], r]));
  assert.deepEqual(byName['INBOX'], { mailbox: 'INBOX', messages: '4', uidnext: '20', uidvalidity: String(inboxStatus.uidValidity), guid: inboxStatus.guid });
  assert.deepEqual(byName['Entwürfe'], { mailbox: 'Entwürfe', messages: '1', uidnext: '6', uidvalidity: '1700000002', guid: '22222222222222222222222222222222' });
  assert.deepEqual(byName['Archive/2024'], { mailbox: 'Archive/2024', messages: '0', uidnext: '1', uidvalidity: '1700000001', guid: '11111111111111111111111111111111' });
  const subscribed = dc.run(['mailbox', 'list', '-s']).split('\n').filter(Boolean).sort();
  assert.deepEqual(subscribed, ['Archive/2024', 'Entwürfe', 'INBOX']);
  // Bodies are byte-identical.
  const text = dc.run(['fetch', 'text', 'mailbox', 'INBOX', 'uid', '7']);
  assert.ok(text.includes('body 4'), text);
});

test('dovecot oracle: our store reads what Dovecot wrote (saves, flags, keywords, expunges, folders)', async (t) => {
  const dir = tempDir(t, 'dsync-oracle-');
  const maildir = path.join(dir, 'dc');
  const dc = setupDovecot(t, dir, maildir);
  if (!dc) return;
  const mail = (n: number) => `From: a@example.org\r\nSubject: dc${n}\r\nMessage-ID: <dc${n}@x>\r\n\r\nbody ${n}\r\n`;
  dc.run(['mailbox', 'create', 'Archiv/Alt', 'Entwürfe', 'a&b']);
  for (let i = 1; i <= 4; i++) dc.run(['save', '-m', 'INBOX'], mail(i));
  dc.run(['save', '-m', 'Entwürfe'], mail(9));
  dc.run(['flags', 'add', '\\Seen $Label1 Custom', 'mailbox', 'INBOX', 'uid', '1:2']);
  dc.run(['flags', 'add', '\\Flagged \\Deleted', 'mailbox', 'INBOX', 'uid', '3']);
  dc.run(['flags', 'remove', 'Custom', 'mailbox', 'INBOX', 'uid', '2']);
  dc.run(['expunge', 'mailbox', 'INBOX', 'uid', '4']);
  dc.run(['mailbox', 'subscribe', 'INBOX', 'Entwürfe', 'a&b']);

  // Read-only: Dovecot's maildir is not modified by us.
  const w = warnings();
  const store = await openMaildir(`maildir:${maildir}`, { readOnly: true, warn: w.warn });
  const list = await store.listMailboxes();
  const status = parseTab(dc.run(['-f', 'tab', 'mailbox', 'status', 'guid uidvalidity uidnext', '*']));
  for (const r of status) {
    const m = list.find((x) => x.name.join('/') === r['mailbox']);
    assert.ok(m, `listed ${r['mailbox']}`);
    assert.deepEqual([m.guid, m.uidValidity, m.uidNext], [r['guid'], Number(r['uidvalidity']), Number(r['uidnext'])], r['mailbox']);
  }
  assert.deepEqual(list.map((m) => `${m.name.join('/')}${m.selectable ? '' : ' (noselect)'}`), [
    'INBOX',
    'Archiv (noselect)',
    'Archiv/Alt',
    'Entwürfe',
    'a&b',
  ]);
  const inbox = await compareMailbox(store, dc, ['INBOX']);
  assert.deepEqual(inbox.map((m) => [m.uid, ourFlagString(m)]), [
    [1, '$Label1 Custom \\Seen'],
    [2, '$Label1 \\Seen'],
    [3, '\\Deleted \\Flagged'],
  ]);
  await compareMailbox(store, dc, ['Entwürfe']);
  assert.deepEqual(await store.readSubscriptions(), [['INBOX'], ['Entwürfe'], ['a&b']]);
  assert.deepEqual(w.list, []);
});

test('dovecot oracle: LAYOUT=fs with UTF-8 names', async (t) => {
  const dir = tempDir(t, 'dsync-oracle-');
  const ours = path.join(dir, 'ours');
  const copy = path.join(dir, 'copy');
  const dc = setupDovecot(t, dir, copy, ':LAYOUT=fs:UTF-8');
  if (!dc) return;
  const store = await openMaildir(`maildir:${ours}:LAYOUT=fs:UTF-8`);
  await store.createMailbox(['Über', 'Sub'], { guid: '33333333333333333333333333333333', uidValidity: 1700000003 });
  await store.createMailbox(['x.y'], { guid: '44444444444444444444444444444444', uidValidity: 1700000004 });
  const sub = await store.openMailbox(['Über', 'Sub']);
  await sub.save([{ uid: 3, guid: 'fs-guid', flags: Flag.Seen | Flag.Flagged, keywords: ['$Label2'], internalDate: 1704103200, body: Buffer.from('Subject: fs\n\nx\n') }]);
  await store.writeSubscriptions([['Über', 'Sub'], ['x.y']]);
  fs.cpSync(ours, copy, { recursive: true, preserveTimestamps: true });
  spawnSync('chown', ['-R', '65534:65534', copy]);
  assert.deepEqual(dc.run(['mailbox', 'list']).split('\n').filter(Boolean).sort(), ['INBOX', 'x.y', 'Über', 'Über/Sub']);
  assert.deepEqual(dc.run(['mailbox', 'list', '-s']).split('\n').filter(Boolean).sort(), ['x.y', 'Über/Sub']);
  await compareMailbox(store, dc, ['Über', 'Sub']);
  const st = parseTab(dc.run(['-f', 'tab', 'mailbox', 'status', 'guid uidvalidity uidnext', 'Über/Sub']));
  assert.deepEqual(st, [{ mailbox: 'Über/Sub', guid: '33333333333333333333333333333333', uidvalidity: '1700000003', uidnext: '4' }]);
});
