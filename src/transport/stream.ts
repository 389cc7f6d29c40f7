// A channel over a byte stream (stdin/stdout of `dsync server`, through ssh or any command).
//
// Framing (ours, versioned; Dovecot's own wire format is a separate codec): the stream starts
// with the line "DSYNC-TS <version>". Each record is one line of JSON. A `mail` record with a body
// is followed by the body in chunks: "<length>\n<bytes>", ended by "0\n"; one whose body could
// not be read says why in `bodyError` and has none, and a body whose reading failed after its
// first chunk ends with "!<reason as a JSON string>\n" instead of "0\n". Bodies are read from
// the sender's store while they are written, and up to SPOOL_LIMIT bytes are kept in memory by
// the receiver; larger bodies are spooled to a temporary file.
//
// Flow control: the receiver keeps at most `memoryBudget` bytes of bodies that it received and
// its brain has not opened yet. Beyond that it stops reading, so the sender's writes wait (the
// pipe's own backpressure) while the brain saves what it has. A brain that asks for more records
// while holding that much (it needs every mail of a mailbox at once) gets them, with their bodies
// spooled to disk instead of held in memory: the run never stalls, and memory stays bounded.
import { createReadStream, mkdtempSync, openSync, writeSync, closeSync, rmSync, unlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable, Writable } from 'node:stream';
import type { BodyStream } from '../util/body-stream.js';
import type { MailRecord, SyncRecord } from '../sync/records.js';
import { BodySourceError } from '../storage/types.js';
import { PeerAbortError, ProtocolError, type Channel } from './channel.js';

/** What went wrong, as text for the peer (a thrown non-Error too). */
function reasonOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function asBuffer(chunk: unknown): Buffer {
  return typeof chunk === 'string' ? Buffer.from(chunk) : (chunk as Buffer);
}

export const STREAM_PROTOCOL = 'DSYNC-TS 1';
const SPOOL_LIMIT = 1 << 20;
const MAX_LINE = 16 << 20;
/** Default bytes of received, unopened bodies held in memory (see the flow control above). */
const MEMORY_BUDGET = 8 << 20;
/**
 * Mails whose bodies are read while earlier ones are written. A body is a buffer only for a
 * small mail (the stores read bigger ones as streams, which hold a file open and little memory).
 */
const BODY_READ_AHEAD = 8;

type Outgoing = SyncRecord | { type: 'abort'; message: string };

export interface StreamChannelOptions {
  /** Names the peer in error messages, e.g. "the remote dsync". */
  peerName?: string;
  /** Bytes of received bodies not yet opened to hold in memory at most (default 8 MB). */
  memoryBudget?: number;
  /** Where to make the spool directory (mail_temp_dir); default the system's temp dir. */
  spoolDir?: string;
}

export class StreamChannel implements Channel {
  private queue: Outgoing[] = [];
  private pumping: Promise<void> | null = null;
  private writeError: Error | undefined;
  private inbox: SyncRecord[] = [];
  private waiters: { resolve: (r: SyncRecord) => void; reject: (e: Error) => void }[] = [];
  private failure: Error | undefined;
  private buf: Buffer = Buffer.alloc(0);
  private sawVersion = false;
  private body: { rec: MailRecord; chunks: Buffer[]; size: number; fd?: number; file?: string; need: number } | null = null;
  private spoolDir: string | undefined;
  /** Spool files made since the last mailboxDone(). */
  private spoolFiles: string[] = [];
  private readonly peer: string;
  private readonly budget: number;
  private readonly spoolParent: string | undefined;
  /** Bytes of in-memory bodies delivered and not opened yet (counted in this generation). */
  private held = 0;
  /** Bumped by mailboxDone(): bodies of earlier mailboxes no longer count. */
  private generation = 0;
  /** Reading is paused because `held` exceeds the budget. */
  private paused = false;
  /** The brain wanted more while holding the budget: new bodies go to disk until it opens some. */
  private spoolAll = false;
  readonly waited = { count: 0, ms: 0 };
  readonly remote = true;
  /** Bodies of queued mail records being read ahead of their turn (see readAhead). */
  private readonly prefetched = new Map<Outgoing, Promise<Buffer | BodyStream>>();

