// IMAP modified UTF-7 (RFC 3501 5.1.3), the on-disk encoding of Maildir++ folder names.
// Written for the benchmark independently of src/storage/utf7.ts, so the corpus does not
// depend on the code under test.

function flushB64(units: number[]): string {
  if (units.length === 0) return '';
  const buf = Buffer.alloc(units.length * 2);
  units.forEach((u, i) => buf.writeUInt16BE(u, i * 2));
  return '&' + buf.toString('base64').replace(/=+$/, '').replace(/\//g, ',') + '-';
}

export function encodeMUtf7(s: string): string {
  let out = '';
  let pending: number[] = [];
  for (let i = 0; i < s.length; i++) {
    const u = s.charCodeAt(i);
    if (u >= 0x20 && u <= 0x7e) {
      out += flushB64(pending);
      pending = [];
      out += u === 0x26 ? '&-' : s[i];
    } else {
      pending.push(u);
    }
  }
  return out + flushB64(pending);
}
