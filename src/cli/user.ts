// User lookup for -u: the userdbs of the Dovecot config (passwd-file, static, passwd), or the
// system passwd file when the config names none that this tool supports. Without -u, the user
// running the process.
import { readFileSync } from 'node:fs';
import { userInfo } from 'node:os';
import type { AuthDb, DovecotConfig } from './config.js';
import { osReason } from './config.js';
import { ConfigError, NoSuchUserError } from './errors.js';
import { expandPercentVars, type VarValues } from './vars.js';

export interface UserInfo {
  /** The user name as given (user or user@domain). */
  name: string;
  /** Undefined when the userdb gave none (then mail_uid applies). */
  uid?: number;
  gid?: number;
  home?: string;
  /** Further userdb fields, e.g. `mail` (which overrides mail_location). */
  fields: Record<string, string>;
  /** Where the user was found, for debug logs: "passwd-file /etc/dovecot/users", "/etc/passwd", ... */
  source: string;
}

export interface UserLookupOptions {
  /** System users file; default /etc/passwd. */
  passwdPath?: string;
  /** System groups file; default /etc/group. */
  groupPath?: string;
  /** Called for userdbs that were skipped (unsupported driver), for a debug/warning line. */
  onSkip?: (message: string) => void;
}

const SUPPORTED = new Set(['passwd-file', 'static', 'passwd']);

/**
 * Looks `name` up in the config's userdbs, in order; the first that knows the user wins. When the
 * config has no userdb this tool can read (none at all, or only sql/ldap/...), /etc/passwd is used.
 * Throws NoSuchUserError (exit 67) when the user is not found, ConfigError for unreadable files.
 */
export function lookupUser(name: string, cfg: DovecotConfig, opts: UserLookupOptions = {}): UserInfo {
  const usable = cfg.userdbs.filter((db) => {
    if (SUPPORTED.has(db.driver)) return true;
    opts.onSkip?.(`userdb driver '${db.driver || '(none)'}' at ${db.origin} is not supported; skipped`);
    return false;
  });
  if (usable.length === 0) {
    const u = lookupSystemUser(name, opts.passwdPath);
    if (!u) throw new NoSuchUserError(name);
    return u;
  }
  for (const db of usable) {
    const found = lookupInUserdb(name, db, cfg, opts);
    if (found) return found;
  }
  throw new NoSuchUserError(name);
}

function lookupInUserdb(name: string, db: AuthDb, cfg: DovecotConfig, opts: UserLookupOptions): UserInfo | undefined {
  const vars: VarValues = { user: name };
  const what = `userdb at ${db.origin}`;
  let fields: Record<string, string> | undefined;
  let source: string;

  switch (db.driver) {
    case 'passwd-file': {
      const { options, path } = parseFileArgs(db.args, what);
      const key = expandPercentVars(options.username_format ?? '%u', vars, what);
      const file = expandPercentVars(path, vars, what);
      const entry = findPasswdFileEntry(file, key, path !== file);
      if (!entry) return undefined;
      fields = entry;
      source = `passwd-file ${file}`;
      break;
    }
    case 'static': {
      const args = parseFieldList(db.args);
      const allowAll = args.allow_all_users === 'yes';
      delete args.allow_all_users;
      if (!allowAll && !existsInPasswdFilePassdb(name, cfg)) return undefined;
      fields = args;
      source = 'static userdb';
      break;
    }
    case 'passwd': {
      const u = lookupSystemUser(name, opts.passwdPath);
      if (!u) return undefined;
      fields = {};
      if (u.uid !== undefined) fields.uid = String(u.uid);
      if (u.gid !== undefined) fields.gid = String(u.gid);
      if (u.home !== undefined) fields.home = u.home;
      source = u.source;
      break;
    }
    default:
      return undefined;
  }

  // default_fields fill gaps, override_fields replace; both may use %u/%n/%d (and %h once known).
  const defaults = parseFieldList(db.settings.get('default_fields') ?? '');
  const overrides = parseFieldList(db.settings.get('override_fields') ?? '');
  const merged: Record<string, string> = { ...defaults, ...fields, ...overrides };
  const home = merged.home === undefined ? undefined : expandPercentVars(merged.home, vars, `${what} home`);
  const expanded: Record<string, string> = {};
  for (const [k, v] of Object.entries(merged)) {
    expanded[k] = k === 'home' ? home! : expandPercentVars(v, home === undefined ? vars : { ...vars, home }, `${what} ${k}`);
  }
  const info: UserInfo = { name, fields: {}, source };
  for (const [k, v] of Object.entries(expanded)) {
    if (k === 'uid') {
      if (v !== '') info.uid = resolveUid(v, opts.passwdPath);
    } else if (k === 'gid') {
      if (v !== '') info.gid = resolveGid(v, opts.groupPath);
    } else if (k === 'home') {
      if (v !== '') info.home = v;
    } else info.fields[k] = v;
  }
  return info;
}

