// The mbox MailStore (Dovecot's "mbox:" with its only layout, fs):
//  * the root directory holds the mailboxes: every regular file is a mailbox ("Archive"), every
//    directory a level of hierarchy ("Lists/dev" is the file dev in the directory Lists; a
//    directory is a \Noselect node), separator '/'. An mbox file cannot have children (Dovecot:
//    "Mailbox doesn't allow inferior mailboxes").
//  * INBOX is the file given by INBOX=; without it Dovecot (2.3.19, checked) uses <root>/inbox.
//    Children of INBOX live in the directory <root>/INBOX/.
//  * folder names on disk are modified UTF-7 unless the location has UTF-8;
//  * never mailboxes: names starting with '.' (Dovecot's ".imap" index directories, the
//    ".subscriptions" file, ...), "*.lock" (dotlocks, and our temp files), and our own files
//    (dsync-index.sqlite*, dsync.lock, dsync-mbox-guids) in the root. Dovecot itself hides only
//    .imap, .subscriptions and *.lock: it lists other dotfiles and would list dsync-index.sqlite.
//  * controlDir (the engine's dsync-index.sqlite and dsync.lock, our dsync-mbox-guids) is
//    CONTROL= or else <root>/.imap: a directory Dovecot never lists as a mailbox (in the root
//    these files show up in Dovecot as broken mailboxes and break "doveadm mailbox status '*'").
//    Deleting .imap to make Dovecot rebuild its indexes then also drops our state, all of it
//    together, which only costs a full (safe) resync.
//  * subscriptions: "<control dir>/.subscriptions" (Dovecot 2.3 writes version 2 of the format;
//    both versions are read);
//  * UIDVALIDITY allocation: dovecot-uidvalidity in Dovecot's index root (<root>/.imap, or INDEX=),
//    shared with Dovecot, so the two never hand out the same value;
//  * Dovecot's own index of a mailbox ("<dir>/.imap/<name>/", see dovecotIndexDir) is moved along
//    on rename and removed on delete, as Dovecot does. We never write the index files, and read
//    only UIDVALIDITY and the next UID from them, for a file that holds no UIDVALIDITY (an empty
//    mailbox created through Dovecot: see dovecot-index.ts).
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import type { Dirent } from 'node:fs';
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
  isNotFound,
  mkdirp,
  toStorageError,
  writeNewFile,
  type FsContext,
  type Warn,
} from '../maildir/io.js';
import { DotLock } from '../maildir/lock.js';
import { compareListed, isInboxName, nameKey, normalizeName } from '../maildir/layout.js';
import { readSubscriptionsFile, writeSubscriptionsFile, type SubscriptionCodec } from '../maildir/subscriptions.js';
import { allocateUidValidity, reserveUidValidity } from '../maildir/uidvalidity.js';
import { decodeMUtf7, encodeMUtf7, isWellFormedUnicode } from '../utf7.js';
import { formatFromLine } from './from-line.js';
import { pseudoMessage } from './compose.js';
import { identityOf, peekBase, type MboxQuoting } from './parse.js';
import { derivedUidValidity, MboxMailbox, type MboxEnv } from './mailbox.js';
import { GUID_MAP_NAME, GuidMap } from './guids.js';
import { readDovecotIndexUids, type DovecotIndexUids } from './dovecot-index.js';
import { removeAppendIntent, settleAppendIntent } from './append-intent.js';
import { hostname } from 'node:os';

export interface MboxStoreOptions {
  owner?: { uid: number; gid: number };
  readOnly?: boolean;
  createIfMissing?: boolean;
  warn?: Warn;
  /** How long to wait for another program's dotlock on an mbox file. Default 30 s. */
  lockTimeoutMs?: number;
  /** A dotlock not modified for this long is overridden. Default 5 min. */
  lockStaleMs?: number;
  /**
   * How "From " lines inside messages are quoted. Default 'none': Dovecot's way (bodies are
   * served as stored, Content-Length protects unquoted lines). 'mboxrd' / 'mboxo' unquote on
   * read and quote on save. Also settable with the location parameter FROM_QUOTING=.
   */
  quoting?: MboxQuoting;
  /** Tests only: see MboxEnv.beforeReplace. */
  beforeReplace?: (newFile: string) => Promise<void>;
}

