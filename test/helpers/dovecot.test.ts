// Proves the oracle harness itself: Dovecot sees what we wrote, changes made over IMAP
// show up, doveadm sync converges, and no server outlives its test.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, test } from 'node:test';
import { makeMessage, maildirFolderPath, writeMaildirMessage } from './corpus.js';
import {
  MAIL_UID,
  ORACLE_PASSWORD,
  chownTree,
  diffViews,
  doveadmSync,
  dovecotPids,
  dovecotSkipReason,
  findMailbox,
  imapSession,
  imapView,
  isAlive,
  normalizeView,
  prepareOracleCopy,
  removeOracleCopy,
  startImapServer,
  viewMaildir,
  viewMaildirs,
  writeDoveadmConfig,
  type ImapView,
} from './dovecot.js';
import { hashTree, makeTempDir, removeTree } from './tmp.js';

const skip = dovecotSkipReason();
const dirs: string[] = [];
after(() => dirs.forEach(removeTree));

function tempRoot(prefix: string): string {
  const d = makeTempDir(prefix);
  dirs.push(d);
  return path.join(d, 'mail');
}

interface Spec {
  mailbox: string[];
  seed: string;
  flags: string;
  date: number;
  inNew?: boolean;
  crlf?: boolean;
  eightBit?: boolean;
}

const MAILDIR_FLAG: Record<string, string> = { D: '\\Draft', F: '\\Flagged', R: '\\Answered', S: '\\Seen', T: '\\Deleted' };

/** What IMAP serves for a file: Dovecot converts bare LF to CRLF. */
function served(body: Buffer): Buffer {
  return Buffer.from(body.toString('latin1').replace(/\r?\n/g, '\r\n'), 'latin1');
}

function build(root: string, specs: Spec[]): Map<string, Buffer> {
  const bodies = new Map<string, Buffer>();
  for (const s of specs) {
    const body = makeMessage(s.seed, { crlf: s.crlf, eightBit: s.eightBit });
    bodies.set(s.seed, body);
    writeMaildirMessage(maildirFolderPath(root, s.mailbox), { body, flags: s.flags, internalDate: s.date, inNew: s.inNew });
  }
  return bodies;
}

const T0 = 1_700_000_000;
const FIXTURE: Spec[] = [
  { mailbox: ['INBOX'], seed: 'in-1', flags: 'FS', date: T0 },
  { mailbox: ['INBOX'], seed: 'in-2', flags: 'RS', date: T0 + 100 },
  { mailbox: ['INBOX'], seed: 'in-3', flags: '', date: T0 + 200, inNew: true },
  { mailbox: ['Archive'], seed: 'ar-1', flags: 'S', date: T0 - 86_400 * 365 },
  { mailbox: ['Archive', '2024'], seed: 'ar24-1', flags: '', date: T0 + 300 },
  { mailbox: ['Archive', '2024'], seed: 'ar24-2', flags: 'DT', date: T0 + 400, crlf: true },
  { mailbox: ['Entwürfe'], seed: 'dr-1', flags: 'D', date: T0 + 500, eightBit: true },
];

function makeFixture(): { root: string; bodies: Map<string, Buffer> } {
  const root = tempRoot('harness-fixture-');
  const bodies = build(root, FIXTURE);
  // Dovecot 2.3 subscriptions file, version 2: modified UTF-7 names, TAB as hierarchy separator.
  fs.writeFileSync(path.join(root, 'subscriptions'), 'V\t2\n\nArchive\tNot There\nEntw&APw-rfe\nINBOX\n');
  return { root, bodies };
}

