// The storage interface every backend (maildir, mbox, ...) implements.
// Backends know how to read and write one format faithfully; they hold no sync logic,
// no modseqs and no change history (that is the change index's job, src/index/).
import type { BodyStream } from '../util/body-stream.js';

/** A mailbox name as UTF-8 hierarchy components, e.g. ['INBOX'] or ['Archive', '2024']. */
export type MailboxName = string[];

export interface StoreMailboxInfo {
  name: MailboxName;
  /** false for a \Noselect directory that only exists as a parent. */
  selectable: boolean;
  /** 32 lowercase hex, when the storage records one (maildir: dovecot-uidlist header G). */
  guid?: string;
  uidValidity?: number;
  uidNext?: number;
  /**
   * Unix ms of the last change to the mailbox's own directory entry (its ctime), an upper bound
   * for when it was last renamed; lets a rename made outside dsync be dated near when it happened.
   */
  changedAt?: number;
}

export interface StoreMessage {
  uid: number;
  /** Message GUID string: maildir = uidlist G field or the base file name. */
  guid: string;
  /** System flag bits, see model/flags.ts. */
  flags: number;
  /** Keyword names, sorted, without duplicates. */
  keywords: string[];
  /** INTERNALDATE, unix seconds. */
  internalDate: number;
  /** Physical size in bytes. */
  size: number;
  /**
   * Optional: dsync's header hash of the message (header-hash.ts: MD5 over Date and Message-ID,
   * version 3), when the store has it at hand anyway (mbox: it is also the message's guid).
   */
  hdrHash?: string;
}

export interface SaveRequest {
  /** Explicit UID; always >= the mailbox's current uidNext, requests given in ascending UID order. */
  uid: number;
  guid: string;
  flags: number;
  keywords: string[];
  internalDate: number;
  /** The exact message bytes: a buffer, or a function giving a stream (or, for a small mail, a buffer). */
  body: Buffer | (() => BodyStream | Buffer | Promise<Buffer | BodyStream>);
  /**
   * Optional: the path of a file that holds exactly these bytes and is never written in place (a
   * Maildir message file of the other side, local runs), or null once it is gone. A store opened
   * with hardLinks may link it instead of copying the body.
   */
  linkFrom?: () => string | null;
}

export interface FlagUpdate {
  uid: number;
  flags: number;
  keywords: string[];
}

export interface StoreMailboxStatus {
  guid: string;
  uidValidity: number;
  uidNext: number;
}

export interface ScanOptions {
  /**
   * Messages the caller already knows (it has this UID with this GUID on record). Message files
   * never change in place, so a store may skip reading their size and INTERNALDATE and report
   * both as -1.
   */
  known?: (uid: number, guid: string) => boolean;
}

export interface StoreMailbox {
  readonly name: MailboxName;
  /**
   * Bring the on-disk state up to date the way Dovecot would (maildir: move new/ to cur/,
   * give new files UIDs in dovecot-uidlist, assign a mailbox GUID / UIDVALIDITY if missing)
   * and return every message, sorted by UID.
   */
  scan(opts?: ScanOptions): Promise<StoreMessage[]>;
  status(): Promise<StoreMailboxStatus>;
  /**
   * Optional: true when a scan now would find exactly what this handle's last scan found plus
   * the changes made through it since (nothing changed from outside), checked more cheaply than
   * a scan. False whenever in doubt.
   */
  unchangedSinceScan?(): Promise<boolean>;
  /**
   * Optional: frees what the handle holds per message (its map of files), keeping only what
   * unchangedSinceScan needs in a compact form; anything needing the map later rescans.
   */
  dropFileMap?(): void;
  /**
   * Optional: a cheap value (no reading of messages) that changes whenever scan() could return
   * something different, so an unchanged mailbox need not be scanned. null when the store
   * cannot vouch for the present state yet (it changed a moment ago): scan, and ask again later.
   */
  changeToken?(): Promise<string | null>;
  /** The message's exact bytes as a stream; rejects with code 'EXPUNGED' if it vanished. */
  openBody(uid: number): Promise<BodyStream>;
  /**
   * Optional: the message's bytes read at once, if it is known and at most maxBytes long (else
   * null: use openBody). Cheaper than a stream for the many small mails of a first sync.
   */
  readBody?(uid: number, maxBytes: number): Promise<Buffer | null>;
  /** Optional: the path of the file holding exactly this message's bytes (Maildir), null if unknown. */
  bodyFile?(uid: number): string | null;
  /** Saves durably (tmp + fsync + rename, then the UID map) before resolving. */
  save(requests: SaveRequest[]): Promise<void>;
  updateFlags(updates: FlagUpdate[]): Promise<void>;
  /** Missing UIDs are ignored. */
  expunge(uids: number[]): Promise<void>;
  /**
   * Optional: gives existing messages new UIDs (each `to` >= uidNext, ascending) in one atomic
   * step, keeping their GUID, flags and date. Without it the engine copies and expunges.
   */
  renumber?(moves: { from: number; to: number }[]): Promise<void>;
  /**
   * Optional: `save` and `renumber` in one step (all target UIDs >= uidNext, distinct), so that
   * interleaved saves and moves need not each update the UID map on their own.
   */
  saveAndRenumber?(requests: SaveRequest[], moves: { from: number; to: number }[]): Promise<void>;
  /**
   * Optional: removes every message and restarts the UID space at 1 with this UIDVALIDITY,
   * keeping the mailbox and its GUID (used to rebuild a backup destination, INBOX included).
   */
  reset?(uidValidity: number): Promise<void>;
  setGuid(guid: string): Promise<void>;
  setUidValidity(uidValidity: number): Promise<void>;
  /** uidNext only grows. */
  raiseUidNext(uidNext: number): Promise<void>;
  close(): Promise<void>;
}