export const SUBSCRIPTIONS_FILE = '.subscriptions';
export const DEFAULT_LOCK_TIMEOUT_MS = 30_000;
export const DEFAULT_LOCK_STALE_MS = 5 * 60_000;

/** Files the sync engine and this store keep in the control directory. */
function isControlFile(n: string): boolean {
  return n.startsWith('dsync-index.sqlite') || n === 'dsync.lock' || n.startsWith('dsync.lock.') || n.startsWith(GUID_MAP_NAME);
}

/**
 * Temp files that earlier builds of dsync left behind when killed while taking a dotlock
 * ("<file>.lock.<pid>.<n>.tmp"); they end in ".lock" now (dotLockTempName).
 */
const OLD_LOCK_TEMP = /\.lock\.\d+\.\d+\.tmp$/;

async function nearestExisting(p: string): Promise<{ path: string; uid: number; gid: number; mode: number } | null> {
  let cur = path.resolve(p);
  for (;;) {
    try {
      const st = await fsp.stat(cur);
      return { path: cur, uid: st.uid, gid: st.gid, mode: st.mode };
    } catch (e) {
      if (!isNotFound(e)) throw toStorageError(e, 'stat', cur);
      const parent = path.dirname(cur);
      if (parent === cur) return null;
      cur = parent;
    }
  }
}

type Kind = 'file' | 'dir' | 'none' | 'other';

async function kindOf(p: string): Promise<Kind> {
  try {
    const st = await fsp.stat(p);
    return st.isFile() ? 'file' : st.isDirectory() ? 'dir' : 'other';
  } catch (e) {
    if (isNotFound(e)) return 'none';
    throw toStorageError(e, 'stat', p);
  }
}

export class MboxStore implements MailStore {
  readonly format = 'mbox';
  readonly caps: StoreCaps = { saveGuids: false };
  readonly separator = '/';
  readonly controlDir: string;
  readonly root: string;
  readonly inboxPath: string;
  /** Dovecot's index root: dovecot-uidvalidity lives here. */
  readonly indexRoot: string;
  private readonly subscriptionsPath: string;
  private readonly codec: SubscriptionCodec;
  private readonly guids: GuidMap;
  private readonly env: MboxEnv;
  private readonly busy = new Map<string, Promise<unknown>>();

  private constructor(
    readonly loc: MailLocation,
    readonly ctx: FsContext,
    opts: MboxStoreOptions,
  ) {
    this.root = path.resolve(loc.path);
    this.inboxPath = path.resolve(loc.inbox ?? path.join(this.root, 'inbox'));
    // Not the root itself: Dovecot lists every file there (dsync-index.sqlite included) as a
    // mailbox, but never anything in .imap (checked with 2.3.19, also with INDEX= elsewhere).
    this.controlDir = path.resolve(loc.control ?? path.join(this.root, '.imap'));
    this.indexRoot = loc.index && loc.index !== 'MEMORY' ? path.resolve(loc.index) : path.join(this.root, '.imap');
    this.subscriptionsPath = path.join(path.resolve(loc.control ?? this.root), loc.params['SUBSCRIPTIONS'] || SUBSCRIPTIONS_FILE);
    this.codec = {
      separator: '/',
      decode: (c) => this.decode(c),
      encode: (c) => this.encode(c),
    };
    this.guids = new GuidMap(path.join(this.controlDir, GUID_MAP_NAME), ctx);
    const q = (opts.quoting ?? (loc.params['FROM_QUOTING'] || 'none').toLowerCase()) as MboxQuoting;
    if (q !== 'none' && q !== 'mboxo' && q !== 'mboxrd') throw new Error(`mail location: FROM_QUOTING must be none, mboxo or mboxrd (got "${q}")`);
    this.env = {
      ctx,
      quoting: q,
      lockTimeoutMs: opts.lockTimeoutMs ?? DEFAULT_LOCK_TIMEOUT_MS,
      lockStaleMs: opts.lockStaleMs ?? DEFAULT_LOCK_STALE_MS,
      guidFor: async (name, uv) => {
        const g = await this.guids.lookup(name, uv, (n) => this.mailboxExists(n), !ctx.readOnly);
        await this.guids.save();
        return g;
      },
      setGuid: async (name, uv, guid) => {
        await this.guids.set(name, uv, guid);
        await this.guids.save();
      },
      exclusive: (file, fn) => this.exclusive(file, fn),
      dropDovecotIndex: (name) => this.removeDovecotIndex(isInboxName(name) ? this.inboxPath : this.pathOf(name)),
      dovecotIndexUids: (name) => this.dovecotIndexUids(isInboxName(name) ? this.inboxPath : this.pathOf(name)),
      ...(opts.beforeReplace ? { beforeReplace: opts.beforeReplace } : {}),
    };
  }

