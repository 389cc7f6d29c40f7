// An independent, read-only Maildir++ reader for the correctness checks: per folder the set of
// (UID, system flags, keywords, body SHA-1), read straight from disk (dovecot-uidlist,
// dovecot-keywords, file names, file bytes). It shares no code with src/, so a bug in our store
// cannot hide itself. It never writes anything.
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';

export interface MsgState {
  /** 0 when the file has no dovecot-uidlist entry. */
  uid: number;
  /** System flag letters, sorted (D F R S T; other upper-case letters kept as they are). */
  flags: string;
  /** Keyword names, sorted; a letter without a dovecot-keywords entry shows as "?<letter>". */
  keywords: string[];
  sha: string;
  /** SHA-1 of the bytes with every CRLF turned into LF (Dovecot saves mail with LF line ends). */
  lfSha: string;
  /** "cur/<file name>" or "new/<file name>" inside the folder directory. */
  rel: string;
}

/** How bodies are compared: byte for byte, or with CRLF and LF line ends treated as equal. */
export type BodyKey = 'sha' | 'lfSha';

export interface FolderState {
  /** Folder directory relative to the root ('' = INBOX). */
  dir: string;
  uidValidity: number;
  messages: MsgState[];
}

export interface TreeState {
  root: string;
  folders: Map<string, FolderState>;
  /** Subscribed names, hierarchy joined with '/', on-disk (mUTF-7) components, sorted. */
  subscriptions: string[];
  bytes: number;
}

