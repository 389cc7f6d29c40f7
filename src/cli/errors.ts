// Error classes of the command-line layer. Each carries the process exit code it maps to
// (sysexits.h numbers, the same ones Dovecot's dsync uses; see dsync-design.md §1.5).

/** Everything synced. */
export const EX_OK = 0;
/** The sync finished, but something changed during the run: run dsync again. */
export const EX_CHANGED = 2;
/** Bad command line. */
export const EX_USAGE = 64;
/** Done, but mailboxes were left out: the other side's format cannot hold them (sysexits EX_DATAERR). */
export const EX_DATAERR = 65;
/** The -u user does not exist. */
export const EX_NOUSER = 67;
/** Default failure: anything without a more specific class (I/O, remote disconnect, ...). */
export const EX_TEMPFAIL = 75;
/** Not allowed (e.g. -u another user without being root). */
export const EX_NOPERM = 77;
/** Bad or unreadable configuration. */
export const EX_CONFIG = 78;

/** Base class: an error the CLI reports as one line and turns into `exitCode`. */
export class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode: number,
  ) {
    super(message);
    this.name = 'CliError';
  }
}

/** Bad command line (exit 64). */
export class UsageError extends CliError {
  constructor(message: string) {
    super(message, EX_USAGE);
    this.name = 'UsageError';
  }
}

/** Bad or unreadable configuration, or a setting missing (exit 78). */
export class ConfigError extends CliError {
  constructor(message: string) {
    super(message, EX_CONFIG);
    this.name = 'ConfigError';
  }
}

/** The user given with -u was not found in any userdb (exit 67). */
export class NoSuchUserError extends CliError {
  constructor(readonly user: string) {
    super(`unknown user ${user}`, EX_NOUSER);
    this.name = 'NoSuchUserError';
  }
}

/** An operation needs privileges the process does not have (exit 77). */
export class PermissionError extends CliError {
  constructor(message: string) {
    super(message, EX_NOPERM);
    this.name = 'PermissionError';
  }
}

/** The exit code for any thrown value: a CliError's own code, otherwise EX_TEMPFAIL. */
export function exitCodeOf(err: unknown): number {
  return err instanceof CliError ? err.exitCode : EX_TEMPFAIL;
}
