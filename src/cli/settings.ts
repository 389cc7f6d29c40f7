// Turns config + userdb fields + -o overrides + the command line into what one run needs:
// the expanded local mail location, the alt char, the owner for new files, and the remote side.
import type { Destination, ParsedArgs } from './args.js';
import type { Settings } from './config.js';
import { ConfigError, UsageError } from './errors.js';
import type { UserInfo } from './user.js';
import { resolveGid, resolveUid } from './user.js';
import { expandPercentVars } from './vars.js';
import { parseMailLocation, type LocationVars, type MailLocation } from '../storage/location.js';
import type { RemoteSpec } from '../sync/run.js';
import type { MailFsync } from '../storage/maildir/io.js';

/**
 * Default `dsync_remote_cmd`. Dovecot's is `ssh -l%{login} %{host} doveadm dsync-server -u%u -U`;
 * ours runs this tool's own legacy syntax on the far side. `-l%{login}` disappears when no login
 * was given (`remote:login@host` gives one; `user@host` sets %u, the virtual user, instead).
 */
export const DEFAULT_REMOTE_CMD = 'ssh -l%{login} %{host} dsync -u %u server';

export const DEFAULT_ALT_CHAR = '_';
/** Characters a user name may have to be put on a remote shell command line unquoted. */
const SHELL_SAFE = /^[A-Za-z0-9._%+=@:-]+$/;
export const DEFAULT_MAIL_TEMP_DIR = '/tmp';

export interface RunSettings {
  /** mail_location as configured (before expansion). */
  mailLocation: string;
  /** mail_location parsed and expanded for the user. */
  local: MailLocation;
  /** dsync_alt_char (-C). */
  altChar: string;
  /** mail_uid / mail_gid, resolved to numbers, when set. */
  mailUid?: number;
  mailGid?: number;
  /** mail_temp_dir, expanded (default /tmp). */
  mailTempDir: string;
  /** dsync_remote_cmd (unexpanded). */
  remoteCmd: string;
  /** dsync_hardlinks: a local Maildir -> Maildir run links mail files instead of copying them. */
  hardLinks: boolean;
  /** mail_fsync: optimized (default), always, or never (no fsync of mail: for migrations). */
  mailFsync: MailFsync;
  /** mbox_lock_timeout: how long an mbox waits for another program's lock, when set. */
  mboxLockTimeoutMs?: number;
  /** The variables locations were expanded with. */
  vars: LocationVars;
}

export interface ResolveOptions {
  passwdPath?: string;
  groupPath?: string;
}

/**
 * The settings in force for a run, lowest priority first: the config file (with any
 * `protocol doveadm { }` block already applied), the userdb's `mail` field (replacing
 * mail_location, as in Dovecot), -o overrides in order, and -C.
 */
export function effectiveSettings(
  config: Settings,
  user: UserInfo | undefined,
  args: Pick<ParsedArgs, 'overrides' | 'altChar'>,
): Settings {
  const s = new Map(config);
  const mail = user?.fields.mail;
  if (mail !== undefined && mail !== '') s.set('mail_location', mail);
  for (const [k, v] of args.overrides) s.set(k, v);
  if (args.altChar !== undefined) s.set('dsync_alt_char', args.altChar);
  return s;
}

/** The location variables (%u, %h, ~) for a user. */
export function locationVars(user: UserInfo): LocationVars {
  const vars: LocationVars = { user: user.name };
  if (user.home !== undefined) vars.home = user.home;
  return vars;
}

/** Builds the run settings. Throws ConfigError for a missing/invalid setting. */
export function resolveRunSettings(settings: Settings, user: UserInfo, opts: ResolveOptions = {}): RunSettings {
  const vars = locationVars(user);
  const mailLocation = settings.get('mail_location') ?? '';
  if (mailLocation.trim() === '') {
    throw new ConfigError('mail_location is not set (use -o mail_location=... or -c)');
  }
  let local: MailLocation;
  try {
    local = parseMailLocation(mailLocation, vars);
  } catch (err) {
    throw new ConfigError(`mail_location: ${messageOf(err)}`);
  }

  const altChar = settings.get('dsync_alt_char') ?? DEFAULT_ALT_CHAR;
  if ([...altChar].length !== 1) {
    throw new ConfigError(`dsync_alt_char must be exactly one character, got '${altChar}'`);
  }

  const run: RunSettings = {
    mailLocation,
    local,
    altChar,
    mailTempDir: expandPercentVars(settings.get('mail_temp_dir') || DEFAULT_MAIL_TEMP_DIR, { ...vars }, 'mail_temp_dir'),
    remoteCmd: settings.get('dsync_remote_cmd') || DEFAULT_REMOTE_CMD,
    hardLinks: yesNo(settings.get('dsync_hardlinks'), 'dsync_hardlinks'),
    mailFsync: mailFsyncOf(settings.get('mail_fsync')),
    vars,
  };
  const mboxLockTimeout = settings.get('mbox_lock_timeout');
  if (mboxLockTimeout !== undefined && mboxLockTimeout.trim() !== '') run.mboxLockTimeoutMs = durationMs(mboxLockTimeout, 'mbox_lock_timeout');
  const mailUid = settings.get('mail_uid');
  const mailGid = settings.get('mail_gid');
  if (mailUid) run.mailUid = resolveUid(mailUid, opts.passwdPath);
  if (mailGid) run.mailGid = resolveGid(mailGid, opts.groupPath);
  return run;
}

