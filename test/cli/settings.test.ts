import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ConfigError, EX_CONFIG, UsageError } from '../../src/cli/errors.js';
import {
  DEFAULT_REMOTE_CMD,
  buildRemoteCommand,
  effectiveSettings,
  resolveRemote,
  resolveRunSettings,
} from '../../src/cli/settings.js';
import type { UserInfo } from '../../src/cli/user.js';
import { expandPercentVars } from '../../src/cli/vars.js';

const alice: UserInfo = {
  name: 'alice@example.com',
  uid: 5000,
  gid: 5000,
  home: '/var/vmail/example.com/alice',
  fields: {},
  source: 'test',
};

function settings(obj: Record<string, string>): Map<string, string> {
  return new Map(Object.entries(obj));
}

test('expandPercentVars: short and long forms, %%, modifiers', () => {
  const vars = { user: 'Alice@Example.com', home: '/home/alice' };
  assert.equal(expandPercentVars('%u|%n|%d|%h|%%', vars), 'Alice@Example.com|Alice|Example.com|/home/alice|%');
  assert.equal(expandPercentVars('%{user}|%{username}|%{domain}|%{home}', vars), 'Alice@Example.com|Alice|Example.com|/home/alice');
  assert.equal(expandPercentVars('%Lu %Ud %L{username}', vars), 'alice@example.com EXAMPLE.COM alice');
  assert.equal(expandPercentVars('%d', { user: 'nodomain' }), '');
  assert.equal(expandPercentVars('%{host}', { host: 'h' }), 'h');
  assert.equal(expandPercentVars('no vars', {}), 'no vars');
});

test('expandPercentVars: errors', () => {
  assert.throws(() => expandPercentVars('%x', { user: 'u' }), /unknown variable %x/);
  assert.throws(() => expandPercentVars('%h', { user: 'u' }), /%\{home\} has no value/);
  assert.throws(() => expandPercentVars('%{nope}', {}), /%\{nope\} has no value/);
  assert.throws(() => expandPercentVars('50%', {}), /'%' at the end/);
  assert.throws(() => expandPercentVars('%{user', { user: 'u' }), /unterminated/);
});

test('mail_location is expanded for the user (~, %u, %n, %d, %h, long forms)', () => {
  const run = resolveRunSettings(settings({ mail_location: 'maildir:~/Maildir:INBOX=/var/mail/%n@%d:CONTROL=%{home}/ctl' }), alice);
  assert.equal(run.local.format, 'maildir');
  assert.equal(run.local.path, '/var/vmail/example.com/alice/Maildir');
  assert.equal(run.local.inbox, '/var/mail/alice@example.com');
  assert.equal(run.local.control, '/var/vmail/example.com/alice/ctl');
  assert.equal(run.mailLocation, 'maildir:~/Maildir:INBOX=/var/mail/%n@%d:CONTROL=%{home}/ctl');
  const mbox = resolveRunSettings(settings({ mail_location: 'mbox:/srv/mail/%u' }), alice);
  assert.equal(mbox.local.format, 'mbox');
  assert.equal(mbox.local.path, '/srv/mail/alice@example.com');
});

test('mail_location missing or bad is a ConfigError', () => {
  for (const s of [{}, { mail_location: '' }, { mail_location: '   ' }] as Record<string, string>[]) {
    assert.throws(
      () => resolveRunSettings(settings(s), alice),
      (err: unknown) =>
        err instanceof ConfigError &&
        err.exitCode === EX_CONFIG &&
        err.message === 'mail_location is not set (use -o mail_location=... or -c)',
    );
  }
  assert.throws(() => resolveRunSettings(settings({ mail_location: 'sdbox:~/sdbox' }), alice), (err: unknown) => err instanceof ConfigError && /^mail_location: .*not supported/.test(err.message));
  const homeless: UserInfo = { name: 'x', fields: {}, source: 'test' };
  assert.throws(() => resolveRunSettings(settings({ mail_location: 'maildir:~/M' }), homeless), ConfigError);
});

