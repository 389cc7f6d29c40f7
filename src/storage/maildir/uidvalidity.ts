// UIDVALIDITY allocation the way Dovecot does it for maildir: in the root (control) directory,
// "dovecot-uidvalidity" holds the last allocated value as 8 lowercase hex digits (no newline), and an
// empty read-only companion file "dovecot-uidvalidity.<8 hex>" names the same value. Allocating
// renames the companion to the next value; rename is atomic, so two allocators never get the same
// value (the loser sees ENOENT and retries). The first value is the current unix time.
import * as path from 'node:path';
import { StorageError } from '../types.js';
import { assertWritable, chownIfNeededSync, errCode, isNotFound, toStorageError, writeFileAtomic, type FsContext } from './io.js';
import { fsp } from '../../util/builtin.js';

export const UIDVALIDITY_NAME = 'dovecot-uidvalidity';
const COMPANION_RE = /^dovecot-uidvalidity\.([0-9a-f]{8})$/;

function hex8(n: number): string {
  return n.toString(16).padStart(8, '0');
}

async function readMain(p: string): Promise<number> {
  try {
    const s = (await fsp.readFile(p, 'utf8')).trim();
    return /^[0-9a-fA-F]{1,8}$/.test(s) ? parseInt(s, 16) : 0;
  } catch (e) {
    if (isNotFound(e)) return 0;
    throw toStorageError(e, 'read', p);
  }
}

/** Current value (0 if none), without allocating. */
export async function currentUidValidity(dir: string): Promise<number> {
  let max = await readMain(path.join(dir, UIDVALIDITY_NAME));
  let names: string[] = [];
  try {
    names = await fsp.readdir(dir);
  } catch (e) {
    if (!isNotFound(e)) throw toStorageError(e, 'readdir', dir);
  }
  for (const n of names) {
    const m = COMPANION_RE.exec(n);
    if (m) max = Math.max(max, parseInt(m[1]!, 16));
  }
  return max;
}

export async function allocateUidValidity(ctx: FsContext, dir: string, now = () => Math.floor(Date.now() / 1000), atLeast = 0): Promise<number> {
  assertWritable(ctx, 'allocate a UIDVALIDITY');
  for (let attempt = 0; attempt < 100; attempt++) {
    let names: string[];
    try {
      names = await fsp.readdir(dir);
    } catch (e) {
      throw toStorageError(e, 'readdir', dir);
    }
    const companions: number[] = [];
    for (const n of names) {
      const m = COMPANION_RE.exec(n);
      if (m) companions.push(parseInt(m[1]!, 16));
    }
    const main = await readMain(path.join(dir, UIDVALIDITY_NAME));
    const cur = Math.max(main, ...companions, 0);
    let next = Math.max(cur === 0 ? now() : cur + 1, atLeast);
    if (next > 0xffffffff || next <= 0) next = 1;
    const nextPath = path.join(dir, `${UIDVALIDITY_NAME}.${hex8(next)}`);
    const compCur = companions.length > 0 ? Math.max(...companions) : 0;
    try {
      if (compCur > 0) {
        await fsp.rename(path.join(dir, `${UIDVALIDITY_NAME}.${hex8(compCur)}`), nextPath);
        // Leftover extra companions (should not exist) are harmless; clean them.
        for (const c of companions) {
          if (c !== compCur) await fsp.unlink(path.join(dir, `${UIDVALIDITY_NAME}.${hex8(c)}`)).catch(() => undefined);
        }
      } else {
        const fh = await fsp.open(nextPath, 'wx', 0o444);
        await fh.close();
        chownIfNeededSync(ctx, nextPath);
      }
    } catch (e) {
      const c = errCode(e);
      if (c === 'ENOENT' || c === 'EEXIST') continue; // lost a race; look again
      throw toStorageError(e, 'allocate UIDVALIDITY in', dir);
    }
    await writeFileAtomic(ctx, path.join(dir, UIDVALIDITY_NAME), hex8(next));
    return next;
  }
  throw new StorageError(`could not allocate a UIDVALIDITY in ${dir}: too much contention`, 'LOCKED');
}

/**
 * Makes every later allocation here greater than `value`: a mailbox now holds that UIDVALIDITY
 * (a copy of the peer's mailbox, or the peer's UIDVALIDITY after a conflict), which this
 * directory's counter never gave out. Without it, a mailbox created here later under a name
 * that mailbox had before (renamed away since) could get the same UIDVALIDITY, and an IMAP
 * client would take its UIDs for those of the old one.
 */
export async function reserveUidValidity(ctx: FsContext, dir: string, value: number): Promise<void> {
  if ((await currentUidValidity(dir)) >= value) return;
  await allocateUidValidity(ctx, dir, undefined, value);
}
