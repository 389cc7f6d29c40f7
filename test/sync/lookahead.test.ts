import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Lookahead, type AheadHandle } from '../../src/sync/lookahead.js';

/** A fake mailbox handle: `held` messages in memory, and whether it was closed. */
class Handle implements AheadHandle {
  closed = false;
  constructor(
    readonly id: string,
    readonly heldCount: number,
  ) {}
  async close(): Promise<void> {
    this.closed = true;
  }
}

/** Opens with a delay of a few event-loop turns; records the order of opens. */
function opener(held: Record<string, number>, fail: Set<string> = new Set()) {
  const opened: string[] = [];
  const handles = new Map<string, Handle>();
  const open = async (id: string): Promise<Handle | undefined> => {
    opened.push(id);
    for (let i = 0; i < 3; i++) await new Promise((r) => setImmediate(r));
    if (fail.has(id)) throw new Error(`cannot open ${id}`);
    if (!(id in held)) return undefined;
    const h = new Handle(id, held[id]!);
    handles.set(id, h);
    return h;
  };
  return { opened, handles, open };
}

const settle = async () => {
  for (let i = 0; i < 50; i++) await new Promise((r) => setImmediate(r));
};

test('lookahead: opens in order ahead of take(), and take() returns the same handle', async () => {
  const o = opener({ a: 0, b: 0, c: 0 });
  const ahead = new Lookahead(['a', 'b', 'c'], o.open, { scanned: 2, messages: 1000 });
  ahead.pump();
  await settle();
  assert.deepEqual(o.opened, ['a', 'b', 'c'], 'unchanged mailboxes (nothing held) do not count against the limits');
  for (const id of ['a', 'b', 'c']) assert.equal(await ahead.take(id), o.handles.get(id));
  assert.deepEqual(o.opened, ['a', 'b', 'c'], 'nothing is opened twice');
  await ahead.stop();
  for (const h of o.handles.values()) assert.equal(h.closed, false, 'taken handles belong to the caller');
});

test('lookahead: holds at most `scanned` changed mailboxes ahead, and goes on when one is taken', async () => {
  const o = opener({ a: 10, b: 10, c: 10, d: 10 });
  const ahead = new Lookahead(['a', 'b', 'c', 'd'], o.open, { scanned: 2, messages: 1000 });
  ahead.pump();
  await settle();
  assert.deepEqual(o.opened, ['a', 'b']);
  await ahead.take('a');
  await settle();
  assert.deepEqual(o.opened, ['a', 'b', 'c']);
  await ahead.take('b');
  await ahead.take('c');
  await settle();
  assert.deepEqual(o.opened, ['a', 'b', 'c', 'd']);
  await ahead.stop();
  assert.equal(o.handles.get('d')!.closed, true, 'a handle never taken is closed by stop()');
});

test('lookahead: stops before going over the message limit', async () => {
  const o = opener({ a: 600, b: 600, c: 1 });
  const ahead = new Lookahead(['a', 'b', 'c'], o.open, { scanned: 5, messages: 1000 });
  ahead.pump();
  await settle();
  assert.deepEqual(o.opened, ['a', 'b'], 'b is opened (600 < 1000 held), then 1200 held: no more');
  await ahead.stop();
  assert.ok(o.handles.get('a')!.closed && o.handles.get('b')!.closed);
});

test('lookahead: take() of a mailbox being opened waits for that open instead of opening again', async () => {
  const o = opener({ a: 5, b: 5 });
  const ahead = new Lookahead(['a', 'b'], o.open, { scanned: 1, messages: 1000 });
  ahead.pump();
  const h = await ahead.take('a'); // the open started by pump() is still running
  assert.equal(h, o.handles.get('a'));
  await settle();
  assert.deepEqual(o.opened, ['a', 'b'], 'a, taken, does not count against the limit');
  await ahead.stop();
  assert.equal(h!.closed, false);
});

test('lookahead: take() out of order opens at once, and the lookahead skips that mailbox', async () => {
  const o = opener({ a: 10, b: 10, c: 10, x: 1 });
  const ahead = new Lookahead(['a', 'b', 'c'], o.open, { scanned: 1, messages: 1000 });
  ahead.pump();
  await settle();
  assert.deepEqual(o.opened, ['a']);
  assert.equal(await ahead.take('c'), o.handles.get('c'), 'c was not reached: opened now');
  assert.equal(await ahead.take('x'), o.handles.get('x'), 'a mailbox outside the order is opened too');
  await ahead.take('a');
  await settle();
  assert.deepEqual(o.opened, ['a', 'c', 'x', 'b']);
  await ahead.take('b');
  await settle();
  assert.deepEqual(o.opened, ['a', 'c', 'x', 'b'], 'c, taken already, is not opened a second time');
  await ahead.stop();
  assert.equal(o.handles.get('c')!.closed, false);
});

test('lookahead: a failed open is reported by take() of that mailbox, and nothing more is opened', async () => {
  const o = opener({ a: 0, c: 0 }, new Set(['b']));
  const ahead = new Lookahead(['a', 'b', 'c'], o.open, { scanned: 2, messages: 1000 });
  let unhandled: unknown;
  const onUnhandled = (e: unknown) => (unhandled = e);
  process.on('unhandledRejection', onUnhandled);
  try {
    ahead.pump();
    await settle();
    assert.deepEqual(o.opened, ['a', 'b'], 'the lookahead stops at the failure');
    assert.equal(await ahead.take('a'), o.handles.get('a'));
    await assert.rejects(ahead.take('b'), /cannot open b/);
    await settle();
    assert.equal(unhandled, undefined, 'the failure is not an unhandled rejection while it waits for take()');
    await ahead.stop();
  } finally {
    process.off('unhandledRejection', onUnhandled);
  }
});

test('lookahead: stop() waits for an open in progress and closes its handle', async () => {
  const o = opener({ a: 3 });
  const ahead = new Lookahead(['a'], o.open, { scanned: 2, messages: 1000 });
  ahead.pump();
  await ahead.stop();
  assert.deepEqual(o.opened, ['a']);
  const first = o.handles.get('a')!;
  assert.equal(first.closed, true);
  const again = await ahead.take('a');
  assert.deepEqual(o.opened, ['a', 'a'], 'after stop() a take() opens the mailbox itself');
  assert.notEqual(again, first);
  assert.equal(again!.closed, false);
});

test('lookahead: stop() returns the failures of opens that were never taken', async () => {
  const o = opener({ a: 0, c: 0 }, new Set(['b']));
  const ahead = new Lookahead(['a', 'b', 'c'], o.open, { scanned: 2, messages: 1000 });
  ahead.pump();
  await settle();
  assert.equal(await ahead.take('a'), o.handles.get('a'));
  const failures = await ahead.stop();
  assert.deepEqual(failures.map((e) => (e as Error).message), ['cannot open b']);
});