/** Splits passwd-file args into leading `key=value` options and the file path. */
function parseFileArgs(args: string, what: string): { options: Record<string, string>; path: string } {
  const words = args.trim().split(/\s+/).filter((w) => w !== '');
  const options: Record<string, string> = {};
  while (words.length > 0 && /^[a-z_]+=/.test(words[0]!)) {
    const w = words.shift()!;
    const eq = w.indexOf('=');
    options[w.slice(0, eq)] = w.slice(eq + 1);
  }
  if (words.length === 0) throw new ConfigError(`${what}: passwd-file args name no file`);
  return { options, path: words.join(' ') };
}

/** `key=value key2=value2` (a field without '=' is a flag set to 'yes'). */
function parseFieldList(s: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const w of s.trim().split(/\s+/)) {
    if (w === '') continue;
    const eq = w.indexOf('=');
    if (eq < 0) out[w] = 'yes';
    else out[w.slice(0, eq)] = w.slice(eq + 1);
  }
  return out;
}

/**
 * Finds `user` in a passwd-file (`user:password:uid:gid:gecos:home:shell:extra fields`; any
 * trailing fields may be missing). Returns the userdb fields, or undefined if the user is absent.
 * A missing file is "no such user" only when its path came from variables (per-domain files).
 */
export function findPasswdFileEntry(
  file: string,
  user: string,
  missingIsEmpty = false,
): Record<string, string> | undefined {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (missingIsEmpty && (code === 'ENOENT' || code === 'ENOTDIR')) return undefined;
    throw new ConfigError(`cannot read passwd-file ${file}: ${osReason(err)}`);
  }
  for (const raw of text.split(/\r?\n/)) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const f = line.split(':');
    if (f[0] !== user) continue;
    const fields: Record<string, string> = {};
    if (f[2]) fields.uid = f[2];
    if (f[3]) fields.gid = f[3];
    if (f[5]) fields.home = f[5];
    // Extra fields may themselves contain ':' (e.g. mail=maildir:~/Maildir).
    const extra = f.slice(7).join(':');
    for (const [k, v] of Object.entries(parseFieldList(extra))) {
      fields[k.startsWith('userdb_') ? k.slice('userdb_'.length) : k] = v;
    }
    return fields;
  }
  return undefined;
}

/** A static userdb without allow_all_users=yes only knows users its passwd-file passdb knows. */
function existsInPasswdFilePassdb(name: string, cfg: DovecotConfig): boolean {
  const files = cfg.passdbs.filter((p) => p.driver === 'passwd-file');
  if (files.length === 0) return true; // nothing to check against: accept, as doveadm would
  return files.some((p) => {
    const what = `passdb at ${p.origin}`;
    const { options, path } = parseFileArgs(p.args, what);
    const vars = { user: name };
    const key = expandPercentVars(options.username_format ?? '%u', vars, what);
    const file = expandPercentVars(path, vars, what);
    return findPasswdFileEntry(file, key, file !== path) !== undefined;
  });
}

interface PasswdLine {
  name: string;
  uid: number;
  gid: number;
  home: string;
}

function readColonFile(path: string, what: string): string[][] {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new ConfigError(`cannot read ${what} ${path}: ${osReason(err)}`);
  }
  return text
    .split(/\r?\n/)
    .filter((l) => l !== '' && !l.startsWith('#'))
    .map((l) => l.split(':'));
}

function systemUsers(passwdPath: string): PasswdLine[] {
  return readColonFile(passwdPath, 'user database').flatMap((f) => {
    const uid = Number(f[2]);
    const gid = Number(f[3]);
    if (f.length < 6 || !Number.isInteger(uid) || !Number.isInteger(gid) || f[2] === '' || f[3] === '') return [];
    return [{ name: f[0]!, uid, gid, home: f[5]! }];
  });
}

/** getpwnam() over the passwd file (no NSS: LDAP/NIS users are not seen). */
export function lookupSystemUser(name: string, passwdPath = '/etc/passwd'): UserInfo | undefined {
  const u = systemUsers(passwdPath).find((p) => p.name === name);
  if (!u) return undefined;
  return { name, uid: u.uid, gid: u.gid, home: u.home, fields: {}, source: passwdPath };
}

/** A uid given as a number or as a system user name. */
export function resolveUid(spec: string, passwdPath = '/etc/passwd'): number {
  if (/^\d+$/.test(spec)) return Number(spec);
  const u = systemUsers(passwdPath).find((p) => p.name === spec);
  if (!u) throw new ConfigError(`unknown system user '${spec}' (used as a uid)`);
  return u.uid;
}

/** A gid given as a number or as a group name. */
export function resolveGid(spec: string, groupPath = '/etc/group'): number {
  if (/^\d+$/.test(spec)) return Number(spec);
  const g = readColonFile(groupPath, 'group database').find((f) => f[0] === spec);
  const gid = g ? Number(g[2]) : NaN;
  if (!g || g[2] === '' || !Number.isInteger(gid)) throw new ConfigError(`unknown group '${spec}' (used as a gid)`);
  return gid;
}

/** The user running this process; home from $HOME when set. */
export function currentUser(env: NodeJS.ProcessEnv = process.env): UserInfo {
  const u = userInfo();
  const home = env.HOME && env.HOME !== '' ? env.HOME : u.homedir;
  const info: UserInfo = { name: u.username, uid: u.uid, gid: u.gid, fields: {}, source: 'process' };
  if (home) info.home = home;
  return info;
}
