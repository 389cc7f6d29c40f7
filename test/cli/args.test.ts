import { test } from 'node:test';
import assert from 'node:assert/strict';
import { classifyDestination, parseArgs, type ParsedArgs } from '../../src/cli/args.js';
import { EX_USAGE, UsageError } from '../../src/cli/errors.js';

/** Parses and insists on a real command (not help/version). */
function parsed(...argv: string[]): ParsedArgs {
  const r = parseArgs(argv);
  assert.ok(!('help' in r) && !('version' in r), 'expected a command');
  return r;
}

/** Expects a UsageError whose message matches `re`. */
function usage(re: RegExp, ...argv: string[]): void {
  assert.throws(
    () => parseArgs(argv),
    (err: unknown) => {
      assert.ok(err instanceof UsageError, `expected UsageError, got ${String(err)}`);
      assert.equal(err.exitCode, EX_USAGE);
      assert.match(err.message, re);
      return true;
    },
  );
}

test('defaults for a plain mirror', () => {
  assert.deepEqual(parsed('mirror', 'maildir:/backup'), {
    command: 'mirror',
    overrides: [],
    debug: false,
    verbose: false,
    full: false,
    reverse: false,
    warnings: [],
    destination: { kind: 'location', spec: 'maildir:/backup' },
  });
});

test('sync is an alias of mirror; backup and server are commands', () => {
  assert.equal(parsed('sync', 'maildir:/b').command, 'mirror');
  assert.equal(parsed('backup', 'maildir:/b').command, 'backup');
  const s = parsed('server');
  assert.equal(s.command, 'server');
  assert.equal(s.destination, undefined);
});

test('every option', () => {
  const a = parsed(
    '-c', '/etc/dovecot/dovecot.conf',
    '-o', 'mail_location=maildir:~/Maildir',
    '-o', 'mail_temp_dir=/var/tmp',
    '-C', '^',
    '-D', '-v', '-f', '-R',
    '-m', 'Archive',
    '-u', 'alice@example.com',
    'backup', 'maildir:/b',
  );
  assert.equal(a.configFile, '/etc/dovecot/dovecot.conf');
  assert.deepEqual(a.overrides, [
    ['mail_location', 'maildir:~/Maildir'],
    ['mail_temp_dir', '/var/tmp'],
  ]);
  assert.equal(a.altChar, '^');
  assert.equal(a.debug, true);
  assert.equal(a.verbose, true);
  assert.equal(a.full, true);
  assert.equal(a.reverse, true);
  assert.equal(a.mailbox, 'Archive');
  assert.equal(a.user, 'alice@example.com');
  assert.deepEqual(a.warnings, []);
});

test('grouped flags and attached values', () => {
  const a = parsed('-fvDc', 'x.conf', '-uAlice', '-oa=b=c', 'mirror', 'maildir:/b');
  assert.equal(a.full && a.verbose && a.debug, true);
  assert.equal(a.configFile, 'x.conf');
  assert.equal(a.user, 'Alice');
  assert.deepEqual(a.overrides, [['a', 'b=c']]);
});

test('-o value may be empty; a value starting with - can be attached', () => {
  assert.deepEqual(parsed('-o', 'mail_temp_dir=', 'mirror', 'h').overrides, [['mail_temp_dir', '']]);
  assert.equal(parsed('-m-x', 'mirror', 'h').mailbox, '-x');
});

test('-m "" is kept and passed on', () => {
  assert.equal(parsed('-m', '', 'mirror', 'h').mailbox, '');
});

test('-C accepts one character, including a non-ASCII one', () => {
  assert.equal(parsed('-C', 'é', 'mirror', 'h').altChar, 'é');
  assert.equal(parsed('-C', '😀', 'mirror', 'h').altChar, '😀');
});

test('help and version', () => {
  assert.deepEqual(parseArgs(['-h']), { help: true });
  assert.deepEqual(parseArgs(['--help']), { help: true });
  assert.deepEqual(parseArgs(['-V']), { version: true });
  assert.deepEqual(parseArgs(['--version']), { version: true });
  // Wins over a missing command, and over whatever follows.
  assert.deepEqual(parseArgs(['-v', '--help', 'mirror']), { help: true });
});

test('-R with mirror or server only warns', () => {
  assert.match(parsed('-R', 'mirror', 'h').warnings[0]!, /-R has no effect with mirror/);
  assert.match(parsed('-R', 'sync', 'h').warnings[0]!, /-R has no effect with sync/);
  assert.equal(parsed('-R', 'server').warnings.length, 1);
  assert.deepEqual(parsed('-R', 'backup', 'h').warnings, []);
});

test('-- ends the options', () => {
  assert.equal(parsed('-v', '--', 'mirror', 'h').command, 'mirror');
});

