// The record of an append in progress: "<mbox>.dsync-append.lock" (hidden like every "*.lock").
//
// Appends are made in place, so a process killed in the middle of one leaves the last message cut
// short. Read as it is, such a tail is a plausible mail: same headers (hence the same header hash)
// and UID as the mail it was meant to be, only shorter. A sync would record it as that mail and
// never copy it again. So before appending, the writer records where the append starts, where it
// will end and the first bytes it will write; it removes the record once the data is durable.
//
// While a record says an append is unfinished, every reader sees the file as it was before the
// append (parseMbox's `end`), and the next writer, under the dotlock, cuts the tail off before it
// reads anything. The torn mail is thus never seen, and the next sync copies it again. A record
// that no longer describes the file (rewritten, replaced, or appended to by someone else after a
// complete append of ours) is dropped.
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { hostname } from 'node:os';
import { closeQuietly, fsyncDir, fsyncFdSync, isNotFound, readFullyAt, toStorageError, unlinkQuietly, writeNewFile, type FsContext } from '../maildir/io.js';
import { identityOf, type FileIdentity } from './parse.js';

/** How many of the first appended bytes the record keeps, to recognise them later. */
export const INTENT_HEAD_BYTES = 256;

export interface AppendIntent {
  /** The writer, for messages. */
  pid: number;
  host: string;
  /** The file appended to. */
  dev: number;
  ino: number;
  /** Its size before the append: where the append starts. */
  start: number;
  /** Its size once the append is complete. */
  end: number;
  /** The first bytes written at `start` (up to INTENT_HEAD_BYTES). */
  head: Buffer;
}

export type IntentState =
  /** The append finished (possibly followed by others' mail): the record is only left over. */
  | { kind: 'complete' }
  /** The append was cut short: only [0, start) is the mailbox. */
  | { kind: 'torn'; keep: number; torn: number }
  /** The record does not describe this file any more (why, for a message). */
  | { kind: 'stale'; why: string };

export function intentPath(mbox: string): string {
  return `${mbox}.dsync-append.lock`;
}

/** Records an append about to start (under the dotlock), durably: it must survive what the append may not. */
export async function writeAppendIntent(ctx: FsContext, mbox: string, intent: Omit<AppendIntent, 'pid' | 'host'>): Promise<void> {
  const p = intentPath(mbox);
  const record = {
    v: 1,
    pid: process.pid,
    host: hostname(),
    dev: intent.dev,
    ino: intent.ino,
    start: intent.start,
    end: intent.end,
    head: intent.head.subarray(0, INTENT_HEAD_BYTES).toString('base64'),
  };
  unlinkQuietly(p); // a leftover was settled before; never append to it
  writeNewFile(ctx, p, JSON.stringify(record) + '\n');
  await fsyncDir(path.dirname(p));
}

/** Drops the record (the append is durable, or it was settled). */
export async function removeAppendIntent(mbox: string): Promise<void> {
  try {
    await fsp.unlink(intentPath(mbox));
  } catch (e) {
    if (!isNotFound(e)) throw toStorageError(e, 'remove', intentPath(mbox));
  }
}

/**
 * The record, if there is one. A record that cannot be read as one (a crash while writing it,
 * before the append began) is returned as 'invalid'.
 */
export async function readAppendIntent(mbox: string): Promise<AppendIntent | 'invalid' | null> {
  let text: string;
  try {
    text = await fsp.readFile(intentPath(mbox), 'utf8');
  } catch (e) {
    if (isNotFound(e)) return null;
    throw toStorageError(e, 'read', intentPath(mbox));
  }
  try {
    const r = JSON.parse(text) as Record<string, unknown>;
    const num = (k: string): number => {
      const v = r[k];
      if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw new Error(k);
      return v;
    };
    if (r.v !== 1 || typeof r.host !== 'string' || typeof r.head !== 'string') return 'invalid';
    const intent: AppendIntent = {
      pid: num('pid'),
      host: r.host,
      dev: num('dev'),
      ino: num('ino'),
      start: num('start'),
      end: num('end'),
      head: Buffer.from(r.head, 'base64'),
    };
    return intent.end > intent.start ? intent : 'invalid';
  } catch {
    return 'invalid';
  }
}

/**
 * What the record means for the file open as fd (identity = its fstat). Pure apart from reading
 * the file: readers and the settling writer come to the same answer for the same file.
 */
export async function judgeIntent(intent: AppendIntent, fd: number, id: FileIdentity): Promise<IntentState> {
  if (intent.dev !== id.dev || intent.ino !== id.ino) return { kind: 'stale', why: 'the file was replaced since' };
  if (id.size < intent.start) return { kind: 'stale', why: 'the file is shorter than before the append' };
  const have = Math.min(intent.head.length, id.size - intent.start);
  if (have > 0) {
    const buf = Buffer.alloc(have);
    const n = await readFullyAt(fd, buf, 0, have, intent.start);
    if (n !== have || !buf.equals(intent.head.subarray(0, have))) return { kind: 'stale', why: 'the bytes where it started were changed since' };
  }
  if (id.size === intent.end) return { kind: 'complete' };
  if (id.size > intent.end) {
    // Complete, and someone appended after it: their mail starts right at our end.
    const buf = Buffer.alloc(5);
    const n = await readFullyAt(fd, buf, 0, 5, intent.end);
    if (n === 5 && buf.toString('latin1') === 'From ') return { kind: 'complete' };
    return { kind: 'stale', why: 'the file was rewritten or appended to by another program since' };
  }
  return { kind: 'torn', keep: intent.start, torn: id.size - intent.start };
}

/**
 * Under the mbox's dotlock: cuts off the tail of an append that was interrupted, and drops the
 * record. Returns true when the file was changed.
 */
export async function settleAppendIntent(ctx: FsContext, mbox: string): Promise<boolean> {
  const intent = await readAppendIntent(mbox);
  if (intent === null) return false;
  if (intent === 'invalid') {
    await removeAppendIntent(mbox);
    return false;
  }
  let fd: number;
  try {
    fd = fs.openSync(mbox, 'r+');
  } catch (e) {
    if (!isNotFound(e)) throw toStorageError(e, 'open', mbox);
    await removeAppendIntent(mbox); // the file is gone, and what the record was about with it
    return false;
  }
  let changed = false;
  try {
    const state = await judgeIntent(intent, fd, identityOf(fs.fstatSync(fd)));
    if (state.kind === 'torn' && state.torn > 0) {
      try {
        fs.ftruncateSync(fd, state.keep);
        fsyncFdSync(fd);
      } catch (e) {
        throw toStorageError(e, 'cut off an interrupted append in', mbox);
      }
      changed = true;
      ctx.warn(
        `${mbox}: removed the last ${state.torn} bytes, the unfinished part of an append that was interrupted (by process ${intent.pid} on ${intent.host}); ` +
          'the mail in them is copied again by the next sync',
      );
    } else if (state.kind === 'stale') {
      ctx.warn(`${mbox}: ignored the record of an interrupted append (${state.why})`);
    }
  } finally {
    closeQuietly(fd);
  }
  await removeAppendIntent(mbox);
  return changed;
}
