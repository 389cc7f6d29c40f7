// Reading UIDVALIDITY and the next UID from Dovecot's binary index of one mbox mailbox.
//
// Dovecot keeps an mbox's UIDVALIDITY in the file (X-IMAPbase / X-IMAP) once the file holds
// anything, but an empty mailbox created through Dovecot is an empty file: the value exists only
// in Dovecot's index directory of the mailbox (see MboxStore.dovecotIndexDir). Dovecot also keeps
// the index's values when the file has none (a file emptied or rewritten by another program).
// We only read these files, never write them, and never trust them with anything but these two
// numbers; anything unexpected means "no value" (the caller falls back), never an error.
//
// The formats (Dovecot 2.3, lib-index; checked against files Dovecot 2.3.19 wrote and against
// `doveadm dump`). Integers are in the writing CPU's byte order; both files flag little-endian
// with bit 0 of compat_flags, and only such files are read.
//  * dovecot.index, the main index (a snapshot, rewritten as a whole now and then; an empty
//    mailbox often has none yet): the base header is
//      0 major_version (7)   1 minor_version   2 base_header_size (u16)   4 header_size (u32)
//      8 record_size (u32)   12 compat_flags (u8) + 3 unused   16 indexid   20 flags
//      24 uid_validity   28 next_uid   32 messages_count ... 60 log_file_seq ...
//  * dovecot.index.log, the transaction log (every change goes here first; the main index is a
//    snapshot of a prefix of it): a header
//      0 major_version (1)   1 minor_version   2 hdr_size (u16)   4 indexid   8 file_seq
//      12 prev_file_seq   16 prev_file_offset   20 create_stamp   24 initial_modseq (u64)
//      32 compat_flags (u8) ...
//    then records from offset hdr_size: {size (u32, see decodeRecordSize), type (u32)} and
//    size - 8 bytes of data. The low 28 bits of type are the record type, the high bits are flags
//    (0x10000000 "external", 0x20000000 "sync"). Type 0x00000020 (header update) holds entries
//    {offset (u16), size (u16), size bytes} that overwrite that range of the main index's base
//    header, each entry padded to 4 bytes. Type 0x00080000 (boundary) starts a transaction whose
//    total length (this record included) is its u32 data: a transaction cut short by a crash is
//    ignored, as Dovecot does.
//  * dovecot.index.log.2 is the previous log, kept after a rotation; a rotation always writes the
//    main index, so it only matters when the main index is missing.
// The current values are the main index's header with the header updates of the log applied in
// order (updates already in the snapshot are simply written again).
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';

export const INDEX_FILE = 'dovecot.index';
export const LOG_FILE = 'dovecot.index.log';
export const OLD_LOG_FILE = 'dovecot.index.log.2';

/** What Dovecot's index says about a mailbox. */
export interface DovecotIndexUids {
  uidValidity: number;
  /** 0 when unknown. */
  nextUid: number;
}

/** The header fields we use of dovecot.index. */
export interface IndexHeader {
  indexId: number;
  uidValidity: number;
  nextUid: number;
  logFileSeq: number;
}

/** A transaction log's identity and its writes to the header bytes we care about. */
export interface LogScan {
  indexId: number;
  fileSeq: number;
  /** Header updates that touch bytes 24..31 (uid_validity, next_uid), in log order, clipped to them. */
  writes: HeaderWrite[];
}

export interface HeaderWrite {
  /** Offset in the main index's base header. */
  offset: number;
  bytes: Buffer;
}

const UID_VALIDITY_OFFSET = 24;
const NEXT_UID_OFFSET = 28;
/** The header bytes we track: uid_validity and next_uid. */
const TRACK_START = UID_VALIDITY_OFFSET;
const TRACK_END = NEXT_UID_OFFSET + 4;

const INDEX_MAJOR = 7;
const LOG_MAJOR = 1;
const LOG_HEADER_MIN_SIZE = 24;
const COMPAT_LITTLE_ENDIAN = 0x01;
const TYPE_MASK = 0x0fffffff;
const TYPE_HEADER_UPDATE = 0x00000020;
const TYPE_BOUNDARY = 0x00080000;
const RECORD_HEADER_SIZE = 8;
/** Enough for the base header of any version we know (120 bytes in 2.3). */
const INDEX_HEAD_BYTES = 256;
/** Logs are rotated at 1 MB; a bigger one is not what we expect, read no more than this. */
const MAX_LOG_BYTES = 64 * 1024 * 1024;

