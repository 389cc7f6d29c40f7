// A damaged dovecot-uidlist (garbled lines, a bad header, a truncated last line, the file deleted)
// must never lose mail: files whose UID is lost get new UIDs, the damage is reported with the
// file (and line), and the mirror converges.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseUidlist } from '../../src/storage/maildir/uidlist.js';
import {
  assertContainsOnce,
  assertNoDuplicates,
  assertQuiet,
  assertSame,
  converge,
  deliver,
  dsync,
  mirrorArgs,
  putFile,
  sha,
  snap,
  tempDir,
  syncedOk,
} from './helpers.js';

const GUID = '0123456789abcdef0123456789abcdef';
const re = (s: string) => new RegExp(s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'));

/** Five mails m1..m5 in A's INBOX cur/; returns sha -> 'INBOX'. */
function fiveMails(a: string): Map<string, string> {
  const out = new Map<string, string>();
  for (let i = 1; i <= 5; i++) {
    const body = `Subject: m${i}\n\nbody ${i}\n`;
    putFile(a, 'cur', `170000000${i}.m${i}.robust:2,S`, body);
    out.set(sha(body), 'INBOX');
  }
  return out;
}

function setup(t: Parameters<typeof tempDir>[0]) {
  const root = tempDir(t);
  const a = path.join(root, 'a');
  const b = path.join(root, 'b');
  const expected = fiveMails(a);
  return { a, b, la: `maildir:${a}`, lb: `maildir:${b}`, expected, args: mirrorArgs(`maildir:${a}`, `maildir:${b}`) };
}

async function assertAllThere(la: string, lb: string, expected: Map<string, string>): Promise<void> {
  const s = await assertSame(la, lb);
  assertContainsOnce(s, expected, 'both sides');
  assertNoDuplicates(s, 'both sides');
}

function uidOf(s: Awaited<ReturnType<typeof snap>>, body: string): number | undefined {
  return s.mailboxes.find((m) => m.name === 'INBOX')!.messages.find((m) => m.sha === sha(body))?.uid;
}

test('garbled uidlist lines (first sync): reported by file and line, the mails get new UIDs, nothing lost', { timeout: 30_000 }, async (t) => {
  const { a, la, lb, expected, args } = setup(t);
  fs.writeFileSync(
    path.join(a, 'dovecot-uidlist'),
    `3 V1234 N6 G${GUID}\n1 :1700000001.m1.robust\n2 garbage garbage\nzzz\n3 :1700000003.m3.robust\n4 :1700000004.m4.robust\n5 :1700000005.m5.robust\n`,
  );
  const r = dsync(args);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, re(`warning: ${a}/dovecot-uidlist:3: skipping garbled line "2 garbage garbage"`));
  assert.match(r.stderr, re(`warning: ${a}/dovecot-uidlist:4: skipping garbled line "zzz"`));
  await assertAllThere(la, lb, expected);
  const s = await snap(la);
  assert.equal(s.mailboxes[0]!.uidValidity, 1234, 'the valid header is kept');
  assert.deepEqual([1, 3, 4, 5].map((i) => uidOf(s, `Subject: m${i}\n\nbody ${i}\n`)), [1, 3, 4, 5], 'valid lines keep their UIDs');
  assert.ok(uidOf(s, 'Subject: m2\n\nbody 2\n')! >= 6, 'the mail of the garbled line gets a new UID');
  await assertQuiet(args, la, lb);
});

test('a uidlist line garbled after a sync: the mail moves to a new UID on both sides, nothing lost or doubled', { timeout: 30_000 }, async (t) => {
  const { a, la, lb, expected, args } = setup(t);
  syncedOk(args);
  const ul = path.join(a, 'dovecot-uidlist');
  const lines = fs.readFileSync(ul, 'utf8').split('\n');
  lines[2] = '2 G garbage'; // the line of UID 2
  fs.writeFileSync(ul, lines.join('\n'));
  const runs = converge(args);
  assert.equal(runs.at(-1)!.code, 0, runs.map((r) => r.stderr).join('\n---\n'));
  assert.match(runs[0]!.stderr, /dovecot-uidlist:3: skipping garbled line/);
  await assertAllThere(la, lb, expected);
  await assertQuiet(args, la, lb);
});

test('a uidlist with a bad header (first sync): warning, new UIDVALIDITY, all mail copied', { timeout: 30_000 }, async (t) => {
  const { a, la, lb, expected, args } = setup(t);
  fs.writeFileSync(
    path.join(a, 'dovecot-uidlist'),
    'XX this is not a uidlist header\n1 :1700000001.m1.robust\n2 :1700000002.m2.robust\n3 :1700000003.m3.robust\n',
  );
  const r = dsync(args);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, re(`warning: ${a}/dovecot-uidlist: unsupported or corrupt header "XX this is not a uidlist header"`));
  await assertAllThere(la, lb, expected);
  await assertQuiet(args, la, lb);
});

