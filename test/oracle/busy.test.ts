// Oracle 4: a user works on a Maildir through a live Dovecot (APPEND, STORE, EXPUNGE) while our
// mirror syncs that Maildir with another one, run after run, and mail delivered to the other side
// is written into it meanwhile. Dovecot and dsync share nothing but the Maildir itself and its
// uidlist lock. Whatever the interleaving: after the runs converge, both sides are the same (for
// our reader and for an IMAP client), no mail the user did not expunge is missing, none is there
// twice, and Dovecot logged no complaint (a uidlist it finds broken, a mail that "reappeared").
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { makeMessage, makeRng } from '../helpers/corpus.js';
import type { ImapFlow } from 'imapflow';
import { chownTree, diffViews, dovecotSkipReason } from '../helpers/dovecot.js';
import { mirror } from '../helpers/mirror.js';
import { snapshot } from '../helpers/snapshot.js';
import { T0, giveToDovecot, inBox, keepForPostMortem, mirrorOk, serveLive, session, sideLoc, tempMailRoot, viewsWithLog, type Side } from './fixture.js';

const skip = dovecotSkipReason();
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex').slice(0, 16);
const messageId = (b: Buffer): string => /^Message-ID: (<[^>]+>)/m.exec(b.toString('latin1'))![1]!;

/**
 * A and B with mail in INBOX and Archive, mirrored once and given to Dovecot's user. B is a
 * Maildir (the tests deliver into it and change it directly); A is a Maildir or an mbox.
 */
async function busyPair(seed: string, format: 'maildir' | 'mbox' = 'maildir') {
  const A: Side = { root: tempMailRoot(`oracle-${seed}-a-`), format };
  const B: Side = { root: tempMailRoot(`oracle-${seed}-b-`) };
  // The initial mail is delivered into the Maildir (A's, or B's when A is an mbox).
  const a = format === 'maildir' ? A.root : B.root;
  const b = B.root;
  const rng = makeRng(seed);
  /** Message-ID -> digest of every mail nobody expunged. */
  const live = new Map<string, string>();
  /** Message-ID -> where the mail came from (for the report of a lost mail). */
  const origin = new Map<string, string>();
  let seq = 0;
  /** The mirror run under way or last made (the busy tests count theirs here, for the origins). */
  const runs = { n: 0 };
  const newMail = (from = `an IMAP APPEND during or after run ${runs.n}`): Buffer => {
    const body = makeMessage(`${seed}-${seq++}`, { size: 1000 + Math.floor(rng() * 6000) });
    live.set(messageId(body), sha(body));
    origin.set(messageId(body), from);
    return body;
  };
  /** Written as an MDA writes: complete in tmp/, then moved into new/ (or cur/ with flags). */
  const deliver = (folder: string, into: 'new' | 'cur') => {
    for (const d of ['cur', 'new', 'tmp']) fs.mkdirSync(path.join(folder, d), { recursive: true });
    const base = `${T0 + seq}.busy${seq}.mda`;
    const tmp = path.join(folder, 'tmp', base);
    const side = folder.startsWith(B.root) ? 'B' : 'A';
    fs.writeFileSync(tmp, newMail(`delivered into ${side}'s ${path.relative(side === 'B' ? B.root : A.root, folder) || 'INBOX'} ${into}/ before run ${runs.n + 1}`));
    fs.renameSync(tmp, path.join(folder, into, into === 'cur' ? `${base}:2,S` : base));
  };
  for (let i = 0; i < 100; i++) deliver(a, 'cur');
  for (let i = 0; i < 40; i++) deliver(path.join(a, '.Archive'), 'cur');
  fs.writeFileSync(path.join(a, '.Archive', 'maildirfolder'), '');
  for (const s of [A, B]) fs.mkdirSync(s.root, { recursive: true });
  giveToDovecot(A.root);
  giveToDovecot(B.root);
  await mirrorOk(sideLoc(A), sideLoc(B), 'first mirror');
  giveToDovecot(A.root);
  return { A, B, rng, live, origin, runs, newMail, deliver };
}

