// Random-access reading of a (possibly huge) file through a sliding window, for the mbox parser.
import type { FileHandle } from 'node:fs/promises';

const DEFAULT_WINDOW = 1 << 20;
const LF_BUF = Buffer.from('\n');

/**
 * Window buffers given back by readers that are done, for the next reader: a sync parses and
 * copies many files one after the other, and fresh megabyte buffers for each would only leave
 * the C heap fragmented (the process keeps the memory).
 */
const spare: Buffer[] = [];
const MAX_SPARE = 2;

function takeBuffer(size: number): Buffer {
  const i = spare.findIndex((b) => b.length >= size);
  if (i >= 0) return spare.splice(i, 1)[0]!;
  return Buffer.allocUnsafe(size);
}

function giveBuffer(b: Buffer): void {
  if (b.length >= DEFAULT_WINDOW && spare.length < MAX_SPARE && !spare.includes(b)) spare.push(b);
}

/** The file became shorter than its size when the reader was made: read it again. */
export class FileShrank extends Error {}

export class WindowReader {
  private buf: Buffer = Buffer.alloc(0);
  private winStart = 0;
  /** With reuse: the allocation the window lives in. */
  private store: Buffer | null = null;

  /**
   * With reuse, one buffer serves every window: views handed out (window, slice) are valid only
   * until the window moves. Without, each window is a fresh allocation and views stay valid.
   */
  constructor(
    private readonly fh: FileHandle,
    readonly size: number,
    private readonly windowSize = DEFAULT_WINDOW,
    private readonly reuse = false,
  ) {}

  /**
   * With reuse: the reader is done, its buffer may serve another reader (every view handed out
   * becomes invalid). Harmless without reuse, and for a reader that read nothing.
   */
  release(): void {
    if (this.store) giveBuffer(this.store);
    this.store = null;
    this.buf = Buffer.alloc(0);
    this.winStart = 0;
  }

  /** [pos, end) is inside the current window (reading it does not move the window). */
  covers(pos: number, end: number): boolean {
    const e = Math.min(this.size, end);
    return pos >= this.winStart && e <= this.winStart + this.buf.length;
  }

  /** Makes [pos, pos+len) (clipped to the file size) available; returns the window and its start. */
  async ensure(pos: number, len: number): Promise<void> {
    const end = Math.min(this.size, pos + len);
    if (pos >= this.winStart && end <= this.winStart + this.buf.length) return;
    const want = Math.max(0, Math.min(this.size - pos, Math.max(len, this.windowSize)));
    let buf: Buffer;
    if (this.reuse) {
      if (!this.store || this.store.length < want) {
        if (this.store) giveBuffer(this.store);
        // Small files get a small buffer; window-sized ones are shared (see takeBuffer).
        const size = Math.max(want, Math.min(this.windowSize, this.size));
        this.store = size >= this.windowSize ? takeBuffer(size) : Buffer.allocUnsafe(size);
      }
      buf = this.store.subarray(0, want);
    } else {
      buf = Buffer.allocUnsafe(want);
    }
    let off = 0;
    while (off < want) {
      const { bytesRead } = await this.fh.read(buf, off, want - off, pos + off);
      if (bytesRead === 0) break;
      off += bytesRead;
    }
    // The file ended early: another program truncated it while we read (Dovecot compacts an
    // mbox in place). The reader of such a file gives up; its caller reads it again.
    if (off < want) throw new FileShrank(`the file shrank to ${pos + off} bytes while it was being read (${this.size} before)`);
    this.buf = buf;
    this.winStart = pos;
  }

  /**
   * Ensures [pos, pos+len) and returns the whole current window for synchronous scanning; bytes
   * past its end are unknown unless atEof.
   */
  async window(pos: number, len: number): Promise<{ buf: Buffer; start: number; atEof: boolean }> {
    await this.ensure(pos, len);
    return { buf: this.buf, start: this.winStart, atEof: this.winStart + this.buf.length >= this.size };
  }

  /** Byte at pos (must be inside the window); -1 past the end of the file. */
  byteAt(pos: number): number {
    if (pos >= this.size) return -1;
    const b = this.buf[pos - this.winStart];
    if (b === undefined) throw new Error(`reader: ${pos} is outside the window`);
    return b;
  }

  async byte(pos: number): Promise<number> {
    if (pos >= this.size || pos < 0) return -1;
    await this.ensure(pos, 1);
    return this.byteAt(pos);
  }

  /** [a, b): a view of the window while it fits (valid until the window moves), else a copy. */
  async slice(a: number, b: number): Promise<Buffer> {
    const end = Math.min(b, this.size);
    if (end <= a) return Buffer.alloc(0);
    if (end - a > this.windowSize * 4) {
      // Large ranges straight from the file.
      const out = Buffer.allocUnsafe(end - a);
      let off = 0;
      while (off < out.length) {
        const { bytesRead } = await this.fh.read(out, off, out.length - off, a + off);
        if (bytesRead === 0) break;
        off += bytesRead;
      }
      return out.subarray(0, off);
    }
    await this.ensure(a, end - a);
    // Without reuse windows are fresh allocations: the view stays valid after the window moves.
    return this.buf.subarray(a - this.winStart, end - this.winStart);
  }

  /** Offset of the next LF at or after pos, or -1. */
  async indexOfLf(pos: number): Promise<number> {
    return this.indexOf(LF_BUF, pos);
  }

  /** Offset of the next occurrence of needle at or after pos, or -1. */
  async indexOf(needle: Buffer, pos: number): Promise<number> {
    let p = pos;
    while (p < this.size) {
      if (p < this.winStart || p >= this.winStart + this.buf.length) await this.ensure(p, this.windowSize);
      const rel = this.buf.indexOf(needle, p - this.winStart);
      if (rel >= 0) {
        const abs = this.winStart + rel;
        return abs;
      }
      const winEnd = this.winStart + this.buf.length;
      if (winEnd >= this.size) return -1;
      // Continue so that a needle straddling the window end is found.
      const next = Math.max(p + 1, winEnd - needle.length + 1);
      await this.ensure(next, this.windowSize);
      p = next;
    }
    return -1;
  }

  /** The line starting at pos (without LF; a CR before the LF is kept), at most max bytes. */
  async lineAt(pos: number, max = 4096): Promise<{ text: string; end: number; nl: number } | null> {
    if (pos >= this.size) return null;
    await this.ensure(pos, max + 1);
    const limit = Math.min(this.size, pos + max + 1);
    const rel = this.buf.subarray(pos - this.winStart, limit - this.winStart).indexOf(0x0a);
    if (rel < 0) {
      if (limit < this.size) return null; // longer than max
      return { text: this.buf.subarray(pos - this.winStart, limit - this.winStart).toString('latin1'), end: this.size, nl: -1 };
    }
    const nl = pos + rel;
    return { text: this.buf.subarray(pos - this.winStart, nl - this.winStart).toString('latin1'), end: nl + 1, nl };
  }
}
