// The typed records two brains exchange, modelled on Dovecot dsync's record types
// (dsync-design.md §8.2). Field names follow Dovecot's schema names in camelCase so that a
// wire codec can map them one to one; fields marked "ext" are ours and travel as extra
// optional schema fields (Dovecot ignores unknown trailing fields).
import type { BodyStream } from '../util/body-stream.js';

export type SyncType = 'full' | 'changed';

export interface HandshakeRecord {
  type: 'handshake';
  hostname: string;
  /** ext: protocol flavour; both sides must speak the same. */
  protocol: number;
  /** ext: stable random id of the sender's location (keys per-peer sync state). */
  locationId: string;
  syncType: SyncType;
  /** Only set by the master: from the slave's point of view, as Dovecot does. */
  backupSend: boolean;
  backupRecv: boolean;
  /** -m: sync only this mailbox (vname components joined by the master's separator). */
  syncBox?: string[];
  altChar: string;
  /** ext: the sender's store can save message GUIDs it is given. */
  haveSaveGuids: boolean;
  /** ext: characters the sender's store cannot keep inside a mailbox name component. */
  nameForbidden: string;
}

export type Existence = 'nonexistent' | 'exists' | 'deleted';

export interface MailboxTreeNodeRecord {
  type: 'node';
  name: string[];
  existence: Existence;
  mailboxGuid?: string;
  uidValidity?: number;
  uidNext?: number;
  lastRenamedOrCreated: number;
  subscribed: boolean;
  lastSubscriptionChange: number;
  /** ext: the mailbox has changed since the last sync with this peer (protects it from a peer's delete). */
  changedSinceSync?: boolean;
}

export interface Tombstone {
  /** mailbox GUID (mailboxes) or the 32-hex SHA-1-128 of the name (dirs, unsubscribes). */
  key: string;
  timestamp: number;
}

export interface MailboxDeleteRecord {
  type: 'deletes';
  hierarchySep: string;
  mailboxes: Tombstone[];
  dirs: Tombstone[];
  unsubscribes: Tombstone[];
}

export interface MailboxRecord {
  type: 'mailbox';
  mailboxGuid: string;
  uidValidity: number;
  uidNext: number;
  messagesCount: number;
  firstRecentUid: number;
  highestModseq: number;
  highestPvtModseq: number;
  mailboxLost?: boolean;
  mailboxIgnore?: boolean;
  haveGuids: boolean;
  haveSaveGuids: boolean;
  /** ext: the id of the last completed sync of this mailbox with this peer ('' if none). */
  lastSyncId: string;
  /** ext: nothing changed here since that sync. */
  unchangedSinceSync: boolean;
}

export type MailChangeType = 'save' | 'expunge' | 'flags';

export interface MailChangeRecord {
  type: 'change';
  changeType: MailChangeType;
  uid: number;
  guid?: string;
  hdrHash?: string;
  modseq: number;
  addFlags: number;
  removeFlags: number;
  finalFlags: number;
  /** Present keywords and changes: '+kw' added, '-kw' removed, '=kw' present unchanged, '&kw' added and present. */
  keywordChanges: string[];
  receivedTimestamp?: number;
  virtualSize?: number;
  /** ext: wall-clock time of the sender's latest change to this message (conflict tie-break). */
  changeTimestamp?: number;
}

export interface MailRequestRecord {
  type: 'request';
  guid?: string;
  uid?: number;
}

export interface MailRecord {
  type: 'mail';
  guid: string;
  uid: number;
  receivedDate: number;
  /** null when the mail was expunged before it could be sent; a small mail may come as a buffer. */
  body: (() => BodyStream | Buffer | Promise<Buffer | BodyStream>) | null;
  /**
   * In-process only (a function, so a byte stream never carries it): the path of the sender's
   * file holding exactly these bytes, for a receiver that saves by hard link (dsync_hardlinks).
   */
  localFile?: () => string | null;
}

export interface MailboxStateRecord {
  type: 'state';
  mailboxGuid: string;
  lastUidvalidity: number;
  lastCommonUid: number;
  lastCommonModseq: number;
  lastCommonPvtModseq: number;
  lastMessagesCount: number;
  changesDuringSync: boolean;
  /** ext: id naming this completed sync; the master's wins. */
  syncId: string;
}

export interface FinishRecord {
  type: 'finish';
  error?: string;
  mailError?: number;
  requireFullResync: boolean;
}

/** End of the current list ('.' on Dovecot's wire). */
export interface EndRecord {
  type: 'end';
}

export type SyncRecord =
  | HandshakeRecord
  | MailboxTreeNodeRecord
  | MailboxDeleteRecord
  | MailboxRecord
  | MailChangeRecord
  | MailRequestRecord
  | MailRecord
  | MailboxStateRecord
  | FinishRecord
  | EndRecord;

export type RecordType = SyncRecord['type'];
export type RecordOf<T extends RecordType> = Extract<SyncRecord, { type: T }>;
