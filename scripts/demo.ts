// `npm run demo`: builds two small sample Maildirs in a temp dir, changes both sides (including a
// UID conflict), mirrors them with bin/dsync and shows what happened.
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as os from 'node:os';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'dsync-demo-'));
const A = path.join(root, 'alice-laptop', 'Maildir');
const B = path.join(root, 'alice-server', 'Maildir');
const dsync = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../bin/dsync');

let n = 0;
function deliver(maildir: string, folder: string | null, subject: string, flags = ''): void {
  const dir = folder ? path.join(maildir, `.${folder}`) : maildir;
  for (const d of ['cur', 'new', 'tmp']) fs.mkdirSync(path.join(dir, d), { recursive: true });
  if (folder) fs.writeFileSync(path.join(dir, 'maildirfolder'), '');
  n++;
  const when = 1_700_000_000 + n * 3600;
  const body =
    `From: Demo Sender <demo@example.org>\nTo: alice@example.org\nSubject: ${subject}\n` +
    `Date: ${new Date(when * 1000).toUTCString()}\nMessage-ID: <demo-${n}@example.org>\n\nHello, this is mail ${n}.\n`;
  const base = `${when}.M${n}P1.demo,S=${Buffer.byteLength(body)}`;
  const file = flags ? path.join(dir, 'cur', `${base}:2,${flags}`) : path.join(dir, 'new', base);
  fs.writeFileSync(file, body);
  fs.utimesSync(file, when, when);
}

function run(args: string[]): void {
  console.log(`\n$ dsync ${args.join(' ')}`);
  const r = spawnSync(dsync, args, { encoding: 'utf8' });
  process.stdout.write(r.stdout);
  process.stdout.write(r.stderr);
  console.log(`(exit code ${r.status})`);
}

function show(label: string, maildir: string): void {
  console.log(`\n${label}: ${maildir}`);
  const folders = ['', ...fs.readdirSync(maildir).filter((d) => d.startsWith('.') && fs.statSync(path.join(maildir, d)).isDirectory())];
  for (const f of folders.sort()) {
    const dir = path.join(maildir, f);
    const uidlist = path.join(dir, 'dovecot-uidlist');
    const lines = fs.existsSync(uidlist) ? fs.readFileSync(uidlist, 'utf8').trim().split('\n') : [];
    console.log(`  ${f ? f.slice(1) : 'INBOX'}  (${lines[0] ?? 'no uidlist yet'})`);
    const files = [...fs.readdirSync(path.join(dir, 'cur')).map((x) => `cur/${x}`), ...fs.readdirSync(path.join(dir, 'new')).map((x) => `new/${x}`)];
    for (const l of lines.slice(1)) {
      const [uid] = l.split(' ');
      const base = l.slice(l.indexOf(':') + 1);
      const file = files.find((x) => x.split('/')[1].startsWith(base)) ?? '(missing)';
      console.log(`    UID ${uid.padStart(2)}  ${file.split(':2,')[1] !== undefined ? `flags "${file.split(':2,')[1]}"` : 'no flags'}`);
    }
  }
}

console.log(`Demo directory: ${root}`);
deliver(A, null, 'Welcome', 'S');
deliver(A, null, 'Quarterly report', 'FS');
deliver(A, 'Archive', 'Old invoice', 'S');
deliver(A, 'Entwürfe'.normalize() === 'Entwürfe' ? 'Entw&APw-rfe' : 'Drafts', 'Draft reply', 'D');
run(['-v', '-o', `mail_location=maildir:${A}`, 'mirror', `maildir:${B}`]);

console.log('\nNow both sides change: the laptop gets mail and flags one, the server gets other mail (same UID!).');
deliver(A, null, 'New on the laptop');
deliver(B, null, 'New on the server');
const cur = path.join(A, 'cur');
const first = fs.readdirSync(cur).sort()[0];
fs.renameSync(path.join(cur, first), path.join(cur, first.replace(/:2,.*$/, ':2,RS')));
run(['-v', '-o', `mail_location=maildir:${A}`, 'mirror', `maildir:${B}`]);
run(['-v', '-o', `mail_location=maildir:${A}`, 'mirror', `maildir:${B}`]);
show('Laptop', A);
show('Server', B);
console.log('\nBoth mails that collided on UID 3 now have new UIDs on both sides; a second run changed nothing.');
console.log(`(Remove ${root} when done.)`);