test('defaults and the other settings', () => {
  const d = resolveRunSettings(settings({ mail_location: 'maildir:/m' }), alice);
  assert.equal(d.altChar, '_');
  assert.equal(d.mailTempDir, '/tmp');
  assert.equal(d.remoteCmd, DEFAULT_REMOTE_CMD);
  assert.equal(d.mailUid, undefined);
  assert.equal(d.mailGid, undefined);
  const s = resolveRunSettings(
    settings({
      mail_location: 'maildir:/m',
      dsync_alt_char: '~',
      mail_temp_dir: '%h/tmp',
      mail_uid: '123',
      mail_gid: '456',
      dsync_remote_cmd: 'ssh %{host} /opt/dsync server',
    }),
    alice,
  );
  assert.equal(s.altChar, '~');
  assert.equal(s.mailTempDir, '/var/vmail/example.com/alice/tmp');
  assert.equal(s.mailUid, 123);
  assert.equal(s.mailGid, 456);
  assert.equal(s.remoteCmd, 'ssh %{host} /opt/dsync server');
  assert.throws(() => resolveRunSettings(settings({ mail_location: 'maildir:/m', dsync_alt_char: 'ab' }), alice), /dsync_alt_char must be exactly one character/);
});

test('effectiveSettings: config < userdb mail < -o < -C', () => {
  const cfg = settings({ mail_location: 'maildir:/config', dsync_alt_char: '+' });
  const withMail: UserInfo = { ...alice, fields: { mail: 'maildir:/userdb' } };
  assert.equal(effectiveSettings(cfg, alice, { overrides: [] }).get('mail_location'), 'maildir:/config');
  assert.equal(effectiveSettings(cfg, withMail, { overrides: [] }).get('mail_location'), 'maildir:/userdb');
  const e = effectiveSettings(cfg, withMail, {
    overrides: [
      ['mail_location', 'maildir:/o'],
      ['dsync_alt_char', '-'],
    ],
    altChar: '=',
  });
  assert.equal(e.get('mail_location'), 'maildir:/o');
  assert.equal(e.get('dsync_alt_char'), '=');
  assert.equal(cfg.get('mail_location'), 'maildir:/config', 'input map untouched');
});

test('buildRemoteCommand: expansion per word; all-empty variable words are dropped', () => {
  assert.deepEqual(buildRemoteCommand(DEFAULT_REMOTE_CMD, { host: 'replica', login: '', user: 'alice' }), [
    'ssh',
    'replica',
    'dsync',
    '-u',
    'alice',
    'server',
  ]);
  assert.deepEqual(buildRemoteCommand(DEFAULT_REMOTE_CMD, { host: 'replica', login: 'vmail', user: 'alice@example.com' }), [
    'ssh',
    '-lvmail',
    'replica',
    'dsync',
    '-u',
    'alice@example.com',
    'server',
  ]);
  assert.deepEqual(buildRemoteCommand('ssh  %{host}   doveadm dsync-server -u%u -U', { host: 'h', user: 'u' }), [
    'ssh',
    'h',
    'doveadm',
    'dsync-server',
    '-uu',
    '-U',
  ]);
  assert.throws(() => buildRemoteCommand('   ', {}), /dsync_remote_cmd is empty/);
});

test('resolveRemote: every destination kind', () => {
  const run = resolveRunSettings(settings({ mail_location: 'maildir:~/Maildir' }), alice);
  assert.deepEqual(resolveRemote({ kind: 'ssh', host: 'replica', prefix: false }, run, alice), {
    kind: 'command',
    argv: ['ssh', 'replica', 'dsync', '-u', 'alice@example.com', 'server'],
  });
  assert.deepEqual(resolveRemote({ kind: 'ssh', host: 'replica', user: 'bob', prefix: false }, run, alice), {
    kind: 'command',
    argv: ['ssh', 'replica', 'dsync', '-u', 'bob', 'server'],
  });
  assert.deepEqual(resolveRemote({ kind: 'ssh', host: 'replica', login: 'vmail', prefix: false }, run, alice), {
    kind: 'command',
    argv: ['ssh', '-lvmail', 'replica', 'dsync', '-u', 'alice@example.com', 'server'],
  });
  assert.deepEqual(resolveRemote({ kind: 'command', argv: ['ssh', 'h', 'dsync'] }, run, alice), {
    kind: 'command',
    argv: ['ssh', 'h', 'dsync', 'server'],
  });
  assert.deepEqual(resolveRemote({ kind: 'command', argv: ['ssh', 'h', 'dsync', 'server'] }, run, alice), {
    kind: 'command',
    argv: ['ssh', 'h', 'dsync', 'server'],
  });
  const loc = resolveRemote({ kind: 'location', spec: 'maildir:~/backup:LAYOUT=fs' }, run, alice);
  assert.equal(loc.kind, 'location');
  assert.equal(loc.kind === 'location' && loc.location.path, '/var/vmail/example.com/alice/backup');
  assert.equal(loc.kind === 'location' && loc.location.layout, 'fs');
});

