// Other processes' locks on a file, taken with util-linux's flock(1), which /proc/locks lists like
// Dovecot's fcntl locks.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import { lockIdentity, otherLockHolders } from '../../src/storage/mbox/file-locks.js';

function notInstalled(cmd: string): boolean {
  return !['/usr/bin', '/bin', '/usr/local/bin'].some((d) => fs.existsSync(`${d}/${cmd}`));
}

/** Why tests of other processes' locks cannot run here, or undefined. */
export const flockSkipReason: string | undefined = !fs.existsSync('/proc/locks')
  ? 'no /proc/locks (not Linux)'
  : notInstalled('flock')
    ? 'flock(1) is not installed'
    : undefined;

/** `flock` holding a lock on the file until killed (see release); resolves once /proc/locks shows it. */
export async function holdLock(file: string, mode: '-s' | '-x'): Promise<ChildProcess> {
  // -o: the lock stays with flock itself (sleep gets no copy of it), so killing flock releases it.
  const child = spawn('flock', ['-o', mode, file, 'sleep', '60'], { stdio: 'ignore', detached: true });
  const id = lockIdentity(file)!;
  const deadline = Date.now() + 5000;
  while (!(otherLockHolders(id) ?? []).includes(child.pid!)) {
    assert.ok(Date.now() < deadline, 'flock took its lock');
    await new Promise((r) => setTimeout(r, 5));
  }
  return child;
}

/** Kills flock and its sleep (their own process group). */
export function release(...children: ChildProcess[]): void {
  for (const c of children) {
    try {
      process.kill(-c.pid!, 'SIGKILL');
    } catch {
      // gone already
    }
  }
}
