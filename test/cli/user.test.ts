import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';
import { emptyConfig, parseConfigText } from '../../src/cli/config.js';
import { ConfigError, EX_NOUSER, NoSuchUserError } from '../../src/cli/errors.js';
import {
  currentUser,
  findPasswdFileEntry,
  lookupSystemUser,
  lookupUser,
  resolveGid,
  resolveUid,
} from '../../src/cli/user.js';

function tempDir(t: { after: (fn: () => void) => void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'dsync-user-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Fake /etc/passwd and /etc/group so results do not depend on the machine. */
function systemFiles(dir: string): { passwdPath: string; groupPath: string } {
  const passwdPath = join(dir, 'passwd');
  const groupPath = join(dir, 'group');
  writeFileSync(
    passwdPath,
    ['root:x:0:0:root:/root:/bin/bash', 'vmail:x:5000:5000::/var/vmail:/usr/sbin/nologin', 'bob:x:1001:1001:Bob,,,:/home/bob:/bin/sh', ''].join('\n'),
  );
  writeFileSync(groupPath, ['root:x:0:', 'vmail:x:5000:', 'staff:x:50:bob', ''].join('\n'));
  return { passwdPath, groupPath };
}

function noSuchUser(fn: () => unknown, name: string): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof NoSuchUserError, `expected NoSuchUserError, got ${String(err)}`);
    assert.equal(err.exitCode, EX_NOUSER);
    assert.equal(err.message, `unknown user ${name}`);
    return true;
  });
}

test('/etc/passwd: root is found with uid 0 and its home', () => {
  const u = lookupSystemUser('root');
  assert.ok(u);
  assert.equal(u.uid, 0);
  assert.equal(u.gid, 0);
  assert.equal(typeof u.home, 'string');
  // With no userdb in the config, lookupUser uses /etc/passwd too.
  const v = lookupUser('root', emptyConfig());
  assert.equal(v.uid, 0);
  assert.equal(v.source, '/etc/passwd');
});

test('system passwd file: fields, unknown user', (t) => {
  const sys = systemFiles(tempDir(t));
  assert.deepEqual(lookupSystemUser('bob', sys.passwdPath), {
    name: 'bob',
    uid: 1001,
    gid: 1001,
    home: '/home/bob',
    fields: {},
    source: sys.passwdPath,
  });
  assert.equal(lookupSystemUser('nobody-here', sys.passwdPath), undefined);
  noSuchUser(() => lookupUser('nobody-here', emptyConfig(), sys), 'nobody-here');
});

test('uid/gid by number or name', (t) => {
  const sys = systemFiles(tempDir(t));
  assert.equal(resolveUid('42', sys.passwdPath), 42);
  assert.equal(resolveUid('vmail', sys.passwdPath), 5000);
  assert.equal(resolveGid('staff', sys.groupPath), 50);
  assert.throws(() => resolveUid('ghost', sys.passwdPath), /unknown system user 'ghost'/);
  assert.throws(() => resolveGid('ghosts', sys.groupPath), /unknown group 'ghosts'/);
});

test('passwd-file userdb: user@domain, extra fields, missing fields', (t) => {
  const dir = tempDir(t);
  const sys = systemFiles(dir);
  const users = join(dir, 'users');
  writeFileSync(
    users,
    [
      '# virtual users',
      'alice@example.com:{CRYPT}xx:5000:5000::/var/vmail/example.com/alice::userdb_mail=maildir:~/Mail quota_rule=*:storage=1G',
      'carol@example.com:{PLAIN}pw:vmail:vmail::/var/vmail/example.com/carol',
      'dave@example.com:{PLAIN}pw',
      '',
    ].join('\n'),
  );
  const cfg = parseConfigText(
    `userdb {\n  driver = passwd-file\n  args = scheme=CRYPT username_format=%u ${users}\n}\n`,
    join(dir, 'dovecot.conf'),
  );
  const alice = lookupUser('alice@example.com', cfg, sys);
  assert.deepEqual(alice, {
    name: 'alice@example.com',
    uid: 5000,
    gid: 5000,
    home: '/var/vmail/example.com/alice',
    fields: { mail: 'maildir:~/Mail', quota_rule: '*:storage=1G' },
    source: `passwd-file ${users}`,
  });
  const carol = lookupUser('carol@example.com', cfg, sys);
  assert.equal(carol.uid, 5000); // a user name in the uid field
  const dave = lookupUser('dave@example.com', cfg, sys);
  assert.equal(dave.uid, undefined);
  assert.equal(dave.home, undefined);
  noSuchUser(() => lookupUser('alice', cfg, sys), 'alice');
  noSuchUser(() => lookupUser('mallory@example.com', cfg, sys), 'mallory@example.com');
});

test('passwd-file: username_format and a per-domain file path', (t) => {
  const dir = tempDir(t);
  const sys = systemFiles(dir);
  writeFileSync(join(dir, 'example.com.passwd'), 'alice:x:1234:1234::/home/alice\n');
  const cfg = parseConfigText(
    `userdb {\n  driver = passwd-file\n  args = username_format=%n ${dir}/%d.passwd\n}\n`,
    join(dir, 'dovecot.conf'),
  );
  assert.equal(lookupUser('alice@example.com', cfg, sys).uid, 1234);
  // A domain without a file is an unknown user, not a config error.
  noSuchUser(() => lookupUser('alice@other.org', cfg, sys), 'alice@other.org');
});

