// Mailbox names both sides can store. Each side announces the characters its store cannot keep
// inside a name component; both sides replace the union of them with the alt char (-C), the same
// way on both sides, before comparing trees.

export function forbiddenChars(separator: string): string {
  return [...new Set([separator, '/'])].join('');
}

export function makeNameNormalizer(forbidden: string, altChar: string): (name: string[]) => string[] {
  const bad = new Set([...forbidden]);
  return (name) =>
    name.map((part) => {
      let out = '';
      for (const ch of part) out += bad.has(ch) || ch.charCodeAt(0) < 0x20 ? altChar : ch;
      return out;
    });
}
