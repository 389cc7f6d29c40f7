// IMAP modified UTF-7 (RFC 3501 section 5.1.3), the encoding of mailbox names on the
// wire and of Maildir++ folder directory names ("Entwürfe" <-> "Entw&APw-rfe").
// Test-side implementation, independent of whatever src/ uses.

function isDirect(code: number): boolean {
  return code >= 0x20 && code <= 0x7e;
}

const B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,';

/** Encodes a UTF-8 (JS) string to modified UTF-7. */
export function encodeMUtf7(s: string): string {
  let out = '';
  let pending: number[] = []; // UTF-16 code units waiting to be base64'd
  const flush = (): void => {
    if (pending.length === 0) return;
    const bytes: number[] = [];
    for (const u of pending) bytes.push(u >> 8, u & 0xff);
    let bits = 0;
    let acc = 0;
    let enc = '';
    for (const b of bytes) {
      acc = (acc << 8) | b;
      bits += 8;
      while (bits >= 6) {
        bits -= 6;
        enc += B64[(acc >> bits) & 0x3f];
      }
      acc &= (1 << bits) - 1;
    }
    if (bits > 0) enc += B64[(acc << (6 - bits)) & 0x3f];
    out += `&${enc}-`;
    pending = [];
  };
  for (let i = 0; i < s.length; i++) {
    const code = s.charCodeAt(i);
    if (isDirect(code)) {
      flush();
      out += code === 0x26 ? '&-' : s[i];
    } else {
      pending.push(code);
    }
  }
  flush();
  return out;
}

/** Decodes modified UTF-7; throws on malformed input (including any non-printable-ASCII character). */
export function decodeMUtf7(s: string): string {
  let out = '';
  let i = 0;
  while (i < s.length) {
    const c = s[i];
    if (!isDirect(s.charCodeAt(i))) throw new Error(`not modified UTF-7 (raw ${JSON.stringify(c)}) in ${JSON.stringify(s)}`);
    if (c !== '&') {
      out += c;
      i++;
      continue;
    }
    const end = s.indexOf('-', i + 1);
    if (end < 0) throw new Error(`unterminated modified UTF-7 shift in ${JSON.stringify(s)}`);
    const chunk = s.slice(i + 1, end);
    i = end + 1;
    if (chunk === '') {
      out += '&';
      continue;
    }
    let acc = 0;
    let bits = 0;
    const bytes: number[] = [];
    for (const ch of chunk) {
      const v = B64.indexOf(ch);
      if (v < 0) throw new Error(`bad modified UTF-7 character ${JSON.stringify(ch)} in ${JSON.stringify(s)}`);
      acc = (acc << 6) | v;
      bits += 6;
      if (bits >= 8) {
        bits -= 8;
        bytes.push((acc >> bits) & 0xff);
        acc &= (1 << bits) - 1;
      }
    }
    if (bytes.length % 2 !== 0) throw new Error(`odd modified UTF-7 byte count in ${JSON.stringify(s)}`);
    for (let k = 0; k < bytes.length; k += 2) out += String.fromCharCode((bytes[k] << 8) | bytes[k + 1]);
  }
  return out;
}
