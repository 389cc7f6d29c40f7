// The maildir MailStore: mailbox tree (Maildir++ or LAYOUT=fs), subscriptions, UIDVALIDITY
// allocation, mailbox create/delete/rename.
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  StorageError,
  type MailboxName,
  type MailStore,
  type StoreCaps,
  type StoreMailbox,
  type StoreMailboxInfo,
} from '../types.js';
import type { MailLocation } from '../location.js';
import {
  assertWritable,
  errCode,
  exists,
  io,
  isDir,
  isNotFound,
  mkdirp,
  randomHex,
  toStorageError,
  writeNewFile,
  probeDistinctMtimes,
  type FsContext,
  type Warn,
} from './io.js';
import { compareListed, hasCur, isInboxName, MaildirLayout, nameKey, normalizeName, TRASH_PREFIX } from './layout.js';
import { MaildirMailbox, type MailboxEnv } from './mailbox.js';
import { withDotLock } from './lock.js';
import { isMailboxGuid, readUidlistSummary, UIDLIST_NAME } from './uidlist.js';
import { KEYWORDS_NAME } from './keywords.js';
import { PENDING_GUIDS_NAME } from './pending-guids.js';
import { readSubscriptionsFile, SUBSCRIPTIONS_NAME, writeSubscriptionsFile, type SubscriptionCodec } from './subscriptions.js';
import { allocateUidValidity, reserveUidValidity } from './uidvalidity.js';
import { fsp } from '../../util/builtin.js';

export interface MaildirStoreOptions {
  owner?: { uid: number; gid: number };
  readOnly?: boolean;
  createIfMissing?: boolean;
  warn?: Warn;
  /** Scan stat strategy; default 'sync' (measured fastest, see mailbox.ts statFiles). */
  statMode?: 'sync' | 'async';
  /** See OpenStoreOptions.distinctMtimes. */
  distinctMtimes?: 'probe' | 'never';
  /** See OpenStoreOptions.hardLinks. */
  hardLinks?: boolean;
}

/** Files Dovecot keeps in a mailbox directory besides cur/new/tmp. */
function isMailboxControlFile(n: string): boolean {
  return (
    n === UIDLIST_NAME ||
    n === KEYWORDS_NAME ||
    n === PENDING_GUIDS_NAME ||
    n === 'maildirfolder' ||
    n.startsWith('dovecot.index') ||
    n.startsWith('dovecot-uidlist.') ||
    n.startsWith('dovecot-keywords.')
  );
}

function nearestExisting(p: string): { path: string; uid: number; gid: number; mode: number } | null {
  let cur = path.resolve(p);
  for (;;) {
    try {
      const st = fs.statSync(cur);
      return { path: cur, uid: st.uid, gid: st.gid, mode: st.mode };
    } catch (e) {
      if (!isNotFound(e)) throw toStorageError(e, 'stat', cur);
      const parent = path.dirname(cur);
      if (parent === cur) return null;
      cur = parent;
    }
  }
}

export class MaildirStore implements MailStore {
  readonly format = 'maildir';
  readonly caps: StoreCaps = { saveGuids: true };
  readonly separator: string;
  readonly controlDir: string;
  readonly layout: MaildirLayout;
  private readonly subscriptionsPath: string;
  private readonly codec: SubscriptionCodec;
  /** Per mail directory: the scan caches shared by all mailbox objects (see MailboxEnv). */
  private readonly envs = new Map<string, MailboxEnv>();
  private readonly listWarned = new Set<string>();
  /** See MailboxEnv.distinctMtimeDev. */
  private distinctMtimeDev: number | null = null;
  /** See MailboxEnv.hardLinks. */
  private hardLinks = false;

  private constructor(
    readonly loc: MailLocation,
    readonly ctx: FsContext,
    private readonly statMode: 'sync' | 'async',
  ) {
    const root = loc.path;
    const exclude = [loc.control, loc.index].filter((x): x is string => !!x && x !== root);
    this.layout = new MaildirLayout({
      root,
      inbox: loc.inbox ?? root,
      control: loc.control,
      index: loc.index && loc.index !== 'MEMORY' ? loc.index : undefined,
      layout: loc.layout,
      utf8: loc.utf8,
      exclude,
    });
    this.separator = this.layout.separator;
    this.controlDir = loc.control ?? root;
    this.subscriptionsPath = path.join(this.controlDir, loc.params['SUBSCRIPTIONS'] || SUBSCRIPTIONS_NAME);
    this.codec = {
      separator: this.separator,
      decode: (c) => this.layout.decodeComponent(c),
      encode: (c) => this.layout.encodeComponent(c),
    };
  }

