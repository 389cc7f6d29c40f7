#!/usr/bin/env node
// Bundles the compiled command (dist/src) into one CommonJS file, dist/dsync.cjs, plus a V8 code
// cache of it, dist/dsync.cjs.cache; bin/dsync loads the bundle with the cache when both are at
// least as new as the compiled modules. Measured on a no-change run of the 10k benchmark corpus
// (15 runs each): the ~50 ES modules 161 ms, one ES module 140 ms (module resolution and
// loading), one CommonJS file 133 ms (importing a built-in module from ESM loads all of its lazy
// parts: all of crypto for one hash), with the code cache 125 ms (no compiling).
// Run after `tsc` (npm run build does both). better-sqlite3's JavaScript is bundled; its native
// addon stays in node_modules (see below).
import { build } from 'esbuild';
import { fileURLToPath } from 'node:url';
import { spawnSync } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';
import * as path from 'node:path';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const bundle = path.join(root, 'dist', 'dsync.cjs');
await build({
  entryPoints: [path.join(root, 'dist', 'src', 'cli', 'main.js')],
  outfile: bundle,
  bundle: true,
  platform: 'node',
  format: 'cjs',
  target: 'node20',
  // better-sqlite3's JavaScript is bundled (so it is in the code cache too); its native addon is
  // loaded by path (src/index/change-index.ts), so the \`bindings\` package it would use is never called.
  external: ['bindings'],
  // The bundle is CommonJS: import.meta.url (used to find the addon) becomes the bundle's path,
  // which bin/dsync passes in as __filename; createRequire takes a path as well as a URL.
  define: { 'import.meta.url': '__filename' },
  logLevel: 'warning',
});

// V8 accepts a code cache only from a process with the same V8 flags: the cache is made by a
// Node started with the flags of bin/dsync's #! line. Every function is compiled up front
// (--no-lazy) so that the cache holds them all, then the flag is set back, as V8 checks it too.
const shebang = readFileSync(path.join(root, 'bin', 'dsync'), 'utf8').split('\n', 1)[0];
const words = shebang.split(/\s+/);
const nodeFlags = words.slice(words.indexOf('node') + 1);
const makeCache = `
const fs = require('node:fs'), vm = require('node:vm'), v8 = require('node:v8'), { wrap } = require('node:module');
const [bundle, cache] = process.argv.slice(1);
v8.setFlagsFromString('--no-lazy');
const script = new vm.Script(wrap(fs.readFileSync(bundle, 'utf8')), { filename: bundle });
v8.setFlagsFromString('--lazy');
fs.writeFileSync(cache, script.createCachedData());
`;
rmSync(path.join(root, 'dist', 'dsync.mjs'), { force: true }); // the ES module bundle of earlier builds
const r = spawnSync(process.execPath, [...nodeFlags, '-e', makeCache, bundle, `${bundle}.cache`], { stdio: 'inherit' });
if (r.status !== 0) throw new Error(`making the code cache failed (exit ${r.status})`);
