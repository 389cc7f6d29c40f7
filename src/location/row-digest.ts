// A compact digest of a mailbox's index rows: per message its UID, flags and keywords exactly and
// its GUID as a 64-bit hash, in UID order. A refresh compares the store's scan with it instead of
// with the rows themselves, and reads rows only for the messages that differ: the rows of a large
// mailbox cost far more to read (and to collect afterwards) than its digest.
import type { MessageRow } from '../index/change-index.js';

/** Marks a removed entry (kept in place so that the UIDs stay sorted for binary search). */
const REMOVED = 0x80000000;
const FLAG_BITS = 0xff;
const KW_SHIFT = 8;
/** Keyword sets a digest can tell apart: the state word holds the set's number above the flags. */
const MAX_KEYWORD_SETS = 1 << 23;
/** New entries below the highest UID looked up one by one before they are sorted in. */
const UNSORTED_MAX = 64;

let hashLo = 0;
let hashHi = 0;

/** Two independent 32-bit hashes of s, left in hashLo and hashHi (no allocation per message). */
function hashGuid(s: string): void {
  let a = 0x811c9dc5;
  let b = 0x9747b28c ^ s.length;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    a = Math.imul(a ^ c, 0x01000193);
    b = Math.imul(b ^ c, 0x5bd1e995);
    b ^= b >>> 13;
  }
  a ^= a >>> 15;
  a = Math.imul(a, 0x2c1b3c6d);
  a ^= a >>> 12;
  b ^= b >>> 16;
  b = Math.imul(b, 0x85ebca6b);
  b ^= b >>> 13;
  hashLo = a >>> 0;
  hashHi = b >>> 0;
}

/** The canonical text of a keyword set (keywords sorted, as the index keeps them). */
function keywordKey(keywords: readonly string[]): string {
  return keywords.length === 0 ? '' : keywords.length === 1 ? keywords[0]! : keywords.join(' ');
}

export class RowDigest {
  private uids: Uint32Array;
  private states: Uint32Array;
  private lo: Uint32Array;
  private hi: Uint32Array;
  private used = 0;
  private live = 0;
  /** Entries from here on are in the order they were added (a new UID below an older one). */
  private sortedUpTo = 0;
  /** Keyword sets by number; 0 is the empty set. */
  private readonly keywordSets: string[];
  private readonly setNumbers: Map<string, number>;

  private constructor(capacity: number, keywordSets: string[]) {
    this.uids = new Uint32Array(capacity);
    this.states = new Uint32Array(capacity);
    this.lo = new Uint32Array(capacity);
    this.hi = new Uint32Array(capacity);
    this.keywordSets = keywordSets;
    this.setNumbers = new Map(keywordSets.map((k, i) => [k, i]));
  }

  static empty(capacity = 16): RowDigest {
    return new RowDigest(capacity, ['']);
  }

  /** The digest of these rows; null when it cannot hold them (flags beyond its 8 bits, too many keyword sets). */
  static of(rows: Iterable<MessageRow>, count: number): RowDigest | null {
    const d = new RowDigest(Math.max(count, 16), ['']);
    for (const r of rows) if (!d.put(r)) return null;
    return d;
  }

  /** Messages in the digest. */
  get size(): number {
    return this.live;
  }

  /** Where the last lookup found its UID: a scan asks for ascending UIDs, mostly the next entry's. */
  private hint = 0;

