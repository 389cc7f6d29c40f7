// Dovecot mail_location strings: "maildir:~/Maildir:INBOX=/var/mail/%u:LAYOUT=fs:UTF-8".
import * as path from 'node:path';

export interface MailLocation {
  format: 'maildir' | 'mbox';
  /** Absolute root directory (mbox: the mail directory). */
  path: string;
  /** INBOX= (absolute). */
  inbox?: string;
  /** INDEX= (absolute); only Dovecot's own index files live there. */
  index?: string;
  /** CONTROL= (absolute); uidlists, keywords, subscriptions, uidvalidity. */
  control?: string;
  layout: 'maildir++' | 'fs';
  /** Folder names on disk are UTF-8 instead of modified UTF-7. */
  utf8: boolean;
  /** Every KEY=value / FLAG of the location after the path (keys upper-cased, flags map to ''). */
  params: Record<string, string>;
}

export interface LocationVars {
  home?: string;
  user?: string;
}

const FORMATS = new Set(['maildir', 'mbox']);
const OTHER_DOVECOT_FORMATS = new Set(['sdbox', 'mdbox', 'dbox', 'imapc', 'pop3c', 'cydir', 'raw', 'shared', 'virtual', 'fail']);
/** Params whose value is a path and gets ~ / %-variable expansion. */
const PATH_PARAMS = new Set(['INBOX', 'INDEX', 'INDEXPVT', 'CONTROL', 'ALT', 'VOLATILEDIR']);

/** Splits on ':' where "::" stands for a literal colon (Dovecot's escape). */
function splitLocation(s: string): string[] {
  const parts: string[] = [];
  let cur = '';
  for (let i = 0; i < s.length; i++) {
    const c = s[i];
    if (c === ':') {
      if (s[i + 1] === ':') {
        cur += ':';
        i++;
      } else {
        parts.push(cur);
        cur = '';
      }
    } else cur += c;
  }
  parts.push(cur);
  return parts;
}

function varValue(name: string, vars: LocationVars, spec: string): string {
  const user = vars.user;
  const need = (v: string | undefined, what: string): string => {
    if (v === undefined || v === '') throw new Error(`mail location "${spec}": %${name} needs the ${what}, which is not known`);
    return v;
  };
  switch (name) {
    case 'u':
    case 'user':
      return need(user, 'user name');
    case 'n':
    case 'username': {
      const u = need(user, 'user name');
      const at = u.indexOf('@');
      return at < 0 ? u : u.slice(0, at);
    }
    case 'd':
    case 'domain': {
      const u = need(user, 'user name');
      const at = u.indexOf('@');
      return at < 0 ? '' : u.slice(at + 1);
    }
    case 'h':
    case 'home':
      return need(vars.home, 'home directory');
    default:
      throw new Error(`mail location "${spec}": unknown variable %${name.length > 1 ? `{${name}}` : name}`);
  }
}

/** Expands %u %n %d %h %% (with optional L/U case modifiers) and %{user} %{username} %{domain} %{home}. */
export function expandVars(s: string, vars: LocationVars, spec = s): string {
  let out = '';
  for (let i = 0; i < s.length; i++) {
    const c = s[i];
    if (c !== '%') {
      out += c;
      continue;
    }
    i++;
    if (i >= s.length) throw new Error(`mail location "${spec}": trailing "%"`);
    if (s[i] === '%') {
      out += '%';
      continue;
    }
    let mod = '';
    while (s[i] === 'L' || s[i] === 'U') {
      mod = s[i]!;
      i++;
    }
    let name: string;
    if (s[i] === '{') {
      const end = s.indexOf('}', i);
      if (end < 0) throw new Error(`mail location "${spec}": unterminated "%{"`);
      name = s.slice(i + 1, end);
      i = end;
    } else {
      name = s[i] ?? '';
      if (!/^[a-zA-Z]$/.test(name)) throw new Error(`mail location "${spec}": bad variable after "%"`);
    }
    let v = varValue(name, vars, spec);
    if (mod === 'L') v = v.toLowerCase();
    else if (mod === 'U') v = v.toUpperCase();
    out += v;
  }
  return out;
}

