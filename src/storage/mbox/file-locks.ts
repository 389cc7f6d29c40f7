// Which other processes hold a kernel lock (fcntl, flock) on a file, from Linux's /proc/locks.
//
// Why an mbox writer needs to know: Dovecot with Debian's default `mbox_write_locks = fcntl
// dotlock` opens the mbox, takes an fcntl lock on that open file, and only then waits for the
// dotlock; once it has the dotlock it does not look again whether the path still names the file
// it opened. An mbox we replaced (new file renamed over it) while Dovecot waited is then written
// by Dovecot into the old, unlinked file: an APPEND reported as done, and the mail gone (seen in
// test/oracle/busy.test.ts; storage/dovecot-after-us.test.ts shows it). Before replacing a file we
// look here for a lock on it held by anyone else; if there is one, we give way (see MboxMailbox).
import * as fs from 'node:fs';

/** The identity /proc/locks gives a file: device major, minor and inode. */
export interface LockedFile {
  major: bigint;
  minor: bigint;
  ino: bigint;
}

/** The file's identity as /proc/locks shows it, or null when it cannot be stat'ed. */
export function lockIdentity(file: string): LockedFile | null {
  let st: fs.BigIntStats;
  try {
    st = fs.statSync(file, { bigint: true });
  } catch {
    return null;
  }
  // glibc's encoding of dev_t (gnu_dev_major / gnu_dev_minor).
  const dev = st.dev;
  return {
    major: ((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn),
    minor: (dev & 0xffn) | ((dev >> 12n) & ~0xffn),
    ino: st.ino,
  };
}

interface LockEntry {
  pid: number;
  write: boolean;
  /** Waiting for the lock, not holding it. */
  waiting: boolean;
}

/** The locks on the file held or waited for by processes other than this one; null without /proc/locks (not Linux). */
function otherLocks(file: LockedFile): LockEntry[] | null {
  let text: string;
  try {
    text = fs.readFileSync('/proc/locks', 'latin1');
  } catch {
    return null;
  }
  const out: LockEntry[] = [];
  // "1: POSIX  ADVISORY  WRITE 1234 08:01:5678 0 EOF"; a waiter's line has "->" after the number.
  const want = `:${file.ino}`;
  for (const line of text.split('\n')) {
    if (!line.includes(want)) continue;
    const f = line.trim().split(/\s+/);
    const waiting = f[1] === '->';
    const i = waiting ? 2 : 1;
    const pid = Number(f[i + 3]);
    const id = f[i + 4]?.split(':');
    if (!id || id.length !== 3 || !Number.isInteger(pid)) continue;
    try {
      if (BigInt(`0x${id[0]}`) !== file.major || BigInt(`0x${id[1]}`) !== file.minor || BigInt(id[2]!) !== file.ino) continue;
    } catch {
      continue;
    }
    if (pid !== process.pid) out.push({ pid, write: f[i + 2] === 'WRITE', waiting });
  }
  return out;
}

/**
 * The processes other than this one holding (or waiting for) a lock on the file, or null when
 * the system does not tell (no /proc/locks: not Linux).
 */
export function otherLockHolders(file: LockedFile): number[] | null {
  const locks = otherLocks(file);
  return locks && [...new Set(locks.map((l) => l.pid))];
}

/**
 * The processes other than this one holding a write lock on the file (Dovecot holds its fcntl
 * write lock through a whole in-place rewrite), or null when the system does not tell.
 */
export function otherWriteLockHolders(file: LockedFile): number[] | null {
  const locks = otherLocks(file);
  return locks && [...new Set(locks.filter((l) => l.write && !l.waiting).map((l) => l.pid))];
}
