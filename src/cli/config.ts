// Reader for Dovecot's configuration syntax (dovecot.conf), the subset dsync needs:
//
//   key = value                 value may be "quoted" or 'quoted' (backslash escapes inside)
//   # comment                   '#' outside quotes starts a comment anywhere on a line
//   key = long \                a trailing backslash joins the next line (with one space)
//     value
//   key = $other_key more       $name (unquoted, at a word start) = an earlier setting; $ENV:NAME
//                               (a name never set stays as written: its value is a built-in default)
//   key = <file                 the value is the file's content (trailing newlines removed);
//                               ssl_* keys keep '<' + the absolute path instead (files for TLS)
//   !include FILE               relative to the including file; globs (conf.d/*.conf), sorted;
//   !include_try FILE           no match is an error for !include, silently fine for !include_try
//   section [name] { ... }      nested; keys are recorded as "section/name/key" ("plugin/key"
//   }                           when unnamed). userdb { } and passdb { } are collected as lists.
//
// Behaviour was checked against doveconf 2.3.19. Unknown setting names are kept, not rejected.
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { ConfigError } from './errors.js';

/** Flat settings: top-level keys as-is, section keys as "type/name/key". */
export type Settings = Map<string, string>;

/** One `userdb { }` or `passdb { }` block. */
export interface AuthDb {
  /** `driver = ...`, e.g. 'passwd-file', 'static', 'passwd'. '' if missing. */
  driver: string;
  /** `args = ...` ('' if missing). */
  args: string;
  /** Every key of the block, including driver and args (default_fields, override_fields, ...). */
  settings: Map<string, string>;
  /** The block's name if it had one (2.4 style `userdb name { }`). */
  name?: string;
  /** Where the block started, for messages: "file:line". */
  origin: string;
}

export interface DovecotConfig {
  settings: Settings;
  userdbs: AuthDb[];
  passdbs: AuthDb[];
  /** Every file read, in order (the main file first). */
  files: string[];
}

/** A config with nothing in it: what dsync uses without -c. */
export function emptyConfig(): DovecotConfig {
  return { settings: new Map(), userdbs: [], passdbs: [], files: [] };
}

export interface LoadConfigOptions {
  /** Environment for $ENV:NAME; default process.env. */
  env?: NodeJS.ProcessEnv;
}

/** Reads a config file with everything it includes. Throws ConfigError. */
export function loadConfigFile(path: string, opts: LoadConfigOptions = {}): DovecotConfig {
  const cfg = emptyConfig();
  const abs = resolve(path);
  const text = readText(abs, 'config file');
  new Parser(cfg, opts.env ?? process.env).parseFile(abs, text, [], 0);
  return cfg;
}

/** Parses config text; `path` is used for messages and to resolve relative includes. */
export function parseConfigText(text: string, path: string, opts: LoadConfigOptions = {}): DovecotConfig {
  const cfg = emptyConfig();
  new Parser(cfg, opts.env ?? process.env).parseFile(resolve(path), text, [], 0);
  return cfg;
}

/**
 * Applies `-o key=value` overrides, in order, on top of a parsed config (mutates and returns it).
 * Values are taken literally: no quotes, $variables or <file.
 */
export function applyOverrides(cfg: DovecotConfig, overrides: Iterable<[string, string]>): DovecotConfig {
  for (const [k, v] of overrides) cfg.settings.set(k, v);
  return cfg;
}

/**
 * The settings dsync runs with: top-level keys, with any `protocol doveadm { }` block applied on
 * top (dsync runs as the doveadm protocol, as Dovecot's does). Call before applying -o overrides.
 */
export function applyProtocolFilter(cfg: DovecotConfig, protocol = 'doveadm'): DovecotConfig {
  const prefix = `protocol/${protocol}/`;
  for (const [k, v] of [...cfg.settings]) {
    if (k.startsWith(prefix)) {
      const key = k.slice(prefix.length);
      if (!key.includes('/')) cfg.settings.set(key, v);
    }
  }
  return cfg;
}

const MAX_INCLUDE_DEPTH = 20;

interface Frame {
  /** Path components of the enclosing sections, e.g. ['namespace', 'inbox']. */
  path: string[];
  /** The userdb/passdb block being filled, if this section is one. */
  db?: AuthDb;
}

class Parser {
  constructor(
    private readonly cfg: DovecotConfig,
    private readonly env: NodeJS.ProcessEnv,
  ) {}

