// dsync_hardlinks: a local Maildir -> Maildir run saves new mails as hard links to the other
// side's files where that changes nothing about them, and copies otherwise.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as os from 'node:os';
import { makeMessage } from '../helpers/corpus.js';
import { snapshot } from '../helpers/snapshot.js';
import { mirror } from '../helpers/mirror.js';
import { parseMailLocation } from '../../src/storage/location.js';
import { openStore } from '../../src/storage/open.js';

const tmp = (t: { after(fn: () => void): void }) => {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'dsync-links-'));
  t.after(() => fs.rmSync(d, { recursive: true, force: true }));
  return d;
};

/** A delivered mail; `withW`: its name also states the size with CRLF line ends, as Dovecot's do. */
function deliver(dir: string, n: number, date: number, flags = '', withW = false): void {
  for (const d of ['cur', 'new', 'tmp']) fs.mkdirSync(path.join(dir, d), { recursive: true });
  if (path.basename(dir).startsWith('.')) fs.writeFileSync(path.join(dir, 'maildirfolder'), '');
  const body = makeMessage(`link${n}`);
  const bareLf = (body.toString('latin1').match(/(?<!\r)\n/g) ?? []).length;
  const w = withW ? `,W=${body.length + bareLf}` : '';
  const file = path.join(dir, 'cur', `${date}.M${n}P1.links,S=${body.length}${w}:2,${flags}`);
  fs.writeFileSync(file, body);
  fs.utimesSync(file, date, date);
}

/** Inode -> file name, of every message file under a Maildir++ root. */
function inodes(root: string): Map<number, string> {
  const out = new Map<number, string>();
  for (const dir of ['', ...fs.readdirSync(root).filter((d) => d.startsWith('.') && fs.existsSync(path.join(root, d, 'cur')))]) {
    for (const sub of ['cur', 'new']) {
      const p = path.join(root, dir, sub);
      if (!fs.existsSync(p)) continue;
      for (const f of fs.readdirSync(p)) out.set(fs.statSync(path.join(p, f)).ino, `${dir}/${sub}/${f}`);
    }
  }
  return out;
}

function mtimes(root: string): string[] {
  return [...inodes(root).values()].map((rel) => `${rel} ${fs.statSync(path.join(root, rel)).mtimeMs}`).sort();
}

test('dsync_hardlinks: new mails become links to the other side\'s files; flags and expunges stay per side', async (t) => {
  const root = tmp(t);
  const a = path.join(root, 'a');
  const b = path.join(root, 'b');
  for (let i = 0; i < 3; i++) deliver(a, i, 1_700_000_000 + i * 60, i === 1 ? 'S' : '', i === 2);
  deliver(path.join(a, '.Archive'), 9, 1_690_000_000, 'F');
  const before = mtimes(a);
  let r = await mirror(`maildir:${a}`, `maildir:${b}`, { hardLinks: true });
  assert.equal(r.exitCode, 0, r.log.join('\n'));
  assert.deepEqual(await snapshot(`maildir:${b}`), await snapshot(`maildir:${a}`));
  const inA = inodes(a);
  const inB = inodes(b);
  assert.equal(inB.size, 4);
  for (const ino of inB.keys()) assert.ok(inA.has(ino), `${inB.get(ino)} is a link to a file of A`);
  assert.deepEqual(mtimes(a), before, "A's files keep their times");
  // The file names (sizes included) are A's: a client sees the same RFC822.SIZE on both sides.
  assert.deepEqual([...inB.values()].sort(), [...inA.values()].sort());

  // A flag change on B is a rename there; A gets it by its own rename; the files stay shared.
  const flagged = [...inB.values()].find((n) => n.startsWith('/cur/1700000000'))!;
  fs.renameSync(path.join(b, flagged), path.join(b, flagged.replace(/:2,$/, ':2,T')));
  // An expunge on A unlinks A's name only.
  const gone = [...inA.values()].find((n) => n.startsWith('/cur/1700000120'))!;
  fs.unlinkSync(path.join(a, gone));
  r = await mirror(`maildir:${a}`, `maildir:${b}`, { hardLinks: true });
  assert.equal(r.exitCode, 0, r.log.join('\n'));
  const snapA = await snapshot(`maildir:${a}`);
  assert.deepEqual(await snapshot(`maildir:${b}`), snapA);
  assert.equal(snapA.mailboxes.find((m) => m.name === 'INBOX')!.messages.length, 2);
  assert.ok([...inodes(a).values()].some((n) => n.startsWith('/cur/1700000000') && n.endsWith(':2,T')));
  assert.deepEqual([...inodes(b).keys()].sort(), [...inodes(a).keys()].sort(), 'the same files on both sides');
});

test('without dsync_hardlinks mails are copied', async (t) => {
  const root = tmp(t);
  const a = path.join(root, 'a');
  const b = path.join(root, 'b');
  for (let i = 0; i < 2; i++) deliver(a, i, 1_700_000_000 + i);
  const r = await mirror(`maildir:${a}`, `maildir:${b}`);
  assert.equal(r.exitCode, 0, r.log.join('\n'));
  const inA = inodes(a);
  assert.equal(inodes(b).size, 2);
  for (const ino of inodes(b).keys()) assert.ok(!inA.has(ino));
});

test('a file that cannot be linked without changing it (other date, other file system) is copied', async (t) => {
  const root = tmp(t);
  const store = await openStore(parseMailLocation(`maildir:${path.join(root, 'b')}`, {}), { hardLinks: true, warn: () => {} });
  t.after(() => store.close());
  const box = await store.openMailbox(['INBOX']);
  const body = Buffer.from('Subject: other date\n\nbody\n');
  const src = path.join(root, 'source-file');
  fs.writeFileSync(src, body);
  fs.utimesSync(src, 1_600_000_000, 1_600_000_000);
  const sources = [src];
  // tmpfs is another file system than the temp dir on most machines: link(2) fails with EXDEV.
  const shm = '/dev/shm';
  let other: string | null = null;
  if (fs.existsSync(shm) && fs.statSync(shm).dev !== fs.statSync(root).dev) {
    other = fs.mkdtempSync(path.join(shm, 'dsync-links-'));
    t.after(() => fs.rmSync(other!, { recursive: true, force: true }));
    const f = path.join(other, 'file');
    fs.writeFileSync(f, body);
    fs.utimesSync(f, 1_700_000_100, 1_700_000_100);
    sources.push(f);
  }
  await box.save([
    // The mail's date differs from the file's: a link would share (and a time set would change) the other side's file.
    { uid: 1, guid: 'g-other-date', flags: 0, keywords: [], internalDate: 1_700_000_000, body, linkFrom: () => sources[0]! },
    ...(other ? [{ uid: 2, guid: 'g-other-fs', flags: 0, keywords: [], internalDate: 1_700_000_100, body, linkFrom: () => sources[1]! }] : []),
  ]);
  const msgs = await box.scan();
  assert.deepEqual(msgs.map((m) => m.internalDate), other ? [1_700_000_000, 1_700_000_100] : [1_700_000_000]);
  const cur = path.join(root, 'b', 'cur');
  for (const f of fs.readdirSync(cur)) {
    const st = fs.statSync(path.join(cur, f));
    assert.equal(st.nlink, 1, `${f} is a copy`);
    assert.ok(fs.readFileSync(path.join(cur, f)).equals(body));
  }
  assert.equal(fs.statSync(src).mtimeMs, 1_600_000_000_000, 'the source keeps its time');
  if (!other) t.diagnostic('no second file system at /dev/shm: the EXDEV case was not tried');
});