/**
 * Mirrors until a run exits 0 (4 runs at most); then both sides are the same and every live mail
 * is there, once. A failed check keeps both trees (their paths are reported, with a lost mail's
 * origin, and the logs of every run, with -D, are written next to them) for a post-mortem.
 */
async function assertConverged(A: Side, B: Side, live: Map<string, string>, post?: { t: TestContext; origin: Map<string, string>; logs: string[][] }): Promise<Set<string>> {
  const runs: string[][] = [...(post?.logs ?? [])];
  /** Keeps both trees and every run's log when a check below fails. */
  const keep = (): void => {
    if (!post) return;
    const kept = [A.root, B.root].map(keepForPostMortem);
    const logFile = path.join(kept[0]!, 'mirror-runs.log');
    fs.writeFileSync(logFile, runs.map((l, i) => `--- run ${i + 1}\n${l.join('\n')}\n`).join(''));
    post.t.diagnostic(`kept for a post-mortem: A ${kept[0]}, B ${kept[1]}; the runs' logs in ${logFile}`);
  };
  const check = (fn: () => void): void => {
    try {
      fn();
    } catch (e) {
      keep();
      throw e;
    }
  };
  let last = await mirror(sideLoc(A), sideLoc(B), { debug: true });
  runs.push(last.log);
  for (let i = 0; i < 3 && last.exitCode === 2; i++) {
    last = await mirror(sideLoc(A), sideLoc(B), { debug: true });
    runs.push(last.log);
  }
  check(() => assert.equal(last.exitCode, 0, last.log.join('\n')));
  const sa = await snapshot(sideLoc(A));
  const sb = await snapshot(sideLoc(B));
  check(() => assert.deepEqual(sb, sa, 'both sides the same'));
  for (const m of sa.mailboxes) {
    const shas = m.messages.map((x) => x.sha);
    check(() => assert.deepEqual(shas.filter((s, i) => shas.indexOf(s) !== i), [], `no mail twice in ${m.name}`));
  }
  const present = new Set(sa.mailboxes.flatMap((m) => m.messages.map((x) => x.sha)));
  const lost = [...live].filter(([, s]) => !present.has(s)).map(([id]) => id);
  if (post) for (const id of lost) post.t.diagnostic(`lost ${id}: ${post.origin.get(id) ?? 'origin unknown'}`);
  check(() => assert.deepEqual(lost, [], 'no mail the user did not expunge is missing'));
  return present;
}

/**
 * Waits for the user's last IMAP command; one that gets no answer within 20 s is given up, and
 * the lock files under the user's mail (which Dovecot may be waiting for) are reported.
 */
async function finishUser(user: Promise<void>, c: ImapFlow, t: TestContext, mail: string): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<void>((resolve) => {
    timer = setTimeout(() => {
      t.diagnostic('the IMAP session got no answer for 20 s and was closed');
      for (const l of lockFiles(mail)) t.diagnostic(`  lock file then: ${l}`);
      c.close();
      resolve();
    }, 20_000);
  });
  await Promise.race([user.catch(() => undefined), late]);
  clearTimeout(timer);
}

/** Every "*.lock" file under dir: path, age, content (a dotlock names its holder). */
function lockFiles(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string): void => {
    let entries: fs.Dirent[];
    try {
      entries = fs.readdirSync(d, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.name.endsWith('.lock')) {
        try {
          const age = Math.round((Date.now() - fs.statSync(p).mtimeMs) / 1000);
          out.push(`${path.relative(dir, p)} (${age} s old, our pid ${process.pid}): ${fs.readFileSync(p, 'latin1').slice(0, 80).trim()}`);
        } catch {
          // gone meanwhile
        }
      }
    }
  };
  walk(dir);
  return out;
}

