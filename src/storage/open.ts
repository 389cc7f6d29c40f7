// Opens the MailStore for a parsed mail location.
import type { MailStore } from './types.js';
import type { MailLocation } from './location.js';

export interface OpenStoreOptions {
  /**
   * When running as root, chown everything the store creates to this owner. Without it, root
   * uses the owner of the existing mail root (or its nearest existing parent).
   */
  owner?: { uid: number; gid: number };
  /** Never write anything (no new/ -> cur/ moves, no uidlist writes; UIDs of unlisted files are in-memory only). */
  readOnly?: boolean;
  /** Create the root maildir (with cur/new/tmp) if missing. Default true. */
  createIfMissing?: boolean;
  /** Receives non-fatal warnings (garbled uidlist lines, stray files, ...). Default console.error. */
  warn?: (msg: string) => void;
  /**
   * Maildir: whether to find out if the file system gives every change after a stat() a new
   * mtime, which lets change tokens be trusted at once ('probe', the default), or to always
   * allow for a clock tick ('never': tests of that margin).
   */
  distinctMtimes?: 'probe' | 'never';
  /**
   * Maildir: a save whose request names a file holding the mail (SaveRequest.linkFrom) hard-links
   * it instead of copying the bytes, where that changes nothing about the file (dsync_hardlinks).
   */
  hardLinks?: boolean;
  /** mbox: how long to wait for another program's lock on a file (mbox_lock_timeout). Default 30 s. */
  lockTimeoutMs?: number;
}

export async function openStore(loc: MailLocation, opts: OpenStoreOptions = {}): Promise<MailStore> {
  switch (loc.format) {
    // Loaded on demand: a run touches one or two formats, and start-up time counts for a
    // sync that finds nothing to do.
    case 'maildir':
      return (await import('./maildir/store.js')).MaildirStore.open(loc, opts);
    case 'mbox':
      return (await import('./mbox/store.js')).MboxStore.open(loc, opts);
    default:
      throw new Error(`mail format "${loc.format}" is not supported yet`);
  }
}