export interface StoreCaps {
  /** The backend can store a message GUID it is given (maildir yes, mbox no). */
  saveGuids: boolean;
}

export interface MailStore {
  readonly format: string;
  readonly caps: StoreCaps;
  /** Hierarchy separator used for this store's user-visible names (maildir++ '.', fs '/'). */
  readonly separator: string;
  /** Directory where tools may keep private state that the format never mistakes for a mailbox. */
  readonly controlDir: string;
  /** All mailboxes, INBOX always included (created on first listing if missing). */
  listMailboxes(): Promise<StoreMailboxInfo[]>;
  readSubscriptions(): Promise<MailboxName[]>;
  writeSubscriptions(names: MailboxName[]): Promise<void>;
  /** null if the name can be stored, else a human-readable reason. */
  invalidNameReason(name: MailboxName): string | null;
  createMailbox(name: MailboxName, opts: { guid: string; uidValidity: number }): Promise<void>;
  /** Creates a \Noselect directory where the layout can hold one (a no-op where it cannot). */
  createDirectory(name: MailboxName): Promise<void>;
  /** Deletes the mailbox's mail; children stay (a child-bearing mailbox becomes a directory). */
  deleteMailbox(name: MailboxName): Promise<void>;
  deleteDirectory(name: MailboxName): Promise<void>;
  /** Renames the mailbox and all its children. */
  renameMailbox(from: MailboxName, to: MailboxName): Promise<void>;
  openMailbox(name: MailboxName): Promise<StoreMailbox>;
  /** Allocates a new UIDVALIDITY the way the format does (maildir: dovecot-uidvalidity). */
  newUidValidity(): Promise<number>;
  /**
   * A mailbox here now has this UIDVALIDITY, not from newUidValidity (the peer's): later ones
   * must be greater (see reserveUidValidity in maildir/uidvalidity.ts). Optional: a format
   * whose new UIDVALIDITYs never repeat one given before need not.
   */
  reserveUidValidity?(value: number): Promise<void>;
  close(): Promise<void>;
}

/**
 * UIDTAKEN: a save or UID move asked for a UID below the mailbox's next UID, typically because
 * another program (an IMAP server, a delivery) gave out UIDs since the caller looked; nothing was
 * changed, and the caller may try again with UIDs from the mailbox's new UIDNEXT on.
 */
export class StorageError extends Error {
  constructor(
    message: string,
    readonly code: 'NOTFOUND' | 'EXISTS' | 'EXPUNGED' | 'INVALIDNAME' | 'CORRUPT' | 'PERM' | 'NOSPACE' | 'LOCKED' | 'IO' | 'UIDTAKEN',
  ) {
    super(message);
    this.name = 'StorageError';
  }
}

/** Reading the body given to save() failed: the fault is the source's, not this store's. */
export class BodySourceError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'BodySourceError';
  }
}
