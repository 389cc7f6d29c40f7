import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  applyOverrides,
  applyProtocolFilter,
  emptyConfig,
  expandGlob,
  loadConfigFile,
  parseConfigText,
} from '../../src/cli/config.js';
import { ConfigError, EX_CONFIG } from '../../src/cli/errors.js';

/** A temp dir with the given files (paths relative to it); removed after the test. */
function fixture(t: { after: (fn: () => void) => void }, files: Record<string, string>): string {
  const dir = mkdtempSync(join(tmpdir(), 'dsync-cfg-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  for (const [name, text] of Object.entries(files)) {
    mkdirSync(join(dir, name, '..'), { recursive: true });
    writeFileSync(join(dir, name), text);
  }
  return dir;
}

function parse(text: string, env: NodeJS.ProcessEnv = {}) {
  return parseConfigText(text, '/nonexistent/dovecot.conf', { env });
}

function configError(fn: () => unknown, re: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof ConfigError, `expected ConfigError, got ${String(err)}`);
    assert.equal(err.exitCode, EX_CONFIG);
    assert.match(err.message, re);
    return true;
  });
}

test('key = value, with and without spaces; later wins', () => {
  const c = parse('mail_location = maildir:~/Maildir\nmail_temp_dir=/var/tmp\nmail_temp_dir =  /tmp/x   \n');
  assert.equal(c.settings.get('mail_location'), 'maildir:~/Maildir');
  assert.equal(c.settings.get('mail_temp_dir'), '/tmp/x');
});

test('empty value', () => {
  assert.equal(parse('mail_plugins =\n').settings.get('mail_plugins'), '');
});

test('comments: whole lines, after whitespace, and (as in doveconf 2.3) anywhere outside quotes', () => {
  const c = parse(
    [
      '# a comment',
      '   # indented comment',
      'a = one # trailing',
      'b = two#glued',
      'c = "quoted # not a comment"',
      "d = 'single # too'  # but this is",
      'e = "#"',
    ].join('\n'),
  );
  assert.deepEqual(Object.fromEntries(c.settings), {
    a: 'one',
    b: 'two',
    c: 'quoted # not a comment',
    d: 'single # too',
    e: '#',
  });
});

test('quotes: both kinds, backslash escapes, only when both ends match', () => {
  const c = parse(
    [
      'a = "say \\"hi\\" \\\\ there"',
      "b = 'it\\'s'",
      'c = "  kept spaces  "',
      'd = "unbalanced',
      "e = it's",
      "f = '/tmp/it''s'",
    ].join('\n'),
  );
  assert.equal(c.settings.get('a'), 'say "hi" \\ there');
  assert.equal(c.settings.get('b'), "it's");
  assert.equal(c.settings.get('c'), '  kept spaces  ');
  assert.equal(c.settings.get('d'), '"unbalanced');
  assert.equal(c.settings.get('e'), "it's");
  assert.equal(c.settings.get('f'), "/tmp/it''s"); // same as doveconf
});

test('line continuation with a trailing backslash', () => {
  assert.equal(parse('mail_plugins = acl \\\n   quota\n').settings.get('mail_plugins'), 'acl quota');
  assert.equal(parse('mail_plugins = acl\\\nquota\n').settings.get('mail_plugins'), 'acl quota');
});

test('CRLF line ends', () => {
  assert.equal(parse('a = b\r\nc = d\r\n').settings.get('a'), 'b');
});

test('$variables: earlier settings, $ENV:, and unknown ones kept', () => {
  const c = parse(
    [
      'mail_plugins = acl',
      'mail_plugins = $mail_plugins quota',
      'mail_location = maildir:/base',
      'x = $mail_location:LAYOUT=fs',
      'home_is = $ENV:HOME',
      'protocols = $protocols imap',
      'q = "$mail_plugins"',
      'mid = a$mail_plugins',
    ].join('\n'),
    { HOME: '/home/tester' },
  );
  assert.equal(c.settings.get('mail_plugins'), 'acl quota');
  assert.equal(c.settings.get('x'), 'maildir:/base:LAYOUT=fs');
  assert.equal(c.settings.get('home_is'), '/home/tester');
  assert.equal(c.settings.get('protocols'), '$protocols imap');
  assert.equal(c.settings.get('q'), '$mail_plugins'); // quoted: literal
  assert.equal(c.settings.get('mid'), 'a$mail_plugins'); // not at a word start: literal
});

