import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Logger } from '../../src/util/log.js';

function capture(): { sink: { write: (s: string) => boolean }; text: () => string } {
  let buf = '';
  return { sink: { write: (s: string) => ((buf += s), true) }, text: () => buf };
}

test('levels: info needs -v, debug needs -D; errors and warnings always', () => {
  const quiet = capture();
  const q = new Logger({ sink: quiet.sink });
  q.error('e');
  q.warn('w');
  q.info('i');
  q.debug('d');
  assert.equal(quiet.text(), 'dsync: error: e\ndsync: warning: w\n');

  const loud = capture();
  const l = new Logger({ sink: loud.sink, verbose: true, debug: true });
  l.info('i');
  l.debug('d');
  assert.equal(loud.text(), 'dsync: i\ndsync: debug: d\n');
});

test('counters, shared with children', () => {
  const c = capture();
  const log = new Logger({ sink: c.sink });
  const remote = log.child('remote');
  log.warn('a');
  remote.warn('b');
  remote.error('c');
  assert.equal(log.warningCount, 2);
  assert.equal(log.errorCount, 1);
  assert.equal(remote.errorCount, 1);
  assert.equal(c.text(), 'dsync: warning: a\ndsync(remote): warning: b\ndsync(remote): error: c\n');
});

test('child of a child replaces the tag; levels are inherited', () => {
  const c = capture();
  const log = new Logger({ sink: c.sink, verbose: true }).child('a').child('b');
  log.info('x');
  assert.equal(c.text(), 'dsync(b): x\n');
});

test('one line per message', () => {
  const c = capture();
  new Logger({ sink: c.sink }).error('two\nlines');
  assert.equal(c.text(), 'dsync: error: two lines\n');
});
