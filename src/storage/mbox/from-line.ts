// mbox "From " separator lines: "From <sender> <date>".
//
// Which lines count as separators was calibrated against Dovecot 2.3.19 (a line that does not
// parse is part of the previous message's body, as in Dovecot):
//  * "From " + a sender that is one token without spaces (it may be empty: "From  Thu ...")
//    + spaces + a date.
//  * asctime-style date: any 3 letters (weekday, not checked), month name (any case), day,
//    hh:mm[:ss], an optional zone name before the year ("PST 2024"), a 4-digit year, then
//    anything ("remote from x", "+0900", garbage). A numeric zone right after the year is
//    honoured; zone names are ignored. Out-of-range values roll over (Jan 32 = Feb 1).
//  * RFC 2822-style date: "Thu, 4 Jan 2024 10:00:00 +0000".
//  * Rejected: no weekday, 2-digit years, two zone names ("MET DST 2024").
// A date without a numeric zone is local time of the running process, as in Dovecot and mutt
// (they write local time too): the same file gives other INTERNALDATEs under another TZ.

const MONTHS = ['jan', 'feb', 'mar', 'apr', 'may', 'jun', 'jul', 'aug', 'sep', 'oct', 'nov', 'dec'];
const WEEKDAY_NAMES = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'];
const MONTH_NAMES = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

export interface FromLine {
  sender: string;
  /** Unix seconds. */
  date: number;
}

function monthIndex(s: string): number {
  return MONTHS.indexOf(s.toLowerCase());
}

function localOrZoned(y: number, mon: number, d: number, h: number, mi: number, s: number, zone: string | undefined): number {
  if (zone !== undefined) {
    const sign = zone[0] === '-' ? -1 : 1;
    const off = sign * (Number(zone.slice(1, 3)) * 3600 + Number(zone.slice(3, 5)) * 60);
    return Math.floor(Date.UTC(y, mon, d, h, mi, s) / 1000) - off;
  }
  const dt = new Date(2000, 0, 1, 0, 0, 0);
  dt.setFullYear(y, mon, d);
  dt.setHours(h, mi, s, 0);
  return Math.floor(dt.getTime() / 1000);
}

const ASCTIME = /^[A-Za-z]{3} +([A-Za-z]{3}) +(\d{1,2}) +(\d{1,2}):(\d{1,2})(?::(\d{1,2}))? +(?:[A-Za-z]+ +)?(\d{4})(?:$|( +)([+-]\d{4})(?![0-9])|[^0-9])/;
const RFC2822 = /^[A-Za-z]{3}, +(\d{1,2}) +([A-Za-z]{3}) +(\d{4}) +(\d{1,2}):(\d{1,2})(?::(\d{1,2}))?(?: +([+-]\d{4}))?/;

/** Parses the date part of a From line; null if it is not a date Dovecot accepts. */
export function parseFromDate(s: string): number | null {
  let m = ASCTIME.exec(s);
  if (m) {
    const mon = monthIndex(m[1]!);
    if (mon < 0) return null;
    const zone = m[8];
    return localOrZoned(Number(m[6]), mon, Number(m[2]), Number(m[3]), Number(m[4]), Number(m[5] ?? 0), zone);
  }
  m = RFC2822.exec(s);
  if (m) {
    const mon = monthIndex(m[2]!);
    if (mon < 0) return null;
    return localOrZoned(Number(m[3]), mon, Number(m[1]), Number(m[4]), Number(m[5]), Number(m[6] ?? 0), m[7]);
  }
  return null;
}

/**
 * Parses a From_ line (without its line terminator; a trailing CR is ignored). Returns null when
 * the line is not a message separator.
 */
export function parseFromLine(line: string): FromLine | null {
  if (!line.startsWith('From ')) return null;
  let s = line.endsWith('\r') ? line.slice(0, -1) : line;
  s = s.slice(5);
  const sp = s.indexOf(' ');
  if (sp < 0) return null;
  const sender = s.slice(0, sp);
  let i = sp;
  while (s[i] === ' ') i++;
  const date = parseFromDate(s.slice(i));
  if (date === null) return null;
  return { sender, date };
}

function pad2(n: number): string {
  return n < 10 ? `0${n}` : String(n);
}

/** "Fri Mar 01 12:34:56 2024" in local time: the date format Dovecot writes into From lines. */
export function formatFromDate(unixSeconds: number): string {
  const d = new Date(unixSeconds * 1000);
  return (
    `${WEEKDAY_NAMES[d.getDay()]} ${MONTH_NAMES[d.getMonth()]} ${pad2(d.getDate())} ` +
    `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())} ${d.getFullYear()}`
  );
}

/** Dates a From_ line can carry: its year must have 4 digits, or the line is no separator. */
const MIN_DATE = 0; // 1970
const MAX_DATE = 253402214400; // 9999-12-31 00:00 UTC: still year 9999 in every time zone

/** A From_ line as Dovecot writes it ("From <sender>  <date>", two spaces), without terminator. */
export function formatFromLine(sender: string, unixSeconds: number): string {
  const clean = sender.replace(/[\s]/g, '') || 'MAILER-DAEMON';
  const t = Number.isFinite(unixSeconds) ? Math.min(MAX_DATE, Math.max(MIN_DATE, Math.floor(unixSeconds))) : MIN_DATE;
  return `From ${clean}  ${formatFromDate(t)}`;
}
