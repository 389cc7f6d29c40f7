// Per-location lock so two dsync runs never work on the same mail store at once. A lock file
// created with O_EXCL holds "pid hostname"; a lock whose process is gone (same host) is stale.
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

/** Takes the lock; with `owner` the lock file belongs to that user from its first moment. */
export async function acquireLock(path: string, timeoutSeconds: number, owner?: { uid: number; gid: number }): Promise<() => void> {
  const deadline = Date.now() + timeoutSeconds * 1000;
  let holder = '';
  for (;;) {
    try {
      // Written complete under a private name, then linked into place: the lock appears at once
      // with its holder's name and owner, and link() fails if someone else holds it.
      const temp = `${path}.${process.pid}.tmp`;
      const fd = openSync(temp, constants.O_CREAT | constants.O_TRUNC | constants.O_WRONLY, 0o600);
      try {
        if (owner) fchownSync(fd, owner.uid, owner.gid);
        writeSync(fd, `${process.pid} ${hostname()}\n`);
      } catch (err) {
        closeSync(fd);
        try {
          unlinkSync(temp);
        } catch {
          /* nothing to clean */
        }
        throw new Error(`cannot write lock file ${temp}: ${(err as Error).message}`, { cause: err });
      }
      closeSync(fd);
      try {
        linkSync(temp, path);
      } finally {
        try {
          unlinkSync(temp);
        } catch {
          /* gone */
        }
      }
      let released = false;
      return () => {
        if (released) return;
        released = true;
        try {
          unlinkSync(path);
        } catch {
          /* already gone */
        }
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
      try {
        unlinkSync(path);
      } catch {
        /* someone else removed it */
      }
      continue;
    }
    if (Date.now() >= deadline) throw new LockTimeoutError(path, holder, timeoutSeconds);
    await new Promise((r) => setTimeout(r, 100));
  }
}