  static async open(loc: MailLocation, opts: MaildirStoreOptions = {}): Promise<MaildirStore> {
    if (loc.format !== 'maildir') throw new Error(`not a maildir location: ${loc.format}`);
    const readOnly = opts.readOnly ?? false;
    const createIfMissing = opts.createIfMissing ?? true;
    const warn: Warn = opts.warn ?? ((m) => console.error(`dsync: ${m}`));
    const root = loc.path;
    const anchor = nearestExisting(root);
    const rootExists = anchor?.path === path.resolve(root);
    if (anchor && rootExists && !(await isDir(root))) {
      throw new StorageError(`mail root ${root} exists but is not a directory`, 'IO');
    }
    let owner: { uid: number; gid: number } | undefined;
    if (typeof process.getuid === 'function' && process.getuid() === 0) {
      owner = opts.owner ?? (anchor ? { uid: anchor.uid, gid: anchor.gid } : undefined);
      if (owner && owner.uid === 0 && owner.gid === 0) owner = undefined;
    }
    const dirMode = rootExists && anchor ? (anchor.mode & 0o777) | 0o700 : 0o700;
    const ctx: FsContext = { owner, readOnly, warn, dirMode, fileMode: dirMode & 0o666 };
    const store = new MaildirStore(loc, ctx, opts.statMode ?? 'sync');
    if (!rootExists) {
      if (readOnly || !createIfMissing) throw new StorageError(`mail root ${root} does not exist`, 'NOTFOUND');
      await mkdirp(ctx, root);
      if (path.resolve(store.layout.cfg.inbox) === path.resolve(root)) await store.ensureInbox();
    }
    store.hardLinks = !!opts.hardLinks;
    if (opts.distinctMtimes !== 'never') store.distinctMtimeDev = probeDistinctMtimes(ctx, path.join(store.layout.cfg.inbox, 'tmp'));
    return store;
  }

  // ---------------------------------------------------------------- helpers

  private checkName(name: MailboxName): MailboxName {
    const reason = this.layout.invalidNameReason(name);
    if (reason) throw new StorageError(`invalid mailbox name "${Array.isArray(name) ? name.join(this.separator) : name}": ${reason}`, 'INVALIDNAME');
    return normalizeName(name);
  }

  private label(name: MailboxName): string {
    return name.join(this.separator);
  }

  private async makeMaildir(mailDir: string, subfolder: boolean): Promise<void> {
    await mkdirp(this.ctx, mailDir);
    if (subfolder && this.layout.cfg.layout === 'maildir++') {
      const marker = path.join(mailDir, 'maildirfolder');
      if (!(await exists(marker))) {
        try {
          writeNewFile(this.ctx, marker, '');
        } catch (e) {
          if (!(e instanceof StorageError && /EEXIST/.test(e.message))) throw e;
        }
      }
    }
    // cur/ last: its presence is what makes the mailbox selectable.
    for (const sub of ['tmp', 'new', 'cur']) await mkdirp(this.ctx, path.join(mailDir, sub));
  }

  /** Creates INBOX's maildir directories if missing (no uidlist: that comes with the first scan). */
  private async ensureInbox(): Promise<boolean> {
    const dir = this.layout.cfg.inbox;
    if (await hasCur(dir)) return true;
    if (this.ctx.readOnly) return false;
    await this.makeMaildir(dir, false);
    return true;
  }

  private mailboxFor(name: MailboxName): MaildirMailbox {
    const mailDir = this.layout.mailDir(name);
    let env = this.envs.get(mailDir);
    if (!env) {
      env = {
        ctx: this.ctx,
        allocateUidValidity: () => this.newUidValidity(),
        statMode: this.statMode,
        distinctMtimeDev: this.distinctMtimeDev,
        hardLinks: this.hardLinks,
      };
      this.envs.set(mailDir, env);
    }
    return new MaildirMailbox(env, name, mailDir, this.layout.controlDir(name), this.layout.indexDir(name));
  }

  // ---------------------------------------------------------------- listing