  static async open(loc: MailLocation, opts: MboxStoreOptions = {}): Promise<MboxStore> {
    if (loc.format !== 'mbox') throw new Error(`not an mbox location: ${loc.format}`);
    const readOnly = opts.readOnly ?? false;
    const createIfMissing = opts.createIfMissing ?? true;
    const warn: Warn = opts.warn ?? ((m) => console.error(`dsync: ${m}`));
    const root = path.resolve(loc.path);
    const anchor = await nearestExisting(root);
    const rootExists = anchor?.path === root;
    if (anchor && rootExists && (await kindOf(root)) !== 'dir') {
      throw new StorageError(`mail root ${root} exists but is not a directory`, 'IO');
    }
    let owner: { uid: number; gid: number } | undefined;
    if (typeof process.getuid === 'function' && process.getuid() === 0) {
      owner = opts.owner ?? (anchor ? { uid: anchor.uid, gid: anchor.gid } : undefined);
      if (owner && owner.uid === 0 && owner.gid === 0) owner = undefined;
    }
    const dirMode = rootExists && anchor ? (anchor.mode & 0o777) | 0o700 : 0o700;
    const ctx: FsContext = { owner, readOnly, warn, dirMode, fileMode: dirMode & 0o666 };
    const store = new MboxStore(loc, ctx, opts);
    if (!rootExists) {
      if (readOnly || !createIfMissing) throw new StorageError(`mail root ${root} does not exist`, 'NOTFOUND');
      await mkdirp(ctx, root);
    }
    // The sync engine puts its lock and index into the control directory right away.
    if (!readOnly) await mkdirp(ctx, store.controlDir);
    return store;
  }

  // ---------------------------------------------------------------- names and paths

  private encode(c: string): string {
    return this.loc.utf8 ? c : encodeMUtf7(c);
  }

  private decode(c: string): string {
    return this.loc.utf8 ? c : decodeMUtf7(c);
  }

  private label(name: MailboxName): string {
    return name.join('/');
  }

  invalidNameReason(name: MailboxName): string | null {
    if (!Array.isArray(name) || name.length === 0) return 'the mailbox name is empty';
    const n = normalizeName(name);
    for (const c of n) {
      if (typeof c !== 'string') return 'mailbox name components must be strings';
      if (c === '') return 'empty hierarchy level (two separators in a row, or a leading/trailing separator)';
      // eslint-disable-next-line no-control-regex
      if (/[\x00-\x1f\x7f]/.test(c)) return `"${c}": control characters are not allowed in mailbox names`;
      if (!isWellFormedUnicode(c)) return `"${c}": not valid Unicode`;
      if (c.includes('/')) return `"${c}": '/' is the hierarchy separator`;
      if (c === '.' || c === '..') return `"${c}" is not a valid folder name`;
      if (c.startsWith('.')) return `"${c}": names starting with '.' are hidden files (Dovecot keeps .imap and .subscriptions there)`;
      if (c.startsWith('~')) return `"${c}": folder names starting with '~' are not allowed`;
      if (c.toLowerCase().endsWith('.lock')) return `"${c}": names ending in ".lock" are lock files for mbox programs`;
      if (Buffer.byteLength(this.encode(c)) > 255) return `"${c}": the folder name is too long for the file system`;
    }
    if (!isInboxName(n) && n.length === 1 && this.controlDir === this.root) {
      const c = this.encode(n[0]!);
      if (c === 'dsync' || isControlFile(c)) return `"${n[0]}" is reserved for dsync's own files in ${this.root}`;
    }
    if (n[0] === 'INBOX' && n.length > 1 && path.join(this.root, 'INBOX') === this.inboxPath) {
      return 'INBOX is the file INBOX in the mail root, so it cannot have child mailboxes';
    }
    return null;
  }