test('passwd-file: default_fields and override_fields, with %-variables', (t) => {
  const dir = tempDir(t);
  const sys = systemFiles(dir);
  const users = join(dir, 'users');
  writeFileSync(users, 'alice@example.com:x:::::\nbob@example.com:x:1:1::/home/b\n');
  const cfg = parseConfigText(
    [
      'userdb {',
      '  driver = passwd-file',
      `  args = ${users}`,
      '  default_fields = uid=vmail gid=vmail home=/var/vmail/%d/%n',
      '  override_fields = mail=maildir:%h/Maildir',
      '}',
    ].join('\n'),
    join(dir, 'dovecot.conf'),
  );
  const alice = lookupUser('alice@example.com', cfg, sys);
  assert.equal(alice.uid, 5000);
  assert.equal(alice.gid, 5000);
  assert.equal(alice.home, '/var/vmail/example.com/alice');
  assert.equal(alice.fields.mail, 'maildir:/var/vmail/example.com/alice/Maildir');
  const bob = lookupUser('bob@example.com', cfg, sys);
  assert.equal(bob.uid, 1); // defaults do not replace what the file has
  assert.equal(bob.home, '/home/b');
});

test('passwd-file that cannot be read is a ConfigError', (t) => {
  const dir = tempDir(t);
  const cfg = parseConfigText(`userdb {\n driver = passwd-file\n args = ${dir}/missing\n}\n`, join(dir, 'd.conf'));
  assert.throws(
    () => lookupUser('x', cfg),
    (err: unknown) => err instanceof ConfigError && /cannot read passwd-file .*missing: no such file or directory \(ENOENT\)/.test(err.message),
  );
  assert.throws(() => findPasswdFileEntry(`${dir}/missing`, 'x'), ConfigError);
  assert.equal(findPasswdFileEntry(`${dir}/missing`, 'x', true), undefined);
});

test('static userdb with allow_all_users', (t) => {
  const dir = tempDir(t);
  const sys = systemFiles(dir);
  const cfg = parseConfigText(
    'userdb {\n  driver = static\n  args = uid=vmail gid=vmail home=/var/vmail/%d/%n allow_all_users=yes\n}\n',
    join(dir, 'd.conf'),
  );
  const u = lookupUser('zed@example.org', cfg, sys);
  assert.deepEqual(u, {
    name: 'zed@example.org',
    uid: 5000,
    gid: 5000,
    home: '/var/vmail/example.org/zed',
    fields: {},
    source: 'static userdb',
  });
});

test('static userdb checks a passwd-file passdb for existence', (t) => {
  const dir = tempDir(t);
  const sys = systemFiles(dir);
  writeFileSync(join(dir, 'users'), 'known@example.org:{PLAIN}x\n');
  const cfg = parseConfigText(
    [
      'passdb {',
      '  driver = passwd-file',
      `  args = scheme=PLAIN ${dir}/users`,
      '}',
      'userdb {',
      '  driver = static',
      '  args = uid=5000 gid=5000 home=/var/vmail/%u',
      '}',
    ].join('\n'),
    join(dir, 'd.conf'),
  );
  assert.equal(lookupUser('known@example.org', cfg, sys).home, '/var/vmail/known@example.org');
  noSuchUser(() => lookupUser('unknown@example.org', cfg, sys), 'unknown@example.org');
});

test('userdbs are tried in order; passwd driver = system users', (t) => {
  const dir = tempDir(t);
  const sys = systemFiles(dir);
  writeFileSync(join(dir, 'users'), 'bob:x:7:7::/virtual/bob\n');
  const cfg = parseConfigText(
    `userdb {\n driver = passwd\n}\nuserdb {\n driver = passwd-file\n args = ${dir}/users\n}\n`,
    join(dir, 'd.conf'),
  );
  assert.equal(lookupUser('bob', cfg, sys).uid, 1001); // passwd first
  assert.equal(lookupUser('root', cfg, sys).uid, 0);
  noSuchUser(() => lookupUser('carl', cfg, sys), 'carl');
});

test('only unsupported userdbs: fall back to the system passwd file, noting the skip', (t) => {
  const sys = systemFiles(tempDir(t));
  const cfg = parseConfigText('userdb {\n driver = sql\n args = /etc/dovecot/sql.conf.ext\n}\n', '/x/d.conf');
  const skipped: string[] = [];
  const u = lookupUser('bob', cfg, { ...sys, onSkip: (m) => skipped.push(m) });
  assert.equal(u.uid, 1001);
  assert.equal(skipped.length, 1);
  assert.match(skipped[0]!, /driver 'sql' .* not supported/);
});

test('currentUser: the process user, home from $HOME', () => {
  const me = userInfo();
  const u = currentUser({ HOME: '/tmp/some-home' });
  assert.equal(u.name, me.username);
  assert.equal(u.uid, me.uid);
  assert.equal(u.gid, me.gid);
  assert.equal(u.home, '/tmp/some-home');
  assert.equal(currentUser({}).home, me.homedir);
});
