// In-process channel pair: both brains in one process. Records are handed over as they are
// (immutable once sent); message bodies are lazy factories read by the receiver.
import type { SyncRecord } from '../sync/records.js';
import type { Channel } from './channel.js';

class Queue {
  private items: SyncRecord[] = [];
  private waiters: { resolve: (r: SyncRecord) => void; reject: (e: Error) => void }[] = [];
  private failure: Error | undefined;

  push(rec: SyncRecord): void {
    if (this.failure) return;
    const w = this.waiters.shift();
    if (w) w.resolve(rec);
    else this.items.push(rec);
  }
  fail(err: Error): void {
    if (this.failure) return;
    this.failure = err;
    for (const w of this.waiters.splice(0)) w.reject(err);
  }
  pop(): Promise<SyncRecord> {
    const rec = this.items.shift();
    if (rec) return Promise.resolve(rec);
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }
}

/**
 * Records are never changed once sent (both brains treat them as immutable), so they are handed
 * over as they are: copying tens of thousands of change records would only cost time and memory.
 */
function copyRecord(rec: SyncRecord): SyncRecord {
  return rec;
}

class PipeEnd implements Channel {
  constructor(
    private readonly inbox: Queue,
    private readonly outbox: Queue,
    private readonly label: string,
  ) {}
  send(rec: SyncRecord): void {
    if (process.env.DSYNC_TRACE) process.stderr.write(`${this.label} -> ${JSON.stringify(rec, (k, v) => (k === 'body' ? '<body>' : v))}\n`);
    this.outbox.push(copyRecord(rec));
  }
  recv(): Promise<SyncRecord> {
    return this.inbox.pop();
  }
  flush(): Promise<void> {
    return Promise.resolve();
  }
  abort(reason: Error): void {
    this.outbox.fail(new Error(`peer failed: ${reason.message}`));
    this.inbox.fail(reason);
  }
  close(): void {
    this.outbox.fail(new Error('peer closed the connection'));
  }
}

export function createPipePair(): [Channel, Channel] {
  const aToB = new Queue();
  const bToA = new Queue();
  return [new PipeEnd(bToA, aToB, 'master'), new PipeEnd(aToB, bToA, 'slave')];
}