  private checkName(name: MailboxName): MailboxName {
    const reason = this.invalidNameReason(name);
    if (reason) throw new StorageError(`invalid mailbox name "${Array.isArray(name) ? name.join('/') : String(name)}": ${reason}`, 'INVALIDNAME');
    return normalizeName(name);
  }

  /** The file (or directory) of a mailbox name. */
  pathOf(name: MailboxName): string {
    const n = normalizeName(name);
    if (isInboxName(n)) return this.inboxPath;
    const enc = n.map((c, i) => (i === 0 && c === 'INBOX' ? 'INBOX' : this.encode(c)));
    return path.join(this.root, ...enc);
  }

  private async mailboxExists(name: MailboxName): Promise<boolean> {
    return (await kindOf(this.pathOf(name))) === 'file';
  }

  /** Every ancestor directory of a name must be a directory (or missing), never an mbox file. */
  private async checkParents(name: MailboxName): Promise<void> {
    for (let i = 1; i < name.length; i++) {
      const parent = name.slice(0, i);
      if (isInboxName(parent)) continue;
      if ((await kindOf(this.pathOf(parent))) === 'file') {
        throw new StorageError(`cannot create ${this.label(name)}: ${this.label(parent)} is a mailbox file, and mbox mailboxes cannot have child mailboxes`, 'INVALIDNAME');
      }
    }
  }

  /**
   * Dovecot's index directory of a mailbox file <root>/<dirs>/<name>: "<base>/<dirs>/.imap/<name>",
   * for INBOX (wherever INBOX= puts it) "<base>/.imap/INBOX", where <base> is INDEX= or else the
   * root (checked with Dovecot 2.3.19, with and without INDEX=).
   */
  private dovecotIndexDir(file: string): string {
    const base = this.loc.index && this.loc.index !== 'MEMORY' ? path.resolve(this.loc.index) : this.root;
    if (file === this.inboxPath) return path.join(base, '.imap', 'INBOX');
    return path.join(base, path.relative(this.root, path.dirname(file)), '.imap', path.basename(file));
  }

  /** UIDVALIDITY / next UID in Dovecot's index of a mailbox file; null without one (INDEX=MEMORY: never). */
  private async dovecotIndexUids(file: string): Promise<DovecotIndexUids | null> {
    if (this.loc.index === 'MEMORY') return null;
    return readDovecotIndexUids(this.dovecotIndexDir(file));
  }

  private exclusive<T>(file: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.busy.get(file) ?? Promise.resolve();
    const run = prev.then(
      () => fn(),
      () => fn(),
    );
    const tail = run.catch(() => undefined);
    this.busy.set(file, tail);
    void tail.then(() => {
      if (this.busy.get(file) === tail) this.busy.delete(file);
    });
    return run;
  }

  private async withFileLock<T>(file: string, fn: () => Promise<T>): Promise<T> {
    return this.exclusive(file, async () => {
      const lock = await DotLock.acquire(this.ctx, file, { staleMs: this.env.lockStaleMs, timeoutMs: this.env.lockTimeoutMs }).catch((e) => {
        if (e instanceof StorageError && e.code === 'LOCKED') {
          throw new StorageError(`${file} is locked by another program (${file}.lock); gave up after ${Math.round(this.env.lockTimeoutMs / 1000)} s`, 'LOCKED');
        }
        throw e;
      });
      try {
        return await fn();
      } finally {
        await lock.release();
      }
    });
  }

  // ---------------------------------------------------------------- INBOX

  /** Creates an empty INBOX file if there is none. False when it is missing and cannot be made. */
  private async ensureInbox(): Promise<boolean> {
    const k = await kindOf(this.inboxPath);
    if (k === 'file') return true;
    if (k !== 'none') throw new StorageError(`INBOX ${this.inboxPath} is not a regular file`, 'IO');
    if (this.ctx.readOnly) return false;
    await mkdirp(this.ctx, path.dirname(this.inboxPath));
    try {
      writeNewFile(this.ctx, this.inboxPath, '', 0o600);
    } catch (e) {
      if (!(e instanceof StorageError && /EEXIST/.test(e.message))) throw e;
    }
    return true;
  }

  // ---------------------------------------------------------------- listing

  private async readDir(dir: string): Promise<Dirent[]> {
    try {
      return await fsp.readdir(dir, { withFileTypes: true });
    } catch (e) {
      if (isNotFound(e)) return [];
      throw toStorageError(e, 'readdir', dir);
    }
  }

