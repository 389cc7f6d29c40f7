// Temporary directories and whole-tree helpers for tests.
//
// Directories made here are world-readable (0755): Dovecot's mail processes run as
// nobody (65534) and its auth/login processes as dovecot/dovenull, and all of them have
// to traverse the temp dir to reach a maildir or the passwd file inside it.
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';

/** Creates a fresh, empty directory under os.tmpdir() whose name starts with `prefix`. */
export function makeTempDir(prefix = 'dsync-test-'): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix.endsWith('-') ? prefix : `${prefix}-`));
  fs.chmodSync(dir, 0o755);
  return dir;
}

const scratchDirs: string[] = [];

/**
 * A private temp dir (mode 0700, as mkdtemp makes it) removed when the test process exits,
 * for tests that make many and have no per-test cleanup. node:test runs each test file in
 * a process of its own, so nothing outlives its file.
 */
export function scratchDir(prefix: string): string {
  if (scratchDirs.length === 0) {
    process.on('exit', () => {
      for (const dir of scratchDirs) fs.rmSync(dir, { recursive: true, force: true, maxRetries: 3 });
    });
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  scratchDirs.push(dir);
  return dir;
}

/** Removes a directory tree; a missing tree is not an error. */
export function removeTree(dir: string): void {
  fs.rmSync(dir, { recursive: true, force: true, maxRetries: 3 });
}

/**
 * Copies a tree (dst must not exist), preserving file modes and timestamps to the nanosecond:
 * mtime is a maildir's INTERNALDATE. Not fs.cpSync: it rounds an mtime of x.9998 s up to x+1
 * (Node 20), so Dovecot served the copy one second later than the original.
 */
export function copyTree(src: string, dst: string): void {
  const r = spawnSync('cp', ['-a', '--', src, dst], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`cp -a ${src} ${dst} failed: ${r.error?.message ?? r.stderr.trim()}`);
}

/**
 * A digest of a whole tree: relative paths (sorted), entry kinds, modes, file bytes,
 * file mtimes in whole seconds and symlink targets. Two trees with the same digest look
 * the same to any mail reader; used to prove that a source was not modified.
 * Directory mtimes and ownership are deliberately left out (chown'ing a copy or
 * copying it must not change its digest).
 */
export async function hashTree(dir: string): Promise<string> {
  const h = createHash('sha256');
  const walk = async (rel: string): Promise<void> => {
    const abs = rel === '' ? dir : path.join(dir, rel);
    const entries = (await fsp.readdir(abs)).sort();
    for (const name of entries) {
      const relPath = rel === '' ? name : `${rel}/${name}`;
      const absPath = path.join(dir, relPath);
      const st = await fsp.lstat(absPath);
      const mode = (st.mode & 0o7777).toString(8);
      if (st.isSymbolicLink()) {
        h.update(`L\0${relPath}\0${await fsp.readlink(absPath)}\0`);
      } else if (st.isDirectory()) {
        h.update(`D\0${relPath}\0${mode}\0`);
        await walk(relPath);
      } else if (st.isFile()) {
        const data = await fsp.readFile(absPath);
        h.update(`F\0${relPath}\0${mode}\0${Math.floor(st.mtimeMs / 1000)}\0${data.length}\0`);
        h.update(data);
      } else {
        h.update(`O\0${relPath}\0${mode}\0`);
      }
    }
  };
  await walk('');
  return h.digest('hex');
}
