// Runs our mirror between two local locations, in-process, collecting log lines.
import { parseMailLocation } from '../../src/storage/location.js';
import { runSync, type RunSyncResult } from '../../src/sync/run.js';
import { Logger } from '../../src/util/log.js';

export interface MirrorRun extends RunSyncResult {
  log: string[];
}

export async function mirror(
  a: string,
  b: string,
  opts: { full?: boolean; mailbox?: string; backup?: boolean; reverse?: boolean; altChar?: string; hardLinks?: boolean; streamBudget?: number; mailFsync?: 'optimized' | 'always' | 'never'; debug?: boolean; lockTimeout?: number; mboxLockTimeoutMs?: number } = {},
): Promise<MirrorRun> {
  const lines: string[] = [];
  const log = new Logger({ sink: { write: (s: string) => lines.push(s.trimEnd()) }, verbose: true, debug: opts.debug ?? false });
  const res = await runSync({
    mode: opts.backup ? 'backup' : 'mirror',
    reverse: opts.reverse ?? false,
    full: opts.full ?? false,
    mailbox: opts.mailbox,
    altChar: opts.altChar ?? '_',
    local: parseMailLocation(a, {}),
    remote: { kind: 'location', location: parseMailLocation(b, {}) },
    log,
    lockTimeout: opts.lockTimeout ?? 5,
    ...(opts.mboxLockTimeoutMs !== undefined ? { mboxLockTimeoutMs: opts.mboxLockTimeoutMs } : {}),
    ...(opts.hardLinks ? { hardLinks: true } : {}),
    ...(opts.streamBudget !== undefined ? { streamBudget: opts.streamBudget } : {}),
    ...(opts.mailFsync ? { mailFsync: opts.mailFsync } : {}),
  });
  return { ...res, log: lines };
}