test('a bad UIDVALIDITY field after a sync: both sides adopt one UIDVALIDITY, nothing lost', { timeout: 30_000 }, async (t) => {
  const { a, la, lb, expected, args } = setup(t);
  syncedOk(args);
  const ul = path.join(a, 'dovecot-uidlist');
  fs.writeFileSync(ul, fs.readFileSync(ul, 'utf8').replace(/^3 V\d+ /, '3 Vbogus '));
  const runs = converge(args);
  assert.equal(runs.at(-1)!.code, 0, runs.map((r) => r.stderr).join('\n---\n'));
  assert.match(runs[0]!.stderr, /dovecot-uidlist: bad UIDVALIDITY field "Vbogus"/);
  await assertAllThere(la, lb, expected);
  await assertQuiet(args, la, lb);
});

test('a truncated uidlist (last line without newline, or cut mid-line) is appended to cleanly', { timeout: 30_000 }, async (t) => {
  for (const tail of ['5 :1700000005.m5.robust', '5 :1700000005.m5.rob']) {
    const { a, la, lb, expected, args } = setup(t);
    const ul = path.join(a, 'dovecot-uidlist');
    fs.writeFileSync(
      ul,
      `3 V1234 N6 G${GUID}\n1 :1700000001.m1.robust\n2 :1700000002.m2.robust\n3 :1700000003.m3.robust\n4 :1700000004.m4.robust\n${tail}`,
    );
    const r = dsync(args);
    assert.equal(r.code, 0, r.stderr);
    // New mail on both sides makes both uidlists grow by appends.
    for (const [side, n] of [[a, 6], [path.dirname(a) + '/b', 7]] as const) {
      const body = `Subject: m${n}\n\nbody ${n}\n`;
      deliver(side, body);
      expected.set(sha(body), 'INBOX');
    }
    const r2 = dsync(args);
    assert.equal(r2.code, 0, r2.stderr);
    await assertAllThere(la, lb, expected);
    const text = fs.readFileSync(ul, 'utf8');
    assert.ok(text.endsWith('\n'), `uidlist must end with a newline:\n${text}`);
    const warnings: string[] = [];
    const parsed = parseUidlist(text, (m) => warnings.push(m));
    assert.deepEqual(warnings, [], `the appended uidlist parses cleanly:\n${text}`);
    const s = await snap(la);
    for (const m of s.mailboxes[0]!.messages) assert.ok(parsed.entries.some((e) => e.uid === m.uid), `UID ${m.uid} listed`);
    await assertQuiet(args, la, lb);
  }
});

// Regression (found by this suite, fixed in tree-plan.ts): when INBOX got a new mailbox GUID on one
// side after a sync (uidlist header lost or the uidlist deleted), the old GUID was tombstoned there,
// the same-name merge was skipped, one INBOX was "moved aside" with a rename and every run died with
// "INBOX cannot be renamed" (exit 75).
test('a uidlist header destroyed after a sync (INBOX gets a new GUID): converges without loss', { timeout: 30_000 }, async (t) => {
  const { a, la, lb, expected, args } = setup(t);
  syncedOk(args);
  const ul = path.join(a, 'dovecot-uidlist');
  fs.writeFileSync(ul, fs.readFileSync(ul, 'utf8').replace(/^[^\n]*/, 'XX junk'));
  const runs = converge(args);
  assert.equal(runs.at(-1)!.code, 0, runs.map((r) => r.stderr).join('\n---\n'));
  await assertAllThere(la, lb, expected);
  await assertQuiet(args, la, lb);
});

test('dovecot-uidlist deleted after a sync (INBOX and a folder): converges without loss', { timeout: 30_000 }, async (t) => {
  const { a, la, lb, expected, args } = setup(t);
  const sub = path.join(a, '.Sub');
  putFile(sub, 'cur', '1700000009.s.robust:2,', 'Subject: s\n\nsub\n');
  fs.writeFileSync(path.join(sub, 'maildirfolder'), '');
  expected.set(sha('Subject: s\n\nsub\n'), 'Sub');
  syncedOk(args);
  fs.rmSync(path.join(a, 'dovecot-uidlist'));
  fs.rmSync(path.join(sub, 'dovecot-uidlist'));
  const runs = converge(args);
  assert.equal(runs.at(-1)!.code, 0, runs.map((r) => r.stderr).join('\n---\n'));
  await assertAllThere(la, lb, expected);
  await assertQuiet(args, la, lb);
});