test('a view shows the folders, messages, flags, dates and sizes we wrote, and leaves the source alone', { skip }, async () => {
  const { root, bodies } = makeFixture();
  assert.ok(fs.existsSync(path.join(root, '.Entw&APw-rfe', 'cur')), 'non-ASCII folder is stored in modified UTF-7');
  const before = await hashTree(root);
  const t0 = performance.now();
  const view = await viewMaildir(root);
  const ms = performance.now() - t0;
  assert.equal(await hashTree(root), before, 'the source maildir is untouched');
  assert.ok(ms < 5000, `viewMaildir took ${ms} ms`);

  assert.deepEqual(
    view.mailboxes.map((m) => m.name),
    [['Archive'], ['Archive', '2024'], ['Entwürfe'], ['INBOX']],
  );
  assert.deepEqual(view.subscriptions, [['Archive', 'Not There'], ['Entwürfe'], ['INBOX']]);
  for (const box of view.mailboxes) {
    assert.deepEqual(box.attributes, []);
    const specs = FIXTURE.filter((s) => s.mailbox.join('/') === box.name.join('/'));
    const st = box.status;
    assert.ok(st, `${box.name.join('/')} is selectable`);
    assert.ok(st.uidValidity > 0);
    assert.equal(st.uidNext, specs.length + 1);
    // Dovecot assigns UIDs to new files in file-name (= time) order.
    assert.deepEqual(
      st.messages,
      specs.map((s, i) => {
        const bytes = served(bodies.get(s.seed)!);
        return {
          uid: i + 1,
          flags: [...s.flags].map((f) => MAILDIR_FLAG[f]).sort(),
          internalDate: s.date,
          size: bytes.length,
          sha256: createHash('sha256').update(bytes).digest('hex'),
        };
      }),
      `messages of ${box.name.join('/')}`,
    );
  }
  assert.deepEqual(diffViews(view, view), []);
});

test('changes made through imapSession show up in a new view of the same (live) maildir', { skip }, async (t) => {
  const { root } = makeFixture();
  chownTree(path.dirname(root));
  const server = await startImapServer({ users: [{ name: 'alice', mailLocation: `maildir:${root}` }], t });
  const client = await imapSession(server.port, 'alice', ORACLE_PASSWORD);
  try {
    const appended = makeMessage('appended', { crlf: true });
    const res = await client.append('INBOX', appended, ['\\Seen', '$Important'], new Date((T0 + 1000) * 1000));
    assert.ok(res && res.uid === 4, `APPEND got UID ${res && res.uid}`);
    await client.mailboxCreate(['Projects', 'Q1']);
    await client.mailboxRename('Archive', 'Old');
    await client.mailboxDelete('Entwürfe');
    await client.mailboxUnsubscribe('INBOX');
    const lock = await client.getMailboxLock('INBOX');
    try {
      await client.messageFlagsAdd('2', ['\\Flagged'], { uid: true });
      await client.messageFlagsRemove('1', ['\\Seen'], { uid: true });
      assert.equal(await client.messageDelete('3', { uid: true }), true);
    } finally {
      lock.release();
    }
  } finally {
    await client.logout();
  }

  const live = await imapView(server.port, 'alice', ORACLE_PASSWORD);
  assert.deepEqual(
    live.mailboxes.map((m) => [m.name.join('/'), m.attributes.join(' ')]),
    [
      ['INBOX', ''],
      ['Old', ''],
      ['Old/2024', ''],
      ['Projects', '\\Noselect'],
      ['Projects/Q1', ''],
    ],
  );
  // imapflow's mailboxCreate subscribes; RENAME doesn't move subscriptions in Dovecot.
  assert.deepEqual(live.subscriptions, [['Archive', 'Not There'], ['Entwürfe'], ['Projects', 'Q1']]);
  const inbox = findMailbox(live, 'INBOX')!.status!;
  assert.deepEqual(
    inbox.messages.map((m) => [m.uid, m.flags, m.internalDate]),
    [
      [1, ['\\Flagged'], T0],
      [2, ['\\Answered', '\\Flagged', '\\Seen'], T0 + 100],
      [4, ['$Important', '\\Seen'], T0 + 1000],
    ],
  );
  assert.equal(inbox.uidNext, 5);
  assert.equal(findMailbox(live, ['Old', '2024'])!.status!.messages.length, 2);
  assert.ok(fs.existsSync(path.join(root, 'dovecot-uidlist')), 'Dovecot wrote to the live dir');
  assert.ok(fs.existsSync(path.join(root, '.Old.2024', 'cur')));

  // Viewing never marks anything \Seen: a second view is identical.
  assert.deepEqual(await imapView(server.port, 'alice', ORACLE_PASSWORD), live);
  await server.stop();
  // A copy of the dir, served by another server, looks exactly the same (UIDVALIDITY included).
  const viaCopy = await viewMaildir(root);
  assert.deepEqual(diffViews(live, viaCopy, { names: ['live', 'copy'] }), []);
  assert.deepEqual(viaCopy, live);
});

