// Per-location lock so two dsync runs never work on the same mail store at once. A lock file
// linked into place complete (createInPlace) holds "pid hostname"; a lock whose process is gone (same host) is stale.
import { openSync, closeSync, writeSync, readFileSync, unlinkSync, linkSync, fchownSync, constants } from 'node:fs';
import { hostname } from 'node:os';

export class LockTimeoutError extends Error {
  constructor(path: string, holder: string, seconds: number) {
    super(`another dsync (${holder || 'unknown process'}) is syncing this location; gave up waiting after ${seconds} s for ${path}`);
    this.name = 'LockTimeoutError';
  }
}

function holderAlive(content: string): boolean {
  const [pidText, host] = content.trim().split(' ');
  const pid = Number(pidText);
  if (!Number.isInteger(pid) || pid <= 0) return false;
  if (host && host !== hostname()) return true; // cannot tell: assume alive
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Creates `path` holding `content`, owned by `owner` (when given) from its first moment: written
 * under a private name, then linked into place, so it never exists half-written or with another
 * owner, not even after a kill in between. link() does not replace: throws EEXIST when `path`
 * exists. A failure to write is thrown as "cannot write <what> <private name>: ...".
 */
export function createInPlace(path: string, content: string, owner: { uid: number; gid: number } | undefined, what: string): void {
  // Ends in ".lock": left behind by a kill, it is not taken for an mbox folder (see dotLockTempName).
  const temp = `${path}.${process.pid}.tmp.lock`;
  // One left by a killed run of the same pid goes first: a new file gets our mode, not its own.
  unlinkQuietly(temp);
  try {
    const fd = openSync(temp, constants.O_CREAT | constants.O_EXCL | constants.O_WRONLY, 0o600);
    try {
      if (owner) fchownSync(fd, owner.uid, owner.gid);
      if (content) writeSync(fd, content);
    } catch (err) {
      throw new Error(`cannot write ${what} ${temp}: ${(err as Error).message}`, { cause: err });
    } finally {
      closeSync(fd);
    }
    linkSync(temp, path);
  } finally {
    unlinkQuietly(temp);
  }
}

function unlinkQuietly(p: string): void {
  try {
    unlinkSync(p);
  } catch {
    /* never made, or gone already */
  }
}

/** Takes the lock; with `owner` the lock file belongs to that user from its first moment. */
export async function acquireLock(path: string, timeoutSeconds: number, owner?: { uid: number; gid: number }): Promise<() => void> {
  const deadline = Date.now() + timeoutSeconds * 1000;
  let holder = '';
  for (;;) {
    try {
      // Appears at once with its holder's name and owner; fails with EEXIST if someone holds it.
      createInPlace(path, `${process.pid} ${hostname()}\n`, owner, 'lock file');
      let released = false;
      return () => {
        if (released) return;
        released = true;
        unlinkQuietly(path);
      };
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'EEXIST') {
        if (err instanceof Error && err.message.startsWith('cannot write lock file')) throw err;
        throw new Error(`cannot create lock file ${path}: ${(err as Error).message}`, { cause: err });
      }
    }
    try {
      holder = readFileSync(path, 'utf8').trim();
    } catch {
      continue; // released between our attempts
    }
    if (!holderAlive(holder)) {
      unlinkQuietly(path); // (unless someone else removed it first)
      continue;
    }
    if (Date.now() >= deadline) throw new LockTimeoutError(path, holder, timeoutSeconds);
    await new Promise((r) => setTimeout(r, 100));
  }
}