  private async walk(out: StoreMailboxInfo[], dir: string, prefix: MailboxName, depth: number): Promise<void> {
    if (depth > 64) {
      this.ctx.warn(`not descending below ${dir}: hierarchy too deep`);
      return;
    }
    for (const d of await this.readDir(dir)) {
      const n = d.name;
      if (n.startsWith('.') || n.toLowerCase().endsWith('.lock') || OLD_LOCK_TEMP.test(n)) continue;
      const full = path.join(dir, n);
      if ((dir === this.controlDir || dir === this.root) && isControlFile(n)) continue;
      if (full === this.inboxPath || full === this.controlDir || full === this.indexRoot) continue;
      let kind: Kind;
      if (d.isFile()) kind = 'file';
      else if (d.isDirectory()) kind = 'dir';
      else kind = await kindOf(full);
      if (kind !== 'file' && kind !== 'dir') continue;
      let comp: string;
      try {
        comp = this.decode(n);
      } catch (e) {
        this.ctx.warn(`ignoring ${full}: its name is not valid modified UTF-7 (${(e as Error).message})`);
        continue;
      }
      const name = normalizeName([...prefix, comp]);
      if (isInboxName(name)) {
        // A root directory INBOX holds INBOX's children; a root file named inbox is not a second INBOX.
        if (kind === 'dir') await this.walk(out, full, ['INBOX'], depth + 1);
        continue;
      }
      if (kind === 'file') out.push({ name, selectable: true });
      else {
        out.push({ name, selectable: false });
        await this.walk(out, full, name, depth + 1);
      }
    }
  }

  /** UIDVALIDITY / last UID from the first message's header, without reading the whole file. */
  private async peekHeader(file: string): Promise<{ uidValidity: number; uidNext: number } | null> {
    let fh: fsp.FileHandle;
    try {
      fh = await fsp.open(file, 'r');
    } catch {
      return null;
    }
    try {
      const st = await fh.stat();
      if (!st.isFile()) return null;
      if (st.size === 0) {
        // An empty mailbox created through Dovecot: its UIDVALIDITY is only in Dovecot's index.
        const idx = await this.dovecotIndexUids(file);
        if (idx) return { uidValidity: idx.uidValidity, uidNext: Math.max(1, idx.nextUid) };
        return { uidValidity: derivedUidValidity(identityOf(st)), uidNext: 1 };
      }
      // The first message's header: usually a few KB.
      for (const want of [16 * 1024, 256 * 1024]) {
        const len = Math.min(st.size, want);
        const buf = Buffer.allocUnsafe(len);
        const { bytesRead } = await fh.read(buf, 0, len, 0);
        const head = buf.subarray(0, bytesRead);
        const complete = bytesRead >= st.size || head.indexOf('\n\n') >= 0 || head.indexOf('\n\r\n') >= 0;
        if (!complete && want < 256 * 1024) continue;
        const b = peekBase(head);
        return b ? { uidValidity: b.uidValidity, uidNext: b.lastUid + 1 } : null;
      }
      return null;
    } catch {
      return null;
    } finally {
      await fh.close().catch(() => undefined);
    }
  }

