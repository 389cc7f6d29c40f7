// Shared empty arrays. Nearly every message has no keywords (and most uidlist entries no extra
// fields); one frozen array for all of them saves an allocation per message per record kind.
// Frozen, so an accidental push throws instead of corrupting every other message.
export const NO_STRINGS: string[] = Object.freeze([]) as unknown as string[];

/** `list` itself when it is empty, as the shared empty array. */
export function orShared<T extends string>(list: T[]): T[] {
  return list.length === 0 ? (NO_STRINGS as T[]) : list;
}