  async listMailboxes(): Promise<StoreMailboxInfo[]> {
    const inboxOk = await this.ensureInbox();
    // Listed several times per run: say once what is skipped.
    const dirs = await this.layout.list((m) => {
      if (this.listWarned.has(m)) return;
      this.listWarned.add(m);
      this.ctx.warn(m);
    });
    const nodes = new Map<string, StoreMailboxInfo>();
    nodes.set(nameKey(['INBOX']), { name: ['INBOX'], selectable: inboxOk });
    for (const d of dirs) {
      const key = nameKey(d.name);
      const have = nodes.get(key);
      if (have) have.selectable ||= d.selectable;
      else nodes.set(key, { name: d.name, selectable: d.selectable });
    }
    // Parents that exist only implicitly (Maildir++ ".a.b" without ".a").
    for (const info of [...nodes.values()]) {
      for (let i = 1; i < info.name.length; i++) {
        const parent = info.name.slice(0, i);
        const key = nameKey(parent);
        if (!nodes.has(key)) nodes.set(key, { name: parent, selectable: false });
      }
    }
    const out = [...nodes.values()];
    await Promise.all(
      out.map(async (info) => {
        if (!info.selectable) return;
        const st = statOrNull(this.layout.mailDir(info.name));
        if (st) info.changedAt = st.ctimeMs;
        const summary = await readUidlistSummary(path.join(this.layout.controlDir(info.name), UIDLIST_NAME));
        if (!summary) return;
        if (summary.guid) info.guid = summary.guid;
        if (summary.uidValidity) info.uidValidity = summary.uidValidity;
        info.uidNext = summary.uidNext;
      }),
    );
    out.sort(compareListed);
    return out;
  }

  // ---------------------------------------------------------------- subscriptions

  readSubscriptions(): Promise<MailboxName[]> {
    return readSubscriptionsFile(this.subscriptionsPath, this.codec, this.ctx.warn);
  }

  writeSubscriptions(names: MailboxName[]): Promise<void> {
    return writeSubscriptionsFile(this.ctx, this.subscriptionsPath, names, this.codec);
  }

  invalidNameReason(name: MailboxName): string | null {
    return this.layout.invalidNameReason(name);
  }

  // ---------------------------------------------------------------- create / delete / rename

  async createMailbox(name: MailboxName, opts: { guid: string; uidValidity: number }): Promise<void> {
    assertWritable(this.ctx, 'create a mailbox');
    const n = this.checkName(name);
    const guid = opts.guid.toLowerCase();
    if (!isMailboxGuid(guid)) throw new Error(`createMailbox ${this.label(n)}: invalid GUID "${opts.guid}"`);
    if (!Number.isInteger(opts.uidValidity) || opts.uidValidity < 1 || opts.uidValidity > 0xffffffff) {
      throw new Error(`createMailbox ${this.label(n)}: invalid UIDVALIDITY ${opts.uidValidity}`);
    }
    const mailDir = this.layout.mailDir(n);
    if (await hasCur(mailDir)) throw new StorageError(`mailbox ${this.label(n)} already exists`, 'EXISTS');
    const ctlDir = this.layout.controlDir(n);
    await mkdirp(this.ctx, mailDir);
    await mkdirp(this.ctx, ctlDir);
    // The uidlist first, then the directories (cur/ last): a concurrent scanner never sees a
    // selectable mailbox without our GUID.
    await withDotLock(this.ctx, path.join(ctlDir, UIDLIST_NAME), (lock) =>
      lock.replaceTarget(`3 V${opts.uidValidity} N1 G${guid}\n`),
    );
    // A stale keyword file from an earlier mailbox of the same name would mislabel keywords.
    await fsp.unlink(path.join(ctlDir, KEYWORDS_NAME)).catch(() => undefined);
    await this.makeMaildir(mailDir, !isInboxName(n));
  }

  async createDirectory(name: MailboxName): Promise<void> {
    assertWritable(this.ctx, 'create a directory');
    const n = this.checkName(name);
    if (this.layout.cfg.layout !== 'fs' || isInboxName(n)) return;
    await mkdirp(this.ctx, this.layout.mailDir(n));
  }

  private async rmTree(p: string): Promise<void> {
    try {
      await fsp.rm(p, { recursive: true, force: true });
    } catch (e) {
      throw toStorageError(e, 'remove', p);
    }
  }