  /** Position of uid's entry (removed or not), or -1. */
  private find(uid: number): number {
    const uids = this.uids;
    const next = this.hint + 1;
    if (next < this.sortedUpTo && uids[next] === uid) return (this.hint = next);
    for (let i = this.sortedUpTo; i < this.used; i++) if (uids[i] === uid) return i;
    let lo = 0;
    let hi = this.sortedUpTo - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const u = uids[mid]!;
      if (u === uid) return (this.hint = mid);
      if (u < uid) lo = mid + 1;
      else hi = mid - 1;
    }
    return -1;
  }

  private stateOf(flags: number, keywords: readonly string[]): number {
    const key = keywordKey(keywords);
    let n = this.setNumbers.get(key);
    if (n === undefined) {
      n = this.keywordSets.length;
      if (n >= MAX_KEYWORD_SETS) return -1;
      this.keywordSets.push(key);
      this.setNumbers.set(key, n);
    }
    return (flags & FLAG_BITS) | (n << KW_SHIFT);
  }

  /**
   * GUIDs hasGuid found at each position, until the entry changes: a refresh asks hasGuid (the
   * scan: is this file known?) and then matches (is its row unchanged?) for every message, and
   * the second need not hash the GUID again.
   */
  private confirmed: (string | undefined)[] | null = null;

  /** True when the digest has a message at uid with this GUID. */
  hasGuid(uid: number, guid: string): boolean {
    const i = this.find(uid);
    if (i < 0 || this.states[i]! & REMOVED) return false;
    hashGuid(guid);
    if (this.lo[i] !== hashLo || this.hi[i] !== hashHi) return false;
    (this.confirmed ??= [])[i] = guid;
    return true;
  }

  /** True when the digest has a message at uid with exactly this GUID, flags and keywords (sorted). */
  matches(uid: number, guid: string, flags: number, keywords: readonly string[]): boolean {
    const i = this.find(uid);
    if (i < 0) return false;
    const st = this.states[i]!;
    if (st & REMOVED || (st & FLAG_BITS) !== flags) return false;
    const n = keywords.length === 0 ? 0 : this.setNumbers.get(keywordKey(keywords));
    if (n === undefined || st >>> KW_SHIFT !== n) return false;
    if (this.confirmed !== null && this.confirmed[i] === guid) return true;
    hashGuid(guid);
    return this.lo[i] === hashLo && this.hi[i] === hashHi;
  }

  /** Calls fn with every UID in the digest, ascending. */
  forEachUid(fn: (uid: number) => void): void {
    this.sort();
    for (let i = 0; i < this.used; i++) if (!(this.states[i]! & REMOVED)) fn(this.uids[i]!);
  }

  /**
   * Records a row (new or changed). False when the digest cannot (flags it does not know, too many
   * keyword sets): the caller then drops the digest.
   */
  put(row: MessageRow): boolean {
    if (row.flags & ~FLAG_BITS) return false;
    const state = this.stateOf(row.flags, row.keywords);
    if (state < 0) return false;
    let i = this.find(row.uid);
    if (i < 0) {
      if (this.used === this.uids.length) this.grow();
      i = this.used++;
      this.uids[i] = row.uid;
      this.live++;
    } else if (this.states[i]! & REMOVED) {
      this.live++;
    }
    hashGuid(row.guid);
    if (this.confirmed !== null) this.confirmed[i] = undefined;
    this.states[i] = state;
    this.lo[i] = hashLo;
    this.hi[i] = hashHi;
    // New UIDs usually come above all others; the few that do not are sorted in once they are
    // many, or when the digest is walked in order (until then find looks at them one by one).
    if (i === this.sortedUpTo && i === this.used - 1 && (i === 0 || row.uid > this.uids[i - 1]!)) this.sortedUpTo = this.used;
    else if (this.used - this.sortedUpTo > UNSORTED_MAX) this.sort();
    return true;
  }

  remove(uid: number): void {
    const i = this.find(uid);
    if (i < 0 || this.states[i]! & REMOVED) return;
    this.states[i] = this.states[i]! | REMOVED;
    this.live--;
  }

  /** Puts every entry in UID order. */
  private sort(): void {
    if (this.sortedUpTo === this.used) return;
    const order = Array.from({ length: this.used }, (_, i) => i).sort((x, y) => this.uids[x]! - this.uids[y]!);
    const permuted = (a: Uint32Array): Uint32Array => {
      const b = new Uint32Array(a.length);
      for (let i = 0; i < order.length; i++) b[i] = a[order[i]!]!;
      return b;
    };
    this.uids = permuted(this.uids);
    this.states = permuted(this.states);
    this.lo = permuted(this.lo);
    this.hi = permuted(this.hi);
    this.confirmed = null;
    this.sortedUpTo = this.used;
  }

  private grow(): void {
    const cap = Math.max(16, this.uids.length * 2);
    const bigger = (a: Uint32Array): Uint32Array => {
      const b = new Uint32Array(cap);
      b.set(a.subarray(0, this.used));
      return b;
    };
    this.uids = bigger(this.uids);
    this.states = bigger(this.states);
    this.lo = bigger(this.lo);
    this.hi = bigger(this.hi);
  }

  /** The digest as stored in the index: 16 bytes per message and the keyword sets' texts. */
  encode(): { data: Buffer; keywordSets: string } {
    this.sort();
    // Four little-endian 32-bit words per message, written as words (not byte by byte: this is
    // done for every message of each changed mailbox, at the end of each run).
    const words = new Uint32Array(this.live * 4);
    let o = 0;
    for (let i = 0; i < this.used; i++) {
      const st = this.states[i]!;
      if (st & REMOVED) continue;
      words[o] = this.uids[i]!;
      words[o + 1] = st;
      words[o + 2] = this.lo[i]!;
      words[o + 3] = this.hi[i]!;
      o += 4;
    }
    if (!LITTLE_ENDIAN) {
      const view = new DataView(words.buffer);
      for (let k = 0; k < words.length; k++) view.setUint32(k * 4, words[k]!, true);
    }
    return { data: Buffer.from(words.buffer, 0, words.byteLength), keywordSets: JSON.stringify(this.keywordSets) };
  }

  /** A stored digest (see encode); null when it is not one (then the rows are read instead). */
  static decode(data: Uint8Array, keywordSets: string): RowDigest | null {
    if (data.length % 16 !== 0) return null;
    let sets: unknown;
    try {
      sets = JSON.parse(keywordSets);
    } catch {
      return null;
    }
    if (!Array.isArray(sets) || sets[0] !== '' || !sets.every((k) => typeof k === 'string')) return null;
    const n = data.length / 16;
    const d = new RowDigest(Math.max(n, 16), sets as string[]);
    const words = wordsOf(data);
    let last = 0;
    for (let i = 0, k = 0; i < n; i++, k += 4) {
      const uid = words[k]!;
      const st = words[k + 1]!;
      if (uid <= last || st & REMOVED || st >>> KW_SHIFT >= sets.length) return null;
      d.uids[i] = uid;
      d.states[i] = st;
      d.lo[i] = words[k + 2]!;
      d.hi[i] = words[k + 3]!;
      last = uid;
    }
    d.used = n;
    d.live = n;
    d.sortedUpTo = n;
    return d;
  }
}

/** True on little-endian machines, whose 32-bit words have the stored byte order. */
const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

/** The little-endian 32-bit words of data (a length divisible by 4), in this machine's order. */
function wordsOf(data: Uint8Array): Uint32Array {
  if (LITTLE_ENDIAN && data.byteOffset % 4 === 0) return new Uint32Array(data.buffer, data.byteOffset, data.byteLength / 4);
  const copy = new Uint8Array(data.byteLength);
  copy.set(data);
  const words = new Uint32Array(copy.buffer);
  if (!LITTLE_ENDIAN) {
    const view = new DataView(copy.buffer);
    for (let k = 0; k < words.length; k++) words[k] = view.getUint32(k * 4, true);
  }
  return words;
}