test('resolveRemote: what cannot be reached', () => {
  const run = resolveRunSettings(settings({ mail_location: 'maildir:~/Maildir' }), alice);
  assert.throws(() => resolveRemote({ kind: 'tcp', host: 'h', tls: false }, run, alice), (e: unknown) => e instanceof UsageError && /tcp: destinations/.test(e.message));
  assert.throws(() => resolveRemote({ kind: 'tcp', host: 'h', tls: true }, run, alice), /tcps: destinations/);
  assert.throws(() => resolveRemote({ kind: 'ssh', host: 'h', prefix: true }, run, alice), /remoteprefix: destinations are not supported/);
  assert.throws(() => resolveRemote({ kind: 'location', spec: 'mdbox:/x' }, run, alice), (e: unknown) => e instanceof UsageError && /^destination: /.test(e.message));
  assert.throws(
    () => resolveRemote({ kind: 'location', spec: 'maildir:%h/Maildir' }, run, alice),
    (e: unknown) => e instanceof ConfigError && /same directory/.test(e.message),
  );
  // A -u name with shell metacharacters never reaches the remote shell.
  const evil: UserInfo = { name: 'x;rm -rf ~', fields: {}, source: 'test', home: '/h' };
  assert.throws(() => resolveRemote({ kind: 'ssh', host: 'h', prefix: false }, run, evil), /cannot be passed to a remote command safely/);
});

test('dsync_hardlinks is a yes/no setting, off by default', () => {
  const base = { mail_location: 'maildir:~/Maildir' };
  assert.equal(resolveRunSettings(settings(base), alice).hardLinks, false);
  for (const [v, want] of [['yes', true], ['YES', true], ['1', true], ['no', false], ['', false], ['false', false]] as const) {
    assert.equal(resolveRunSettings(settings({ ...base, dsync_hardlinks: v }), alice).hardLinks, want, v);
  }
  assert.throws(
    () => resolveRunSettings(settings({ ...base, dsync_hardlinks: 'maybe' }), alice),
    (err: unknown) => err instanceof ConfigError && err.message === "dsync_hardlinks must be yes or no, got 'maybe'",
  );
});

test('mail_fsync: optimized (the default), always or never', () => {
  const base = { mail_location: 'maildir:~/Maildir' };
  assert.equal(resolveRunSettings(settings(base), alice).mailFsync, 'optimized');
  for (const v of ['optimized', 'always', 'never'] as const) assert.equal(resolveRunSettings(settings({ ...base, mail_fsync: v }), alice).mailFsync, v);
  assert.throws(
    () => resolveRunSettings(settings({ ...base, mail_fsync: 'sometimes' }), alice),
    (err: unknown) => err instanceof ConfigError && err.message === "mail_fsync must be optimized, always or never, got 'sometimes'",
  );
});

test('mbox_lock_timeout: a Dovecot time (a bare number is seconds); unset keeps the store default', () => {
  const base = { mail_location: 'maildir:~/Maildir' };
  assert.equal(resolveRunSettings(settings(base), alice).mboxLockTimeoutMs, undefined);
  const cases: [string, number][] = [
    ['10', 10_000],
    ['30 secs', 30_000],
    ['2s', 2000],
    ['5 mins', 300_000],
    ['1 hour', 3_600_000],
    ['500 msecs', 500],
  ];
  for (const [v, ms] of cases) assert.equal(resolveRunSettings(settings({ ...base, mbox_lock_timeout: v }), alice).mboxLockTimeoutMs, ms, v);
  assert.throws(
    () => resolveRunSettings(settings({ ...base, mbox_lock_timeout: 'soon' }), alice),
    (err: unknown) => err instanceof ConfigError && err.message === `mbox_lock_timeout must be a time such as "30 secs" or "5 mins", got 'soon'`,
  );
});
