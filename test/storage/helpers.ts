// Shared helpers for the storage tests (real temp directories, tree hashing, warning capture).
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createHash } from 'node:crypto';
import type { TestContext } from 'node:test';
import { parseMailLocation } from '../../src/storage/location.js';
import { openStore } from '../../src/storage/open.js';
import type { MailStore } from '../../src/storage/types.js';

export function tempDir(t: TestContext, prefix = 'dsync-storage-'): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

export interface Warnings {
  list: string[];
  warn: (m: string) => void;
  has(re: RegExp): boolean;
}

export function warnings(): Warnings {
  const list: string[] = [];
  return { list, warn: (m) => list.push(m), has: (re) => list.some((m) => re.test(m)) };
}

export async function openMaildir(
  spec: string,
  opts: { readOnly?: boolean; createIfMissing?: boolean; warn?: (m: string) => void; distinctMtimes?: 'probe' | 'never' } = {},
): Promise<MailStore> {
  return openStore(parseMailLocation(spec, { home: os.tmpdir(), user: 'test' }), {
    warn: opts.warn ?? ((m) => { throw new Error(`unexpected warning: ${m}`); }),
    readOnly: opts.readOnly,
    createIfMissing: opts.createIfMissing,
    distinctMtimes: opts.distinctMtimes,
  });
}

/** Names, sizes, contents and mtimes of everything below dir: changes iff anything was written. */
export function hashTree(dir: string): string {
  const h = createHash('sha256');
  const walk = (d: string): void => {
    for (const name of fs.readdirSync(d).sort()) {
      const p = path.join(d, name);
      const st = fs.lstatSync(p);
      h.update(`${path.relative(dir, p)}\0${st.mode}\0${st.mtimeMs}\0`);
      if (st.isDirectory()) walk(p);
      else if (st.isFile()) h.update(fs.readFileSync(p));
    }
  };
  walk(dir);
  return h.digest('hex');
}

export function listTree(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string): void => {
    for (const name of fs.readdirSync(d).sort()) {
      const p = path.join(d, name);
      out.push(path.relative(dir, p));
      if (fs.lstatSync(p).isDirectory()) walk(p);
    }
  };
  walk(dir);
  return out;
}

/** Writes a message file with a given mtime. */
export function writeMail(p: string, body: string | Buffer, mtime = 1704103200): void {
  fs.mkdirSync(path.dirname(p), { recursive: true });
  fs.writeFileSync(p, body);
  fs.utimesSync(p, mtime, mtime);
}

export function makeMaildir(dir: string): void {
  for (const s of ['cur', 'new', 'tmp']) fs.mkdirSync(path.join(dir, s), { recursive: true });
}

export function msg(n: number | string, extra = ''): string {
  return `From: a@example.org\nTo: b@example.org\nSubject: test ${n}\nMessage-ID: <m${n}@example.org>\n${extra}\nBody ${n}.\n`;
}