  constructor(
    private readonly input: Readable,
    private readonly output: Writable,
    opts: StreamChannelOptions = {},
  ) {
    this.peer = opts.peerName ?? 'the peer';
    this.budget = opts.memoryBudget ?? MEMORY_BUDGET;
    this.spoolParent = opts.spoolDir;
    output.write(`${STREAM_PROTOCOL}\n`);
    input.on('data', (chunk: Buffer) => {
      try {
        this.onData(chunk);
      } catch (err) {
        this.fail(err instanceof ProtocolError ? err : new ProtocolError(`${this.peer} sent garbage: ${(err as Error).message}`));
      }
    });
    input.on('end', () => this.fail(new ProtocolError(`${this.peer} closed the connection`)));
    input.on('error', (err) => this.fail(new ProtocolError(`reading from ${this.peer} failed: ${err.message}`)));
    output.on('error', (err) => {
      this.writeError = err;
      this.fail(new ProtocolError(`writing to ${this.peer} failed: ${err.message}`));
    });
  }

  send(rec: SyncRecord): void {
    this.queue.push(rec);
    this.pump();
  }

  recv(): Promise<SyncRecord> {
    const rec = this.inbox.shift();
    if (rec) return Promise.resolve(rec);
    if (this.failure) return Promise.reject(this.failure);
    if (this.paused) {
      // Everything read is taken, and its bodies are still held: waiting for them to be opened
      // could wait forever. Read on, spooling bodies to disk.
      this.spoolAll = true;
      this.setPaused(false);
    }
    const since = performance.now();
    this.waited.count++;
    const done = (): void => {
      this.waited.ms += performance.now() - since;
    };
    return new Promise((resolve, reject) =>
      this.waiters.push({
        resolve: (r) => {
          done();
          resolve(r);
        },
        reject: (e) => {
          done();
          reject(e);
        },
      }),
    );
  }

  async flush(): Promise<void> {
    while (this.pumping) await this.pumping;
    if (this.writeError) throw this.writeError;
  }

  abort(reason: Error): void {
    this.queue.push({ type: 'abort', message: reason.message });
    this.pump();
    void this.flush()
      .catch(() => undefined)
      .then(() => this.output.end());
    this.fail(reason);
  }

  close(): void {
    void this.flush()
      .catch(() => undefined)
      .then(() => this.output.end());
  }

  /**
   * The brain finished a mailbox: every body it received for it was saved or is no longer
   * wanted. Their spool files are removed, and unopened ones stop counting against the budget.
   */
  mailboxDone(): void {
    this.generation++;
    this.held = 0;
    this.spoolAll = false;
    this.setPaused(false);
    for (const f of this.spoolFiles.splice(0)) {
      try {
        unlinkSync(f);
      } catch {
        /* already gone: dispose() removes the directory in any case */
      }
    }
  }

  /** Bytes of received bodies held in memory, not yet opened by the brain (for tests). */
  get heldBytes(): number {
    return this.held;
  }

  private setPaused(paused: boolean): void {
    if (paused === this.paused) return;
    this.paused = paused;
    if (paused) this.input.pause();
    else this.input.resume();
  }

  /** A body of n bytes was opened (or its mailbox is done): it no longer counts. */
  private release(n: number, generation: number): void {
    if (generation !== this.generation) return;
    this.held -= n;
    if (this.held <= this.budget / 2) {
      this.spoolAll = false;
      this.setPaused(false);
    }
  }

  /** Fails every pending and future recv(). */
  fail(err: Error): void {
    if (this.failure) return;
    this.failure = err;
    for (const w of this.waiters.splice(0)) w.reject(err);
    this.cleanupSpool();
    this.dropPrefetched();
  }

  // ---------------------------------------------------------------- sending

  private pump(): void {
    if (this.pumping) return;
    this.pumping = (async () => {
      while (this.queue.length > 0 && !this.writeError) {
        this.readAhead();
        const rec = this.queue.shift()!;
        await this.writeRecord(rec);
      }
    })()
      .catch((err: Error) => {
        this.writeError = err;
        this.fail(new ProtocolError(`sending to ${this.peer} failed: ${err.message}`));
      })
      .finally(() => {
        this.pumping = null;
        if (this.queue.length > 0 && !this.writeError) this.pump();
      });
  }

  /**
   * Starts reading the bodies of the next few queued mails: one at a time, each read (a thread
   * pool round trip, or the disk) was a wait of both sides. They are still written in order.
   */
  private readAhead(): void {
    // Only the head of the queue: a first sync queues tens of thousands of change records, and
    // looking past them for every record sent would cost their number squared.
    const look = Math.min(this.queue.length, 4 * BODY_READ_AHEAD);
    for (let i = 0, n = 0; i < look && n < BODY_READ_AHEAD; i++) {
      const rec = this.queue[i]!;
      if (rec.type !== 'mail' || rec.body === null) continue;
      n++;
      if (this.prefetched.has(rec)) continue;
      const p = Promise.resolve().then(rec.body);
      p.catch(() => undefined); // reported when its turn comes
      this.prefetched.set(rec, p);
    }
  }