  /** Removes a Maildir++ mailbox directory: rename out of the way first, then delete. */
  private async removeDirViaTrash(dir: string): Promise<void> {
    const trash = path.join(path.dirname(dir), `${TRASH_PREFIX}${randomHex(6)}`);
    try {
      await fsp.rename(dir, trash);
    } catch (e) {
      if (isNotFound(e)) return;
      throw toStorageError(e, 'rename', dir);
    }
    await this.rmTree(trash);
  }

  /** fs layout: removes the mail and control files of a directory but keeps child directories. */
  private async removeMailFiles(dir: string): Promise<void> {
    let entries: string[];
    try {
      entries = await fsp.readdir(dir);
    } catch (e) {
      if (isNotFound(e)) return;
      throw toStorageError(e, 'readdir', dir);
    }
    // Move cur/new/tmp out of sight in one step each, then delete.
    const trash = path.join(dir, `.dsync-trash-${randomHex(6)}`);
    let trashMade = false;
    for (const sub of ['cur', 'new', 'tmp']) {
      if (!entries.includes(sub)) continue;
      if (!trashMade) {
        await io('mkdir', trash, () => fsp.mkdir(trash, { mode: 0o700 }));
        trashMade = true;
      }
      await io('rename', path.join(dir, sub), () => fsp.rename(path.join(dir, sub), path.join(trash, sub)));
    }
    if (trashMade) await this.rmTree(trash);
    for (const n of entries) {
      if (isMailboxControlFile(n) && !n.endsWith('.lock')) {
        await fsp.unlink(path.join(dir, n)).catch((e) => {
          if (!isNotFound(e)) throw toStorageError(e, 'unlink', path.join(dir, n));
        });
      }
    }
    await fsp.rmdir(dir).catch(() => undefined); // only succeeds when nothing (no children) is left
  }

  async deleteMailbox(name: MailboxName): Promise<void> {
    assertWritable(this.ctx, 'delete a mailbox');
    const n = this.checkName(name);
    if (isInboxName(n)) throw new StorageError('INBOX cannot be deleted', 'INVALIDNAME');
    const mailDir = this.layout.mailDir(n);
    if (!(await hasCur(mailDir))) throw new StorageError(`mailbox ${this.label(n)} does not exist`, 'NOTFOUND');
    const ctlDir = this.layout.controlDir(n);
    this.envs.clear();
    if (this.layout.cfg.layout === 'maildir++') {
      await this.removeDirViaTrash(mailDir);
      if (ctlDir !== mailDir) await this.removeDirViaTrash(ctlDir);
    } else {
      await this.removeMailFiles(mailDir);
      if (ctlDir !== mailDir) await this.removeMailFiles(ctlDir);
    }
  }

  async deleteDirectory(name: MailboxName): Promise<void> {
    assertWritable(this.ctx, 'delete a directory');
    const n = this.checkName(name);
    if (isInboxName(n)) throw new StorageError('INBOX cannot be deleted', 'INVALIDNAME');
    if (this.layout.cfg.layout !== 'fs') return; // Maildir++ has no directories of their own
    const dir = this.layout.mailDir(n);
    if (!(await isDir(dir))) throw new StorageError(`directory ${this.label(n)} does not exist`, 'NOTFOUND');
    if (await hasCur(dir)) throw new StorageError(`${this.label(n)} is a mailbox, not just a directory; delete the mailbox first`, 'EXISTS');
    for (const d of [dir, this.layout.controlDir(n)]) {
      let entries: string[] = [];
      try {
        entries = await fsp.readdir(d);
      } catch (e) {
        if (isNotFound(e)) continue;
        throw toStorageError(e, 'readdir', d);
      }
      for (const e of entries) if (isMailboxControlFile(e)) await fsp.unlink(path.join(d, e)).catch(() => undefined);
      try {
        await fsp.rmdir(d);
      } catch (e) {
        if (isNotFound(e)) continue;
        if (errCode(e) === 'ENOTEMPTY' || errCode(e) === 'EEXIST') {
          throw new StorageError(`directory ${this.label(n)} (${d}) is not empty: it still has child mailboxes or other files`, 'EXISTS');
        }
        throw toStorageError(e, 'rmdir', d);
      }
    }
  }

