// Mailbox names one side cannot store: a '.' inside a LAYOUT=fs folder name (Maildir++ uses '.'
// as its separator) is replaced with the -C alt char and reported; names with invalid modified
// UTF-7 on disk are reported by directory and left alone; very long names.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  assertContainsOnce,
  assertNoDuplicates,
  assertQuiet,
  dsync,
  deliver,
  mirrorArgs,
  putFile,
  sha,
  snap,
  tempDir,
} from './helpers.js';

const mail = (s: string) => `Subject: ${s}\n\n${s}\n`;

for (const alt of ['_', '+']) {
  test(`a LAYOUT=fs folder name with '.' is called "v1${alt}2" on the Maildir++ side (-C ${alt}) and syncs both ways`, { timeout: 30_000 }, async (t) => {
    const root = tempDir(t);
    const a = path.join(root, 'a');
    const b = path.join(root, 'b');
    putFile(path.join(a, 'v1.2'), 'cur', '1700000001.x.robust:2,S', mail('in v1.2'));
    putFile(path.join(a, 'Lists', 'dev.team'), 'cur', '1700000002.y.robust:2,', mail('in Lists/dev.team'));
    putFile(a, 'cur', '1700000003.z.robust:2,', mail('inbox'));
    const la = `maildir:${a}:LAYOUT=fs`;
    const lb = `maildir:${b}`;
    const args = mirrorArgs(la, lb, alt === '_' ? [] : ['-C', alt]);
    const r = dsync(args);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, new RegExp(`warning: mailbox name v1\\.2 cannot exist on the other side; it is called v1\\${alt}2 there`));
    assert.match(r.stderr, new RegExp(`warning: mailbox name Lists/dev\\.team cannot exist on the other side; it is called Lists/dev\\${alt}team there`));
    assert.ok(fs.existsSync(path.join(b, `.v1${alt}2`, 'cur')), fs.readdirSync(b).join(' '));
    assert.ok(fs.existsSync(path.join(b, `.Lists.dev${alt}team`, 'cur')));

    // New mail in the mapped folders on B comes back into the original folders on A.
    deliver(path.join(b, `.v1${alt}2`), mail('new on B in v1.2'));
    deliver(path.join(b, `.Lists.dev${alt}team`), mail('new on B in dev.team'));
    const r2 = dsync(args);
    assert.equal(r2.code, 0, r2.stderr);
    const sa = await snap(la);
    const sb = await snap(lb);
    assert.deepEqual(sa.mailboxes.map((m) => m.name), ['INBOX', 'Lists/dev.team', 'v1.2']);
    assert.deepEqual(sb.mailboxes.map((m) => m.name), sa.mailboxes.map((m) => m.name.replace('.', alt)));
    const expectA: [string, string][] = [
      [sha(mail('in v1.2')), 'v1.2'],
      [sha(mail('new on B in v1.2')), 'v1.2'],
      [sha(mail('in Lists/dev.team')), 'Lists/dev.team'],
      [sha(mail('new on B in dev.team')), 'Lists/dev.team'],
      [sha(mail('inbox')), 'INBOX'],
    ];
    assertContainsOnce(sa, expectA, 'A');
    assertContainsOnce(sb, expectA.map(([d, n]) => [d, n.replace('.', alt)] as [string, string]), 'B');
    // Apart from the names, both sides are the same.
    assert.deepEqual(sb.mailboxes.map((m) => m.messages), sa.mailboxes.map((m) => m.messages));
    await assertQuiet(args, la, lb);
  });
}

test("two fs folders that map to the same Maildir++ name (v1.2 and v1_2): both survive, nothing merged or lost", { timeout: 30_000 }, async (t) => {
  const root = tempDir(t);
  const a = path.join(root, 'a');
  const b = path.join(root, 'b');
  putFile(path.join(a, 'v1.2'), 'cur', '1700000001.x.robust:2,S', mail('dot'));
  putFile(path.join(a, 'v1_2'), 'cur', '1700000002.y.robust:2,S', mail('underscore'));
  const la = `maildir:${a}:LAYOUT=fs`;
  const lb = `maildir:${b}`;
  const args = mirrorArgs(la, lb);
  const r = dsync(args);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /mailbox name v1\.2 cannot exist on the other side/);
  const sa = await snap(la);
  const sb = await snap(lb);
  for (const [s, side] of [[sa, 'A'], [sb, 'B']] as const) {
    const where = new Map(s.mailboxes.flatMap((m) => m.messages.map((x) => [x.sha, m.name] as const)));
    assert.ok(where.has(sha(mail('dot'))) && where.has(sha(mail('underscore'))), `${side}: ${JSON.stringify([...where])}`);
    assert.notEqual(where.get(sha(mail('dot'))), where.get(sha(mail('underscore'))), `${side}: the two folders must stay apart`);
    assertNoDuplicates(s, side);
  }
  assert.equal(sa.mailboxes.length, sb.mailboxes.length);
  await assertQuiet(args, la, lb);
});

