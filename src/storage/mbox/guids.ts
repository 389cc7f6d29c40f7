// Mailbox GUIDs for mbox. An mbox file has no place for a mailbox GUID (Dovecot keeps it in its
// binary index under .imap/, which we do not read or write), but the sync engine identifies
// mailboxes by GUID, and a GUID that changes looks like "mailbox deleted + new mailbox" to it,
// which would delete the mailbox on the peer. So GUIDs are kept stable by:
//  * a small map file, "dsync-mbox-guids" in the control directory (next to the engine's index, so
//    the two are lost or kept together): one entry per mailbox {name, uidValidity, guid}, written
//    atomically (temp + rename) under a dotlock;
//  * lookup: (1) the entry with the mailbox's name, whatever its UIDVALIDITY (a mailbox recreated
//    or renumbered outside dsync keeps its GUID: the engine then sees a UIDVALIDITY change, which
//    is safe); (2) else the single entry with the same UIDVALIDITY whose name no longer exists on
//    disk (the mailbox was renamed by another program: the UIDVALIDITY travels in the file);
//    (3) else a GUID derived from UIDVALIDITY and name (md5), the same every time, so a read-only
//    store gives stable GUIDs too. Writable stores record (2) and (3) in the map.
import * as fsp from 'node:fs/promises';
import { createHash } from '../../util/builtin.js';
import { StorageError, type MailboxName } from '../types.js';
import { isNotFound, mkdirp, toStorageError, type FsContext } from '../maildir/io.js';
import { withDotLock } from '../maildir/lock.js';
import * as path from 'node:path';

export const GUID_MAP_NAME = 'dsync-mbox-guids';

interface Entry {
  name: MailboxName;
  uidValidity: number;
  guid: string;
}

function key(name: MailboxName): string {
  return name.join('\0');
}

export function derivedMailboxGuid(name: MailboxName, uidValidity: number): string {
  return createHash('md5').update(`dsync-mbox-guid\0${uidValidity}\0${key(name)}`).digest('hex');
}

export class GuidMap {
  private entries = new Map<string, Entry>();
  private loadedKey: string | null = null;
  private dirty = false;

  constructor(
    readonly file: string,
    private readonly ctx: FsContext,
  ) {}

  /** (Re)reads the file when it changed on disk. */
  async load(): Promise<void> {
    let st;
    try {
      st = await fsp.stat(this.file);
    } catch (e) {
      if (!isNotFound(e)) throw toStorageError(e, 'stat', this.file);
      if (this.loadedKey !== 'none' && !this.dirty) this.entries.clear();
      this.loadedKey = 'none';
      return;
    }
    const k = `${st.ino}:${st.size}:${st.mtimeMs}`;
    if (k === this.loadedKey) return;
    let text: string;
    try {
      text = await fsp.readFile(this.file, 'utf8');
    } catch (e) {
      throw toStorageError(e, 'read', this.file);
    }
    let data: unknown;
    try {
      data = JSON.parse(text);
    } catch (e) {
      throw new StorageError(`${this.file} is damaged (${(e as Error).message}); it maps mbox mailboxes to their GUIDs: repair or remove it together with dsync-index.sqlite`, 'CORRUPT');
    }
    const list = (data as { mailboxes?: unknown }).mailboxes;
    if (!Array.isArray(list)) throw new StorageError(`${this.file} is damaged (no "mailboxes" list)`, 'CORRUPT');
    this.entries.clear();
    for (const e of list as Entry[]) {
      if (!e || !Array.isArray(e.name) || typeof e.guid !== 'string' || !/^[0-9a-f]{32}$/.test(e.guid) || !Number.isInteger(e.uidValidity)) {
        throw new StorageError(`${this.file} is damaged (bad entry ${JSON.stringify(e).slice(0, 100)})`, 'CORRUPT');
      }
      this.entries.set(key(e.name), { name: e.name, uidValidity: e.uidValidity, guid: e.guid });
    }
    this.loadedKey = k;
    this.dirty = false;
  }

  /**
   * The GUID of a mailbox (see the file comment). `exists(name)` tells whether a mailbox of that
   * name is on disk. Changes to the map are kept in memory until save().
   */
  async lookup(name: MailboxName, uidValidity: number, exists: (n: MailboxName) => Promise<boolean>, record: boolean): Promise<string> {
    await this.load();
    const own = this.entries.get(key(name));
    if (own) {
      if (own.uidValidity !== uidValidity && record) {
        own.uidValidity = uidValidity;
        this.dirty = true;
      }
      return own.guid;
    }
    const sameUv: Entry[] = [];
    for (const e of this.entries.values()) if (e.uidValidity === uidValidity) sameUv.push(e);
    const orphans: Entry[] = [];
    for (const e of sameUv) if (!(await exists(e.name))) orphans.push(e);
    if (orphans.length === 1) {
      const e = orphans[0]!;
      if (record) {
        this.entries.delete(key(e.name));
        this.entries.set(key(name), { name, uidValidity, guid: e.guid });
        this.dirty = true;
      }
      return e.guid;
    }
    const guid = derivedMailboxGuid(name, uidValidity);
    if (record) {
      this.entries.set(key(name), { name, uidValidity, guid });
      this.dirty = true;
    }
    return guid;
  }

  async set(name: MailboxName, uidValidity: number, guid: string): Promise<void> {
    await this.load();
    this.entries.set(key(name), { name, uidValidity, guid });
    this.dirty = true;
  }

  async remove(name: MailboxName): Promise<void> {
    await this.load();
    if (this.entries.delete(key(name))) this.dirty = true;
  }

  /** Moves the entries of a mailbox and everything below it to a new name. */
  async rename(from: MailboxName, to: MailboxName): Promise<void> {
    await this.load();
    for (const e of [...this.entries.values()]) {
      if (e.name.length < from.length || !from.every((c, i) => e.name[i] === c)) continue;
      this.entries.delete(key(e.name));
      const name = [...to, ...e.name.slice(from.length)];
      this.entries.set(key(name), { ...e, name });
      this.dirty = true;
    }
  }

  /** Writes pending changes (no-op when there are none or the store is read-only). */
  async save(): Promise<void> {
    if (!this.dirty || this.ctx.readOnly) return;
    const list = [...this.entries.values()].sort((a, b) => (key(a.name) < key(b.name) ? -1 : key(a.name) > key(b.name) ? 1 : 0));
    const text = JSON.stringify({ version: 1, mailboxes: list }, null, 1) + '\n';
    await mkdirp(this.ctx, path.dirname(this.file));
    await withDotLock(this.ctx, this.file, (lock) => lock.replaceTarget(text));
    this.dirty = false;
    const st = await fsp.stat(this.file).catch(() => null);
    this.loadedKey = st ? `${st.ino}:${st.size}:${st.mtimeMs}` : null;
  }
}
