// Where mailboxes live on disk: Maildir++ (".A.B" directories directly under the root, '.' as
// separator) or LAYOUT=fs (nested "A/B" directories, '/' as separator). Names in the interface are
// UTF-8 components; on disk each component is modified UTF-7 unless the location has UTF-8.
import * as fs from 'node:fs';
import type { Dirent } from 'node:fs';
import * as path from 'node:path';
import type { MailboxName } from '../types.js';
import { decodeMUtf7, encodeMUtf7, isWellFormedUnicode } from '../utf7.js';
import { isNotFound, toStorageError, type Warn } from './io.js';

export interface LayoutConfig {
  root: string;
  /** Mail directory of INBOX (INBOX= or the root). */
  inbox: string;
  /** CONTROL= root, if set. */
  control?: string;
  /** INDEX= root, if set (and not MEMORY): where Dovecot keeps its index files. */
  index?: string;
  layout: 'maildir++' | 'fs';
  utf8: boolean;
  /** Absolute paths that are never mailboxes even if they sit under the root (INDEX=, CONTROL=). */
  exclude?: string[];
}

export interface ListedDir {
  name: MailboxName;
  mailDir: string;
  selectable: boolean;
}

/** Names in the fs layout that would collide with maildir/Dovecot files inside a mailbox dir. */
const FS_RESERVED = new Set([
  'cur',
  'new',
  'tmp',
  'maildirfolder',
  'subscriptions',
  'dovecot-uidlist',
  'dovecot-keywords',
  'dovecot-uidvalidity',
  'dsync-pending-guids',
]);
const FS_RESERVED_PREFIXES = [
  'dovecot-uidvalidity.',
  'dovecot-uidlist.',
  'dovecot-keywords.',
  'dovecot.index',
  'dovecot.list.index',
  'dovecot.mailbox.log',
  'dsync-index',
];

/** Prefix of directories we rename a mailbox to while deleting it; never listed. */
export const TRASH_PREFIX = '..dsync-trash-';

export function isInboxName(name: MailboxName): boolean {
  return name.length === 1 && name[0]!.toUpperCase() === 'INBOX';
}

/** INBOX is case-insensitive (also as the first component of its children) and always "INBOX". */
export function normalizeName(name: MailboxName): MailboxName {
  if (name.length > 0 && name[0]!.toUpperCase() === 'INBOX' && name[0] !== 'INBOX') {
    return ['INBOX', ...name.slice(1)];
  }
  return name;
}

export function nameKey(name: MailboxName): string {
  return name.join('\0');
}

export class MaildirLayout {
  readonly separator: '.' | '/';

  constructor(readonly cfg: LayoutConfig) {
    this.separator = cfg.layout === 'fs' ? '/' : '.';
  }

  encodeComponent(c: string): string {
    return this.cfg.utf8 ? c : encodeMUtf7(c);
  }

  /** Throws on an invalid encoding. */
  decodeComponent(c: string): string {
    return this.cfg.utf8 ? c : decodeMUtf7(c);
  }

  invalidNameReason(name: MailboxName): string | null {
    if (!Array.isArray(name) || name.length === 0) return 'the mailbox name is empty';
    const n = normalizeName(name);
    const encoded: string[] = [];
    for (const c of n) {
      if (typeof c !== 'string') return 'mailbox name components must be strings';
      if (c === '') return 'empty hierarchy level (two separators in a row, or a leading/trailing separator)';
      // eslint-disable-next-line no-control-regex
      if (/[\x00-\x1f\x7f]/.test(c)) return `"${c}": control characters are not allowed in mailbox names`;
      if (!isWellFormedUnicode(c)) return `"${c}": not valid Unicode`;
      if (c.includes('/')) return `"${c}": '/' is not allowed in a folder name on disk`;
      if (this.cfg.layout === 'maildir++') {
        if (c.includes('.')) return `"${c}": '.' is the Maildir++ hierarchy separator and cannot be part of a folder name`;
      } else {
        if (c === '.' || c === '..') return `"${c}" is not a valid folder name`;
        if (c.startsWith('.')) return `"${c}": folder names starting with '.' would be hidden`;
        if (c.startsWith('~')) return `"${c}": folder names starting with '~' are not allowed`;
        const lc = c;
        if (FS_RESERVED.has(lc) || FS_RESERVED_PREFIXES.some((p) => lc.startsWith(p))) {
          return `"${c}" is reserved for maildir/Dovecot files`;
        }
      }
      const e = this.encodeComponent(c);
      if (Buffer.byteLength(e) > 255) return `"${c}": the folder name is too long for the file system`;
      encoded.push(e);
    }
    if (this.cfg.layout === 'maildir++' && !isInboxName(n)) {
      if (Buffer.byteLength('.' + encoded.join('.')) > 255) return 'the mailbox name is too long for a Maildir++ directory name';
    }
    return null;
  }

  /** Relative directory of a (non-INBOX) mailbox below the root: ".A.B" or "A/B". */
  relDir(name: MailboxName): string {
    const enc = name.map((c) => this.encodeComponent(c));
    return this.cfg.layout === 'fs' ? path.join(...enc) : '.' + enc.join('.');
  }

  mailDir(name: MailboxName): string {
    const n = normalizeName(name);
    if (isInboxName(n)) return this.cfg.inbox;
    return path.join(this.cfg.root, this.relDir(n));
  }

  /** Where the mailbox's dovecot-uidlist / dovecot-keywords live. */
  controlDir(name: MailboxName): string {
    const n = normalizeName(name);
    if (!this.cfg.control) return this.mailDir(n);
    if (isInboxName(n)) return this.cfg.control;
    return path.join(this.cfg.control, this.relDir(n));
  }

