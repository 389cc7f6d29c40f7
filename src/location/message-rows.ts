// The index's message rows of one mailbox as a mailbox handle sees them: read all at once only
// when something needs every one (a full comparison with the store, a complete export), else one
// at a time or from a UID on, with a digest of them all (see row-digest.ts) kept up to date. The
// index is written before this view on every change, so a read from it is always current.
import type { ChangeIndex, MessageRow } from '../index/change-index.js';
import type { RowDigest } from './row-digest.js';

export class MessageRows {
  /** Every row, when read; kept in UID order (see ordered). */
  private all: Map<number, MessageRow> | null = null;
  private ordered = true;
  private maxUid = 0;
  /** Rows read one at a time (null: known to be absent), while not all are read. */
  private readonly some = new Map<number, MessageRow | null>();

  constructor(
    private readonly index: ChangeIndex,
    private readonly mailbox: string,
    /** The digest of every row, kept in step with each change; null when there is none. */
    public digest: RowDigest | null,
    empty = false,
  ) {
    if (empty) this.all = new Map();
  }

  get complete(): boolean {
    return this.all !== null;
  }

  /** Rows held in memory. */
  get loadedCount(): number {
    return this.all ? this.all.size : this.some.size;
  }

  /** The number of rows, when known without counting them in the index. */
  get count(): number | null {
    return this.all ? this.all.size : this.digest ? this.digest.size : null;
  }

  get(uid: number): MessageRow | undefined {
    if (this.all) return this.all.get(uid);
    let r = this.some.get(uid);
    if (r === undefined) {
      r = this.index.message(this.mailbox, uid) ?? null;
      this.some.set(uid, r);
    }
    return r ?? undefined;
  }

  has(uid: number): boolean {
    return this.get(uid) !== undefined;
  }

  /** Takes note of a row just written to the index (new or changed). */
  put(row: MessageRow): void {
    if (this.all) {
      if (row.uid > this.maxUid) this.maxUid = row.uid;
      else if (!this.all.has(row.uid)) this.ordered = false;
      this.all.set(row.uid, row);
    } else {
      this.some.set(row.uid, row);
    }
    if (this.digest && !this.digest.put(row)) this.digest = null;
  }

  /** Takes note of a row just deleted from the index. */
  remove(uid: number): void {
    if (this.all) this.all.delete(uid);
    else this.some.set(uid, null);
    this.digest?.remove(uid);
  }

  /** Every row, in UID order. */
  loadAll(): Map<number, MessageRow> {
    if (!this.all) {
      const map = new Map<number, MessageRow>();
      const list = this.index.messages(this.mailbox);
      for (let i = 0; i < list.length; i++) map.set(list[i]!.uid, list[i]!);
      this.all = map;
      this.maxUid = list.length > 0 ? list[list.length - 1]!.uid : 0;
      this.ordered = true;
      this.some.clear();
    }
    if (!this.ordered) {
      this.all = new Map([...this.all].sort((a, b) => a[0] - b[0]));
      this.ordered = true;
    }
    return this.all;
  }

  /** The rows from a UID on, in UID order. */
  from(uid: number): MessageRow[] {
    if (this.all) {
      const out: MessageRow[] = [];
      this.loadAll().forEach((m) => {
        if (m.uid >= uid) out.push(m);
      });
      return out;
    }
    const rows = this.index.messagesFrom(this.mailbox, uid);
    for (const r of rows) this.some.set(r.uid, r);
    return rows;
  }

  /** Forgets the rows held in memory (they are read again when needed); the digest stays. */
  drop(): void {
    this.all = null;
    this.some.clear();
  }
}