function expandPath(raw: string, vars: LocationVars, spec: string, what: string): string {
  let p = raw;
  if (p === '~' || p.startsWith('~/')) {
    if (!vars.home) throw new Error(`mail location "${spec}": ${what} starts with "~" but the home directory is not known`);
    p = vars.home + p.slice(1);
  } else if (p.startsWith('~')) {
    throw new Error(`mail location "${spec}": ${what} "${raw}": "~user" paths are not supported`);
  }
  p = expandVars(p, vars, spec);
  if (p === '') throw new Error(`mail location "${spec}": ${what} is empty`);
  if (p.includes('\0')) throw new Error(`mail location "${spec}": ${what} contains a NUL byte`);
  return path.resolve(p);
}

/** Parses a Dovecot mail location string. Throws an Error with a clear message on bad input. */
export function parseMailLocation(spec: string, vars: LocationVars): MailLocation {
  const s = spec.trim();
  if (s === '') throw new Error('mail location is empty');
  const colon = s.indexOf(':');
  const fmt = colon < 0 ? '' : s.slice(0, colon).toLowerCase();
  if (colon < 0 || !/^[a-z0-9]+$/.test(fmt)) {
    throw new Error(`mail location "${spec}" needs a format prefix such as maildir: (e.g. maildir:~/Maildir)`);
  }
  if (!FORMATS.has(fmt)) {
    if (OTHER_DOVECOT_FORMATS.has(fmt)) throw new Error(`mail location "${spec}": format "${fmt}" is not supported (use maildir: or mbox:)`);
    throw new Error(`mail location "${spec}": unknown mail format "${fmt}" (use maildir: or mbox:)`);
  }
  const format = fmt as 'maildir' | 'mbox';
  const parts = splitLocation(s.slice(colon + 1));
  const rawPath = parts[0]!;
  if (rawPath.trim() === '') throw new Error(`mail location "${spec}": the path is empty`);
  const loc: MailLocation = {
    format,
    path: expandPath(rawPath, vars, spec, 'path'),
    layout: format === 'maildir' ? 'maildir++' : 'fs',
    utf8: false,
    params: {},
  };
  for (const part of parts.slice(1)) {
    if (part === '') continue;
    const eq = part.indexOf('=');
    const key = (eq < 0 ? part : part.slice(0, eq)).toUpperCase();
    let value = eq < 0 ? '' : part.slice(eq + 1);
    if (PATH_PARAMS.has(key)) {
      if (value === '') throw new Error(`mail location "${spec}": ${key}= needs a path`);
      value = value === 'MEMORY' && key.startsWith('INDEX') ? value : expandPath(value, vars, spec, key);
    } else if (eq >= 0) {
      value = expandVars(value, vars, spec);
    }
    loc.params[key] = value;
    switch (key) {
      case 'INBOX':
        loc.inbox = value;
        break;
      case 'INDEX':
        loc.index = value;
        break;
      case 'CONTROL':
        loc.control = value;
        break;
      case 'LAYOUT': {
        const l = value.toLowerCase();
        if (l === 'maildir++') loc.layout = 'maildir++';
        else if (l === 'fs') loc.layout = 'fs';
        else throw new Error(`mail location "${spec}": unsupported LAYOUT=${value} (use maildir++ or fs)`);
        break;
      }
      case 'UTF-8':
      case 'UTF8':
        loc.utf8 = true;
        break;
      default:
        break;
    }
  }
  if (loc.format === 'mbox' && loc.layout === 'maildir++') {
    throw new Error(`mail location "${spec}": LAYOUT=maildir++ is not possible with mbox`);
  }
  return loc;
}
