// GUIDs of mails a save is placing under file names that are not their GUIDs (the GUID's name
// was taken, or the GUID cannot be a file name). Such a mail's GUID is kept only in its uidlist
// entry, written after the file is in cur/: a save killed in between would leave a file whose GUID
// the next scan could only take from its name, a different mail to every peer (a second copy once
// synced). So the save first appends "name TAB GUID" here, durably, and a scan that finds a file
// the uidlist does not list takes its GUID from here. The file goes once the uidlist lists them;
// a stale line is harmless (generated names are unique), a torn last line is ignored.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { chownIfNeededSync, closeQuietly, fsyncDir, fsyncFd, isNotFound, toStorageError, type FsContext, type Warn } from './io.js';

export const PENDING_GUIDS_NAME = 'dsync-pending-guids';

/** Appends base -> guid to the record at file and makes it durable (GUIDs hold no whitespace). */
export async function appendPendingGuid(ctx: FsContext, file: string, base: string, guid: string): Promise<void> {
  const created = !fs.existsSync(file);
  let fd: number | undefined;
  try {
    fd = fs.openSync(file, 'a', ctx.fileMode);
    if (created) chownIfNeededSync(ctx, file);
    fs.writeSync(fd, `${base}\t${guid}\n`);
    await fsyncFd(fd);
  } catch (e) {
    throw toStorageError(e, 'write', file);
  } finally {
    if (fd !== undefined) closeQuietly(fd);
  }
  if (created) await fsyncDir(path.dirname(file));
}

/** The record's base -> GUID pairs; null when there is none. */
export function readPendingGuids(file: string, warn: Warn): Map<string, string> | null {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    if (!isNotFound(e)) warn(`cannot read ${file}: ${(e as Error).message}`);
    return null;
  }
  const lines = text.split('\n');
  lines.pop(); // '' after the last newline, or a line a killed save did not finish
  const map = new Map<string, string>();
  for (const line of lines) {
    const tab = line.indexOf('\t');
    if (tab > 0 && tab < line.length - 1) map.set(line.slice(0, tab), line.slice(tab + 1));
  }
  return map;
}
