// The dsync command: parse the command line, load settings, find the user, drop privileges,
// run the engine, and turn the outcome into an exit code. This function never exits the process;
// bin/dsync does, with the code returned here.
import { parseArgs, type ParsedArgs } from './args.js';
import { applyOverrides, applyProtocolFilter, emptyConfig, loadConfigFile, type DovecotConfig } from './config.js';
import { CliError, ConfigError, EX_CHANGED, EX_DATAERR, EX_OK, EX_TEMPFAIL, PermissionError, UsageError } from './errors.js';
import { helpText } from './help.js';
import { effectiveSettings, resolveRemote, resolveRunSettings, type RunSettings } from './settings.js';
import { currentUser, lookupUser, type UserInfo } from './user.js';
import { Logger, type LogSink } from '../util/log.js';
import { VERSION } from '../version.js';
// Types only: the engine (storage, SQLite, transports) is imported when a sync actually runs, so
// --help, usage and config errors neither wait for it nor depend on it loading.
import type * as engine from '../sync/run.js';

type Owner = { uid: number; gid: number };

export interface MainIO {
  /** Help/version text; in `server` mode the protocol stream (must then be a real stream). */
  stdout?: LogSink | NodeJS.WritableStream;
  /** Log lines. */
  stderr?: LogSink | NodeJS.WritableStream;
  /** `server` mode protocol input; default process.stdin. */
  stdin?: NodeJS.ReadableStream;
  /** Environment (HOME for the current user); default process.env. */
  env?: NodeJS.ProcessEnv;
  /** Replacements for the engine entry points (tests). */
  engine?: { runSync?: typeof engine.runSync; runServer?: typeof engine.runServer };
  /** System users/groups files; default /etc/passwd, /etc/group (tests). */
  passwdPath?: string;
  groupPath?: string;
  /** Effective uid of this process; default process.getuid() (tests). */
  getuid?: () => number;
  /** Switches the process to uid/gid; default setgroups + setgid + setuid (tests). */
  switchUser?: (uid: number, gid: number) => void;
}

/** Runs dsync with `argv` (without node and script path) and returns the exit code. */
export async function main(argv: string[], io: MainIO = {}): Promise<number> {
  // Node makes process.stdout/stderr on first use, which for a pipe loads its network stream
  // code (~4 ms): a run that prints nothing does not pay for it.
  const stdout = (): LogSink | NodeJS.WritableStream => io.stdout ?? process.stdout;
  const stderr: LogSink = { write: (chunk: string) => (io.stderr ?? process.stderr).write(chunk) };
  let log = new Logger({ sink: stderr });

  try {
    const parsed = parseArgs(argv);
    if ('help' in parsed) {
      stdout().write(helpText());
      return EX_OK;
    }
    if ('version' in parsed) {
      stdout().write(`dsync ${VERSION}\n`);
      return EX_OK;
    }
    log = new Logger({ sink: stderr, verbose: parsed.verbose, debug: parsed.debug });
    for (const w of parsed.warnings) log.warn(w);
    return await run(parsed, io, log, stdout);
  } catch (err) {
    return reportError(err, log, stderr);
  }
}

async function run(args: ParsedArgs, io: MainIO, log: Logger, stdout: () => LogSink | NodeJS.WritableStream): Promise<number> {
  // 1. Settings: the -c file (nothing without -c), its protocol doveadm { } block, then -o.
  let cfg: DovecotConfig = emptyConfig();
  if (args.configFile !== undefined) {
    cfg = loadConfigFile(args.configFile, { env: io.env ?? process.env });
    applyProtocolFilter(cfg);
    log.debug(`config: read ${cfg.files.join(', ')}`);
  }
  applyOverrides(cfg, args.overrides);

  // 2. The user.
  const lookupOpts = {
    ...(io.passwdPath !== undefined ? { passwdPath: io.passwdPath } : {}),
    ...(io.groupPath !== undefined ? { groupPath: io.groupPath } : {}),
  };
  let user: UserInfo;
  if (args.user !== undefined) {
    user = lookupUser(args.user, cfg, { ...lookupOpts, onSkip: (m) => log.debug(m) });
  } else {
    user = currentUser(io.env ?? process.env);
  }
  log.debug(
    `user ${user.name}: uid=${user.uid ?? '-'} gid=${user.gid ?? '-'} home=${user.home ?? '-'} (from ${user.source})`,
  );

  const settings = effectiveSettings(cfg.settings, user, args);
  const rs = resolveRunSettings(settings, user, lookupOpts);
  log.debug(`mail_location ${rs.mailLocation} -> ${rs.local.format}:${rs.local.path}`);

  // 3. The other side (resolved before dropping privileges: it only parses, touches no mail).
  const remote = args.destination ? resolveRemote(args.destination, rs, user) : undefined;
  if (remote?.kind === 'command') log.debug(`remote command: ${remote.argv.join(' ')}`);
  if (remote?.kind === 'location') log.debug(`destination: ${remote.location.format}:${remote.location.path}`);

  // 4. The engine's code, loaded while still privileged (the user may not be able to read it).
  const { runSync, runServer } = await loadEngine(io, args.command);

  // 5. Whose files: switch to the -u user (as root), or hand the engine an owner.
  const owner = settleIdentity(args, user, rs, io, log);

  if (args.command === 'server') {
    const output = stdout();
    if (!isWritableStream(output)) throw new Error('server mode needs stdout to be a stream');
    const o: Parameters<typeof engine.runServer>[0] = {
      local: rs.local,
      log,
      input: io.stdin ?? process.stdin,
      output,
      tempDir: rs.mailTempDir,
      mailFsync: rs.mailFsync,
    };
    if (rs.mboxLockTimeoutMs !== undefined) o.mboxLockTimeoutMs = rs.mboxLockTimeoutMs;
    if (owner) o.owner = owner;
    try {
      return await runServer(o);
    } catch (err) {
      // The dsync that started us stopped on an error of its own, which it reports: saying it
      // here too would print it twice on the same terminal.
      if (err instanceof Error && err.name === 'PeerAbortError') {
        log.debug(err.message);
        return EX_TEMPFAIL;
      }
      throw err;
    }
  }

  if (!remote) throw new Error(`internal error: ${args.command} without a destination`);
  const o: engine.RunSyncOptions = {
    mode: args.command,
    reverse: args.reverse,
    full: args.full,
    altChar: rs.altChar,
    local: rs.local,
    remote,
    log,
    tempDir: rs.mailTempDir,
    mailFsync: rs.mailFsync,
  };
  if (args.mailbox !== undefined) o.mailbox = args.mailbox;
  if (rs.mboxLockTimeoutMs !== undefined) o.mboxLockTimeoutMs = rs.mboxLockTimeoutMs;
  if (owner) o.owner = owner;
  if (rs.hardLinks) {
    if (remote.kind === 'location') o.hardLinks = true;
    else log.warn('dsync_hardlinks applies to local runs only: mail is copied to the remote side');
  }
  const result = await runSync(o);
  for (const line of result.summary) log.info(line);
  if (result.exitCode === EX_CHANGED) {
    log.warn('mailbox changes caused a desync, run dsync again');
  } else if (result.exitCode === EX_DATAERR) {
    log.warn('some mailboxes could not be synced because the other side cannot hold them (see the warnings above); the rest is synced');
  }
  return result.exitCode;
}