function readText(p: string): string | null {
  try {
    return fs.readFileSync(p, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw e;
  }
}

function isDir(p: string): boolean {
  try {
    return fs.statSync(p).isDirectory();
  } catch {
    return false;
  }
}

function parseUidlist(text: string | null): { uidValidity: number; byBase: Map<string, number> } {
  const byBase = new Map<string, number>();
  if (text === null) return { uidValidity: 0, byBase };
  const lines = text.split('\n');
  const header = (lines[0] ?? '').split(' ');
  let uidValidity = 0;
  if (header[0] === '3') {
    for (const t of header.slice(1)) if (t.startsWith('V')) uidValidity = Number(t.slice(1));
  } else if (header[0] === '1') uidValidity = Number(header[1]);
  for (const line of lines.slice(1)) {
    if (line === '') continue;
    const sp = line.indexOf(' ');
    if (sp < 0) continue;
    const uid = Number(line.slice(0, sp));
    if (!Number.isInteger(uid) || uid <= 0) continue;
    const colon = line.indexOf(' :');
    const file = colon >= 0 ? line.slice(colon + 2) : line.slice(sp + 1).trim();
    const base = file.split(':')[0]!;
    byBase.set(base, uid);
  }
  return { uidValidity, byBase };
}

function parseKeywords(text: string | null): Map<string, string> {
  const m = new Map<string, string>();
  if (text === null) return m;
  for (const line of text.split('\n')) {
    const mm = /^(\d+) (.+)$/.exec(line.replace(/\r$/, ''));
    if (mm && Number(mm[1]) < 26) m.set(String.fromCharCode(0x61 + Number(mm[1])), mm[2]!);
  }
  return m;
}

export function parseSubscriptions(text: string | null): string[] {
  if (text === null) return [];
  const lines = text.split('\n');
  const v2 = lines[0]?.startsWith('V\t') ?? false;
  if (v2) lines.shift();
  const out = new Set<string>();
  for (const l of lines) {
    const line = l.replace(/\r$/, '');
    if (line === '') continue;
    out.add((v2 ? line.split('\t') : line.split('.')).join('/'));
  }
  return [...out].sort();
}

function sha1(buf: Buffer): string {
  return createHash('sha1').update(buf).digest('hex');
}

/** The bytes with CRLF -> LF (a copy only when there is a CR at all). */
export function crlfToLf(buf: Buffer): Buffer {
  if (buf.indexOf(0x0d) < 0) return buf;
  const out = Buffer.allocUnsafe(buf.length);
  let n = 0;
  for (let i = 0; i < buf.length; i++) {
    const b = buf[i]!;
    if (b === 0x0d && buf[i + 1] === 0x0a) continue;
    out[n++] = b;
  }
  return out.subarray(0, n);
}

/** Exact and line-end-normalized SHA-1 of a message. */
export function bodyShas(buf: Buffer): { sha: string; lfSha: string } {
  const sha = sha1(buf);
  const lf = crlfToLf(buf);
  return { sha, lfSha: lf === buf ? sha : sha1(lf) };
}

/**
 * Hashes of hard-linked message files by (dev, inode, size, mtime): the benchmark's copies share
 * the inodes of message files with the corpus and the synced pairs (see exec.ts copyTree), so
 * most files of a check were hashed before. Files with one link (written by the run) are always
 * hashed. The benchmark re-hashes the corpus without this cache at the end.
 */
const hashCache = new Map<string, { sha: string; lfSha: string }>();

/** Reads a Maildir++ tree. With hash=false, sha is '' (cheap listing); cache=false ignores the hash cache. */
export function readTree(root: string, o: { hash?: boolean; cache?: boolean } = {}): TreeState {
  const hash = o.hash ?? true;
  const useCache = o.cache ?? true;
  const folders = new Map<string, FolderState>();
  const dirs = [''];
  for (const e of fs.readdirSync(root, { withFileTypes: true })) {
    if (e.isDirectory() && e.name.startsWith('.') && e.name !== '.' && e.name !== '..' && isDir(path.join(root, e.name, 'cur'))) dirs.push(e.name);
  }
  let bytes = 0;
  for (const dir of dirs.sort()) {
    const fdir = path.join(root, dir);
    if (!isDir(path.join(fdir, 'cur'))) continue;
    const ul = parseUidlist(readText(path.join(fdir, 'dovecot-uidlist')));
    const kw = parseKeywords(readText(path.join(fdir, 'dovecot-keywords')));
    const messages: MsgState[] = [];
    for (const sub of ['cur', 'new']) {
      let names: string[];
      try {
        names = fs.readdirSync(path.join(fdir, sub));
      } catch {
        continue;
      }
      for (const name of names) {
        if (name.startsWith('.')) continue;
        const colon = name.indexOf(':');
        const base = colon < 0 ? name : name.slice(0, colon);
        const info = colon < 0 ? '' : name.slice(colon + 1);
        const letters = info.startsWith('2,') ? info.slice(2) : '';
        let flags = '';
        const keywords: string[] = [];
        for (const c of letters) {
          if (c >= 'a' && c <= 'z') keywords.push(kw.get(c) ?? `?${c}`);
          else flags += c;
        }
        const p = path.join(fdir, sub, name);
        let shas = { sha: '', lfSha: '' };
        if (hash) {
          const st = fs.statSync(p, { bigint: true });
          const key = `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}`;
          const hit = useCache && st.nlink > 1n ? hashCache.get(key) : undefined;
          if (hit) shas = hit;
          else {
            shas = bodyShas(fs.readFileSync(p));
            if (st.nlink > 1n) hashCache.set(key, shas);
          }
          bytes += Number(st.size);
        }
        messages.push({ uid: ul.byBase.get(base) ?? 0, flags: [...flags].sort().join(''), keywords: keywords.sort(), ...shas, rel: `${sub}/${name}` });
      }
    }
    messages.sort((a, b) => a.uid - b.uid || (a.sha < b.sha ? -1 : 1));
    folders.set(dir, { dir, uidValidity: ul.uidValidity, messages });
  }
  return { root, folders, subscriptions: parseSubscriptions(readText(path.join(root, 'subscriptions'))), bytes };
}

export function messageCount(t: TreeState): number {
  let n = 0;
  for (const f of t.folders.values()) n += f.messages.length;
  return n;
}

export interface ExpMsg {
  sha: string;
  lfSha: string;
  flags: string;
  keywords: string[];
  /**
   * Other acceptable flag sets (a message whose flags changed differently on both sides may end
   * with either side's flags or their union, as long as both sides agree).
   */
  alt?: string[];
}

/** What a tree must contain, UIDs aside: per folder the messages (body, flags, keywords). */
export interface Expected {
  folders: Map<string, ExpMsg[]>;
  /** When set, the subscriptions must be exactly these ('/'-joined, on-disk components). */
  subscriptions?: string[];
}

export function expectedOf(t: TreeState): Expected {
  const folders = new Map<string, ExpMsg[]>();
  for (const f of t.folders.values()) {
    folders.set(
      f.dir,
      f.messages.map((m) => ({ sha: m.sha, lfSha: m.lfSha, flags: m.flags, keywords: [...m.keywords] })),
    );
  }
  return { folders, subscriptions: [...t.subscriptions] };
}

export function cloneExpected(e: Expected): Expected {
  const folders = new Map<string, ExpMsg[]>();
  for (const [k, list] of e.folders) folders.set(k, list.map((m) => ({ ...m, keywords: [...m.keywords], alt: m.alt ? [...m.alt] : undefined })));
  return { folders, subscriptions: e.subscriptions ? [...e.subscriptions] : undefined };
}

const show = (d: string) => (d === '' ? 'INBOX' : d);
const fmt = (m: { uid?: number; flags: string; keywords: string[]; sha?: string }) =>
  `${m.uid !== undefined ? `uid ${m.uid} ` : ''}flags "${m.flags}" kw [${m.keywords.join(' ')}]${m.sha ? ` sha ${m.sha.slice(0, 10)}` : ''}`;

/** True when no message of the tree has a UID on disk (e.g. a source a tool only read). */
export function hasNoUids(t: TreeState): boolean {
  for (const f of t.folders.values()) for (const m of f.messages) if (m.uid !== 0) return false;
  return true;
}

/**
 * Differences between two trees (folders, subscriptions, per-folder UID/flags/keywords/body).
 * With contentOnlyA, A's UIDs and UIDVALIDITY are not compared (A has none on disk): per
 * folder the (body, flags, keywords) multisets must match, and B must still have UIDs.
 */
export function diffTrees(
  a: TreeState,
  b: TreeState,
  names: [string, string] = ['A', 'B'],
  key: BodyKey = 'sha',
  limit = 20,
  o: { contentOnlyA?: boolean } = {},
): string[] {
  const out: string[] = [];
  const add = (s: string) => {
    if (out.length < limit) out.push(s);
    else if (out.length === limit) out.push('...');
  };
  for (const d of a.folders.keys()) if (!b.folders.has(d)) add(`folder ${show(d)} only in ${names[0]}`);
  for (const d of b.folders.keys()) if (!a.folders.has(d)) add(`folder ${show(d)} only in ${names[1]}`);
  if (a.subscriptions.join('\n') !== b.subscriptions.join('\n')) {
    add(`subscriptions differ: ${names[0]} [${a.subscriptions.join(', ')}] vs ${names[1]} [${b.subscriptions.join(', ')}]`);
  }
  for (const [d, fa] of a.folders) {
    const fb = b.folders.get(d);
    if (!fb) continue;
    if (o.contentOnlyA) {
      const sig = (m: MsgState) => `${m[key]} ${m.flags} ${m.keywords.join(' ')}`;
      const count = new Map<string, number>();
      for (const m of fa.messages) count.set(sig(m), (count.get(sig(m)) ?? 0) + 1);
      for (const m of fb.messages) {
        if (m.uid === 0) add(`${show(d)}: a message in ${names[1]} has no UID in dovecot-uidlist`);
        const c = count.get(sig(m)) ?? 0;
        if (c === 0) add(`${show(d)}: ${fmt(m)} only in ${names[1]}`);
        else count.set(sig(m), c - 1);
      }
      for (const [k, c] of count) if (c > 0) add(`${show(d)}: ${c}× "${k}" only in ${names[0]}`);
      continue;
    }
    for (const [f, n] of [
      [fa, names[0]],
      [fb, names[1]],
    ] as const) {
      const unlisted = f.messages.filter((m) => m.uid === 0).length;
      if (unlisted) add(`${show(d)}: ${unlisted} messages in ${n} have no UID in dovecot-uidlist`);
      const seen = new Set<number>();
      for (const m of f.messages) {
        if (m.uid !== 0 && seen.has(m.uid)) add(`${show(d)}: UID ${m.uid} twice in ${n}`);
        seen.add(m.uid);
      }
    }
    if (fa.uidValidity !== fb.uidValidity) add(`${show(d)}: UIDVALIDITY ${fa.uidValidity} in ${names[0]}, ${fb.uidValidity} in ${names[1]}`);
    const mb = new Map(fb.messages.map((m) => [m.uid, m]));
    for (const m of fa.messages) {
      const o = mb.get(m.uid);
      mb.delete(m.uid);
      if (!o) add(`${show(d)}: ${fmt(m)} only in ${names[0]}`);
      else if (o[key] !== m[key] || o.flags !== m.flags || o.keywords.join(' ') !== m.keywords.join(' ')) {
        add(`${show(d)}: uid ${m.uid} differs: ${names[0]} ${fmt(m)} / ${names[1]} ${fmt(o)}`);
      }
    }
    for (const o of mb.values()) add(`${show(d)}: ${fmt(o)} only in ${names[1]}`);
  }
  return out;
}

/** Differences between a tree and what it should contain (UIDs aside). */
export function diffExpected(t: TreeState, e: Expected, name: string, key: BodyKey = 'sha', limit = 20): string[] {
  const out: string[] = [];
  const add = (s: string) => {
    if (out.length < limit) out.push(s);
    else if (out.length === limit) out.push('...');
  };
  for (const d of e.folders.keys()) if (!t.folders.has(d)) add(`${name}: folder ${show(d)} is missing`);
  for (const d of t.folders.keys()) if (!e.folders.has(d)) add(`${name}: unexpected folder ${show(d)}`);
  if (e.subscriptions && e.subscriptions.join('\n') !== t.subscriptions.join('\n')) {
    add(`${name}: subscriptions [${t.subscriptions.join(', ')}], expected [${e.subscriptions.join(', ')}]`);
  }
  for (const [d, want] of e.folders) {
    const f = t.folders.get(d);
    if (!f) continue;
    const have = new Map<string, MsgState>();
    for (const m of f.messages) {
      if (have.has(m[key])) add(`${name}: ${show(d)}: body ${m[key].slice(0, 10)} is there twice`);
      have.set(m[key], m);
    }
    for (const w of want) {
      const m = have.get(w[key]);
      have.delete(w[key]);
      if (!m) add(`${name}: ${show(d)}: missing message ${fmt(w)}`);
      else if ((m.flags !== w.flags && !w.alt?.includes(m.flags)) || m.keywords.join(' ') !== w.keywords.join(' ')) {
        add(`${name}: ${show(d)}: ${fmt(m)}, expected ${fmt(w)}${w.alt ? ` (or flags ${w.alt.map((x) => `"${x}"`).join(', ')})` : ''}`);
      }
    }
    for (const m of have.values()) add(`${name}: ${show(d)}: unexpected message ${fmt(m)}`);
  }
  return out;
}
