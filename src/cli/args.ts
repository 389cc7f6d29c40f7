// Pure command-line parser for the legacy Dovecot `dsync` syntax (dsync-design.md §1.3, §1.4):
//
//   dsync [options] mirror|sync|backup LOCATION2...
//   dsync [options] server
//
// Options must come before the command word; everything after it is the destination, even words
// that start with '-' (they belong to a remote command line such as `ssh -i key host dsync`).
import { parseArgs as nodeParseArgs } from 'node:util';
import { UsageError } from './errors.js';

export type Command = 'mirror' | 'backup' | 'server';

/**
 * Where the other side lives, classified per dsync-design.md §1.3 (no I/O, no expansion yet).
 */
export type Destination =
  /** A local mail location such as `maildir:/backup/Maildir` (expanded later, with the user's vars). */
  | { kind: 'location'; spec: string }
  /**
   * Run `dsync_remote_cmd` (ssh) on `host`. `user` is the virtual user from `user@host` (becomes
   * `%u`); `login` is the ssh login from `remote:login@host` (becomes `%{login}`). `prefix` is
   * true for `remoteprefix:`, which writes `user\n` to the command's stdin first.
   */
  | { kind: 'ssh'; host: string; user?: string; login?: string; prefix: boolean }
  /** A full command line to run; it must end in `server` (appended later if missing). */
  | { kind: 'command'; argv: string[] }
  /** `tcp:host[:port]` / `tcps:host[:port]`: a doveadm-server connection. */
  | { kind: 'tcp'; host: string; port?: number; tls: boolean };

export interface ParsedArgs {
  command: Command;
  /** -c FILE */
  configFile?: string;
  /** -o key=value, in command-line order (later ones win). */
  overrides: Array<[string, string]>;
  /** -C CHAR: exactly one character. */
  altChar?: string;
  /** -D */
  debug: boolean;
  /** -v */
  verbose: boolean;
  /** -f */
  full: boolean;
  /** -m MAILBOX. '' is passed on (Dovecot reads it as "mailbox list only, no mails"). */
  mailbox?: string;
  /** -R */
  reverse: boolean;
  /** -u USER */
  user?: string;
  /** Absent for `server`. */
  destination?: Destination;
  /** Harmless oddities to show as warnings (e.g. -R with mirror). */
  warnings: string[];
}

export type ParseResult = ParsedArgs | { help: true } | { version: true };

const OPTIONS = {
  c: { type: 'string', short: 'c' },
  o: { type: 'string', short: 'o', multiple: true },
  C: { type: 'string', short: 'C' },
  D: { type: 'boolean', short: 'D' },
  v: { type: 'boolean', short: 'v' },
  f: { type: 'boolean', short: 'f' },
  m: { type: 'string', short: 'm' },
  R: { type: 'boolean', short: 'R' },
  u: { type: 'string', short: 'u' },
  help: { type: 'boolean', short: 'h' },
  version: { type: 'boolean', short: 'V' },
} as const;

const COMMANDS: Record<string, Command> = {
  mirror: 'mirror',
  sync: 'mirror',
  backup: 'backup',
  server: 'server',
};