/**
 * What Dovecot logged, less what it logs whenever another program rewrote an mbox while it had
 * the file's messages indexed: with its default mbox_dirty_syncs it takes a file that grew for
 * one with mail appended, looks for its last known message where it was, finds something else
 * there, logs "Next message unexpectedly corrupted" (an error, for mutt's rewrites too) and
 * reads the whole file again. What it then serves is checked by assertClientSeesTheSame.
 */
function complaints(logged: string[]): string[] {
  return logged.filter((l) => !/Error: Next message unexpectedly corrupted in mbox file /.test(l));
}

/**
 * Dovecot serves both sides the same, UIDNEXT included (it answered STATUS for A from its
 * mailbox list index with an old UIDNEXT, 142 against 145, until our uidlist writes touched cur/).
 */
async function assertClientSeesTheSame(A: Side, B: Side): Promise<void> {
  const { views, problems: logged } = await viewsWithLog([A, B]);
  const problems = complaints(logged);
  assert.deepEqual(diffViews(views[0]!, views[1]!, { names: ['A', 'B'], limit: 40 }), [], 'an IMAP client sees the same on both sides');
  assert.deepEqual(problems, [], 'Dovecot opens both sides without complaint');
}

/** One of the mirror runs made while the user works: it may ask to be run again. Its log goes to `logs`. */
async function busyMirror(A: Side, B: Side, i: number, ops: { runs: number; runAgain: number; uidsMoved: number; lateLocks: number }, logs: string[][] = []): Promise<void> {
  // With -D: each mailbox's planned expunges and saves, and what the scans found gone, for the
  // post-mortem of a lost mail. Every other run goes through the byte-stream channel of remote
  // runs, where both sides check all their mailboxes before the tree exchange, which leaves the
  // user more time to change a mailbox between its check and its turn.
  const r = await mirror(sideLoc(A), sideLoc(B), { debug: true, ...(i % 2 === 1 ? { streamBudget: 1 << 20 } : {}) });
  logs.push(r.log);
  assert.ok(r.exitCode === 0 || r.exitCode === 2, `mirror ${i}: exit ${r.exitCode}\n${r.log.join('\n')}`);
  ops.runs++;
  if (r.exitCode === 2) ops.runAgain++;
  if (r.log.some((l) => /get other UIDs/.test(l))) ops.uidsMoved++;
  ops.lateLocks += r.log.filter((l) => /locked the file just as it was replaced/.test(l)).length;
}

for (const format of ['maildir', 'mbox'] as const) {
  test(`a user changes ${format === 'mbox' ? 'an mbox' : 'a Maildir'} through Dovecot while our mirror syncs it, run after run: nothing lost or doubled, both sides the same, no complaint from Dovecot`, { skip, timeout: 120_000 }, (t) => userChangesMail(t, format));
}