/**
 * The header of a dovecot.index file (its first bytes are enough), or null when it is not one we
 * can read: too short, another major version, big-endian, inconsistent sizes.
 */
export function parseIndexHeader(buf: Buffer): IndexHeader | null {
  if (buf.length < 64) return null;
  if (buf[0] !== INDEX_MAJOR) return null;
  const baseHeaderSize = buf.readUInt16LE(2);
  const headerSize = buf.readUInt32LE(4);
  if (baseHeaderSize < 64 || headerSize < baseHeaderSize) return null;
  if ((buf[12]! & COMPAT_LITTLE_ENDIAN) === 0) return null;
  return {
    indexId: buf.readUInt32LE(16),
    uidValidity: buf.readUInt32LE(UID_VALIDITY_OFFSET),
    nextUid: buf.readUInt32LE(NEXT_UID_OFFSET),
    logFileSeq: buf.readUInt32LE(60),
  };
}

/**
 * A record's size as the log stores it: four bytes, each with its high bit set (a byte still zero
 * from an interrupted write is recognised), holding seven bits each of size / 4, the most
 * significant first. 0 when the bytes are not such an encoding.
 */
export function decodeRecordSize(buf: Buffer, at: number): number {
  let v = 0;
  for (let i = 0; i < 4; i++) {
    const b = buf[at + i]!;
    if ((b & 0x80) === 0) return 0;
    v = v * 128 + (b & 0x7f);
  }
  return v * 4;
}

/** The inverse of decodeRecordSize (for tests and hand-built logs); size must be a multiple of 4 below 2^30. */
export function encodeRecordSize(size: number): Buffer {
  if (!Number.isInteger(size) || size < 0 || size % 4 !== 0 || size >= 2 ** 30) throw new Error(`bad record size ${size}`);
  let v = size / 4;
  const out = Buffer.alloc(4);
  for (let i = 3; i >= 0; i--) {
    out[i] = 0x80 | (v & 0x7f);
    v = Math.floor(v / 128);
  }
  return out;
}

/** The part of one header update entry that falls into the tracked bytes, if any. */
function clipWrite(offset: number, data: Buffer): HeaderWrite | null {
  const start = Math.max(offset, TRACK_START);
  const end = Math.min(offset + data.length, TRACK_END);
  if (start >= end) return null;
  return { offset: start, bytes: Buffer.from(data.subarray(start - offset, end - offset)) };
}

/**
 * Scans a dovecot.index.log for header updates of uid_validity / next_uid. null when the file is
 * not a log we can read. Scanning stops quietly at the first record that does not make sense
 * (a torn write at the end, garbage): what came before it stands, a transaction it cuts short
 * does not.
 */
export function scanLog(buf: Buffer): LogScan | null {
  if (buf.length < LOG_HEADER_MIN_SIZE) return null;
  if (buf[0] !== LOG_MAJOR) return null;
  const hdrSize = buf.readUInt16LE(2);
  if (hdrSize < LOG_HEADER_MIN_SIZE || hdrSize > buf.length || hdrSize % 4 !== 0) return null;
  // compat_flags exists from log version 1.2 on (header of 40 bytes).
  if (hdrSize > 32 && (buf[32]! & COMPAT_LITTLE_ENDIAN) === 0) return null;
  const scan: LogScan = { indexId: buf.readUInt32LE(4), fileSeq: buf.readUInt32LE(8), writes: [] };
  let pos = hdrSize;
  /** Writes of the open transaction, committed when its end is reached. */
  let pending: HeaderWrite[] = [];
  let txEnd = 0;
  const commit = (): void => {
    scan.writes.push(...pending);
    pending = [];
  };
  while (pos + RECORD_HEADER_SIZE <= buf.length) {
    if (txEnd > 0 && pos >= txEnd) {
      if (pos > txEnd) return scan; // records do not line up with the transaction: stop
      commit();
      txEnd = 0;
    }
    const size = decodeRecordSize(buf, pos);
    if (size < RECORD_HEADER_SIZE || pos + size > buf.length) break;
    const type = buf.readUInt32LE(pos + 4) & TYPE_MASK;
    const dataStart = pos + RECORD_HEADER_SIZE;
    const end = pos + size;
    if (type === TYPE_BOUNDARY) {
      if (txEnd > 0 || size < RECORD_HEADER_SIZE + 4) break;
      const len = buf.readUInt32LE(dataStart);
      if (len < size || pos + len > buf.length) break; // cut short: Dovecot drops it
      txEnd = pos + len;
    } else if (type === TYPE_HEADER_UPDATE) {
      const writes: HeaderWrite[] = [];
      let p = dataStart;
      let ok = true;
      while (p < end) {
        if (p + 4 > end) {
          ok = false;
          break;
        }
        const off = buf.readUInt16LE(p);
        const len = buf.readUInt16LE(p + 2);
        if (p + 4 + len > end) {
          ok = false;
          break;
        }
        const w = clipWrite(off, buf.subarray(p + 4, p + 4 + len));
        if (w) writes.push(w);
        p += 4 + len;
        p += (4 - ((p - dataStart) % 4)) % 4;
      }
      if (!ok) break;
      if (txEnd > 0) pending.push(...writes);
      else scan.writes.push(...writes);
    }
    pos = end;
  }
  if (txEnd > 0 && pos === txEnd) commit();
  return scan;
}