/** Parses argv (without the node and script paths). Throws UsageError on any mistake. */
export function parseArgs(argv: string[]): ParseResult {
  const split = optionsEnd(argv);
  const optionArgs = argv.slice(0, split.end);
  const rest = argv.slice(split.end + (split.terminator ? 1 : 0));

  let values: {
    c?: string;
    o?: string[];
    C?: string;
    D?: boolean;
    v?: boolean;
    f?: boolean;
    m?: string;
    R?: boolean;
    u?: string;
    help?: boolean;
    version?: boolean;
  };
  try {
    ({ values } = nodeParseArgs({ args: optionArgs, options: OPTIONS, strict: true, allowPositionals: false }));
  } catch (err) {
    throw usageFromNode(err, optionArgs);
  }

  if (values.help) return { help: true };
  if (values.version) return { version: true };

  const [word, ...positionals] = rest;
  if (word === undefined) throw new UsageError('missing command (mirror, backup or server)');
  const command = COMMANDS[word];
  if (command === undefined) {
    if (word.startsWith('-') && !split.terminator) throw new UsageError(`unknown option ${word}`);
    throw new UsageError(`unknown command '${word}' (expected mirror, sync, backup or server)`);
  }

  const warnings: string[] = [];
  const overrides: Array<[string, string]> = [];
  for (const o of values.o ?? []) overrides.push(parseOverride(o));

  if (values.C !== undefined && [...values.C].length !== 1) {
    throw new UsageError(`-C takes exactly one character, got '${values.C}'`);
  }
  if (values.u !== undefined && values.u === '') throw new UsageError('-u needs a user name');
  if (values.c !== undefined && values.c === '') throw new UsageError('-c needs a file name');
  if (values.R && command !== 'backup') {
    warnings.push(`-R has no effect with ${word} (it only reverses the direction of backup)`);
  }

  const parsed: ParsedArgs = {
    command,
    overrides,
    debug: values.D ?? false,
    verbose: values.v ?? false,
    full: values.f ?? false,
    reverse: values.R ?? false,
    warnings,
  };
  if (values.c !== undefined) parsed.configFile = values.c;
  if (values.C !== undefined) parsed.altChar = values.C;
  if (values.m !== undefined) parsed.mailbox = values.m;
  if (values.u !== undefined) parsed.user = values.u;

  if (command === 'server') {
    if (positionals.length > 0) {
      throw new UsageError(`server takes no arguments, got: ${positionals.join(' ')}`);
    }
  } else {
    if (positionals.length === 0) throw new UsageError(`${word} needs a destination (LOCATION2)`);
    parsed.destination = classifyDestination(positionals);
  }
  return parsed;
}

/**
 * Where the options end: the index of the command word, or of a `--` terminator. Node's parser has
 * no "stop at the first positional" mode, so a lenient token pass finds the split first; the strict
 * pass then only sees the options.
 */
function optionsEnd(argv: string[]): { end: number; terminator: boolean } {
  const { tokens } = nodeParseArgs({
    args: argv,
    options: OPTIONS,
    strict: false,
    allowPositionals: true,
    tokens: true,
  });
  for (const t of tokens) {
    if (t.kind === 'positional') return { end: t.index, terminator: false };
    if (t.kind === 'option-terminator') {
      // Node splits a group like -D-v into -D, --, -v: a '-' inside a group is no terminator.
      if (argv[t.index] !== '--') throw new UsageError(`unknown option - in ${argv[t.index]}`);
      return { end: t.index, terminator: true };
    }
  }
  return { end: argv.length, terminator: false };
}

/** Turns node's parse errors into our own wording. */
function usageFromNode(err: unknown, args: string[]): UsageError {
  const code = (err as { code?: string }).code;
  const message = err instanceof Error ? err.message : String(err);
  if (code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION') {
    const m = /Unknown option '([^']+)'/.exec(message);
    return new UsageError(`unknown option ${m?.[1] ?? ''}`.trimEnd());
  }
  if (code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE') {
    // "Option '-c, --c <value>' argument missing" or an ambiguous '-x' value.
    const m = /Option '(-\w)/.exec(message);
    const opt = m?.[1] ?? 'option';
    if (/argument missing/.test(message)) return new UsageError(`${opt} needs a value`);
    if (/does not take an argument/.test(message)) {
      const long = /Option '-\w, (--[\w-]+)'/.exec(message);
      return new UsageError(`${long?.[1] ?? opt} takes no value`);
    }
    const byName = /'(-\w)'/.exec(message);
    return new UsageError(
      `${opt} needs a value; to give one that starts with '-', attach it: ${byName?.[1] ?? opt}VALUE`,
    );
  }
  if (code === 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL') {
    return new UsageError(`unexpected argument in options: ${args.join(' ')}`);
  }
  return new UsageError(message);
}

function parseOverride(o: string): [string, string] {
  const eq = o.indexOf('=');
  if (eq <= 0) throw new UsageError(`-o needs key=value, got '${o}'`);
  const key = o.slice(0, eq).trim();
  if (key === '' || /\s/.test(key)) throw new UsageError(`-o needs key=value, got '${o}'`);
  return [key, o.slice(eq + 1)];
}