  private write(data: Buffer | string): Promise<void> {
    if (this.output.write(data)) return Promise.resolve();
    return new Promise((resolve) => this.output.once('drain', resolve));
  }

  private async writeRecord(rec: Outgoing): Promise<void> {
    if (rec.type !== 'mail') {
      await this.write(`${JSON.stringify(rec)}\n`);
      return;
    }
    const { body, ...head } = rec;
    const early = this.prefetched.get(rec);
    this.prefetched.delete(rec);
    if (body === null) {
      await this.write(`${JSON.stringify({ ...head, hasBody: false })}\n`);
      return;
    }
    // The body is opened and its first chunk read before the record goes out: a mail that cannot
    // be read (expunged, or its folder deleted, by another program since the peer asked for it)
    // goes without its body and with the reason, and the peer skips it with a warning as it would
    // a mail it failed to read itself. A read failing further in (an mbox rewritten under a long
    // mail) ends the body with the reason instead of its end mark, with the same outcome.
    let first: Buffer;
    let rest: AsyncIterator<unknown> | null = null;
    try {
      const source = await (early ?? body());
      if (Buffer.isBuffer(source)) first = source;
      else {
        rest = (source as AsyncIterable<unknown>)[Symbol.asyncIterator]();
        const r = await rest.next();
        first = r.done ? Buffer.alloc(0) : asBuffer(r.value);
        if (r.done) rest = null;
      }
    } catch (err) {
      await this.write(`${JSON.stringify({ ...head, hasBody: false, bodyError: reasonOf(err) })}\n`);
      return;
    }
    let done = rest === null;
    try {
      await this.write(`${JSON.stringify({ ...head, hasBody: true })}\n`);
      if (first.length > 0) await this.write(Buffer.concat([Buffer.from(`${first.length}\n`), first]));
      while (rest) {
        let r: IteratorResult<unknown>;
        try {
          r = await rest.next();
        } catch (err) {
          done = true; // the source ended with its error
          await this.write(`!${JSON.stringify(reasonOf(err))}\n`);
          return;
        }
        if (r.done) break;
        const b = asBuffer(r.value);
        if (b.length > 0) await this.write(Buffer.concat([Buffer.from(`${b.length}\n`), b]));
      }
      done = true;
      await this.write('0\n');
    } finally {
      if (!done) await rest?.return?.();
    }
  }

  // ---------------------------------------------------------------- receiving

  private onData(chunk: Buffer): void {
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
    for (;;) {
      if (this.body && this.body.need > 0) {
        if (this.buf.length === 0) return;
        const take = Math.min(this.body.need, this.buf.length);
        this.addBodyBytes(this.buf.subarray(0, take));
        this.body.need -= take;
        this.buf = this.buf.subarray(take);
        continue;
      }
      const nl = this.buf.indexOf(0x0a);
      if (nl < 0) {
        if (this.buf.length > MAX_LINE) throw new ProtocolError(`${this.peer} sent a line longer than ${MAX_LINE} bytes`);
        return;
      }
      const line = this.buf.subarray(0, nl).toString('utf8');
      this.buf = this.buf.subarray(nl + 1);
      this.onLine(line);
    }
  }

  private onLine(line: string): void {
    if (!this.sawVersion) {
      if (line !== STREAM_PROTOCOL) {
        throw new ProtocolError(`${this.peer} does not speak ${STREAM_PROTOCOL} (it said ${JSON.stringify(line.slice(0, 80))})`);
      }
      this.sawVersion = true;
      return;
    }
    if (this.body) {
      if (line.startsWith('!')) {
        this.failBody(line.slice(1));
        return;
      }
      // A chunk length line inside a body.
      if (!/^\d+$/.test(line)) throw new ProtocolError(`${this.peer} sent a bad body chunk header ${JSON.stringify(line.slice(0, 40))}`);
      const n = Number(line);
      if (n === 0) this.finishBody();
      else this.body.need = n;
      return;
    }
    const rec = JSON.parse(line) as Outgoing & { hasBody?: boolean };
    if (typeof rec !== 'object' || rec === null || typeof rec.type !== 'string') throw new ProtocolError(`${this.peer} sent a line that is not a record`);
    if (rec.type === 'abort') {
      this.fail(new PeerAbortError(`${this.peer} failed: ${(rec as { message: string }).message}`));
      return;
    }
    if (rec.type === 'mail') {
      const { hasBody, bodyError, ...mail } = rec as MailRecord & { hasBody: boolean; bodyError?: string };
      if (bodyError !== undefined) {
        // The sender could not read it (see writeRecord): the save skips it with this reason.
        const failure = new BodySourceError(`${this.peer}: ${bodyError}`);
        this.deliver({ ...mail, body: () => Promise.reject(failure) });
        return;
      }
      if (!hasBody) {
        this.deliver({ ...mail, body: null });
        return;
      }
      this.body = { rec: { ...mail, body: null }, chunks: [], size: 0, need: 0 };
      return;
    }
    this.deliver(rec as SyncRecord);
  }