  /** Where Dovecot keeps the mailbox's index files (dovecot.index*): its mail dir unless INDEX= is set. */
  indexDir(name: MailboxName): string {
    const n = normalizeName(name);
    if (!this.cfg.index) return this.mailDir(n);
    if (isInboxName(n)) return this.cfg.index;
    return path.join(this.cfg.index, this.relDir(n));
  }

  /** Decodes a Maildir++ directory entry (".A.B") to a name; null if it is not a mailbox dir. */
  decodeMaildirPlusPlus(entry: string, warn: Warn): MailboxName | null {
    if (!entry.startsWith('.') || entry === '.' || entry === '..') return null;
    if (entry.startsWith('..')) return null; // e.g. Dovecot's "..DOVECOT-TRASHED", our trash dirs
    const parts = entry.slice(1).split('.');
    if (parts.some((p) => p === '')) {
      warn(`ignoring directory "${entry}" in ${this.cfg.root}: empty hierarchy level`);
      return null;
    }
    try {
      return normalizeName(parts.map((p) => this.decodeComponent(p)));
    } catch (e) {
      warn(`ignoring directory "${entry}" in ${this.cfg.root}: ${(e as Error).message}`);
      return null;
    }
  }

  /** Every mailbox directory found on disk (INBOX's own directory is not included). */
  async list(warn: Warn): Promise<ListedDir[]> {
    return this.cfg.layout === 'fs' ? this.listFs(warn) : this.listMaildirPlusPlus(warn);
  }

  private isExcluded(p: string): boolean {
    return (this.cfg.exclude ?? []).some((x) => path.resolve(x) === p);
  }

  private async listMaildirPlusPlus(warn: Warn): Promise<ListedDir[]> {
    const root = this.cfg.root;
    const entries = await readDirOrEmpty(root);
    const out: ListedDir[] = [];
    const jobs: Promise<void>[] = [];
    for (const d of entries) {
      if (!d.name.startsWith('.') || d.name.startsWith('..') || d.name === '.') continue;
      const full = path.join(root, d.name);
      if (this.isExcluded(full) || full === this.cfg.inbox) continue;
      jobs.push(
        (async () => {
          if (!(await isDirEntry(d, full))) return;
          const name = this.decodeMaildirPlusPlus(d.name, warn);
          if (!name || isInboxName(name)) return;
          out.push({ name, mailDir: full, selectable: await hasCur(full) });
        })(),
      );
    }
    await Promise.all(jobs);
    return out;
  }

  private async listFs(warn: Warn): Promise<ListedDir[]> {
    const out: ListedDir[] = [];
    const walk = async (dir: string, prefix: MailboxName, depth: number): Promise<void> => {
      if (depth > 64) {
        warn(`not descending below ${dir}: hierarchy too deep`);
        return;
      }
      const entries = await readDirOrEmpty(dir);
      const jobs: Promise<void>[] = [];
      for (const d of entries) {
        if (d.name.startsWith('.') || FS_RESERVED.has(d.name)) continue;
        const full = path.join(dir, d.name);
        if (this.isExcluded(full)) continue;
        jobs.push(
          (async () => {
            if (!(await isDirEntry(d, full))) return;
            let comp: string;
            try {
              comp = this.decodeComponent(d.name);
            } catch (e) {
              warn(`ignoring directory ${full}: ${(e as Error).message}`);
              return;
            }
            const name = normalizeName([...prefix, comp]);
            if (full === this.cfg.inbox && !isInboxName(name)) return; // INBOX= pointing into the tree
            // A directory named INBOX only holds INBOX's children; INBOX itself comes from cfg.inbox.
            if (!isInboxName(name)) out.push({ name, mailDir: full, selectable: await hasCur(full) });
            await walk(full, name, depth + 1);
          })(),
        );
      }
      await Promise.all(jobs);
    };
    await walk(this.cfg.root, [], 0);
    return out;
  }

  /**
   * Maildir++: the directory entries of a mailbox and all its descendants
   * (".A" and every ".A.*"), as [entry name, suffix after ".A"].
   */
  async maildirPlusPlusFamily(parentDir: string, name: MailboxName): Promise<[string, string][]> {
    const self = this.relDir(name);
    const entries = await readDirOrEmpty(parentDir);
    const out: [string, string][] = [];
    for (const d of entries) {
      if (d.name === self || d.name.startsWith(self + '.')) out.push([d.name, d.name.slice(self.length)]);
    }
    return out;
  }
}

async function readDirOrEmpty(dir: string): Promise<Dirent[]> {
  try {
    return fs.readdirSync(dir, { withFileTypes: true });
  } catch (e) {
    if (isNotFound(e)) return [];
    throw toStorageError(e, 'readdir', dir);
  }
}

async function isDirEntry(d: Dirent, full: string): Promise<boolean> {
  if (d.isDirectory()) return true;
  if (d.isSymbolicLink() || (!d.isFile() && !d.isDirectory())) {
    try {
      return fs.statSync(full).isDirectory();
    } catch {
      return false;
    }
  }
  return false;
}

export async function hasCur(dir: string): Promise<boolean> {
  try {
    return fs.statSync(path.join(dir, 'cur')).isDirectory();
  } catch (e) {
    if (isNotFound(e)) return false;
    throw toStorageError(e, 'stat', path.join(dir, 'cur'));
  }
}

/** The order stores list mailboxes in: INBOX first, then by name. */
export function compareListed(a: { name: string[] }, b: { name: string[] }): number {
  const ai = a.name[0] === 'INBOX' ? 0 : 1;
  const bi = b.name[0] === 'INBOX' ? 0 : 1;
  if (ai !== bi) return ai - bi;
  const ak = nameKey(a.name);
  const bk = nameKey(b.name);
  return ak < bk ? -1 : ak > bk ? 1 : 0;
}
