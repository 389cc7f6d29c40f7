// Helpers for the mbox storage tests.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseMailLocation } from '../../src/storage/location.js';
import { MboxStore, type MboxStoreOptions } from '../../src/storage/mbox/store.js';
import type { StoreMailbox } from '../../src/storage/types.js';

export async function openMbox(spec: string, opts: MboxStoreOptions = {}): Promise<MboxStore> {
  return MboxStore.open(parseMailLocation(spec, { home: os.tmpdir(), user: 'test' }), {
    ...opts,
    warn:
      opts.warn ??
      ((m) => {
        throw new Error(`unexpected warning: ${m}`);
      }),
  });
}

export async function bodyOf(box: StoreMailbox, uid: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of await box.openBody(uid)) chunks.push(typeof c === 'string' ? Buffer.from(c) : (c as Buffer));
  return Buffer.concat(chunks);
}

/** Lone LFs to CRLF: how an IMAP server serves a message. */
export function crlf(b: Buffer): Buffer {
  const out: number[] = [];
  for (let i = 0; i < b.length; i++) {
    if (b[i] === 0x0a && (i === 0 || b[i - 1] !== 0x0d)) out.push(0x0d);
    out.push(b[i]!);
  }
  return Buffer.from(out);
}

/** Unix seconds of a local-time date (From_ line dates without a zone are local time). */
export function local(y: number, mon: number, d: number, h: number, mi: number, s: number): number {
  return Math.floor(new Date(y, mon - 1, d, h, mi, s).getTime() / 1000);
}

export function write(file: string, text: string | Buffer): void {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, text);
}

/** sha256 of a file's bytes plus its mode and mtime; changes iff it was written. */
export function fileState(file: string): string {
  const st = fs.statSync(file);
  return `${st.ino}:${st.size}:${st.mode}:${st.mtimeMs}:${fs.readFileSync(file).toString('base64')}`;
}