/** Characters allowed in a host name (also IPv6 in brackets). */
const HOST_RE = /^(?:[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9_])?|\[[0-9A-Fa-f:.]+\])$/;
/**
 * A user or login that is safe to put on a remote shell's command line: the remote command goes
 * through the remote user's shell, so no whitespace, quotes or shell metacharacters.
 */
const USER_RE = /^[A-Za-z0-9._%+=@:-]+$/;

/**
 * Classifies what follows the command word (dsync-design.md §1.3):
 * 1. several words → a command line;
 * 2. `word:` prefix → a location (`tcp:`, `tcps:`, `remote:`, `remoteprefix:` are remote forms);
 * 3. one word with a space or '/' → a command line split on whitespace;
 * 4. otherwise `[user@]host` → ssh.
 */
export function classifyDestination(words: string[]): Destination {
  if (words.length === 0) throw new UsageError('missing destination');
  if (words.length > 1) return commandDestination(words);

  const arg = words[0]!;
  if (arg === '') throw new UsageError('empty destination');
  const scheme = /^([A-Za-z0-9]+):/.exec(arg);
  if (scheme) {
    const rest = arg.slice(scheme[0].length);
    switch (scheme[1]!.toLowerCase()) {
      case 'tcp':
      case 'tcps':
        return tcpDestination(rest, scheme[1]!.toLowerCase() === 'tcps', arg);
      case 'remote':
      case 'remoteprefix': {
        const { user, host } = splitUserHost(rest, arg);
        const d: Destination = { kind: 'ssh', host, prefix: scheme[1]!.toLowerCase() === 'remoteprefix' };
        if (user !== undefined) d.login = user;
        return d;
      }
      default:
        return { kind: 'location', spec: arg };
    }
  }
  if (/[\s/]/.test(arg)) return commandDestination(arg.trim().split(/\s+/));

  const { user, host } = splitUserHost(arg, arg);
  return user === undefined ? { kind: 'ssh', host, prefix: false } : { kind: 'ssh', host, user, prefix: false };
}

function commandDestination(argv: string[]): Destination {
  const words = argv.filter((w) => w !== '');
  if (words.length === 0) throw new UsageError('empty destination command');
  const first = words[0]!;
  if (first.startsWith('-')) {
    throw new UsageError(`options must come before the command word: ${first}`);
  }
  // A location or user@host is never a program name: the rest is stray (often a late option).
  if (words.length > 1 && (/^[A-Za-z0-9]+:/.test(first) || first.includes('@'))) {
    const stray = words.slice(1).join(' ');
    throw new UsageError(
      `unexpected arguments after ${first}: ${stray}` +
        (stray.startsWith('-') ? ' (options must come before the command word)' : ''),
    );
  }
  return { kind: 'command', argv: words };
}

function splitUserHost(s: string, whole: string): { user?: string; host: string } {
  const at = s.lastIndexOf('@');
  const user = at >= 0 ? s.slice(0, at) : undefined;
  const host = at >= 0 ? s.slice(at + 1) : s;
  if (host.startsWith('-')) throw new UsageError(`options must come before the command word: ${whole}`);
  if (!HOST_RE.test(host)) throw new UsageError(`not a valid host name in destination '${whole}'`);
  if (user !== undefined && (!USER_RE.test(user) || user.startsWith('-'))) {
    throw new UsageError(`not a valid user name in destination '${whole}'`);
  }
  return user === undefined ? { host } : { user, host };
}

function tcpDestination(rest: string, tls: boolean, whole: string): Destination {
  let host = rest;
  let portText: string | undefined;
  const bracket = /^(\[[^\]]+\])(?::(.*))?$/.exec(rest);
  if (bracket) {
    host = bracket[1]!;
    portText = bracket[2];
  } else {
    const colon = rest.lastIndexOf(':');
    if (colon >= 0) {
      host = rest.slice(0, colon);
      portText = rest.slice(colon + 1);
    }
  }
  if (!HOST_RE.test(host)) throw new UsageError(`not a valid host name in destination '${whole}'`);
  const d: Destination = { kind: 'tcp', host, tls };
  if (portText !== undefined) {
    const port = /^\d+$/.test(portText) ? Number(portText) : NaN;
    if (!(port >= 1 && port <= 65535)) throw new UsageError(`not a valid port in destination '${whole}'`);
    d.port = port;
  }
  return d;
}
