// Reads a DSYNC_TRACE_MBOX directory (see src/storage/mbox/trace.ts) and names, per mailbox file,
// the states where a mail (by Message-ID) is served with other bytes than when first seen, and
// states with a UID twice. Usage: node scripts/mbox-trace-check.mjs DIR
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createHash } from 'node:crypto';

const META = /^(X-UID|Status|X-Status|X-Keywords|Content-Length|X-IMAPbase|X-IMAP):/i;

/** Each message of an mbox text: UID, Message-ID and a hash of what is served (metadata headers dropped). */
function messages(text) {
  const starts = [...text.matchAll(/(?:^|\n)(From [^\n]*\n)/g)].map((m) => m.index + (m[0].startsWith('\n') ? 1 : 0));
  return starts.map((s, k) => {
    const blk = text.slice(s, k + 1 < starts.length ? starts[k + 1] - 1 : text.length);
    const rest = blk.slice(blk.indexOf('\n') + 1);
    const he = rest.indexOf('\n\n');
    const lines = (he >= 0 ? rest.slice(0, he + 1) : rest).split('\n');
    const uid = Number(/^X-UID: (\d+)/m.exec(rest)?.[1] ?? 0);
    const mid = lines.find((l) => /^message-id:/i.test(l))?.slice(11).trim();
    const served = lines.filter((l) => !META.test(l)).join('\n') + '\n' + (he >= 0 ? rest.slice(he + 2).replace(/\n+$/, '') : '');
    return { uid, mid, hash: createHash('sha1').update(served, 'latin1').digest('hex').slice(0, 12), size: served.length };
  });
}

const dir = process.argv[2];
const first = new Map();
const reported = new Set();
let problems = 0;
for (const f of fs.readdirSync(dir).filter((n) => n.endsWith('.mbox')).sort()) {
  const box = f.split('-').slice(1, -2).join('-');
  const ms = messages(fs.readFileSync(path.join(dir, f), 'latin1'));
  const uids = ms.map((m) => m.uid);
  const twice = uids.filter((u, i) => uids.indexOf(u) !== i);
  if (twice.length) console.log(`${f}: UID twice: ${twice.join(' ')}`), problems++;
  for (const m of ms) {
    if (!m.mid) continue;
    const key = `${box} ${m.mid}`;
    const was = first.get(key);
    if (!was) first.set(key, { ...m, f });
    else if (was.hash !== m.hash && !reported.has(key) && reported.add(key)) console.log(`${f}: ${m.mid} (UID ${m.uid}, ${m.size} bytes) differs from ${was.f} (UID ${was.uid}, ${was.size} bytes)`), problems++;
  }
}
console.log(problems ? `${problems} problems` : 'every mail kept its bytes');
