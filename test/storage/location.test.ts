import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { expandVars, parseMailLocation } from '../../src/storage/location.js';

const vars = { home: '/home/jane', user: 'jane@example.org' };

test('location: maildir with all the common parameters', () => {
  const loc = parseMailLocation('maildir:~/Maildir:INBOX=/var/mail/%n:INDEX=/idx/%d/%n:CONTROL=%h/ctl:LAYOUT=fs:UTF-8', vars);
  assert.equal(loc.format, 'maildir');
  assert.equal(loc.path, '/home/jane/Maildir');
  assert.equal(loc.inbox, '/var/mail/jane');
  assert.equal(loc.index, '/idx/example.org/jane');
  assert.equal(loc.control, '/home/jane/ctl');
  assert.equal(loc.layout, 'fs');
  assert.equal(loc.utf8, true);
  assert.equal(loc.params['LAYOUT'], 'fs');
  assert.equal(loc.params['UTF-8'], '');
});

test('location: defaults', () => {
  const loc = parseMailLocation('maildir:/srv/mail/x', {});
  assert.deepEqual(loc, { format: 'maildir', path: '/srv/mail/x', layout: 'maildir++', utf8: false, params: {} });
  const mbox = parseMailLocation('mbox:~/mail:INBOX=/var/mail/%u', vars);
  assert.equal(mbox.format, 'mbox');
  assert.equal(mbox.path, '/home/jane/mail');
  assert.equal(mbox.inbox, '/var/mail/jane@example.org');
  assert.equal(mbox.layout, 'fs');
});

test('location: variable expansion, long forms, %% and case modifiers', () => {
  assert.equal(expandVars('%u|%n|%d|%h|%%', vars), 'jane@example.org|jane|example.org|/home/jane|%');
  assert.equal(expandVars('%{user}|%{username}|%{domain}|%{home}', vars), 'jane@example.org|jane|example.org|/home/jane');
  assert.equal(expandVars('%Lu', { user: 'Jane@X.ORG' }), 'jane@x.org');
  assert.equal(expandVars('%d', { user: 'plain' }), '');
  assert.throws(() => expandVars('%h', { user: 'x' }), /home directory/);
  assert.throws(() => expandVars('%q', vars), /unknown variable %q/);
  assert.throws(() => expandVars('%{nope}', vars), /unknown variable %\{nope\}/);
  assert.throws(() => expandVars('abc%', vars), /trailing/);
});

test('location: relative paths resolve against the cwd; "::" is a literal colon', () => {
  const loc = parseMailLocation('maildir:rel/dir', {});
  assert.equal(loc.path, path.resolve('rel/dir'));
  const c = parseMailLocation('maildir:/a::b:LAYOUT=fs', {});
  assert.equal(c.path, '/a:b');
  assert.equal(c.layout, 'fs');
  assert.equal(parseMailLocation('MAILDIR:/x:layout=Maildir++', {}).layout, 'maildir++');
});

test('location: clear errors', () => {
  assert.throws(() => parseMailLocation('', vars), /empty/);
  assert.throws(() => parseMailLocation('/home/jane/Maildir', vars), /needs a format prefix such as maildir:/);
  assert.throws(() => parseMailLocation('~/Maildir', vars), /needs a format prefix/);
  assert.throws(() => parseMailLocation('foo:/x', vars), /unknown mail format "foo"/);
  assert.throws(() => parseMailLocation('mdbox:/x', vars), /not supported/);
  assert.throws(() => parseMailLocation('maildir:', vars), /path is empty/);
  assert.throws(() => parseMailLocation('maildir::LAYOUT=fs', vars), /path is empty/);
  assert.throws(() => parseMailLocation('maildir:~/M', {}), /home directory is not known/);
  assert.throws(() => parseMailLocation('maildir:~bob/M', vars), /~user/);
  assert.throws(() => parseMailLocation('maildir:/x:LAYOUT=index', vars), /unsupported LAYOUT/);
  assert.throws(() => parseMailLocation('maildir:/x:INBOX=', vars), /INBOX= needs a path/);
  assert.throws(() => parseMailLocation('maildir:/m/%u', { home: '/h' }), /user name/);
});
