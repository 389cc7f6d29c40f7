/**
 * Opening mailboxes ahead of their turn. The mailbox phase syncs one mailbox at a time, and each
 * side first opens the mailbox and checks it for changes (a scan when it changed). Done for the
 * next mailboxes while the current one is synced, those checks fill the time a side waits for
 * its peer or for fsyncs instead of adding to it, and in a remote run both sides check at once.
 */

/** What the lookahead needs of a mailbox handle. */
export interface AheadHandle {
  /** Messages the handle holds in memory (0 for a mailbox that was not scanned). */
  readonly heldCount: number;
  close(): Promise<void>;
}

export interface AheadLimits {
  /** Handles holding messages (changed, scanned mailboxes) to keep ahead at most. */
  scanned: number;
  /** Messages to hold ahead at most (one more mailbox is not opened beyond it). */
  messages: number;
}

/**
 * Opens the mailboxes of `order` one at a time, ahead of take(), within limits. A mailbox is
 * opened once: take() of one being opened waits for it, take() of one not reached yet opens it
 * at once (and the lookahead skips it). A failed open is reported by take() of that mailbox, and
 * stops the lookahead (the sync will fail); handles that were never taken are closed by stop().
 */
export class Lookahead<H extends AheadHandle> {
  private readonly ready = new Map<string, Promise<H | undefined>>();
  private readonly requested = new Set<string>();
  /** Handles opened ahead that hold messages and were not taken yet, with their message counts. */
  private readonly holding = new Map<H, number>();
  private heldMessages = 0;
  private next = 0;
  private running: Promise<void> | null = null;
  private stopped = false;

  constructor(
    private readonly order: readonly string[],
    private readonly open: (id: string) => Promise<H | undefined>,
    private readonly limits: AheadLimits,
  ) {}

  /** The handle of id: the one opened ahead, or opened now. */
  async take(id: string): Promise<H | undefined> {
    this.requested.add(id);
    const ahead = this.ready.get(id);
    if (!ahead) return this.open(id);
    this.ready.delete(id);
    const handle = await ahead;
    const counted = handle ? this.holding.get(handle) : undefined;
    if (handle && counted !== undefined) {
      this.holding.delete(handle);
      this.heldMessages -= counted;
    }
    this.pump();
    return handle;
  }

  /** Goes on opening ahead, if the limits allow and it is not already doing so. */
  pump(): void {
    if (this.running || this.stopped) return;
    this.running = this.run().finally(() => {
      this.running = null;
    });
  }

  private async run(): Promise<void> {
    const { order, limits } = this;
    while (!this.stopped && this.next < order.length && this.holding.size < limits.scanned && this.heldMessages < limits.messages) {
      const id = order[this.next++]!;
      if (this.requested.has(id) || this.ready.has(id)) continue;
      const pending = this.open(id);
      this.ready.set(id, pending);
      let handle: H | undefined;
      try {
        handle = await pending;
      } catch {
        return; // take() of this mailbox reports the failure
      }
      // Not yet taken: it counts against the limits until it is.
      if (handle && handle.heldCount > 0 && this.ready.get(id) === pending) {
        this.holding.set(handle, handle.heldCount);
        this.heldMessages += handle.heldCount;
      }
    }
  }

  /**
   * Stops opening ahead and closes the handles that were not taken. Returns the failures of
   * opens that were never taken (nobody else reports them).
   */
  async stop(): Promise<unknown[]> {
    this.stopped = true;
    const left = [...this.ready.values()];
    this.ready.clear();
    this.holding.clear();
    this.heldMessages = 0;
    const failures: unknown[] = [];
    for (const pending of left) {
      const handle = await pending.catch((err: unknown) => {
        failures.push(err);
        return undefined;
      });
      await handle?.close();
    }
    return failures;
  }
}
