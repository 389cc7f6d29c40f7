// Concurrency: two dsyncs on the same locations, mail delivered while a sync runs, and a dsync
// killed mid-run whose lock must not hold up the next one.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  assertContainsOnce,
  assertNoDuplicates,
  assertQuiet,
  assertSame,
  converge,
  deliver,
  dsyncAsync,
  mirrorArgs,
  mirrorInProcess,
  putFile,
  sha,
  tempDir,
  type DsyncResult,
} from './helpers.js';

const LOCKED = /another dsync \(\d+ [^)]*\) is syncing this location; gave up waiting after \d+ s for \S+dsync\.lock/;

/** n small mails in a folder's cur/; returns their digests. */
function fill(dir: string, n: number, tag: string): string[] {
  const out: string[] = [];
  for (let i = 0; i < n; i++) {
    const body = `Subject: ${tag} ${i}\nMessage-ID: <${tag}.${i}@robust>\n\n${'lorem ipsum '.repeat(10)}${i}\n`;
    putFile(dir, 'cur', `1700000000.M${i}P1Q${tag}.robust,S=${Buffer.byteLength(body)}:2,S`, body);
    out.push(sha(body));
  }
  return out;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test('two mirrors started at once on the same locations: the second waits, then runs; no corruption', { timeout: 90_000 }, async (t) => {
  const root = tempDir(t);
  const a = path.join(root, 'a');
  const b = path.join(root, 'b');
  const inA = fill(a, 200, 'a');
  const inB = fill(b, 20, 'b');
  const args = mirrorArgs(`maildir:${a}`, `maildir:${b}`);
  const p1 = dsyncAsync(args);
  const p2 = dsyncAsync(args);
  const [r1, r2] = await Promise.all([p1.done, p2.done]);
  t.diagnostic(`concurrent mirrors: exit ${r1.code} in ${r1.ms} ms, exit ${r2.code} in ${r2.ms} ms`);
  for (const r of [r1, r2]) {
    assert.ok(r.code === 0 || r.code === 2 || (r.code === 75 && LOCKED.test(r.stderr)), `exit ${r.code}:\n${r.stderr}`);
    if (r.code !== 0) assert.match(r.stderr, /run dsync again|another dsync/);
    assert.doesNotMatch(r.stderr, /SQLITE_BUSY|database is locked|EEXIST/, r.stderr);
  }
  assert.ok(r1.code === 0 || r2.code === 0, 'at least one of them completes');
  const runs = converge(args);
  assert.equal(runs.at(-1)!.code, 0, runs.map((r) => r.stderr).join('\n'));
  const s = await assertSame(`maildir:${a}`, `maildir:${b}`);
  assertContainsOnce(s, [...inA, ...inB].map((d) => [d, 'INBOX'] as [string, string]), 'after both runs');
  assert.equal(s.mailboxes[0]!.messages.length, inA.length + inB.length);
  assert.ok(!fs.existsSync(path.join(a, 'dsync.lock')) && !fs.existsSync(path.join(b, 'dsync.lock')), 'locks released');
  await assertQuiet(args, `maildir:${a}`, `maildir:${b}`);
});

// Regression (found by this suite, fixed in run.ts): each run locked its local side first, so
// A->B and B->A each held one lock and waited for the other until one gave up (30 s with the CLI).
// Now the locks are taken in a fixed order: the second run waits for the first and then runs.
test('mirrors in opposite directions at once (A->B and B->A) both complete; no corruption', { timeout: 30_000 }, async (t) => {
  const root = tempDir(t);
  const a = path.join(root, 'a');
  const b = path.join(root, 'b');
  const inA = fill(a, 20, 'a');
  const inB = fill(b, 20, 'b');
  const results = await Promise.allSettled([mirrorInProcess(a, b, 5), mirrorInProcess(b, a, 5)]);
  t.diagnostic(`opposite directions: ${results.map((r) => (r.status === 'fulfilled' ? `exit ${r.value.exitCode}` : `failed: ${(r.reason as Error).message}`)).join('; ')}`);
  assert.deepEqual(results.map((r) => r.status), ['fulfilled', 'fulfilled'], results.map((r) => (r.status === 'rejected' ? (r.reason as Error).message : 'ok')).join(' | '));
  const args = mirrorArgs(`maildir:${a}`, `maildir:${b}`);
  const runs = converge(args);
  assert.equal(runs.at(-1)!.code, 0, runs.map((r) => r.stderr).join('\n'));
  const s = await assertSame(`maildir:${a}`, `maildir:${b}`);
  assertContainsOnce(s, [...inA, ...inB].map((d) => [d, 'INBOX'] as [string, string]), 'after both runs');
});

test('mail delivered into new/ on both sides during a large mirror is never lost nor doubled', { timeout: 90_000 }, async (t) => {
  const root = tempDir(t);
  const a = path.join(root, 'a');
  const b = path.join(root, 'b');
  const expected: [string, string][] = [];
  for (const d of fill(a, 1500, 'a')) expected.push([d, 'INBOX']);
  for (const d of fill(path.join(a, '.Sub'), 300, 'asub')) expected.push([d, 'Sub']);
  for (const d of fill(b, 20, 'b')) expected.push([d, 'INBOX']);
  for (const d of fill(path.join(b, '.Sub'), 5, 'bsub')) expected.push([d, 'Sub']);
  const args = mirrorArgs(`maildir:${a}`, `maildir:${b}`);

  const targets: [string, string][] = [
    [a, 'INBOX'],
    [b, 'INBOX'],
    [path.join(a, '.Sub'), 'Sub'],
    [path.join(b, '.Sub'), 'Sub'],
  ];
  let n = 0;
  const first = dsyncAsync(args);
  let running = true;
  const delivering = (async () => {
    // Continuously while the first run lasts (capped, so that a slow machine does not pile up work).
    while (running && n < 300) {
      const [dir, mailbox] = targets[n % targets.length]!;
      const body = `Subject: during ${n}\nMessage-ID: <during.${n}@robust>\n\ndelivered while dsync ran\n`;
      deliver(dir, body, `live${n}`);
      expected.push([sha(body), mailbox]);
      n++;
      await sleep(20);
    }
  })();
  const r1: DsyncResult = await first.done;
  running = false;
  await delivering;
  t.diagnostic(`first run: exit ${r1.code} in ${r1.ms} ms with ${n} mails delivered meanwhile`);
  assert.ok(r1.code === 0 || r1.code === 2, r1.stderr);
  assert.ok(n >= 10, `only ${n} deliveries happened during the run; the run was too short to test anything`);

  const runs = converge(args, 2);
  assert.equal(runs.at(-1)!.code, 0, `not converged after 2 more runs:\n${runs.map((r) => r.stderr).join('\n---\n')}`);
  const s = await assertSame(`maildir:${a}`, `maildir:${b}`);
  assertContainsOnce(s, expected, 'both sides');
  assertNoDuplicates(s, 'both sides');
  const total = s.mailboxes.reduce((k, m) => k + m.messages.length, 0);
  assert.equal(total, expected.length, 'no mail besides the delivered ones');
  await assertQuiet(args, `maildir:${a}`, `maildir:${b}`);
});

test("a dsync started right after another was killed does not wait for the dead one's lock", { timeout: 90_000 }, async (t) => {
  const root = tempDir(t);
  const a = path.join(root, 'a');
  const b = path.join(root, 'b');
  const inA = fill(a, 250, 'a');
  const args = mirrorArgs(`maildir:${a}`, `maildir:${b}`);
  const lock = path.join(a, 'dsync.lock');

  const victim = dsyncAsync(args);
  // Kill it once it holds the lock and has started copying into B.
  const deadline = Date.now() + 20_000;
  let holder = '';
  while (Date.now() < deadline) {
    const copying = fs.existsSync(path.join(b, 'cur')) && fs.readdirSync(path.join(b, 'cur')).length > 0;
    // Read in the same step as the check: the victim may finish (and drop its lock) in between.
    holder = copying ? readIfExists(lock) : '';
    if (holder !== '') break;
    await sleep(10);
  }
  assert.match(holder, new RegExp(`^${victim.child.pid} `), 'the victim holds the lock');
  victim.child.kill('SIGKILL');
  const dead = await victim.done;
  assert.equal(dead.signal, 'SIGKILL');
  assert.ok(fs.existsSync(lock), 'the dead process left its lock behind');

  const t0 = Date.now();
  const next = dsyncAsync([...args.slice(0, -2), '-D', ...args.slice(-2)]);
  // The new process takes the lock over at once (lock timeout is 30 s).
  let tookOver = -1;
  while (Date.now() - t0 < 10_000) {
    const content = fs.existsSync(lock) ? fs.readFileSync(lock, 'utf8') : '';
    if (content.startsWith(`${next.child.pid} `)) {
      tookOver = Date.now() - t0;
      break;
    }
    if (next.child.exitCode !== null) break;
    await sleep(5);
  }
  const r = await next.done;
  t.diagnostic(`after SIGKILL: the next dsync took the lock after ${tookOver} ms, finished in ${r.ms} ms, exit ${r.code}`);
  assert.ok(r.code === 0 || r.code === 2, r.stderr);
  assert.doesNotMatch(r.stderr, /another dsync|timed out waiting/, r.stderr);
  assert.ok(tookOver >= 0 || r.ms < 5_000, `the lock was not taken over within 10 s (finished after ${r.ms} ms)`);
  assert.ok(tookOver < 5_000, `took ${tookOver} ms to take over the dead process's lock`);

  const runs = converge(args);
  assert.equal(runs.at(-1)!.code, 0, runs.map((x) => x.stderr).join('\n'));
  const s = await assertSame(`maildir:${a}`, `maildir:${b}`);
  assertContainsOnce(s, inA.map((d) => [d, 'INBOX'] as [string, string]), 'after the kill');
});

function readIfExists(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch {
    return '';
  }
}
