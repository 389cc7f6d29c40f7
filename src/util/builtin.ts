// Built-in modules that are loaded on first use. node:crypto takes ~6 ms to load (it loads all of
// its parts at once), node:child_process ~2.5 ms, node:stream ~1.5 ms, node:v8 ~0.6 ms: together
// more than a run that changes nothing spends on anything else of its own, and such a run needs
// none of them. Loaded with require, not import(): the callers are synchronous (createHash,
// randomBytes, spawn), and bin/dsync runs the bundle as a script (vm.Script, for its code cache).
import { createRequire } from 'node:module';
import type * as Crypto from 'node:crypto';
import type * as ChildProcess from 'node:child_process';
import type * as Stream from 'node:stream';
import type * as V8 from 'node:v8';
import type * as FsPromises from 'node:fs/promises';

// Built-in modules resolve the same from anywhere: any absolute path will do.
const load = createRequire('/');
let crypto: typeof Crypto | undefined;
let childProcess: typeof ChildProcess | undefined;
let stream: typeof Stream | undefined;
let v8: typeof V8 | undefined;
let fsPromises: typeof FsPromises | undefined;

export function createHash(algorithm: string): Crypto.Hash {
  return (crypto ??= load('node:crypto') as typeof Crypto).createHash(algorithm);
}

export function randomBytes(size: number): Buffer {
  return (crypto ??= load('node:crypto') as typeof Crypto).randomBytes(size);
}

export function spawn(command: string, args: readonly string[], options: ChildProcess.SpawnOptions): ChildProcess.ChildProcess {
  return (childProcess ??= load('node:child_process') as typeof ChildProcess).spawn(command, args, options);
}

/** Readable.from of node:stream. */
export function readableFrom(source: Iterable<unknown> | AsyncIterable<unknown>, options?: Stream.ReadableOptions): Stream.Readable {
  return (stream ??= load('node:stream') as typeof Stream).Readable.from(source, options);
}

export function setV8Flags(flags: string): void {
  (v8 ??= load('node:v8') as typeof V8).setFlagsFromString(flags);
}

/**
 * node:fs/promises, loaded when first used: it loads readline, streams and six more modules
 * (~1.7 ms), which a Maildir run that changes nothing does not need. Property reads go through a
 * Proxy, a cost far below that of the calls made through it.
 */
export const fsp: typeof FsPromises = new Proxy({} as typeof FsPromises, {
  get: (_target, name) => (fsPromises ??= load('node:fs/promises') as typeof FsPromises)[name as keyof typeof FsPromises],
});
