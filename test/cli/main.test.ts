import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { main, type MainIO } from '../../src/cli/main.js';
import { VERSION } from '../../src/version.js';
import type { RunSyncOptions, RunSyncResult } from '../../src/sync/run.js';

interface Harness {
  io: MainIO;
  out: () => string;
  err: () => string;
  syncCalls: RunSyncOptions[];
  switched: Array<[number, number]>;
}

/**
 * A main() environment with captured output, a fake engine (records its options, returns
 * `result`), a fake uid and a recording switchUser: nothing here touches real mail or privileges.
 */
function harness(opts: { uid?: number; result?: RunSyncResult | Error; passwdPath?: string; groupPath?: string } = {}): Harness {
  let out = '';
  let err = '';
  const syncCalls: RunSyncOptions[] = [];
  const switched: Array<[number, number]> = [];
  const io: MainIO = {
    stdout: { write: (s: string) => (out += s) },
    stderr: { write: (s: string) => (err += s) },
    env: { HOME: '/home/tester' },
    getuid: () => opts.uid ?? 1000,
    switchUser: (uid, gid) => switched.push([uid, gid]),
    engine: {
      runSync: async (o) => {
        syncCalls.push(o);
        const r = opts.result ?? { exitCode: 0, summary: [] };
        if (r instanceof Error) throw r;
        return r;
      },
      runServer: async () => {
        throw new Error('runServer not expected');
      },
    },
  };
  if (opts.passwdPath) io.passwdPath = opts.passwdPath;
  if (opts.groupPath) io.groupPath = opts.groupPath;
  return { io, out: () => out, err: () => err, syncCalls, switched };
}