type EngineFns = Pick<typeof engine, 'runSync' | 'runServer'>;

/** The engine entry points: the injected ones (tests), else the real module, imported now. */
async function loadEngine(io: MainIO, command: ParsedArgs['command']): Promise<EngineFns> {
  const inj = io.engine ?? {};
  if (command === 'server' ? inj.runServer : inj.runSync) {
    const missing = (): Promise<never> => Promise.reject(new Error('engine entry point not provided'));
    return { runSync: inj.runSync ?? missing, runServer: inj.runServer ?? missing };
  }
  const real = await import('../sync/run.js');
  return { runSync: inj.runSync ?? real.runSync, runServer: inj.runServer ?? real.runServer };
}

/**
 * Decides whose identity the mail is touched with.
 * - `-u` as root: switch the process to mail_uid/mail_gid if set, else the user's uid/gid
 *   (nothing to do when that is root itself); no owner is passed on.
 * - `-u` not as root: fine if it is our own uid, otherwise a PermissionError (exit 77).
 * - no `-u`, as root, mail_uid set: the engine gets it as the owner of what it creates.
 */
function settleIdentity(args: ParsedArgs, user: UserInfo, rs: RunSettings, io: MainIO, log: Logger): Owner | undefined {
  const euid = io.getuid ? io.getuid() : process.getuid ? process.getuid() : -1;
  if (args.user !== undefined) {
    const uid = rs.mailUid ?? user.uid;
    const gid = rs.mailGid ?? user.gid;
    if (uid === undefined) throw new ConfigError(`user ${user.name} has no uid (set mail_uid)`);
    if (gid === undefined) throw new ConfigError(`user ${user.name} has no gid (set mail_gid)`);
    if (euid === 0) {
      if (uid !== 0) {
        log.debug(`switching to uid ${uid} gid ${gid}`);
        (io.switchUser ?? switchProcessUser)(uid, gid);
      }
      return undefined;
    }
    if (uid !== euid) {
      throw new PermissionError(`-u ${user.name} needs uid ${uid}, but dsync runs as uid ${euid} (not root)`);
    }
    return undefined;
  }
  if (euid === 0 && rs.mailUid !== undefined) {
    return { uid: rs.mailUid, gid: rs.mailGid ?? user.gid ?? 0 };
  }
  return undefined;
}

/** Drops root for good: supplementary groups, then gid, then uid (the order matters). */
function switchProcessUser(uid: number, gid: number): void {
  try {
    process.setgroups?.([gid]);
    process.setgid?.(gid);
    process.setuid?.(uid);
  } catch (err) {
    throw new PermissionError(`cannot switch to uid ${uid} gid ${gid}: ${err instanceof Error ? err.message : String(err)}`);
  }
  if (process.getuid?.() !== uid) throw new PermissionError(`cannot switch to uid ${uid}`);
}

function reportError(err: unknown, log: Logger, stderr: LogSink): number {
  const message = err instanceof Error ? err.message : String(err);
  log.error(message);
  if (err instanceof Error && err.stack && !(err instanceof CliError)) {
    for (const line of err.stack.split('\n').slice(1)) log.debug(line.trim());
  }
  if (err instanceof UsageError) stderr.write("Try 'dsync --help' for more information.\n");
  return err instanceof CliError ? err.exitCode : EX_TEMPFAIL;
}

function isWritableStream(s: LogSink | NodeJS.WritableStream): s is NodeJS.WritableStream {
  return typeof (s as NodeJS.WritableStream).on === 'function' && typeof (s as NodeJS.WritableStream).end === 'function';
}