  private addBodyBytes(b: Buffer): void {
    const body = this.body!;
    body.size += b.length;
    if (body.fd === undefined && (body.size > SPOOL_LIMIT || this.spoolAll)) {
      const parent = this.spoolParent ?? tmpdir();
      try {
        this.spoolDir ??= mkdtempSync(join(parent, 'dsync-spool-'));
        body.file = join(this.spoolDir, `${Date.now()}-${Math.random().toString(36).slice(2)}`);
        body.fd = openSync(body.file, 'w', 0o600);
        this.spoolFiles.push(body.file);
        for (const c of body.chunks) writeSync(body.fd, c);
      } catch (err) {
        const setting = this.spoolParent === undefined ? '' : ' (mail_temp_dir)';
        throw new ProtocolError(`cannot spool a mail body from ${this.peer} to ${parent}${setting}: ${(err as Error).message}`);
      }
      body.chunks = [];
    }
    if (body.fd === undefined) body.chunks.push(Buffer.from(b));
    else {
      try {
        writeSync(body.fd, b);
      } catch (err) {
        throw new ProtocolError(`cannot spool a mail body from ${this.peer} to ${body.file}: ${(err as Error).message}`);
      }
    }
  }

  /** The sender could not read the rest of the body (see writeRecord): what came is dropped. */
  private failBody(reason: string): void {
    const body = this.body!;
    this.body = null;
    let message: unknown;
    try {
      message = JSON.parse(reason);
    } catch {
      message = undefined;
    }
    if (typeof message !== 'string') throw new ProtocolError(`${this.peer} sent a bad body end ${JSON.stringify(reason.slice(0, 40))}`);
    if (body.fd !== undefined) {
      closeSync(body.fd);
      try {
        unlinkSync(body.file!);
      } catch {
        /* dispose() removes the directory in any case */
      }
    }
    const failure = new BodySourceError(`${this.peer}: ${message}`);
    this.deliver({ ...body.rec, body: () => Promise.reject(failure) });
  }

  private finishBody(): void {
    const body = this.body!;
    this.body = null;
    let factory: () => BodyStream | Buffer | Promise<Buffer | BodyStream>;
    if (body.fd !== undefined) {
      closeSync(body.fd);
      const file = body.file!;
      factory = () => createReadStream(file);
    } else {
      const bytes = Buffer.concat(body.chunks);
      // Counted until first opened (a save retried after another mail's failure opens it again).
      const generation = this.generation;
      let counted = true;
      this.held += bytes.length;
      factory = () => {
        if (counted) {
          counted = false;
          this.release(bytes.length, generation);
        }
        return bytes;
      };
      if (this.held > this.budget) this.setPaused(true);
    }
    this.deliver({ ...body.rec, body: factory });
  }

  private deliver(rec: SyncRecord): void {
    const w = this.waiters.shift();
    if (w) w.resolve(rec);
    else this.inbox.push(rec);
  }

  private cleanupSpool(): void {
    if (this.body?.fd !== undefined) {
      try {
        closeSync(this.body.fd);
      } catch {
        /* closed already */
      }
      this.body.fd = undefined;
    }
    if (this.spoolDir) rmSync(this.spoolDir, { recursive: true, force: true });
    this.spoolDir = undefined;
  }

  /** Removes spooled bodies once the run is over. */
  dispose(): void {
    this.cleanupSpool();
    this.dropPrefetched();
  }

  /** Bodies read ahead that will never be written (the channel failed or is gone): let go of them. */
  private dropPrefetched(): void {
    for (const p of this.prefetched.values()) void p.then((s) => (Buffer.isBuffer(s) ? undefined : s.destroy()), () => undefined);
    this.prefetched.clear();
  }
}