test('folders with invalid modified UTF-7 on disk are reported by directory and left untouched; the rest syncs', { timeout: 30_000 }, async (t) => {
  const root = tempDir(t);
  const a = path.join(root, 'a');
  const b = path.join(root, 'b');
  const bad = ['.Caf&AOk', '.&AGE-', '.x&Jjo!-'];
  for (const [i, d] of bad.entries()) putFile(path.join(a, d), 'cur', `170000000${i}.bad.robust:2,S`, mail(`bad ${d}`));
  putFile(path.join(a, '.Good'), 'cur', '1700000009.good.robust:2,', mail('good'));
  const before = bad.map((d) => fs.readdirSync(path.join(a, d, 'cur')));
  const args = mirrorArgs(`maildir:${a}`, `maildir:${b}`);
  const r = dsync(args);
  assert.equal(r.code, 0, r.stderr);
  for (const d of bad) {
    const esc = d.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    assert.match(r.stderr, new RegExp(`warning: ignoring directory "${esc}" in ${a}: invalid modified UTF-7`), r.stderr);
    assert.equal(r.stderr.split(`ignoring directory "${d}"`).length, 2, `reported once per run:\n${r.stderr}`);
  }
  assert.deepEqual(bad.map((d) => fs.readdirSync(path.join(a, d, 'cur'))), before, 'the mail in those folders is left alone');
  const sb = await snap(`maildir:${b}`);
  assert.deepEqual(sb.mailboxes.map((m) => m.name), ['Good', 'INBOX']);
  assertContainsOnce(sb, [[sha(mail('good')), 'Good']], 'B');
  await assertQuiet(args, `maildir:${a}`, `maildir:${b}`);
});

test('long names that both layouts can hold sync (200-byte component, deep hierarchy)', { timeout: 30_000 }, async (t) => {
  const root = tempDir(t);
  const a = path.join(root, 'a');
  const b = path.join(root, 'b');
  const long = 'L'.repeat(200);
  const deep = Array.from({ length: 20 }, (_, i) => `d${i}`);
  putFile(path.join(a, long), 'cur', '1700000001.l.robust:2,', mail('long'));
  putFile(path.join(a, ...deep), 'cur', '1700000002.d.robust:2,', mail('deep'));
  const la = `maildir:${a}:LAYOUT=fs`;
  const lb = `maildir:${b}`;
  const args = mirrorArgs(la, lb);
  const r = dsync(args);
  assert.equal(r.code, 0, r.stderr);
  assert.ok(fs.existsSync(path.join(b, `.${long}`, 'cur')));
  assert.ok(fs.existsSync(path.join(b, `.${deep.join('.')}`, 'cur')));
  const sb = await snap(lb);
  assertContainsOnce(sb, [[sha(mail('long')), long], [sha(mail('deep')), deep.join('/')]], 'B');
  await assertQuiet(args, la, lb);
});

// Regression (found by this suite, fixed in tree-apply.ts): a name the other side cannot store (a
// Maildir++ directory name over 255 bytes) made createMailbox throw INVALIDNAME, which aborted the
// whole run with exit 75 before any mail was synced, on every run.
test('a name too long for the other side is reported and skipped; every other mailbox still syncs', { timeout: 30_000 }, async (t) => {
  const root = tempDir(t);
  const a = path.join(root, 'a');
  const b = path.join(root, 'b');
  const p1 = 'a'.repeat(200);
  const p2 = 'b'.repeat(200); // fine as fs "aaa/bbb", too long as Maildir++ ".aaa.bbb" (401 bytes)
  putFile(path.join(a, p1, p2), 'cur', '1700000001.x.robust:2,S', mail('deep long'));
  putFile(path.join(a, 'Ok'), 'cur', '1700000002.y.robust:2,S', mail('ok'));
  putFile(a, 'cur', '1700000003.z.robust:2,S', mail('inbox'));
  const la = `maildir:${a}:LAYOUT=fs`;
  const lb = `maildir:${b}`;
  const args = mirrorArgs(la, lb);
  const r = dsync(args);
  assert.match(r.stderr, /too long/, r.stderr);
  assert.ok(r.stderr.includes(`${p1}`), 'the message names the mailbox');
  assert.ok(fs.existsSync(path.join(a, p1, p2, 'cur', '1700000001.x.robust:2,S')), 'the mail stays where it is');
  const sb = await snap(lb);
  assertContainsOnce(sb, [[sha(mail('ok')), 'Ok'], [sha(mail('inbox')), 'INBOX']], 'B');
  // Exit 65, not 0: the run did what it could, but not everything is synced (and running again
  // will not change that, so not 2 either).
  assert.equal(r.code, 65, r.stderr);
  assert.match(r.stderr, /some mailboxes could not be synced/);
  const again = dsync(args);
  assert.equal(again.code, 65, again.stderr);
});

test('Maildir -> mbox: a folder with both mail and subfolders cannot be an mbox file; it is named, the rest syncs, exit 65', { timeout: 30_000 }, async (t) => {
  const root = tempDir(t);
  const a = path.join(root, 'a');
  const b = path.join(root, 'b');
  putFile(a, 'cur', '1700000001.i.robust:2,S', mail('inbox'));
  putFile(path.join(a, '.Work'), 'cur', '1700000002.w.robust:2,S', mail('work'));
  putFile(path.join(a, '.Work.Sub'), 'cur', '1700000003.s.robust:2,S', mail('work sub'));
  putFile(path.join(a, '.Other'), 'cur', '1700000004.o.robust:2,S', mail('other'));
  const args = mirrorArgs(`maildir:${a}`, `mbox:${b}:INBOX=${b}/inbox`);
  const r = dsync(args);
  assert.equal(r.code, 65, r.stderr);
  assert.match(r.stderr, /Work/);
  assert.match(r.stderr, /some mailboxes could not be synced/);
  const sb = await snap(`mbox:${b}:INBOX=${b}/inbox`);
  const where = new Map(sb.mailboxes.flatMap((m) => m.messages.map((x) => [x.sha, m.name] as const)));
  assert.equal(where.get(sha(mail('inbox'))), 'INBOX');
  assert.equal(where.get(sha(mail('other'))), 'Other');
  // Nothing lost on the source: the mails stay where they were.
  assert.ok(fs.existsSync(path.join(a, '.Work', 'cur', '1700000002.w.robust:2,S')));
  assert.ok(fs.existsSync(path.join(a, '.Work.Sub', 'cur', '1700000003.s.robust:2,S')));
  assert.equal(dsync(args).code, 65);
});
