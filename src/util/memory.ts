// Keeps the heap near what is live. V8 lets garbage pile up in the old space until the heap
// reaches a size it picks itself (over 100 MB within one large mailbox). A full collection when
// the heap has doubled since the last one costs time in proportion to what is live, so its share
// of the run stays small, and peak memory follows the working set instead of the garbage.
import v8 from 'node:v8';
import vm from 'node:vm';

const FLOOR = 32 * 1024 * 1024;
/** Heap growth since the last collection that triggers the next one. */
const GROWTH = 2;
let gc: (() => void) | null | undefined;
let limit = FLOOR;

/** Runs a full garbage collection when the heap in use has outgrown twice the last live size. */
export function trimHeap(): void {
  if (v8.getHeapStatistics().used_heap_size < limit) return;
  if (gc === undefined) {
    try {
      v8.setFlagsFromString('--expose-gc');
      gc = vm.runInNewContext('gc') as () => void;
    } catch {
      gc = null;
    }
  }
  if (!gc) return;
  gc();
  limit = Math.max(FLOOR, GROWTH * v8.getHeapStatistics().used_heap_size);
}

const TRACE = !!process.env.DSYNC_MEMTRACE;

/** With DSYNC_MEMTRACE set in the environment, logs memory use (for finding what peaks where). */
export function traceMemory(log: { info(msg: string): void }, where: string): void {
  if (!TRACE) return;
  const m = process.memoryUsage();
  const mb = (n: number) => (n / 1048576).toFixed(0);
  log.info(`memory ${where}: rss ${mb(m.rss)} MB, heap ${mb(m.heapUsed)}/${mb(m.heapTotal)} MB, external ${mb(m.external)} MB`);
}