const MAIL_FSYNC_VALUES: readonly MailFsync[] = ['optimized', 'always', 'never'];

/** mail_fsync; unset or empty = optimized, Dovecot's default. */
function mailFsyncOf(value: string | undefined): MailFsync {
  const v = (value ?? '').trim();
  if (v === '') return 'optimized';
  const found = MAIL_FSYNC_VALUES.find((m) => m === v);
  if (!found) throw new ConfigError(`mail_fsync must be optimized, always or never, got '${v}'`);
  return found;
}

const TIME_UNITS: [RegExp, number][] = [
  [/^(ms|msecs?|milliseconds?)$/, 1],
  [/^(|s|secs?|seconds?)$/, 1000],
  [/^(m|mins?|minutes?)$/, 60_000],
  [/^(h|hours?)$/, 3_600_000],
  [/^(d|days?)$/, 86_400_000],
  [/^(w|weeks?)$/, 604_800_000],
];

/** A Dovecot time setting ("30 secs", "5 mins", "2s"; a bare number is seconds), in ms. */
export function durationMs(value: string, name: string): number {
  const m = /^\s*(\d+)\s*([a-z]*)\s*$/i.exec(value);
  const unit = m && TIME_UNITS.find(([re]) => re.test(m[2]!.toLowerCase()));
  if (!m || !unit) throw new ConfigError(`${name} must be a time such as "30 secs" or "5 mins", got '${value}'`);
  return Number(m[1]) * unit[1];
}

/** A Dovecot boolean setting: yes/no (also true/false, 1/0); unset or empty = no. */
function yesNo(value: string | undefined, name: string): boolean {
  const v = (value ?? '').trim().toLowerCase();
  if (v === '' || v === 'no' || v === 'false' || v === '0') return false;
  if (v === 'yes' || v === 'true' || v === '1') return true;
  throw new ConfigError(`${name} must be yes or no, got '${value}'`);
}

/**
 * The other side for runSync. `user` supplies %u for ssh when the destination has no `user@`.
 * Throws UsageError for destinations this tool cannot reach, ConfigError for a bad remote command.
 */
export function resolveRemote(dest: Destination, run: RunSettings, user: UserInfo): RemoteSpec {
  switch (dest.kind) {
    case 'location': {
      let location: MailLocation;
      try {
        location = parseMailLocation(dest.spec, run.vars);
      } catch (err) {
        throw new UsageError(`destination: ${messageOf(err)}`);
      }
      if (sameDir(location, run.local)) {
        throw new ConfigError(`both locations point to the same directory (${location.path})`);
      }
      return { kind: 'location', location };
    }
    case 'command': {
      const argv = [...dest.argv];
      if (argv[argv.length - 1] !== 'server') argv.push('server');
      return { kind: 'command', argv };
    }
    case 'ssh': {
      if (dest.prefix) throw new UsageError('remoteprefix: destinations are not supported (use [user@]host)');
      const virtualUser = dest.user ?? user.name;
      if (!SHELL_SAFE.test(virtualUser) || virtualUser.startsWith('-')) {
        // The remote command runs through the far side's shell: keep metacharacters out of it.
        throw new UsageError(`user name '${virtualUser}' cannot be passed to a remote command safely`);
      }
      const vars: Record<string, string> = { host: dest.host, login: dest.login ?? '', user: virtualUser };
      return { kind: 'command', argv: buildRemoteCommand(run.remoteCmd, vars) };
    }
    case 'tcp':
      throw new UsageError(
        `${dest.tls ? 'tcps' : 'tcp'}: destinations (doveadm-server) are not supported; use ssh: [user@]host`,
      );
  }
}

/**
 * Expands dsync_remote_cmd into argv: split on whitespace, %-variables expanded per word, and a
 * word whose variables all came out empty is dropped entirely (so `-l%{login}` vanishes without
 * a login, as in Dovecot).
 */
export function buildRemoteCommand(template: string, vars: Record<string, string>): string[] {
  const argv: string[] = [];
  for (const word of template.trim().split(/\s+/)) {
    if (word === '') continue;
    let seen = 0;
    let nonEmpty = 0;
    const out = expandPercentVars(word, vars, 'dsync_remote_cmd', (_name, value) => {
      seen++;
      if (value !== '') nonEmpty++;
    });
    if (seen > 0 && nonEmpty === 0) continue;
    argv.push(out);
  }
  if (argv.length === 0) throw new ConfigError('dsync_remote_cmd is empty');
  return argv;
}

function sameDir(a: MailLocation, b: MailLocation): boolean {
  return a.path === b.path || (a.inbox !== undefined && a.inbox === b.inbox);
}

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
