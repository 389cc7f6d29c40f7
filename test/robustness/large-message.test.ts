// One 50 MB message: it is streamed, not buffered. The copy must be byte-identical, and the dsync
// process's peak RSS (measured with /usr/bin/time -v, or a wrapper reading process.resourceUsage)
// must stay well below 150 MB.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createHash } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { DSYNC, assertQuiet, makeMaildir, mirrorArgs, tempDir } from './helpers.js';

const SIZE = 50 * 1024 * 1024;
const RSS_LIMIT_MB = 150;

/** Writes SIZE bytes of varied text (a CRLF line every so often) without holding it in memory. */
function writeBig(p: string): void {
  const fd = fs.openSync(p, 'w');
  try {
    let written = fs.writeSync(fd, 'Subject: a 50 MB message\r\nFrom: big@example.org\r\nContent-Type: text/plain\r\n\r\n');
    const lines: Buffer[] = [];
    for (let i = 0; i < 2000; i++) {
      const eol = i % 7 === 0 ? '\r\n' : '\n';
      lines.push(Buffer.from(`${i.toString(36).padStart(6, '0')} ${'0123456789abcdefghijklmnopqrstuvwxyz'.repeat(2).slice(i % 36, 40 + (i % 30))}${eol}`));
    }
    const chunk = Buffer.concat(lines);
    while (written < SIZE) {
      const n = Math.min(chunk.length, SIZE - written);
      written += fs.writeSync(fd, chunk, 0, n);
    }
  } finally {
    fs.closeSync(fd);
  }
}

async function fileSha(p: string): Promise<string> {
  const h = createHash('sha256');
  for await (const c of fs.createReadStream(p, { highWaterMark: 1 << 20 })) h.update(c as Buffer);
  return h.digest('hex');
}

/** Runs bin/dsync, returning its exit code, stderr and peak RSS in MB. */
function measured(args: string[]): { code: number | null; stderr: string; rssMb: number; ms: number } {
  const t0 = Date.now();
  if (fs.existsSync('/usr/bin/time')) {
    const r = spawnSync('/usr/bin/time', ['-v', DSYNC, ...args], { encoding: 'utf8', timeout: 60_000 });
    const m = /Maximum resident set size \(kbytes\): (\d+)/.exec(r.stderr);
    assert.ok(m, `no RSS figure from /usr/bin/time:\n${r.stderr}`);
    const exit = /Exit status: (\d+)/.exec(r.stderr);
    return { code: exit ? Number(exit[1]) : r.status, stderr: r.stderr, rssMb: Number(m[1]) / 1024, ms: Date.now() - t0 };
  }
  // Fallback: run the CLI in a node child that reports its own peak RSS (resourceUsage maxRSS, kB).
  const main = new URL('../../src/cli/main.js', import.meta.url).href;
  const code = `const { main } = await import(${JSON.stringify(main)});
    const rc = await main(process.argv.slice(1));
    process.stderr.write('PEAK_RSS_KB ' + process.resourceUsage().maxRSS + '\\n');
    process.exit(rc);`;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', code, '--', ...args], { encoding: 'utf8', timeout: 60_000 });
  const m = /PEAK_RSS_KB (\d+)/.exec(r.stderr);
  assert.ok(m, r.stderr);
  return { code: r.status, stderr: r.stderr, rssMb: Number(m[1]) / 1024, ms: Date.now() - t0 };
}

test('a 50 MB message is copied byte-identical with bounded memory', { timeout: 90_000 }, async (t) => {
  const root = tempDir(t);
  const a = path.join(root, 'a');
  const b = path.join(root, 'b');
  makeMaildir(a);
  const name = `1700000000.big.robust,S=${SIZE}`;
  const src = path.join(a, 'new', name);
  writeBig(src);
  assert.equal(fs.statSync(src).size, SIZE);
  const want = await fileSha(src);

  // Baseline: the same process syncing one small mail, for comparison.
  const small = path.join(root, 'small');
  makeMaildir(small);
  fs.writeFileSync(path.join(small, 'new', '1700000000.small.robust'), 'Subject: s\n\nsmall\n');
  const base = measured(mirrorArgs(`maildir:${small}`, `maildir:${path.join(root, 'small2')}`));
  assert.equal(base.code, 0, base.stderr);

  const args = mirrorArgs(`maildir:${a}`, `maildir:${b}`);
  const r = measured(args);
  assert.equal(r.code, 0, r.stderr);
  t.diagnostic(`50 MB mirror: ${r.ms} ms, peak RSS ${r.rssMb.toFixed(1)} MB (baseline one small mail: ${base.rssMb.toFixed(1)} MB)`);
  console.log(`# robustness: 50 MB message mirror took ${r.ms} ms, peak RSS ${r.rssMb.toFixed(1)} MB; baseline ${base.rssMb.toFixed(1)} MB`);
  assert.ok(r.rssMb < RSS_LIMIT_MB, `peak RSS ${r.rssMb.toFixed(1)} MB is above ${RSS_LIMIT_MB} MB: the body is buffered, not streamed`);

  const copies = fs.readdirSync(path.join(b, 'cur'));
  assert.equal(copies.length, 1, copies.join(' '));
  const copy = path.join(b, 'cur', copies[0]!);
  assert.equal(fs.statSync(copy).size, SIZE);
  assert.equal(await fileSha(copy), want, 'the copy differs from the original');
  // The source was moved new/ -> cur/ (as Dovecot would) but not altered.
  const orig = fs.readdirSync(path.join(a, 'cur'));
  assert.equal(orig.length, 1);
  assert.equal(await fileSha(path.join(a, 'cur', orig[0]!)), want);

  await assertQuiet(args, `maildir:${a}`, `maildir:${b}`);
});