test('doveadm backup then two-way sync make two maildirs indistinguishable', { skip }, async () => {
  const a = makeFixture().root;
  const b = tempRoot('harness-b-');
  fs.mkdirSync(b);
  // Dovecot must only ever see trees owned by its mail uid.
  chownTree(path.dirname(a));
  chownTree(path.dirname(b));
  const confDir = makeTempDir('harness-doveadm-');
  dirs.push(confDir);
  const configPath = writeDoveadmConfig(confDir);
  const sync = (mode: 'sync' | 'backup') =>
    doveadmSync({ configPath, user: 'oracle', locationA: `maildir:${a}`, locationB: `maildir:${b}`, mode });

  // 1. backup into an empty replica: everything, UIDVALIDITY and UIDs included.
  const r1 = await sync('backup');
  assert.equal(r1.code, 0, `${r1.args.join(' ')}\n${r1.stderr}`);
  assert.equal(fs.statSync(path.join(b, 'dovecot-uidlist')).uid, MAIL_UID);
  const [a1, b1] = await viewMaildirs([a, b]);
  assert.deepEqual(diffViews(a1, b1, { names: ['a', 'b'] }), []);
  assert.deepEqual(a1.mailboxes.map((m) => m.name.join('/')), ['Archive', 'Archive/2024', 'Entwürfe', 'INBOX']);

  // 2. both sides change, as an MDA and a MUA would, then a two-way sync merges them.
  const deliver = (root: string, box: string[], seed: string, flags: string, date: number): void => {
    chownTree(writeMaildirMessage(maildirFolderPath(root, box), { body: makeMessage(seed), flags, internalDate: date, inNew: !flags }));
  };
  deliver(a, ['INBOX'], 'a-new', '', T0 + 1000);
  deliver(b, ['Archive', '2024'], 'b-new', 'S', T0 + 2000);
  fs.mkdirSync(maildirFolderPath(b, ['Sent']));
  deliver(b, ['Sent'], 'b-sent', 'S', T0 + 3000);
  chownTree(path.dirname(b));
  // A MUA flags a message in b by renaming its file.
  const cur = path.join(b, '.Archive', 'cur');
  const [file] = fs.readdirSync(cur);
  fs.renameSync(path.join(cur, file), path.join(cur, file.replace(/:2,S$/, ':2,FS')));
  const [a2pre, b2pre] = await viewMaildirs([a, b]);
  const before = diffViews(a2pre, b2pre, { names: ['a', 'b'] });
  assert.ok(before.includes('mailbox "Sent": only in b'), before.join('\n'));
  assert.ok(before.includes('mailbox "Archive" UID 1: FLAGS a=(\\Seen) b=(\\Flagged \\Seen)'), before.join('\n'));

  const r2 = await sync('sync');
  assert.equal(r2.code, 0, `${r2.args.join(' ')}\n${r2.stderr}`);
  const [a2, b2] = await viewMaildirs([a, b]);
  assert.deepEqual(diffViews(a2, b2, { names: ['a', 'b'] }), []);
  assert.deepEqual(a2, b2);
  assert.deepEqual(a2.mailboxes.map((m) => m.name.join('/')), ['Archive', 'Archive/2024', 'Entwürfe', 'INBOX', 'Sent']);
  assert.equal(findMailbox(a2, 'INBOX')!.status!.messages.length, 4);
  assert.equal(findMailbox(a2, 'Archive/2024')!.status!.messages.length, 3);
  assert.deepEqual(findMailbox(a2, 'Archive')!.status!.messages[0].flags, ['\\Flagged', '\\Seen']);

  // 3. backup reverts a change made on the replica only.
  deliver(b, ['Sent'], 'b-late', 'S', T0 + 4000);
  const r3 = await sync('backup');
  assert.equal(r3.code, 0, `${r3.args.join(' ')}\n${r3.stderr}`);
  const [a3, b3] = await viewMaildirs([a, b]);
  assert.deepEqual(diffViews(a3, b3), []);
  assert.equal(findMailbox(b3, 'Sent')!.status!.messages.length, 1);
  assert.deepEqual(normalizeView(a3, { uidNext: false }), normalizeView(a2, { uidNext: false }));
});

