// A debugging aid for storage bugs that show only against a live Dovecot once in hundreds of runs
// (it found the garbled mail of session 18): with DSYNC_TRACE_MBOX=DIR set, every state of an
// mbox file that a write of ours starts from or leaves is copied to DIR, numbered, with its
// identity and (for the state a write starts from) the parse it was given. What changed between
// one of our "-out" states and the next "-in" one is what another program (Dovecot) did.
// scripts/mbox-trace-check.mjs DIR names the first state where a mail's bytes changed.
// Costs a copy of the file per write: never set it in production.
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { ParsedMbox } from './parse.js';

let seq = 0;

/** Copies the file (or the open file fd) as the state `tag` ("rewrite-in", "append-out", ...). */
export function traceState(file: string, tag: string, p?: ParsedMbox, fd?: number): void {
  const dir = process.env.DSYNC_TRACE_MBOX;
  if (!dir) return;
  try {
    fs.mkdirSync(dir, { recursive: true });
    const base = path.join(dir, `${String(++seq).padStart(4, '0')}-${path.basename(file)}-${tag}`);
    fs.writeFileSync(`${base}.mbox`, fd !== undefined ? readAll(fd) : fs.readFileSync(file));
    const st = fd !== undefined ? fs.fstatSync(fd) : fs.statSync(file);
    const meta: Record<string, unknown> = { at: Date.now(), ino: st.ino, size: st.size, mtimeMs: st.mtimeMs, ctimeMs: st.ctimeMs };
    if (p) meta.parse = { identity: p.identity, messages: p.messages.map((m) => [m.uid, m.start, m.hdrStart, m.hdrEnd, m.bodyStart, m.msgEnd, m.size, m.hdrHash]) };
    fs.writeFileSync(`${base}.json`, JSON.stringify(meta));
  } catch (e) {
    process.stderr.write(`dsync: DSYNC_TRACE_MBOX: ${(e as Error).message}\n`);
  }
}

function readAll(fd: number): Buffer {
  const size = fs.fstatSync(fd).size;
  const b = Buffer.alloc(size);
  let off = 0;
  for (let n; off < size && (n = fs.readSync(fd, b, off, size - off, off)) > 0; ) off += n;
  return b.subarray(0, off);
}
