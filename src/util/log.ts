// A tiny stderr logger. Lines look like `dsync: error: ...`; a child logger for the remote side
// prints `dsync(remote): ...`. Warnings and errors are counted (shared between a logger and its
// children) so callers can tell whether anything went wrong.

/** Anything with a string write(), e.g. process.stderr or a test collector. */
export interface LogSink {
  write(chunk: string): unknown;
}

export interface LoggerOptions {
  /** Where lines go; default process.stderr. */
  sink?: LogSink;
  /** Show info() lines (-v). */
  verbose?: boolean;
  /** Show debug() lines (-D); info() lines are shown too. */
  debug?: boolean;
  /** Program name at the start of each line; default 'dsync'. */
  name?: string;
}

export interface LogCounts {
  warnings: number;
  errors: number;
}

export class Logger {
  readonly verbose: boolean;
  readonly debugEnabled: boolean;
  private readonly sink: LogSink;
  private readonly prefix: string;
  private readonly counts: LogCounts;

  constructor(opts: LoggerOptions = {}, counts?: LogCounts) {
    this.sink = opts.sink ?? process.stderr;
    this.verbose = opts.verbose ?? false;
    this.debugEnabled = opts.debug ?? false;
    this.prefix = `${opts.name ?? 'dsync'}: `;
    this.counts = counts ?? { warnings: 0, errors: 0 };
  }

  error(msg: string): void {
    this.counts.errors++;
    this.line(`error: ${msg}`);
  }

  warn(msg: string): void {
    this.counts.warnings++;
    this.line(`warning: ${msg}`);
  }

  /** What changed; shown with -v (or -D). */
  info(msg: string): void {
    if (this.verbose || this.debugEnabled) this.line(msg);
  }

  /** Shown with -D only. */
  debug(msg: string): void {
    if (this.debugEnabled) this.line(`debug: ${msg}`);
  }

  /** Number of warnings logged so far (this logger and all its children). */
  get warningCount(): number {
    return this.counts.warnings;
  }

  /** Number of errors logged so far (this logger and all its children). */
  get errorCount(): number {
    return this.counts.errors;
  }

  /** A logger whose lines read `dsync(<tag>): ...`, sharing this one's sink, levels and counters. */
  child(tag: string): Logger {
    const base = this.prefix.slice(0, -2).replace(/\(.*\)$/, '');
    return new Logger(
      { sink: this.sink, verbose: this.verbose, debug: this.debugEnabled, name: `${base}(${tag})` },
      this.counts,
    );
  }

  private line(text: string): void {
    // One write per line, one line per call: embedded newlines would break log parsing.
    this.sink.write(`${this.prefix}${text.replace(/\r?\n/g, ' ')}\n`);
  }
}

/**
 * Milliseconds on a monotonic clock, for timings. process.hrtime, not performance.now(): the
 * `performance` global loads node:perf_hooks and its parts on first use (~1 ms of every run).
 */
export function clockMs(): number {
  const [s, ns] = process.hrtime();
  return s * 1e3 + ns / 1e6;
}

/** Time since t0 (a clockMs()) for -D lines: where a run spends its time, phase by phase. */
export function msSince(t0: number): string {
  return `${(clockMs() - t0).toFixed(1)} ms`;
}