test('sections: nested, named, quoted names, recorded as paths', () => {
  const c = parse(`
namespace inbox {
  separator = /
  inbox = yes
  mailbox "Sent Messages" {
    special_use = \\Sent
  }
}
plugin {
  quota = maildir:User quota
}
service imap-login {
  inet_listener imap {
    port = 143
  }
}
mail_location = maildir:~/Maildir
`);
  assert.equal(c.settings.get('namespace/inbox/separator'), '/');
  assert.equal(c.settings.get('namespace/inbox/mailbox/Sent Messages/special_use'), '\\Sent');
  assert.equal(c.settings.get('plugin/quota'), 'maildir:User quota');
  assert.equal(c.settings.get('service/imap-login/inet_listener/imap/port'), '143');
  assert.equal(c.settings.get('mail_location'), 'maildir:~/Maildir');
  assert.equal(c.settings.get('separator'), undefined);
});

test('userdb and passdb blocks are collected in order', () => {
  const c = parse(`
passdb {
  driver = passwd-file
  args = scheme=CRYPT username_format=%u /etc/dovecot/users
}
userdb {
  driver = passwd-file
  args = username_format=%u /etc/dovecot/users
  default_fields = uid=vmail gid=vmail
}
userdb {
  driver = static
  args = uid=500 gid=500 home=/var/vmail/%d/%n
}
`);
  assert.equal(c.passdbs.length, 1);
  assert.equal(c.passdbs[0]!.driver, 'passwd-file');
  assert.deepEqual(
    c.userdbs.map((u) => [u.driver, u.args]),
    [
      ['passwd-file', 'username_format=%u /etc/dovecot/users'],
      ['static', 'uid=500 gid=500 home=/var/vmail/%d/%n'],
    ],
  );
  assert.equal(c.userdbs[0]!.settings.get('default_fields'), 'uid=vmail gid=vmail');
  assert.match(c.userdbs[1]!.origin, /line 11$/);
  // Auth blocks do not leak into the flat settings.
  assert.equal(c.settings.get('driver'), undefined);
  assert.equal([...c.settings.keys()].length, 0);
});

test('protocol doveadm { } applies on top of the top level', () => {
  const c = parse('mail_location = maildir:/a\nprotocol imap {\n mail_location = maildir:/imap\n}\nprotocol doveadm {\n  mail_location = maildir:/b\n}\n');
  applyProtocolFilter(c);
  assert.equal(c.settings.get('mail_location'), 'maildir:/b');
});

test('syntax errors name the file and line', () => {
  configError(() => parse('a = b\n}\n'), /dovecot\.conf line 2: '\}' without an open section/);
  configError(() => parse('plugin {\n a = b\n'), /missing '\}'/);
  configError(() => parse('just words here\n'), /line 1: syntax error/);
  configError(() => parse('userdb {\n  inner {\n    a = b\n  }\n}\n'), /line 3: sections inside userdb\/passdb/);
});

test('!include: relative to the including file, globs sorted, nested, inside sections', (t) => {
  const dir = fixture(t, {
    'dovecot.conf': 'mail_location = maildir:/main\n!include conf.d/*.conf\n!include_try local.conf\nplugin {\n  !include plugin.inc\n}\n',
    'conf.d/20-b.conf': 'mail_temp_dir = /from-b\n',
    'conf.d/10-a.conf': 'mail_temp_dir = /from-a\n!include ../deeper/x.conf\n',
    'conf.d/README': 'not = included\n',
    'conf.d/.hidden.conf': 'hidden = yes\n',
    'deeper/x.conf': 'from_deeper = yes\n',
    'plugin.inc': 'quota = count:User quota\n',
  });
  const c = loadConfigFile(join(dir, 'dovecot.conf'));
  assert.equal(c.settings.get('mail_temp_dir'), '/from-b'); // 10-a then 20-b
  assert.equal(c.settings.get('from_deeper'), 'yes');
  assert.equal(c.settings.get('not'), undefined);
  assert.equal(c.settings.get('hidden'), undefined);
  assert.equal(c.settings.get('plugin/quota'), 'count:User quota');
  assert.deepEqual(
    c.files.map((f) => f.slice(dir.length + 1)),
    ['dovecot.conf', 'conf.d/10-a.conf', 'deeper/x.conf', 'conf.d/20-b.conf', 'plugin.inc'],
  );
});