test('prepareOracleCopy makes a Dovecot-owned copy and removeOracleCopy cleans it up', { skip }, async () => {
  const { root } = makeFixture();
  const copy = prepareOracleCopy(root);
  try {
    assert.equal(await hashTree(copy), await hashTree(root));
    assert.equal(fs.statSync(path.join(copy, 'cur')).uid, MAIL_UID);
    assert.equal(fs.statSync(path.dirname(copy)).uid, MAIL_UID);
    assert.notEqual(fs.statSync(root).uid, MAIL_UID);
  } finally {
    removeOracleCopy(copy);
  }
  assert.equal(fs.existsSync(path.dirname(copy)), false);
  assert.throws(() => removeOracleCopy(root));
});

test('diffViews explains differences, and stops at the limit', () => {
  const msg = { uid: 1, flags: ['\\Seen'], internalDate: 100, size: 10, sha256: 'a'.repeat(64) };
  const a: ImapView = {
    mailboxes: [
      { name: ['INBOX'], attributes: [], status: { uidValidity: 1, uidNext: 2, messages: [msg] } },
      { name: ['X'], attributes: ['\\Noselect'], status: null },
    ],
    subscriptions: [['INBOX']],
  };
  const b: ImapView = {
    mailboxes: [
      {
        name: ['INBOX'],
        attributes: [],
        status: { uidValidity: 2, uidNext: 3, messages: [{ ...msg, flags: [], internalDate: 101, size: 11, sha256: 'b'.repeat(64) }, { ...msg, uid: 2 }] },
      },
      { name: ['Y', 'Z'], attributes: [], status: { uidValidity: 1, uidNext: 1, messages: [] } },
    ],
    subscriptions: [],
  };
  assert.deepEqual(diffViews(a, b), [
    'mailbox "INBOX": UIDVALIDITY A=1 B=2',
    'mailbox "INBOX": UIDNEXT A=2 B=3',
    'mailbox "INBOX" UID 1: FLAGS A=(\\Seen) B=()',
    'mailbox "INBOX" UID 1: INTERNALDATE A=100 B=101 (-1s)',
    'mailbox "INBOX" UID 1: RFC822.SIZE A=10 B=11',
    'mailbox "INBOX" UID 1: body sha256 A=aaaaaaaaaaaa B=bbbbbbbbbbbb',
    'mailbox "INBOX" UID 2: 0 message(s) in A, 1 in B',
    'mailbox "X": only in A',
    'mailbox "Y/Z": only in B',
    'subscription "INBOX": only in A',
  ]);
  assert.deepEqual(diffViews(a, b, { limit: 3 }).slice(3), ['... and 7 more difference(s)']);
  assert.deepEqual(diffViews(b, b), []);
  const n = normalizeView(b, { uidValidity: false, uids: false });
  assert.equal(n.mailboxes[0].status!.uidValidity, 0);
  assert.deepEqual(
    n.mailboxes[0].status!.messages.map((m) => m.uid),
    [0, 0],
  );
});

