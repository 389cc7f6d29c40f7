// IMAP system flags as Dovecot's dsync encodes them (bit values travel on the wire).
export const Flag = {
  Answered: 0x01,
  Flagged: 0x02,
  Deleted: 0x04,
  Seen: 0x08,
  Draft: 0x10,
} as const;

export const ALL_FLAGS = 0x1f;

const NAMES: ReadonlyArray<[number, string]> = [
  [Flag.Answered, '\\Answered'],
  [Flag.Flagged, '\\Flagged'],
  [Flag.Deleted, '\\Deleted'],
  [Flag.Seen, '\\Seen'],
  [Flag.Draft, '\\Draft'],
];

export function flagNames(bits: number): string[] {
  return NAMES.filter(([b]) => bits & b).map(([, n]) => n);
}

export function flagsFromNames(names: Iterable<string>): number {
  let bits = 0;
  for (const n of names) {
    const hit = NAMES.find(([, name]) => name.toLowerCase() === n.toLowerCase());
    if (hit) bits |= hit[0];
  }
  return bits;
}
