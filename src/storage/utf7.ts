// IMAP modified UTF-7 (RFC 3501 §5.1.3), the encoding Dovecot uses for folder names on disk
// (unless the mail location has the UTF-8 flag) and in the subscriptions file.
//
// Printable US-ASCII (0x20..0x7e) stands for itself, except '&', which is written "&-".
// Every other run of characters is written as '&' + modified BASE64 of its UTF-16BE code units
// (',' instead of '/', no '=' padding) + '-'.

const B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,';
const B64_VALUE = new Int8Array(128).fill(-1);
for (let i = 0; i < B64.length; i++) B64_VALUE[B64.charCodeAt(i)] = i;

function isDirect(code: number): boolean {
  return code >= 0x20 && code <= 0x7e;
}

/** Encodes a (well-formed) UTF-16 JS string as IMAP modified UTF-7. */
export function encodeMUtf7(s: string): string {
  let out = '';
  let i = 0;
  while (i < s.length) {
    const c = s.charCodeAt(i);
    if (isDirect(c)) {
      out += c === 0x26 ? '&-' : s[i];
      i++;
      continue;
    }
    // Collect the run of characters that must be encoded.
    let j = i;
    while (j < s.length && !isDirect(s.charCodeAt(j))) j++;
    const bytes: number[] = [];
    for (let k = i; k < j; k++) {
      const u = s.charCodeAt(k);
      bytes.push(u >> 8, u & 0xff);
    }
    out += '&';
    let k = 0;
    for (; k + 3 <= bytes.length; k += 3) {
      const n = (bytes[k]! << 16) | (bytes[k + 1]! << 8) | bytes[k + 2]!;
      out += B64[(n >> 18) & 63]! + B64[(n >> 12) & 63]! + B64[(n >> 6) & 63]! + B64[n & 63]!;
    }
    const rest = bytes.length - k;
    if (rest === 1) {
      const n = bytes[k]! << 16;
      out += B64[(n >> 18) & 63]! + B64[(n >> 12) & 63]!;
    } else if (rest === 2) {
      const n = (bytes[k]! << 16) | (bytes[k + 1]! << 8);
      out += B64[(n >> 18) & 63]! + B64[(n >> 12) & 63]! + B64[(n >> 6) & 63]!;
    }
    out += '-';
    i = j;
  }
  return out;
}

/**
 * Decodes IMAP modified UTF-7. Strict, like Dovecot: throws an Error for characters outside
 * 0x20..0x7e, an unterminated or malformed BASE64 section, printable ASCII that was encoded,
 * non-zero padding bits, an odd number of bytes and unpaired surrogates.
 */
export function decodeMUtf7(s: string): string {
  let out = '';
  let i = 0;
  while (i < s.length) {
    const c = s.charCodeAt(i);
    if (!isDirect(c)) throw new Error(`invalid modified UTF-7: character 0x${c.toString(16)} must be encoded`);
    if (c !== 0x26) {
      out += s[i];
      i++;
      continue;
    }
    const end = s.indexOf('-', i + 1);
    if (end < 0) throw new Error('invalid modified UTF-7: unterminated "&" section');
    if (end === i + 1) {
      out += '&';
      i = end + 1;
      continue;
    }
    let bits = 0;
    let nbits = 0;
    const units: number[] = [];
    let pendingByte = -1;
    for (let k = i + 1; k < end; k++) {
      const ch = s.charCodeAt(k);
      const v = ch < 128 ? B64_VALUE[ch]! : -1;
      if (v < 0) throw new Error(`invalid modified UTF-7: bad BASE64 character "${s[k]}"`);
      bits = (bits << 6) | v;
      nbits += 6;
      if (nbits >= 8) {
        nbits -= 8;
        const byte = (bits >> nbits) & 0xff;
        bits &= (1 << nbits) - 1;
        if (pendingByte < 0) pendingByte = byte;
        else {
          units.push((pendingByte << 8) | byte);
          pendingByte = -1;
        }
      }
    }
    if (pendingByte >= 0 || nbits >= 6 || bits !== 0) {
      throw new Error('invalid modified UTF-7: BASE64 section has leftover bits');
    }
    if (units.length === 0) throw new Error('invalid modified UTF-7: empty BASE64 section');
    for (let k = 0; k < units.length; k++) {
      const u = units[k]!;
      if (u >= 0xd800 && u <= 0xdbff) {
        const lo = units[k + 1];
        if (lo === undefined || lo < 0xdc00 || lo > 0xdfff) throw new Error('invalid modified UTF-7: unpaired surrogate');
        out += String.fromCharCode(u, lo);
        k++;
      } else if (u >= 0xdc00 && u <= 0xdfff) {
        throw new Error('invalid modified UTF-7: unpaired surrogate');
      } else {
        if (isDirect(u)) throw new Error('invalid modified UTF-7: printable ASCII must not be encoded');
        out += String.fromCharCode(u);
      }
    }
    i = end + 1;
    // Two adjacent encoded sections ("&AAA-&AAA-") are not canonical; Dovecot accepts them, so do we.
  }
  return out;
}

/** True when s has no unpaired UTF-16 surrogates (so it can be written as UTF-8 losslessly). */
export function isWellFormedUnicode(s: string): boolean {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdbff) {
      const d = s.charCodeAt(i + 1);
      if (!(d >= 0xdc00 && d <= 0xdfff)) return false;
      i++;
    } else if (c >= 0xdc00 && c <= 0xdfff) return false;
  }
  return true;
}