/**
 * Combines what was read: the main index's header (if any), then the logs' header updates, oldest
 * log first. A log of another index (indexid differs: Dovecot recreated the index, the log is
 * stale) or older than the main index's snapshot is skipped. null when no UIDVALIDITY results.
 */
export function combineIndex(index: IndexHeader | null, logs: Array<LogScan | null>): DovecotIndexUids | null {
  const fields = Buffer.alloc(TRACK_END - TRACK_START);
  let indexId: number | null = null;
  if (index) {
    fields.writeUInt32LE(index.uidValidity >>> 0, UID_VALIDITY_OFFSET - TRACK_START);
    fields.writeUInt32LE(index.nextUid >>> 0, NEXT_UID_OFFSET - TRACK_START);
    indexId = index.indexId;
  }
  for (const log of logs) {
    if (!log) continue;
    if (indexId !== null && log.indexId !== indexId) continue;
    if (index && log.fileSeq < index.logFileSeq) continue;
    indexId = log.indexId;
    for (const w of log.writes) w.bytes.copy(fields, w.offset - TRACK_START);
  }
  const uidValidity = fields.readUInt32LE(UID_VALIDITY_OFFSET - TRACK_START);
  if (uidValidity === 0) return null;
  return { uidValidity, nextUid: fields.readUInt32LE(NEXT_UID_OFFSET - TRACK_START) };
}

/** The first `max` bytes of a file; null when it cannot be read (missing, a directory, ...). */
async function readHead(file: string, max: number): Promise<Buffer | null> {
  let fh: fsp.FileHandle;
  try {
    fh = await fsp.open(file, 'r');
  } catch {
    return null;
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) return null;
    const len = Math.min(st.size, max);
    const buf = Buffer.alloc(len);
    let got = 0;
    while (got < len) {
      const { bytesRead } = await fh.read(buf, got, len - got, got);
      if (bytesRead === 0) break;
      got += bytesRead;
    }
    return buf.subarray(0, got);
  } catch {
    return null;
  } finally {
    await fh.close().catch(() => undefined);
  }
}

/**
 * UIDVALIDITY and next UID of the mailbox whose Dovecot index directory is `dir`, or null when
 * there is no index, or nothing usable in it. Never throws.
 */
export async function readDovecotIndexUids(dir: string): Promise<DovecotIndexUids | null> {
  try {
    const head = await readHead(path.join(dir, INDEX_FILE), INDEX_HEAD_BYTES);
    const index = head ? parseIndexHeader(head) : null;
    const logs: Array<LogScan | null> = [];
    if (!index) {
      const old = await readHead(path.join(dir, OLD_LOG_FILE), MAX_LOG_BYTES);
      logs.push(old && scanLog(old));
    }
    const log = await readHead(path.join(dir, LOG_FILE), MAX_LOG_BYTES);
    logs.push(log && scanLog(log));
    return combineIndex(index, logs);
  } catch {
    return null;
  }
}
