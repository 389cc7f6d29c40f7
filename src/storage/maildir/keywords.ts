// dovecot-keywords: maps the lowercase flag letters a..z of maildir file names to keyword names.
// Lines "<index> <name>", index 0 = 'a' ... 25 = 'z'. Replaced only by rename, under the uidlist lock.
import type { Warn } from './io.js';

export const KEYWORDS_NAME = 'dovecot-keywords';
export const MAX_KEYWORDS = 26;

export class KeywordMap {
  /** index -> name; undefined = free slot. */
  private readonly byIndex: (string | undefined)[] = new Array(MAX_KEYWORDS).fill(undefined);
  private readonly byName = new Map<string, number>();

  static parse(text: string, warn: Warn, where = KEYWORDS_NAME): KeywordMap {
    const m = new KeywordMap();
    const lines = text.split('\n');
    for (let i = 0; i < lines.length; i++) {
      const line = lines[i]!.replace(/\r$/, '');
      if (line === '') continue;
      const match = /^(\d+) (.+)$/.exec(line);
      const idx = match ? Number(match[1]) : -1;
      if (!match || idx >= MAX_KEYWORDS) {
        warn(`${where}:${i + 1}: ignoring bad line "${line.slice(0, 80)}"`);
        continue;
      }
      const name = match[2]!;
      if (m.byIndex[idx] !== undefined || m.byName.has(name)) {
        warn(`${where}:${i + 1}: duplicate keyword index or name "${line.slice(0, 80)}"; keeping the first`);
        continue;
      }
      m.byIndex[idx] = name;
      m.byName.set(name, idx);
    }
    return m;
  }

  serialize(): string {
    let s = '';
    this.byIndex.forEach((name, i) => {
      if (name !== undefined) s += `${i} ${name}\n`;
    });
    return s;
  }

  get size(): number {
    return this.byName.size;
  }

  nameOfLetter(letter: string): string | undefined {
    const idx = letter.charCodeAt(0) - 0x61;
    return idx >= 0 && idx < MAX_KEYWORDS ? this.byIndex[idx] : undefined;
  }

  letterOf(name: string): string | undefined {
    const idx = this.byName.get(name);
    return idx === undefined ? undefined : String.fromCharCode(0x61 + idx);
  }

  /**
   * Registers a keyword in the lowest free slot. Returns its letter, or undefined when all 26
   * slots are taken (the keyword cannot be stored in maildir file names).
   */
  add(name: string): string | undefined {
    const have = this.letterOf(name);
    if (have) return have;
    const idx = this.byIndex.indexOf(undefined);
    if (idx < 0) return undefined;
    this.byIndex[idx] = name;
    this.byName.set(name, idx);
    return String.fromCharCode(0x61 + idx);
  }
}

/** Why a keyword name cannot be stored in dovecot-keywords, or null. */
export function invalidKeywordReason(name: string): string | null {
  if (name === '') return 'empty keyword';
  // eslint-disable-next-line no-control-regex
  if (/[\x00-\x20\x7f]/.test(name)) return 'keyword contains a space or control character';
  if (name.startsWith('\\')) return 'system flags are not keywords';
  return null;
}