test('startImapServer: reports a failed start with the log, and stop() leaves no process behind', { skip }, async (t) => {
  const root = tempRoot('harness-empty-');
  fs.mkdirSync(root);
  chownTree(path.dirname(root));
  await assert.rejects(
    startImapServer({ users: [{ name: 'u', mailLocation: `maildir:${root}` }], timeoutMs: 0 }),
    (e: Error) => /dovecot did not start listening .* within 0 ms/.test(e.message) && /dovecot\.log \(tail\)/.test(e.message),
  );

  const server = await startImapServer({ users: [{ name: 'u', mailLocation: `maildir:${root}` }], t });
  assert.ok(server.startupMs < 10_000);
  const pids = dovecotPids(server);
  assert.ok(pids.length >= 1, 'the master is running');
  const client = await imapSession(server.port, 'u', ORACLE_PASSWORD);
  await client.noop();
  // Stop while a client is still connected: its imap process must go too.
  const imapPids = dovecotPids(server);
  assert.ok(imapPids.length >= 4, `master and children (log, config, auth, imap, ...): ${imapPids.join(' ')}`);
  const t0 = performance.now();
  await server.stop();
  await server.stop();
  const stopMs = performance.now() - t0;
  client.close();
  for (const p of new Set([...pids, ...imapPids])) assert.equal(isAlive(p), false, `pid ${p} still alive`);
  assert.equal(fs.existsSync(server.dir), false, 'config dir removed');
  assert.ok(stopMs < 5000, `stop took ${stopMs} ms`);
  t.diagnostic(`startup ${server.startupMs.toFixed(0)} ms, stop ${stopMs.toFixed(0)} ms`);
});

test('a test process that crashes or is killed leaves no dovecot behind', { skip }, async () => {
  const root = tempRoot('harness-crash-');
  fs.mkdirSync(root);
  chownTree(path.dirname(root));
  const helper = new URL('./dovecot.js', import.meta.url).href;
  const script = (ending: string): string => `
    import { startImapServer, imapSession, dovecotPids } from ${JSON.stringify(helper)};
    const server = await startImapServer({ users: [{ name: 'u', mailLocation: ${JSON.stringify(`maildir:${root}`)} }] });
    const client = await imapSession(server.port, 'u', 'pass');
    await client.noop();
    console.log(JSON.stringify({ pids: dovecotPids(server), dir: server.dir }));
    ${ending}
  `;
  const run = async (ending: string, kill: boolean): Promise<void> => {
    const child = spawn(process.execPath, ['--input-type=module', '-e', script(ending)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const line = await new Promise<string>((resolve, reject) => {
      child.stdout.on('data', (d: Buffer) => {
        out += d.toString();
        if (out.includes('\n')) resolve(out.split('\n')[0]);
      });
      child.once('exit', () => reject(new Error(`helper exited early: ${err}`)));
    });
    const { pids, dir } = JSON.parse(line) as { pids: number[]; dir: string };
    assert.ok(pids.length >= 4, `pids ${pids.join(' ')}`);
    if (kill) child.kill('SIGKILL');
    await new Promise((resolve) => (child.exitCode !== null || child.signalCode !== null ? resolve(null) : child.once('exit', resolve)));
    const deadline = performance.now() + 5_000;
    while (pids.some(isAlive) && performance.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual(pids.filter(isAlive), [], `${kill ? 'SIGKILL' : ending}: dovecot processes left running`);
    if (!kill) assert.equal(fs.existsSync(dir), false, 'an uncaught exception still removes the config dir');
    removeTree(dir);
  };
  await Promise.all([
    run("throw new Error('test crashed');", false),
    run('setInterval(() => {}, 1000);', true),
  ]);
});
