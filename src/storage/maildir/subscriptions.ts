// The "subscriptions" file.
// v1 (Dovecot <= 2.2): one name per line, hierarchy joined with the storage separator.
// v2 (Dovecot 2.3 writes it): "V\t2\n\n", then one name per line, components separated by TAB and
// tab-escaped (\x01 -> \x011, TAB -> \x01t, CR -> \x01r, LF -> \x01n). Each component is in the
// on-disk folder name encoding: modified UTF-7 unless the location has UTF-8 (checked against
// Dovecot 2.3.19: "Entwürfe" is written "Entw&APw-rfe").
import * as path from 'node:path';
import { StorageError, type MailboxName } from '../types.js';
import { assertWritable, mkdirp, readFileOrNull, type FsContext, type Warn } from './io.js';
import { withDotLock } from './lock.js';
import { nameKey, normalizeName } from './layout.js';

export const SUBSCRIPTIONS_NAME = 'subscriptions';

export function tabEscape(s: string): string {
  let out = '';
  for (const c of s) {
    switch (c) {
      case '\x01':
        out += '\x011';
        break;
      case '\t':
        out += '\x01t';
        break;
      case '\r':
        out += '\x01r';
        break;
      case '\n':
        out += '\x01n';
        break;
      default:
        out += c;
    }
  }
  return out;
}

export function tabUnescape(s: string): string {
  if (!s.includes('\x01')) return s;
  let out = '';
  for (let i = 0; i < s.length; i++) {
    const c = s[i]!;
    if (c !== '\x01' || i + 1 >= s.length) {
      out += c;
      continue;
    }
    const n = s[++i]!;
    out += n === '1' ? '\x01' : n === 't' ? '\t' : n === 'r' ? '\r' : n === 'n' ? '\n' : n;
  }
  return out;
}

export interface SubscriptionCodec {
  /** Storage hierarchy separator, for v1 files ('.' Maildir++, '/' fs). */
  separator: string;
  /** Disk encoding -> UTF-8 (throws on bad input). */
  decode: (c: string) => string;
  /** UTF-8 -> disk encoding. */
  encode: (c: string) => string;
}

export class UnsupportedSubscriptionsVersion extends Error {}

export function parseSubscriptions(text: string, codec: SubscriptionCodec, warn: Warn, where = SUBSCRIPTIONS_NAME): MailboxName[] {
  const lines = text.split('\n');
  let v2 = false;
  if (lines[0]!.startsWith('V\t')) {
    const version = lines[0]!.slice(2).replace(/\r$/, '');
    if (version !== '2') throw new UnsupportedSubscriptionsVersion(`${where}: unsupported subscriptions file version "${version}"`);
    v2 = true;
    lines.shift();
  }
  const out: MailboxName[] = [];
  const seen = new Set<string>();
  for (const raw of lines) {
    const line = v2 ? raw : raw.replace(/\r$/, '');
    if (line === '') continue;
    const parts = v2 ? line.split('\t').map(tabUnescape) : line.split(codec.separator);
    if (parts.some((p) => p === '')) {
      warn(`${where}: ignoring subscription with an empty hierarchy level: "${line.slice(0, 80)}"`);
      continue;
    }
    let name: MailboxName;
    try {
      name = parts.map((p) => codec.decode(p));
    } catch (e) {
      warn(`${where}: subscription "${line.slice(0, 80)}" is not validly encoded (${(e as Error).message}); kept as is`);
      name = parts;
    }
    name = normalizeName(name);
    const key = nameKey(name);
    if (seen.has(key)) continue;
    seen.add(key);
    out.push(name);
  }
  return out;
}

export function serializeSubscriptions(names: MailboxName[], codec: SubscriptionCodec): string {
  let s = 'V\t2\n\n';
  const seen = new Set<string>();
  for (const n0 of names) {
    const n = normalizeName(n0);
    const key = nameKey(n);
    if (n.length === 0 || seen.has(key)) continue;
    seen.add(key);
    s += n.map((c) => tabEscape(codec.encode(c))).join('\t') + '\n';
  }
  return s;
}

/** Reads a subscriptions file (either version); a missing file means no subscriptions. */
export async function readSubscriptionsFile(file: string, codec: SubscriptionCodec, warn: Warn): Promise<MailboxName[]> {
  const text = await readFileOrNull(file);
  if (text === null) return [];
  try {
    return parseSubscriptions(text, codec, warn, file);
  } catch (e) {
    if (e instanceof UnsupportedSubscriptionsVersion) throw new StorageError(e.message, 'CORRUPT');
    throw e;
  }
}

/** Writes the subscriptions file in Dovecot 2.3's format, atomically under its dotlock. */
export async function writeSubscriptionsFile(ctx: FsContext, file: string, names: MailboxName[], codec: SubscriptionCodec): Promise<void> {
  assertWritable(ctx, 'write subscriptions');
  for (const n of names) {
    if (!Array.isArray(n) || n.length === 0 || n.some((c) => typeof c !== 'string' || c === '')) {
      throw new StorageError(`invalid subscription name ${JSON.stringify(n)}`, 'INVALIDNAME');
    }
  }
  const text = serializeSubscriptions(names, codec);
  await mkdirp(ctx, path.dirname(file));
  await withDotLock(ctx, file, (lock) => lock.replaceTarget(text));
}
