// Message bodies as streams without node:stream. Every consumer of a body only iterates it
// (`for await`) or gives it up (`destroy`); node:stream with fs/promises and the file streams costs
// ~20 ms of loading (about 30 internal modules) in a run that copies a single mail too large to be
// handed over as one buffer. A node Readable fits this interface too (the remote channel's spooled
// bodies are ones).
import * as fs from 'node:fs';

export interface BodyStream extends AsyncIterable<Buffer> {
  /** Gives the stream up, releasing what it holds (an open file). Safe at any time, also twice. */
  destroy(): void;
}

/** Bytes read per step from a message file (what the consumers write at a time). */
const FILE_CHUNK = 256 * 1024;

/**
 * A body stream over a generator; destroy ends it, so its finally blocks release what it holds.
 * A generator that never started runs no finally block: `release` (if given) frees what it was
 * handed instead, on destroy; it must be safe to call after the generator's own release too.
 */
export function generatorBody(gen: AsyncGenerator<Buffer, void, undefined>, release?: () => void): BodyStream {
  return {
    [Symbol.asyncIterator]: () => gen,
    destroy: () => {
      void gen.return(undefined).catch(() => undefined);
      release?.();
    },
  };
}

/** A body of buffers already in memory. */
export function buffersBody(chunks: readonly Buffer[]): BodyStream {
  return generatorBody(
    (async function* () {
      for (const c of chunks) yield c;
    })(),
  );
}

/** Opens a file as a body stream; rejects with the open's error (ENOENT when it is gone). */
export function openFileBody(file: string): Promise<BodyStream> {
  return new Promise((resolve, reject) => {
    fs.open(file, 'r', (err, fd) => (err ? reject(err) : resolve(new FileBody(fd))));
  });
}

/** The bytes of an open file, read in FILE_CHUNK steps through the thread pool. */
class FileBody implements BodyStream {
  private closed = false;
  /** A read is in the thread pool: the descriptor is closed only after it (never under it). */
  private reading = false;
  private closeWanted = false;

  constructor(private readonly fd: number) {}

  async *[Symbol.asyncIterator](): AsyncGenerator<Buffer, void, undefined> {
    try {
      let position = 0;
      while (!this.closeWanted) {
        const buf = Buffer.allocUnsafe(FILE_CHUNK);
        const n = await this.read(buf, position);
        if (n === 0) return;
        position += n;
        // A fresh buffer per chunk: consumers may keep chunks (header parsing, a channel's queue).
        yield n === buf.length ? buf : buf.subarray(0, n);
      }
    } finally {
      this.destroy();
    }
  }

  destroy(): void {
    this.closeWanted = true;
    if (this.reading || this.closed) return;
    this.closed = true;
    fs.close(this.fd, () => undefined);
  }

  private read(buf: Buffer, position: number): Promise<number> {
    if (this.closed) return Promise.resolve(0);
    this.reading = true;
    return new Promise((resolve, reject) => {
      fs.read(this.fd, buf, 0, buf.length, position, (err, n) => {
        this.reading = false;
        if (this.closeWanted) this.destroy();
        if (err) reject(err);
        else resolve(n);
      });
    });
  }
}
