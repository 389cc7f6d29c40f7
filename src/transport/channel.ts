// A channel carries sync records between two brains, in order, in both directions.
import type { RecordOf, RecordType, SyncRecord } from '../sync/records.js';

export interface Channel {
  send(rec: SyncRecord): void;
  /** Resolves with the next record; rejects when the peer failed or went away. */
  recv(): Promise<SyncRecord>;
  /** Resolves once everything sent so far has been handed to the transport (backpressure point). */
  flush(): Promise<void>;
  /** Tells the peer we failed; its pending and future recv() reject with this reason. */
  abort(reason: Error): void;
  close(): void;
  /**
   * The brain is done with the mails it received for the current mailbox (all saved, or no
   * longer wanted): a channel that keeps received bodies (spooled to disk, or counted against
   * its memory budget) lets go of them.
   */
  mailboxDone?(): void;
  /** How often, and how long in all, recv() had to wait for the peer (for -D). */
  readonly waited?: { count: number; ms: number };
  /** The peer runs in another process: what a brain does before a record exchange runs alongside the peer's work. */
  readonly remote?: boolean;
}

export class ProtocolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ProtocolError';
  }
}

/** The peer stopped on an error of its own and said so (it reports that error itself). */
export class PeerAbortError extends ProtocolError {
  constructor(message: string) {
    super(message);
    this.name = 'PeerAbortError';
  }
}

export async function expectRecord<T extends RecordType>(ch: Channel, type: T): Promise<RecordOf<T>> {
  const rec = await ch.recv();
  if (rec.type !== type) throw new ProtocolError(`expected a ${type} record from the peer, got ${rec.type}`);
  return rec as RecordOf<T>;
}

/** Receives records of one type until the end-of-list marker. */
export async function recvList<T extends RecordType>(ch: Channel, type: T): Promise<RecordOf<T>[]> {
  const out: RecordOf<T>[] = [];
  for (;;) {
    const rec = await ch.recv();
    if (rec.type === 'end') return out;
    if (rec.type !== type) throw new ProtocolError(`expected a ${type} record or end of list, got ${rec.type}`);
    out.push(rec as RecordOf<T>);
  }
}