test('!include without a match fails, !include_try does not', (t) => {
  const dir = fixture(t, {
    'try.conf': '!include_try missing.conf\n!include_try nothing/*.conf\na = b\n',
    'must.conf': '!include missing.conf\n',
    'mustglob.conf': '!include nothing/*.conf\n',
  });
  assert.equal(loadConfigFile(join(dir, 'try.conf')).settings.get('a'), 'b');
  configError(() => loadConfigFile(join(dir, 'must.conf')), /must\.conf line 1: !include missing\.conf: no matching file/);
  configError(() => loadConfigFile(join(dir, 'mustglob.conf')), /no matching file/);
});

test('an include loop is stopped', (t) => {
  const dir = fixture(t, { 'a.conf': '!include b.conf\n', 'b.conf': '!include a.conf\n' });
  configError(() => loadConfigFile(join(dir, 'a.conf')), /nested too deep/);
});

test('key = <file reads the value from a file; ssl_* keep the path', (t) => {
  const dir = fixture(t, {
    'dovecot.conf': 'mail_location = <loc.txt\nssl_key = <private/missing.key\n',
    'loc.txt': 'maildir:/from/file\n\n',
  });
  const c = loadConfigFile(join(dir, 'dovecot.conf'));
  assert.equal(c.settings.get('mail_location'), 'maildir:/from/file');
  assert.equal(c.settings.get('ssl_key'), `<${join(dir, 'private/missing.key')}`);
  const bad = fixture(t, { 'dovecot.conf': 'mail_location = <nope.txt\n' });
  configError(() => loadConfigFile(join(bad, 'dovecot.conf')), /cannot read file for .* line 1 .*nope\.txt: no such file or directory \(ENOENT\)/);
});

test('unreadable config: ConfigError with the path and the OS reason', (t) => {
  configError(() => loadConfigFile('/nonexistent/dir/dovecot.conf'), /cannot read config file \/nonexistent\/dir\/dovecot\.conf: no such file or directory \(ENOENT\)/);
  const dir = fixture(t, { 'x/keep': '' });
  configError(() => loadConfigFile(join(dir, 'x')), /illegal operation on a directory \(EISDIR\)/);
});

test('-o overrides apply last, to any key', () => {
  const c = parse('mail_location = maildir:/a\nplugin {\n  quota = x\n}\n');
  applyOverrides(c, [
    ['mail_location', 'maildir:/b'],
    ['plugin/quota', 'y'],
    ['new_key', 'z'],
    ['mail_location', 'maildir:/c'],
  ]);
  assert.equal(c.settings.get('mail_location'), 'maildir:/c');
  assert.equal(c.settings.get('plugin/quota'), 'y');
  assert.equal(c.settings.get('new_key'), 'z');
  assert.equal(applyOverrides(emptyConfig(), [['k', '$not_expanded']]).settings.get('k'), '$not_expanded');
});

test('expandGlob: *, ? and [...] in several components', (t) => {
  const dir = fixture(t, { 'a1/x.conf': '', 'a2/y.conf': '', 'b1/z.conf': '', 'a1/w.txt': '' });
  const rel = (p: string[]) => p.map((f) => f.slice(dir.length + 1));
  assert.deepEqual(rel(expandGlob(join(dir, 'a?/*.conf'))), ['a1/x.conf', 'a2/y.conf']);
  assert.deepEqual(rel(expandGlob(join(dir, '[ab]1/*'))), ['a1/w.txt', 'a1/x.conf', 'b1/z.conf']);
  assert.deepEqual(rel(expandGlob(join(dir, '[!a]*/*'))), ['b1/z.conf']);
  assert.deepEqual(expandGlob(join(dir, 'none*/x')), []);
});

test('the stock Debian config, when installed, parses', { skip: !existsSync('/etc/dovecot/dovecot.conf') }, () => {
  const c = loadConfigFile('/etc/dovecot/dovecot.conf');
  assert.ok(c.files.length >= 1);
  assert.ok(c.userdbs.length + c.passdbs.length >= 1);
});