function tempDir(t: { after: (fn: () => void) => void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'dsync-main-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function systemFiles(dir: string): { passwdPath: string; groupPath: string } {
  const passwdPath = join(dir, 'passwd');
  const groupPath = join(dir, 'group');
  writeFileSync(passwdPath, 'root:x:0:0:root:/root:/bin/sh\nalice:x:1001:1002::/home/alice:/bin/sh\nvmail:x:5000:5000::/var/vmail:/bin/false\n');
  writeFileSync(groupPath, 'root:x:0:\nvmail:x:5000:\n');
  return { passwdPath, groupPath };
}

test('--help prints the help on stdout, exit 0', async () => {
  for (const flag of ['--help', '-h']) {
    const h = harness();
    assert.equal(await main([flag], h.io), 0);
    assert.match(h.out(), /^Usage: dsync \[options\] mirror LOCATION2/);
    for (const needle of ['backup LOCATION2', 'server', '-o KEY=VALUE', '-u USER', 'Exit status', '64', '67', '75', '78', 'Examples']) {
      assert.ok(h.out().includes(needle), `help mentions ${needle}`);
    }
    assert.equal(h.err(), '');
    assert.equal(h.syncCalls.length, 0);
  }
});

test('--version prints the version, exit 0', async () => {
  const h = harness();
  assert.equal(await main(['-V'], h.io), 0);
  assert.equal(h.out(), `dsync ${VERSION}\n`);
});

test('usage errors: exit 64, one error line plus a hint, nothing touched', async (t) => {
  const dir = tempDir(t);
  const cases: Array<[string[], RegExp]> = [
    [[], /missing command/],
    [['-x', 'mirror', `maildir:${dir}/b`], /unknown option -x/],
    [['-o', `mail_location=maildir:${dir}/a`, 'mirror'], /mirror needs a destination/],
    [['-o', `mail_location=maildir:${dir}/a`, 'mirror', `maildir:${dir}/b`, '-v'], /unexpected arguments after maildir:.*: -v \(options must come before/],
    [['-C', 'xy', '-o', `mail_location=maildir:${dir}/a`, 'mirror', `maildir:${dir}/b`], /-C takes exactly one character/],
    [['-o', `mail_location=maildir:${dir}/a`, 'mirror', 'tcp:replica'], /tcp: destinations/],
    [['-o', `mail_location=maildir:${dir}/a`, 'mirror', 'mdbox:/x'], /destination: .*mdbox/],
  ];
  for (const [argv, re] of cases) {
    const h = harness();
    assert.equal(await main(argv, h.io), 64, argv.join(' '));
    const lines = h.err().trimEnd().split('\n');
    assert.match(lines[0]!, /^dsync: error: /);
    assert.match(lines[0]!, re);
    assert.equal(lines[1], "Try 'dsync --help' for more information.");
    assert.equal(lines.length, 2);
    assert.equal(h.out(), '');
    assert.equal(h.syncCalls.length, 0);
  }
  assert.deepEqual(readdirSync(dir), [], 'no files created');
});

test('unreadable config: exit 78 with the path and reason', async () => {
  const h = harness();
  assert.equal(await main(['-c', '/nonexistent/dovecot.conf', 'mirror', 'maildir:/tmp/x'], h.io), 78);
  assert.equal(h.err(), 'dsync: error: cannot read config file /nonexistent/dovecot.conf: no such file or directory (ENOENT)\n');
  assert.equal(h.syncCalls.length, 0);
});

test('mail_location missing: exit 78', async () => {
  const h = harness();
  assert.equal(await main(['mirror', 'maildir:/tmp/x'], h.io), 78);
  assert.match(h.err(), /mail_location is not set \(use -o mail_location=\.\.\. or -c\)/);
});

test('unknown user: exit 67', async (t) => {
  const sys = systemFiles(tempDir(t));
  const h = harness(sys);
  assert.equal(await main(['-u', 'nosuchuser', '-o', 'mail_location=maildir:~/M', 'mirror', 'maildir:/tmp/x'], h.io), 67);
  assert.equal(h.err(), 'dsync: error: unknown user nosuchuser\n');
  // And from the real /etc/passwd.
  const r = harness();
  assert.equal(await main(['-u', 'no-such-user-dsync-test', '-o', 'mail_location=maildir:/tmp/a', 'mirror', 'maildir:/tmp/b'], r.io), 67);
});

test('mirror with the current user: options reach the engine', async () => {
  const h = harness({ result: { exitCode: 0, summary: ['INBOX: +2 -1', 'Sent: flags 3'] } });
  const code = await main(['-f', '-m', 'INBOX', '-C', '+', '-o', 'mail_location=maildir:~/Maildir', 'mirror', 'maildir:~/backup'], h.io);
  assert.equal(code, 0);
  assert.equal(h.syncCalls.length, 1);
  const o = h.syncCalls[0]!;
  assert.equal(o.mode, 'mirror');
  assert.equal(o.reverse, false);
  assert.equal(o.full, true);
  assert.equal(o.mailbox, 'INBOX');
  assert.equal(o.altChar, '+');
  assert.equal(o.local.path, '/home/tester/Maildir');
  assert.deepEqual(o.remote.kind === 'location' && o.remote.location.path, '/home/tester/backup');
  assert.equal(o.owner, undefined);
  assert.equal(h.err(), '', 'summary only with -v');
});

test('-v prints the summary; exit 2 prints the run-again warning', async () => {
  const h = harness({ result: { exitCode: 2, summary: ['INBOX: +2 -1'] } });
  const code = await main(['-v', '-R', '-o', 'mail_location=maildir:/a', 'backup', 'backupuser@replica'], h.io);
  assert.equal(code, 2);
  assert.equal(h.err(), 'dsync: INBOX: +2 -1\ndsync: warning: mailbox changes caused a desync, run dsync again\n');
  const o = h.syncCalls[0]!;
  assert.equal(o.mode, 'backup');
  assert.equal(o.reverse, true);
  assert.deepEqual(o.remote, { kind: 'command', argv: ['ssh', 'replica', 'dsync', '-u', 'backupuser', 'server'] });
});

test('-o dsync_hardlinks=yes reaches a local run; a remote run warns and copies', async () => {
  const h = harness();
  assert.equal(await main(['-o', 'mail_location=maildir:/a', '-o', 'dsync_hardlinks=yes', 'mirror', 'maildir:/b'], h.io), 0);
  assert.equal(h.syncCalls[0]!.hardLinks, true);
  assert.equal(h.err(), '');
  const plain = harness();
  await main(['-o', 'mail_location=maildir:/a', 'mirror', 'maildir:/b'], plain.io);
  assert.equal(plain.syncCalls[0]!.hardLinks, undefined);
  const r = harness();
  assert.equal(await main(['-o', 'mail_location=maildir:/a', '-o', 'dsync_hardlinks=yes', 'backup', 'replica'], r.io), 0);
  assert.equal(r.syncCalls[0]!.hardLinks, undefined);
  assert.equal(r.err(), 'dsync: warning: dsync_hardlinks applies to local runs only: mail is copied to the remote side\n');
});

test('-R with mirror warns and still runs', async () => {
  const h = harness();
  assert.equal(await main(['-R', '-o', 'mail_location=maildir:/a', 'mirror', 'maildir:/b'], h.io), 0);
  assert.match(h.err(), /^dsync: warning: -R has no effect with mirror/);
});

test('a remote command line gets "server" appended; dsync_remote_cmd is honoured', async () => {
  const h = harness();
  await main(['-o', 'mail_location=maildir:/a', 'mirror', 'ssh', '-i', 'key', 'host', 'dsync', '-u', 'bob'], h.io);
  assert.deepEqual(h.syncCalls[0]!.remote, { kind: 'command', argv: ['ssh', '-i', 'key', 'host', 'dsync', '-u', 'bob', 'server'] });
  const g = harness();
  await main(['-o', 'mail_location=maildir:/a', '-o', 'dsync_remote_cmd=ssh -p 2222 %{host} /opt/bin/dsync -u %n server', 'mirror', 'bob@example.com@replica'], g.io);
  assert.deepEqual(g.syncCalls[0]!.remote, { kind: 'command', argv: ['ssh', '-p', '2222', 'replica', '/opt/bin/dsync', '-u', 'bob', 'server'] });
});

test('engine failure: exit 75, one line; stack only with -D', async () => {
  const h = harness({ result: new Error('disk on fire') });
  assert.equal(await main(['-o', 'mail_location=maildir:/a', 'mirror', 'maildir:/b'], h.io), 75);
  assert.equal(h.err(), 'dsync: error: disk on fire\n');
  const d = harness({ result: new Error('disk on fire') });
  assert.equal(await main(['-D', '-o', 'mail_location=maildir:/a', 'mirror', 'maildir:/b'], d.io), 75);
  assert.match(d.err(), /dsync: error: disk on fire\n/);
  assert.match(d.err(), /dsync: debug: at /);
});

test('config file + -u with a passwd-file userdb, as root: switch to the user, no owner', async (t) => {
  const dir = tempDir(t);
  const sys = systemFiles(dir);
  writeFileSync(join(dir, 'users'), 'alice@example.com:{PLAIN}x:1234:2345::/var/vmail/alice::userdb_mail=maildir:~/Mail\n');
  writeFileSync(
    join(dir, 'dovecot.conf'),
    `mail_location = maildir:~/Maildir\nuserdb {\n  driver = passwd-file\n  args = username_format=%u ${join(dir, 'users')}\n}\n`,
  );
  const h = harness({ uid: 0, ...sys });
  const code = await main(['-c', join(dir, 'dovecot.conf'), '-u', 'alice@example.com', 'mirror', 'maildir:~/replica'], h.io);
  assert.equal(code, 0, h.err());
  assert.deepEqual(h.switched, [[1234, 2345]]);
  const o = h.syncCalls[0]!;
  assert.equal(o.owner, undefined);
  assert.equal(o.local.path, '/var/vmail/alice/Mail', 'userdb mail field beats mail_location');
  assert.equal(o.remote.kind === 'location' && o.remote.location.path, '/var/vmail/alice/replica');
  // -o still beats the userdb.
  const p = harness({ uid: 0, ...sys });
  await main(['-c', join(dir, 'dovecot.conf'), '-u', 'alice@example.com', '-o', 'mail_location=maildir:/o', 'mirror', 'maildir:/r'], p.io);
  assert.equal(p.syncCalls[0]!.local.path, '/o');
});

test('as root with -u and mail_uid/mail_gid set: switch to those', async (t) => {
  const sys = systemFiles(tempDir(t));
  const h = harness({ uid: 0, ...sys });
  await main(['-u', 'alice', '-o', 'mail_uid=vmail', '-o', 'mail_gid=vmail', '-o', 'mail_location=maildir:~/M', 'mirror', 'maildir:/r'], h.io);
  assert.deepEqual(h.switched, [[5000, 5000]]);
  assert.equal(h.syncCalls[0]!.local.path, '/home/alice/M');
});

test('as root with -u root: nothing to switch', async (t) => {
  const sys = systemFiles(tempDir(t));
  const h = harness({ uid: 0, ...sys });
  assert.equal(await main(['-u', 'root', '-o', 'mail_location=maildir:~/M', 'mirror', 'maildir:/r'], h.io), 0);
  assert.deepEqual(h.switched, []);
});

test('as root without -u: mail_uid becomes the owner passed to the engine', async (t) => {
  const sys = systemFiles(tempDir(t));
  const h = harness({ uid: 0, ...sys });
  await main(['-o', 'mail_uid=5000', '-o', 'mail_gid=5000', '-o', 'mail_location=maildir:/m', 'mirror', 'maildir:/r'], h.io);
  assert.deepEqual(h.switched, []);
  assert.deepEqual(h.syncCalls[0]!.owner, { uid: 5000, gid: 5000 });
});

test('not root, -u someone else: exit 77; -u oneself is fine', async (t) => {
  const sys = systemFiles(tempDir(t));
  const h = harness({ uid: 1000, ...sys });
  assert.equal(await main(['-u', 'alice', '-o', 'mail_location=maildir:~/M', 'mirror', 'maildir:/r'], h.io), 77);
  assert.match(h.err(), /dsync: error: -u alice needs uid 1001, but dsync runs as uid 1000/);
  assert.equal(h.syncCalls.length, 0);
  const me = harness({ uid: 1001, ...sys });
  assert.equal(await main(['-u', 'alice', '-o', 'mail_location=maildir:~/M', 'mirror', 'maildir:/r'], me.io), 0);
  assert.deepEqual(me.switched, []);
});

test('-u user without uid and no mail_uid: exit 78', async (t) => {
  const dir = tempDir(t);
  const sys = systemFiles(dir);
  writeFileSync(join(dir, 'users'), 'nouid@example.com:{PLAIN}x:::::\n');
  writeFileSync(join(dir, 'd.conf'), `userdb {\n driver = passwd-file\n args = ${join(dir, 'users')}\n}\n`);
  const h = harness({ uid: 0, ...sys });
  assert.equal(await main(['-c', join(dir, 'd.conf'), '-u', 'nouid@example.com', '-o', 'mail_location=maildir:/m', 'mirror', 'maildir:/r'], h.io), 78);
  assert.match(h.err(), /has no uid \(set mail_uid\)/);
});

test('server mode hands stdin/stdout streams to runServer and returns its code', async () => {
  const h = harness();
  const input = new PassThrough();
  const output = new PassThrough();
  let seen: { input: unknown; output: unknown; path: string } | undefined;
  h.io.stdout = output;
  h.io.stdin = input;
  h.io.engine = {
    runServer: async (o) => {
      seen = { input: o.input, output: o.output, path: o.local.path };
      return 0;
    },
  };
  assert.equal(await main(['-o', 'mail_location=maildir:~/Maildir', 'server'], h.io), 0);
  assert.ok(seen);
  assert.equal(seen.input, input);
  assert.equal(seen.output, output);
  assert.equal(seen.path, '/home/tester/Maildir');
});