async function userChangesMail(t: TestContext, format: 'maildir' | 'mbox'): Promise<void> {
  const { A, B, rng, live, origin, runs, newMail, deliver } = await busyPair(format === 'mbox' ? 'busy-mbox' : 'busy', format);
  const b = B.root;
  const logs: string[][] = [];
  // Every state of A's files that our writes start from or leave, kept with the trees when a
  // check fails (scripts/mbox-trace-check.mjs reads it).
  if (format === 'mbox') {
    process.env.DSYNC_TRACE_MBOX = path.join(path.dirname(A.root), 'trace');
    t.after(() => delete process.env.DSYNC_TRACE_MBOX);
  }

  const ops = { append: 0, flag: 0, expunge: 0, flagB: 0, expungeB: 0, runs: 0, runAgain: 0, uidsMoved: 0, lateLocks: 0 };
  const problems = await serveLive([{ name: 'u', ...A }], async (server) => {
    await session(server.port, 'u', async (c) => {
      let stop = false;
      const user = (async () => {
        for (let k = 0; !stop; k++) {
          const box = k % 3 === 2 ? ['Archive'] : ['INBOX'];
          const op = k % 4;
          if (op === 0) {
            await c.append(box, newMail(), ['\\Seen'], new Date((T0 + k) * 1000));
            ops.append++;
            continue;
          }
          await inBox(c, box, async () => {
            const uids = (await c.search({ all: true }, { uid: true })) || [];
            if (uids.length === 0) return;
            const uid = String(uids[Math.floor(rng() * uids.length)]);
            if (op === 3) {
              const m = await c.fetchOne(uid, { envelope: true }, { uid: true });
              if (m && m.envelope?.messageId && (await c.messageDelete(uid, { uid: true }))) {
                live.delete(m.envelope.messageId);
                ops.expunge++;
              }
            } else {
              await c.messageFlagsAdd(uid, [op === 1 ? '\\Flagged' : '$Label1'], { uid: true });
              ops.flag++;
            }
          });
        }
      })();
      // A command Dovecot refuses ends the user's work (reported); the checks below still hold.
      user.catch((e: Error) => t.diagnostic(`the IMAP user stopped: ${e.message}`));
      try {
        for (let i = 0; i < 10; i++) {
          // Changes for our mirror to make in A while Dovecot works there: new mail, flag changes
          // (renames of files Dovecot may be renaming too) and expunges from B.
          for (let j = 0; j < 3; j++) deliver(j === 2 ? path.join(b, '.Archive') : b, 'new');
          for (const folder of [b, path.join(b, '.Archive')]) {
            const cur = path.join(folder, 'cur');
            for (const f of fs.readdirSync(cur)) {
              const x = rng();
              if (x < 0.03) {
                const gone = fs.readFileSync(path.join(cur, f));
                fs.unlinkSync(path.join(cur, f));
                live.delete(messageId(gone));
                ops.expungeB++;
              } else if (x < 0.1) {
                const [base, info = ''] = f.split(':2,');
                const flags = info.includes('R') ? info.replace('R', '') : [...info, 'R'].sort().join('');
                fs.renameSync(path.join(cur, f), path.join(cur, `${base}:2,${flags}`));
                ops.flagB++;
              }
            }
          }
          chownTree(b);
          runs.n = i + 1;
          await busyMirror(A, B, i, ops, logs);
        }
      } finally {
        stop = true;
        await finishUser(user, c, t, A.root);
      }
    });
  });
  t.diagnostic(`while Dovecot served A: ${ops.append} appends, ${ops.flag} flag changes, ${ops.expunge} expunges through it; on B ${ops.flagB} flag changes, ${ops.expungeB} expunges; ${ops.runs} mirrors, ${ops.runAgain} of them asked to run again, ${ops.uidsMoved} because UIDs they meant to use were taken${format === 'mbox' ? `; ${ops.lateLocks} times Dovecot locked the mbox just as we replaced it and the old file could not be put back` : ''}`);
  assert.ok(ops.append > 3 && ops.expunge > 3, 'the user and the mirrors overlapped');

  const present = await assertConverged(A, B, live, { t, origin, logs });
  // A run that finds the UIDs it meant to use taken gives the mails other UIDs on that side and
  // forgets the sync state. The next run recognises an expunge made in between under any UID
  // (protocol 3 with GUIDs; before, 1-3 mails came back per run of this test; protocol 4 with
  // mbox header hashes where the hash is unambiguous; before, 10-25 came back per run of the
  // mbox variant). One the user makes through Dovecot while a run moves that very mail to a new
  // UID cannot count: for Dovecot the move is the old UID expunged and a new mail, so the user's
  // EXPUNGE of the old UID expunges nothing (one mail in about half of the runs). Without UID
  // moves, nothing the user expunged may come back.
  const back = present.size - live.size;
  if (ops.uidsMoved === 0) assert.equal(back, 0, 'no mail the user expunged is back');
  else t.diagnostic(`${back} mails the user expunged came back (runs that moved mails to other UIDs: ${ops.uidsMoved})`);
  assert.ok(back <= ops.uidsMoved, `${back} mails the user expunged came back`);
  // "Sync failed for mbox: UID inserted in the middle of mailbox" (about 1 run in 25 of the mbox
  // variant until session 17; twice since, a mail garbled by Dovecot's sync that failed so): our
  // append raised the last UID in X-IMAPbase before the mail was there, and Dovecot read the file
  // in between. An append now never names a UID before its mail (MboxMailbox.append).
  assert.deepEqual(complaints(problems), [], 'Dovecot logged no problems while we synced under it');
  await assertClientSeesTheSame(A, B);
}