  async listMailboxes(): Promise<StoreMailboxInfo[]> {
    const inboxOk = await this.ensureInbox();
    const found: StoreMailboxInfo[] = [];
    await this.walk(found, this.root, [], 0);
    const nodes = new Map<string, StoreMailboxInfo>();
    nodes.set(nameKey(['INBOX']), { name: ['INBOX'], selectable: inboxOk });
    for (const f of found) {
      const k = nameKey(f.name);
      const have = nodes.get(k);
      if (have) have.selectable ||= f.selectable;
      else nodes.set(k, f);
    }
    for (const info of [...nodes.values()]) {
      for (let i = 1; i < info.name.length; i++) {
        const parent = info.name.slice(0, i);
        const k = nameKey(parent);
        if (!nodes.has(k)) nodes.set(k, { name: parent, selectable: isInboxName(parent) });
      }
    }
    const out = [...nodes.values()];
    for (const info of out) {
      if (!info.selectable) continue;
      const h = await this.peekHeader(this.pathOf(info.name));
      if (!h) continue;
      info.uidValidity = h.uidValidity;
      info.uidNext = h.uidNext;
      info.guid = await this.guids.lookup(info.name, h.uidValidity, (n) => this.mailboxExists(n), !this.ctx.readOnly);
    }
    await this.guids.save();
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

  // ---------------------------------------------------------------- create / delete / rename

  async createMailbox(name: MailboxName, opts: { guid: string; uidValidity: number }): Promise<void> {
    assertWritable(this.ctx, 'create a mailbox');
    const n = this.checkName(name);
    const guid = opts.guid.toLowerCase();
    if (!/^[0-9a-f]{32}$/.test(guid)) throw new Error(`createMailbox ${this.label(n)}: invalid GUID "${opts.guid}"`);
    if (!Number.isInteger(opts.uidValidity) || opts.uidValidity < 1 || opts.uidValidity > 0xffffffff) {
      throw new Error(`createMailbox ${this.label(n)}: invalid UIDVALIDITY ${opts.uidValidity}`);
    }
    const file = this.pathOf(n);
    const k = await kindOf(file);
    if (k === 'file') throw new StorageError(`mailbox ${this.label(n)} already exists`, 'EXISTS');
    if (k === 'dir') throw new StorageError(`${this.label(n)} already exists as a directory (an mbox directory cannot also be a mailbox)`, 'EXISTS');
    if (k !== 'none') throw new StorageError(`${file} exists and is not a regular file`, 'EXISTS');
    await this.checkParents(n);
    // The GUID first: the file must never be seen without it.
    await this.env.setGuid(n, opts.uidValidity, guid);
    await mkdirp(this.ctx, path.dirname(file));
    // A pseudo message keeps UIDVALIDITY (and later the last UID) in the file itself, readable by
    // Dovecot and c-client, as Dovecot writes when a mailbox becomes empty.
    const now = Math.floor(Date.now() / 1000);
    const text = pseudoMessage(opts.uidValidity, 0, [], now, hostname(), formatFromLine('MAILER_DAEMON', now));
    try {
      writeNewFile(this.ctx, file, text, isInboxName(n) ? 0o600 : this.ctx.fileMode);
    } catch (e) {
      if (e instanceof StorageError && /EEXIST/.test(e.message)) throw new StorageError(`mailbox ${this.label(n)} already exists`, 'EXISTS');
      throw e;
    }
    // A stale Dovecot index of an earlier mailbox of this name would only confuse Dovecot.
    await this.removeDovecotIndex(file);
  }

  async createDirectory(name: MailboxName): Promise<void> {
    assertWritable(this.ctx, 'create a directory');
    const n = this.checkName(name);
    if (isInboxName(n)) return;
    const dir = this.pathOf(n);
    const k = await kindOf(dir);
    if (k === 'dir') return;
    if (k === 'file') throw new StorageError(`${this.label(n)} is a mailbox file; it cannot also be a directory`, 'EXISTS');
    await this.checkParents([...n, 'x']);
    await mkdirp(this.ctx, dir);
  }

  private async removeDovecotIndex(file: string): Promise<void> {
    const idx = this.dovecotIndexDir(file);
    try {
      const st = await fsp.lstat(idx);
      if (!st.isDirectory()) return;
    } catch {
      return;
    }
    await fsp.rm(idx, { recursive: true, force: true }).catch((e) => this.ctx.warn(`could not remove Dovecot's old index ${idx}: ${(e as Error).message}`));
  }

  async deleteMailbox(name: MailboxName): Promise<void> {
    assertWritable(this.ctx, 'delete a mailbox');
    const n = this.checkName(name);
    if (isInboxName(n)) throw new StorageError('INBOX cannot be deleted', 'INVALIDNAME');
    const file = this.pathOf(n);
    const k = await kindOf(file);
    if (k !== 'file') throw new StorageError(`mailbox ${this.label(n)} does not exist${k === 'dir' ? ' (it is a directory)' : ''}`, 'NOTFOUND');
    await this.withFileLock(file, async () => {
      try {
        await fsp.unlink(file);
      } catch (e) {
        if (!isNotFound(e)) throw toStorageError(e, 'unlink', file);
      }
      await removeAppendIntent(file);
    });
    await this.removeDovecotIndex(file);
    await this.guids.remove(n);
    await this.guids.save();
  }

  async deleteDirectory(name: MailboxName): Promise<void> {
    assertWritable(this.ctx, 'delete a directory');
    const n = this.checkName(name);
    if (isInboxName(n)) throw new StorageError('INBOX cannot be deleted', 'INVALIDNAME');
    const dir = this.pathOf(n);
    const k = await kindOf(dir);
    if (k === 'file') throw new StorageError(`${this.label(n)} is a mailbox, not just a directory; delete the mailbox first`, 'EXISTS');
    if (k !== 'dir') throw new StorageError(`directory ${this.label(n)} does not exist`, 'NOTFOUND');
    const entries = await this.readDir(dir);
    const others = entries.filter((e) => e.name !== '.imap');
    if (others.length > 0) {
      throw new StorageError(`directory ${this.label(n)} (${dir}) is not empty: it still has child mailboxes or other files`, 'EXISTS');
    }
    // Only Dovecot's index directory of former children is left.
    if (entries.length > 0) await fsp.rm(path.join(dir, '.imap'), { recursive: true, force: true }).catch(() => undefined);
    try {
      await fsp.rmdir(dir);
    } catch (e) {
      if (isNotFound(e)) return;
      if (errCode(e) === 'ENOTEMPTY' || errCode(e) === 'EEXIST') {
        throw new StorageError(`directory ${this.label(n)} (${dir}) is not empty`, 'EXISTS');
      }
      throw toStorageError(e, 'rmdir', dir);
    }
    await this.removeDovecotIndex(dir);
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
    const s = this.pathOf(src);
    const d = this.pathOf(dst);
    const sk = await kindOf(s);
    if (sk !== 'file' && sk !== 'dir') throw new StorageError(`mailbox ${this.label(src)} does not exist`, 'NOTFOUND');
    if ((await kindOf(d)) !== 'none') throw new StorageError(`mailbox ${this.label(dst)} already exists`, 'EXISTS');
    await this.checkParents(dst);
    await mkdirp(this.ctx, path.dirname(d));
    const move = async (): Promise<void> => {
      try {
        await fsp.rename(s, d);
      } catch (e) {
        throw toStorageError(e, 'rename', s);
      }
    };
    // The record of an interrupted append names the old path: settled before the file moves.
    if (sk === 'file') {
      await this.withFileLock(s, async () => {
        await settleAppendIntent(this.ctx, s);
        await move();
      });
    } else await move();
    // Dovecot's index (and with it Dovecot's mailbox GUID) moves along, as in Dovecot's RENAME.
    const si = this.dovecotIndexDir(s);
    if ((await kindOf(si)) === 'dir') {
      const di = this.dovecotIndexDir(d);
      try {
        await mkdirp(this.ctx, path.dirname(di));
        if ((await kindOf(di)) !== 'none') await fsp.rm(di, { recursive: true, force: true });
        await fsp.rename(si, di);
      } catch (e) {
        this.ctx.warn(`could not move Dovecot's index ${si} to ${di}: ${(e as Error).message}`);
      }
    }
    await this.guids.rename(src, dst);
    await this.guids.save();
  }

  async openMailbox(name: MailboxName): Promise<StoreMailbox> {
    const n = this.checkName(name);
    const file = this.pathOf(n);
    if (isInboxName(n)) {
      if (!(await this.ensureInbox())) throw new StorageError(`INBOX does not exist (${this.inboxPath})`, 'NOTFOUND');
    } else {
      const k = await kindOf(file);
      if (k !== 'file') throw new StorageError(`mailbox ${this.label(n)} does not exist${k === 'dir' ? ' (it is a directory)' : ''}`, 'NOTFOUND');
    }
    return new MboxMailbox(this.env, n, file);
  }

  async newUidValidity(): Promise<number> {
    assertWritable(this.ctx, 'allocate a UIDVALIDITY');
    await mkdirp(this.ctx, this.indexRoot);
    return allocateUidValidity(this.ctx, this.indexRoot);
  }

  async reserveUidValidity(value: number): Promise<void> {
    assertWritable(this.ctx, 'allocate a UIDVALIDITY');
    await mkdirp(this.ctx, this.indexRoot);
    await reserveUidValidity(this.ctx, this.indexRoot, value);
  }

  async close(): Promise<void> {
    await Promise.all([...this.busy.values()]);
  }
}