  async renameMailbox(from: MailboxName, to: MailboxName): Promise<void> {
    assertWritable(this.ctx, 'rename a mailbox');
    const src = this.checkName(from);
    const dst = this.checkName(to);
    if (isInboxName(src)) throw new StorageError('INBOX cannot be renamed', 'INVALIDNAME');
    if (isInboxName(dst)) throw new StorageError('cannot rename a mailbox to INBOX', 'INVALIDNAME');
    if (dst.length >= src.length && src.every((c, i) => dst[i] === c)) {
      throw new StorageError(`cannot rename ${this.label(src)} to itself or below itself (${this.label(dst)})`, 'INVALIDNAME');
    }
    this.envs.clear();
    if (this.layout.cfg.layout === 'fs') {
      const s = this.layout.mailDir(src);
      const d = this.layout.mailDir(dst);
      if (!(await isDir(s))) throw new StorageError(`mailbox ${this.label(src)} does not exist`, 'NOTFOUND');
      if (await exists(d)) throw new StorageError(`mailbox ${this.label(dst)} already exists`, 'EXISTS');
      await mkdirp(this.ctx, path.dirname(d));
      await io('rename', s, () => fsp.rename(s, d));
      const cs = this.layout.controlDir(src);
      const cd = this.layout.controlDir(dst);
      if (cs !== s && (await exists(cs))) {
        await mkdirp(this.ctx, path.dirname(cd));
        await io('rename', cs, () => fsp.rename(cs, cd));
      }
      return;
    }
    // Maildir++: ".A" and every ".A.*" become ".B" / ".B.*".
    const root = this.layout.cfg.root;
    const family = await this.layout.maildirPlusPlusFamily(root, src);
    if (family.length === 0) throw new StorageError(`mailbox ${this.label(src)} does not exist`, 'NOTFOUND');
    // Only an exact collision blocks the rename: ".A.x" existing does not stop ".B" becoming ".A".
    const dstRel = this.layout.relDir(dst);
    for (const [, suffix] of family) {
      if (await exists(path.join(root, dstRel + suffix))) throw new StorageError(`mailbox ${this.label(dst)} already exists`, 'EXISTS');
    }
    await this.renameFamily(root, family, this.layout.relDir(dst));
    const ctl = this.layout.cfg.control;
    if (ctl) {
      const cfam = await this.layout.maildirPlusPlusFamily(ctl, src);
      if (cfam.length > 0) await this.renameFamily(ctl, cfam, this.layout.relDir(dst)).catch((e) => this.ctx.warn(String(e)));
    }
  }

  private async renameFamily(parent: string, family: [string, string][], dstRel: string): Promise<void> {
    const done: [string, string][] = [];
    try {
      for (const [entry, suffix] of family) {
        const a = path.join(parent, entry);
        const b = path.join(parent, dstRel + suffix);
        if (await exists(b)) throw new StorageError(`cannot rename ${a}: ${b} already exists`, 'EXISTS');
        await io('rename', a, () => fsp.rename(a, b));
        done.push([a, b]);
      }
    } catch (e) {
      for (const [a, b] of done.reverse()) await fsp.rename(b, a).catch(() => undefined);
      throw e;
    }
  }

  async openMailbox(name: MailboxName): Promise<StoreMailbox> {
    const n = this.checkName(name);
    if (isInboxName(n)) {
      if (!(await this.ensureInbox())) throw new StorageError(`INBOX does not exist (${this.layout.cfg.inbox})`, 'NOTFOUND');
    } else if (!(await hasCur(this.layout.mailDir(n)))) {
      throw new StorageError(`mailbox ${this.label(n)} does not exist`, 'NOTFOUND');
    }
    return this.mailboxFor(n);
  }

  async newUidValidity(): Promise<number> {
    assertWritable(this.ctx, 'allocate a UIDVALIDITY');
    await mkdirp(this.ctx, this.controlDir);
    return allocateUidValidity(this.ctx, this.controlDir);
  }

  async reserveUidValidity(value: number): Promise<void> {
    assertWritable(this.ctx, 'allocate a UIDVALIDITY');
    await mkdirp(this.ctx, this.controlDir);
    await reserveUidValidity(this.ctx, this.controlDir, value);
  }

  async close(): Promise<void> {
    this.envs.clear();
  }
}

/** Synchronous: one quick call per mailbox, where a thread-pool round trip would cost more. */
function statOrNull(p: string): fs.Stats | null {
  try {
    return fs.statSync(p);
  } catch {
    return null;
  }
}