// The same with the user creating, renaming and deleting folders through Dovecot while our mirror
// syncs. A folder deleted while its mail was being copied may be kept (a tombstone does not
// delete a folder that changed since the last sync), so its mail may come back; none may be lost.
test('a user creates, renames and deletes folders through Dovecot while our mirror syncs: nothing lost, both sides the same, no complaint from Dovecot', { skip, timeout: 120_000 }, async (t) => {
  const { A, B, rng, live, newMail, deliver } = await busyPair('busy-folders');
  const b = B.root;
  const ops = { created: 0, renamed: 0, deleted: 0, runs: 0, runAgain: 0, uidsMoved: 0, lateLocks: 0 };
  const refused: string[] = [];
  const problems = await serveLive([{ name: 'u', ...A }], async (server) => {
    await session(server.port, 'u', async (c) => {
      const mine: string[] = [];
      let stop = false;
      const user = (async () => {
        for (let k = 0; !stop; k++) {
          const op = k % 4;
          try {
            if (op === 0 || mine.length === 0) {
              const name = `F${k}`;
              await c.mailboxCreate([name]);
              for (let i = 0; i < 2; i++) await c.append([name], newMail(), [], new Date((T0 + k) * 1000));
              mine.push(name);
              ops.created++;
            } else if (op === 1) {
              const i = Math.floor(rng() * mine.length);
              const to = `R${k}`;
              await c.mailboxRename([mine[i]!], [to]);
              mine[i] = to;
              ops.renamed++;
            } else if (op === 2) {
              const [name] = mine.splice(Math.floor(rng() * mine.length), 1);
              await inBox(c, [name!], async () => {
                for await (const m of c.fetch('1:*', { envelope: true })) if (m.envelope?.messageId) live.delete(m.envelope.messageId);
              }).catch(() => undefined); // empty
              await c.mailboxDelete([name!]);
              ops.deleted++;
            } else {
              await c.append(['INBOX'], newMail(), [], new Date((T0 + k) * 1000));
            }
          } catch (e) {
            // Seen once in ~10 runs, not reproduced since: reported, and the user goes on.
            refused.push(`${['create', 'rename', 'delete', 'append'][op]}: ${(e as { responseText?: string }).responseText ?? (e as Error).message}`);
          }
        }
      })();
      try {
        for (let i = 0; i < 10; i++) {
          for (let j = 0; j < 2; j++) deliver(b, 'new');
          chownTree(b);
          await busyMirror(A, B, i, ops);
        }
      } finally {
        stop = true;
        await finishUser(user, c, t, A.root);
      }
    });
  });
  t.diagnostic(`while Dovecot served A: ${ops.created} folders created, ${ops.renamed} renamed, ${ops.deleted} deleted; ${ops.runs} mirrors, ${ops.runAgain} of them asked to run again`);
  if (refused.length > 0) t.diagnostic(`IMAP commands Dovecot refused: ${refused.join('; ')}`);
  assert.ok(ops.created > 2 && ops.deleted > 2 && ops.renamed > 2, 'the user and the mirrors overlapped');
  const present = await assertConverged(A, B, live);
  t.diagnostic(`${present.size - live.size} mails of deleted folders came back`);
  assert.deepEqual(complaints(problems), [], 'Dovecot logged no problems while we synced under it');
  await assertClientSeesTheSame(A, B);
});
