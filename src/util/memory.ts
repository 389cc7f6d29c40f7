// Keeps the heap near what is live. V8 lets garbage pile up in the old space until the heap
// reaches a size it picks itself (over 100 MB within one large mailbox). A full collection when
// the heap has doubled since the last one costs time in proportion to what is live, so its share
// of the run stays small, and peak memory follows the working set instead of the garbage.
// Mail buffers live outside the heap: those that reached the old generation are freed only by a
// full collection, which V8 by itself starts only ~64 MB of buffers later; so external growth of
// EXTERNAL_STEP triggers one too.
import { createRequire } from 'node:module';
import type * as Vm from 'node:vm';
import { setV8Flags } from './builtin.js';

const FLOOR = 32 * 1024 * 1024;
/** Heap growth since the last collection that triggers the next one. */
const GROWTH = 2;
let gc: (() => void) | null | undefined;
let limit = FLOOR;
const EXTERNAL_STEP = 16 * 1024 * 1024;
let externalLimit = EXTERNAL_STEP;
const CHECK_EVERY_MS = 10;
let lastCheck = 0;

/**
 * Runs a full garbage collection when the heap in use has outgrown twice the last live size, or
 * memory outside the heap (buffers) has grown by EXTERNAL_STEP since the last one.
 */
export function trimHeap(): void {
  // memoryUsage() costs 20-200 us (the RSS most of it; node:v8's heap statistics are cheaper but
  // load node:stream); called after every mailbox, at most one look per CHECK_EVERY_MS: what a
  // few milliseconds of work leave is no reason to collect yet.
  const now = Date.now();
  if (now - lastCheck < CHECK_EVERY_MS) return;
  lastCheck = now;
  // arrayBuffers (Node's count) drops as soon as a collection's freed buffers are swept; V8's
  // external_memory only at the next collection.
  const m = process.memoryUsage();
  if (m.heapUsed < limit && m.arrayBuffers < externalLimit) return;
  if (gc === undefined) gc = collector();
  if (!gc) return;
  gc();
  // Buffers are swept in the background, so this may still count some of the garbage: at worst
  // the next trigger comes one step later.
  const after = process.memoryUsage();
  limit = Math.max(FLOOR, GROWTH * after.heapUsed);
  externalLimit = after.arrayBuffers + EXTERNAL_STEP;
}

/**
 * V8's gc(): bin/dsync starts Node with --expose-gc. Otherwise (the tests, another launcher) the
 * flag is set now and gc taken from a new context, which costs 10-20 ms (node:vm, the context).
 */
function collector(): (() => void) | null {
  const exposed = (globalThis as { gc?: () => void }).gc;
  if (typeof exposed === 'function') return exposed;
  try {
    setV8Flags('--expose-gc');
    const vm = createRequire('/')('node:vm') as typeof Vm;
    return vm.runInNewContext('gc') as () => void;
  } catch {
    return null;
  }
}

const TRACE = !!process.env.DSYNC_MEMTRACE;

/** With DSYNC_MEMTRACE set in the environment, logs memory use (for finding what peaks where). */
export function traceMemory(log: { info(msg: string): void }, where: string): void {
  if (!TRACE) return;
  const m = process.memoryUsage();
  const mb = (n: number) => (n / 1048576).toFixed(0);
  log.info(`memory ${where}: rss ${mb(m.rss)} MB, heap ${mb(m.heapUsed)}/${mb(m.heapTotal)} MB, external ${mb(m.external)} MB`);
}