test('usage errors', () => {
  usage(/missing command/);
  usage(/missing command/, '-v');
  usage(/unknown command 'frobnicate'/, 'frobnicate');
  usage(/unknown option -x/, '-x', 'mirror', 'h');
  usage(/unknown option --user/, '--user', 'bob', 'mirror', 'h');
  usage(/unknown option - in -D-v/, '-D-v', 'mirror', 'h');
  usage(/mirror needs a destination/, 'mirror');
  usage(/backup needs a destination/, 'backup');
  usage(/server takes no arguments/, 'server', 'extra');
  usage(/-c needs a value/, '-c');
  usage(/-u needs a value/, '-u');
  usage(/-m needs a value/, '-v', '-m');
  usage(/-o needs a value/, '-o', '-x', 'mirror', 'h');
  usage(/-o needs key=value/, '-o', 'novalue', 'mirror', 'h');
  usage(/-o needs key=value/, '-o', '=v', 'mirror', 'h');
  usage(/-C takes exactly one character/, '-C', 'ab', 'mirror', 'h');
  usage(/-C takes exactly one character/, '-C', '', 'mirror', 'h');
  usage(/-u needs a user name/, '-u', '', 'mirror', 'h');
  usage(/--help takes no value/, '--help=yes');
  // Options after the command word are not options.
  usage(/options must come before the command word: -v/, 'mirror', '-v');
  usage(/options must come before the command word: -f/, 'mirror', '-f', 'h');
  // Stray words after a location or user@host (a command line never starts with one).
  usage(/unexpected arguments after maildir:\/b: -v \(options must come before/, 'mirror', 'maildir:/b', '-v');
  usage(/unexpected arguments after alice@host: extra$/, 'backup', 'alice@host', 'extra');
});

test('a command word taken as an option value leaves no command', () => {
  // As with getopt: -c consumes the next word.
  usage(/missing command/, '-c', 'mirror');
});

test('destination: locations', () => {
  assert.deepEqual(classifyDestination(['maildir:~/Maildir']), { kind: 'location', spec: 'maildir:~/Maildir' });
  assert.deepEqual(classifyDestination(['mbox:/var/mail:INBOX=/var/spool/mail/u']), {
    kind: 'location',
    spec: 'mbox:/var/mail:INBOX=/var/spool/mail/u',
  });
  // Any word: prefix is a location (unsupported formats are rejected later, by the location parser).
  assert.equal(classifyDestination(['imapc:']).kind, 'location');
});

test('destination: [user@]host and remote:', () => {
  assert.deepEqual(classifyDestination(['mail.example.com']), { kind: 'ssh', host: 'mail.example.com', prefix: false });
  assert.deepEqual(classifyDestination(['alice@mail.example.com']), {
    kind: 'ssh',
    host: 'mail.example.com',
    user: 'alice',
    prefix: false,
  });
  // The virtual user may itself contain '@'.
  assert.deepEqual(classifyDestination(['alice@example.com@replica']), {
    kind: 'ssh',
    host: 'replica',
    user: 'alice@example.com',
    prefix: false,
  });
  assert.deepEqual(classifyDestination(['remote:vmail@replica']), {
    kind: 'ssh',
    host: 'replica',
    login: 'vmail',
    prefix: false,
  });
  assert.deepEqual(classifyDestination(['remoteprefix:replica']), { kind: 'ssh', host: 'replica', prefix: true });
});

test('destination: tcp and tcps', () => {
  assert.deepEqual(classifyDestination(['tcp:replica']), { kind: 'tcp', host: 'replica', tls: false });
  assert.deepEqual(classifyDestination(['tcps:replica:12345']), { kind: 'tcp', host: 'replica', port: 12345, tls: true });
  assert.deepEqual(classifyDestination(['tcp:[::1]:99']), { kind: 'tcp', host: '[::1]', port: 99, tls: false });
  assert.throws(() => classifyDestination(['tcp:replica:99999']), /not a valid port/);
  assert.throws(() => classifyDestination(['tcp:replica:x']), /not a valid port/);
});

test('destination: command lines', () => {
  assert.deepEqual(classifyDestination(['ssh', '-i', 'key', 'host', 'dsync', '-u', 'bob']), {
    kind: 'command',
    argv: ['ssh', '-i', 'key', 'host', 'dsync', '-u', 'bob'],
  });
  // One word with a space or a '/' is split on whitespace.
  assert.deepEqual(classifyDestination(['ssh  host dsync ']), { kind: 'command', argv: ['ssh', 'host', 'dsync'] });
  assert.deepEqual(classifyDestination(['/usr/local/bin/dsync-wrapper']), {
    kind: 'command',
    argv: ['/usr/local/bin/dsync-wrapper'],
  });
  // Via parseArgs, words after the command word that look like options are kept.
  assert.deepEqual(parsed('-v', 'mirror', 'ssh', '-p', '2222', 'host', 'dsync').destination, {
    kind: 'command',
    argv: ['ssh', '-p', '2222', 'host', 'dsync'],
  });
});

test('destination: rejects hosts and users that would reach a shell or ssh as options', () => {
  assert.throws(() => classifyDestination(['a;b']), /not a valid host name/);
  assert.throws(() => classifyDestination(['$(id)@host']), /not a valid user name/);
  assert.throws(() => classifyDestination(['-oProxyCommand=x']), /options must come before/);
  assert.throws(() => classifyDestination(['-x@host']), /not a valid user name/);
  assert.throws(() => classifyDestination(['user@']), /not a valid host name/);
  assert.throws(() => classifyDestination(['']), /empty destination/);
});