  /** `stack` is the section stack (shared with the includer: includes may sit inside a section). */
  parseFile(file: string, text: string, stack: Frame[], depth: number): void {
    this.cfg.files.push(file);
    const startDepth = stack.length;
    const lines = text.split(/\r?\n/);
    let pending = '';
    let pendingStart = 0;
    for (let i = 0; i < lines.length; i++) {
      let line = lines[i]!;
      if (pending === '') pendingStart = i + 1;
      line = stripComment(line).trim();
      if (line.endsWith('\\')) {
        // Continuation: the backslash becomes a single space before the next line.
        pending += `${line.slice(0, -1).trimEnd()} `;
        continue;
      }
      line = (pending + line).trim();
      pending = '';
      if (line === '') continue;
      this.parseLine(line, `${file} line ${pendingStart}`, file, stack, depth);
    }
    if (pending.trim() !== '') this.parseLine(pending.trim(), `${file} line ${pendingStart}`, file, stack, depth);
    if (stack.length > startDepth) {
      throw new ConfigError(`${file}: missing '}' (section '${stack[stack.length - 1]!.path.join('/')}' not closed)`);
    }
  }

  private parseLine(line: string, where: string, file: string, stack: Frame[], depth: number): void {
    if (line === '}') {
      if (stack.length === 0) throw new ConfigError(`${where}: '}' without an open section`);
      stack.pop();
      return;
    }
    const inc = /^!(include|include_try)\s+(.+)$/.exec(line);
    if (inc) {
      this.include(unquote(inc[2]!.trim()), inc[1] === 'include_try', where, file, stack, depth);
      return;
    }
    const kv = /^([^\s={}"'!]+)\s*=\s*(.*)$/.exec(line);
    if (kv) {
      this.set(kv[1]!, this.value(kv[1]!, kv[2]!, where, file), where, stack);
      return;
    }
    const sec = /^([^\s={}"'!]+)(?:\s+("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|[^\s{}"']+))?\s*\{$/.exec(line);
    if (sec) {
      this.openSection(sec[1]!, sec[2] === undefined ? undefined : unquote(sec[2]), where, stack);
      return;
    }
    throw new ConfigError(`${where}: syntax error (expected 'key = value', 'section {', '}' or '!include')`);
  }

  private set(key: string, value: string, where: string, stack: Frame[]): void {
    const top = stack[stack.length - 1];
    if (top?.db) {
      top.db.settings.set(key, value);
      if (key === 'driver') top.db.driver = value;
      else if (key === 'args') top.db.args = value;
      return;
    }
    if (stack.some((f) => f.db)) {
      throw new ConfigError(`${where}: sections inside userdb/passdb are not supported`);
    }
    const path = top ? [...top.path, key] : [key];
    this.cfg.settings.set(path.join('/'), value);
  }

  private openSection(type: string, name: string | undefined, where: string, stack: Frame[]): void {
    if ((type === 'userdb' || type === 'passdb') && stack.length === 0) {
      const db: AuthDb = { driver: '', args: '', settings: new Map(), origin: where };
      if (name !== undefined) db.name = name;
      (type === 'userdb' ? this.cfg.userdbs : this.cfg.passdbs).push(db);
      stack.push({ path: [type], db });
      return;
    }
    const parent = stack[stack.length - 1];
    const path = [...(parent?.path ?? []), type];
    if (name !== undefined) path.push(name);
    stack.push({ path });
  }

  /** Interprets the right-hand side of `key = value`. */
  private value(key: string, raw: string, where: string, file: string): string {
    const v = raw.trim();
    if (v.length >= 2 && (v[0] === '"' || v[0] === "'") && v.endsWith(v[0])) {
      return unescape(v.slice(1, -1));
    }
    if (v.startsWith('<')) {
      const target = v.slice(1).trim();
      const path = isAbsolute(target) ? target : join(dirname(file), target);
      // ssl_cert = </path etc. name files for the TLS code (as in Dovecot); never load keys here.
      if (key.startsWith('ssl_')) return `<${path}`;
      return readText(path, `file for ${where}`).replace(/[\r\n]+$/, '');
    }
    if (v.includes('$')) return this.expandVariables(v);
    return v;
  }

  /** `$name` at the start of a whitespace-separated word: an earlier setting, or $ENV:NAME. */
  private expandVariables(v: string): string {
    return v
      .split(/(\s+)/)
      .map((word) => {
        if (!word.startsWith('$') || word.length === 1) return word;
        const name = word.slice(1);
        if (name.startsWith('ENV:')) return this.env[name.slice(4)] ?? '';
        const whole = this.cfg.settings.get(name);
        if (whole !== undefined) return whole;
        // Extension over Dovecot (which requires the whole word): `$mail_location:more`.
        const m = /^[A-Za-z0-9_]+/.exec(name);
        const known = m ? this.cfg.settings.get(m[0]) : undefined;
        if (m && known !== undefined) return known + name.slice(m[0].length);
        // A setting never set in the files (it has a built-in default, like $protocols): Dovecot
        // knows every default, we do not. Keep the text as written rather than reject the config.
        return word;
      })
      .join('');
  }

  private include(pattern: string, optional: boolean, where: string, file: string, stack: Frame[], depth: number): void {
    if (depth >= MAX_INCLUDE_DEPTH) throw new ConfigError(`${where}: includes nested too deep (a loop?)`);
    const full = isAbsolute(pattern) ? pattern : join(dirname(file), pattern);
    const matches = hasGlob(full) ? expandGlob(full) : existing(full, optional, where);
    if (matches.length === 0) {
      if (optional) return;
      throw new ConfigError(`${where}: !include ${pattern}: no matching file`);
    }
    for (const m of matches) {
      let text: string;
      try {
        text = readFileSync(m, 'utf8');
      } catch (err) {
        if (optional && isNotFound(err)) continue;
        throw new ConfigError(`${where}: cannot read included file ${m}: ${osReason(err)}`);
      }
      this.parseFile(m, text, stack, depth + 1);
    }
  }
}

/** Removes a `#` comment (outside quotes) from a raw line. */
function stripComment(line: string): string {
  let quote: string | null = null;
  for (let i = 0; i < line.length; i++) {
    const c = line[i]!;
    if (quote) {
      if (c === '\\') i++;
      else if (c === quote) quote = null;
    } else if (c === '"' || c === "'") {
      // Quotes only count at the start of a value or section name, i.e. after '=' or whitespace.
      const prev = line.slice(0, i).trimEnd();
      if (prev === '' || prev.endsWith('=') || /\s$/.test(line.slice(0, i))) quote = c;
    } else if (c === '#') {
      return line.slice(0, i);
    }
  }
  return line;
}

/** Backslash escapes inside quotes: the backslash is dropped, the next character kept. */
function unescape(s: string): string {
  return s.replace(/\\(.)/gs, '$1');
}

function unquote(s: string): string {
  if (s.length >= 2 && (s[0] === '"' || s[0] === "'") && s.endsWith(s[0])) return unescape(s.slice(1, -1));
  return s;
}

function readText(path: string, what: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (err) {
    throw new ConfigError(`cannot read ${what} ${path}: ${osReason(err)}`);
  }
}

function existing(path: string, optional: boolean, where: string): string[] {
  try {
    statSync(path);
    return [path];
  } catch (err) {
    if (isNotFound(err)) return [];
    if (optional) return [];
    throw new ConfigError(`${where}: cannot read included file ${path}: ${osReason(err)}`);
  }
}

function isNotFound(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException).code;
  return code === 'ENOENT' || code === 'ENOTDIR';
}

/** "permission denied (EACCES)" from a Node fs error; the message without node's decoration. */
export function osReason(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  if (e && typeof e.code === 'string') {
    const m = /^[A-Z0-9]+: ([^,]+)/.exec(e.message);
    return `${m ? m[1] : e.message} (${e.code})`;
  }
  return err instanceof Error ? err.message : String(err);
}

function hasGlob(s: string): boolean {
  return /[*?[]/.test(s);
}

/** Expands `*`, `?` and `[...]` in any path component; results sorted, directories skipped. */
export function expandGlob(pattern: string): string[] {
  const abs = resolve(pattern);
  const parts = abs.split('/').filter((p) => p !== '');
  let bases = ['/'];
  for (let i = 0; i < parts.length; i++) {
    const part = parts[i]!;
    const last = i === parts.length - 1;
    const next: string[] = [];
    for (const base of bases) {
      if (!hasGlob(part)) {
        next.push(join(base, part));
        continue;
      }
      const re = globToRegExp(part);
      let names: string[];
      try {
        names = readdirSync(base);
      } catch {
        continue;
      }
      for (const n of names.sort()) {
        if (n.startsWith('.') && !part.startsWith('.')) continue;
        if (re.test(n)) next.push(join(base, n));
      }
    }
    bases = next;
    if (last) break;
  }
  return bases.filter((p) => {
    try {
      return statSync(p).isFile();
    } catch {
      return false;
    }
  });
}

function globToRegExp(part: string): RegExp {
  let re = '^';
  for (let i = 0; i < part.length; i++) {
    const c = part[i]!;
    if (c === '*') re += '[^/]*';
    else if (c === '?') re += '[^/]';
    else if (c === '[') {
      const end = part.indexOf(']', i + 2);
      if (end < 0) {
        re += '\\[';
        continue;
      }
      let body = part.slice(i + 1, end);
      if (body.startsWith('!')) body = `^${body.slice(1)}`;
      re += `[${body.replace(/\\/g, '\\\\')}]`;
      i = end;
    } else re += c.replace(/[.+^${}()|\\]/g, '\\$&');
  }
  return new RegExp(`${re}$`);
}
