// The peer's answers to our mail requests for one mailbox, taken from the channel as the saves
// need them instead of all at once. Over a byte stream that is what bounds memory: the channel
// holds only a budget of received bodies (see transport/stream.ts), so a mailbox with thousands
// of new mails is saved while it arrives rather than collected first. In one process the bodies
// are lazy readers either way.
import { ProtocolError, type Channel } from '../transport/channel.js';
import type { MailRecord } from './records.js';

export class MailFeed {
  /** Answers that arrived before the one asked for (the peer answers in request order, so rarely any). */
  private readonly early = new Map<number, MailRecord[]>();
  private ended = false;

  constructor(private readonly ch: Channel) {}

  /** The answer for the mail requested as `uid`; undefined when the peer sent none. */
  async take(uid: number): Promise<MailRecord | undefined> {
    const waiting = this.early.get(uid);
    if (waiting && waiting.length > 0) {
      const rec = waiting.shift()!;
      if (waiting.length === 0) this.early.delete(uid);
      return rec;
    }
    while (!this.ended) {
      const rec = await this.ch.recv();
      if (rec.type === 'end') {
        this.ended = true;
        break;
      }
      if (rec.type !== 'mail') throw new ProtocolError(`expected a mail record or end of list, got ${rec.type}`);
      if (rec.uid === uid) return rec;
      const list = this.early.get(rec.uid);
      if (list) list.push(rec);
      else this.early.set(rec.uid, [rec]);
    }
    return undefined;
  }

  /** Reads the answers nobody took, up to the end of the list, and lets them go. */
  async finish(): Promise<void> {
    this.early.clear();
    while (!this.ended) {
      const rec = await this.ch.recv();
      if (rec.type === 'end') this.ended = true;
      else if (rec.type !== 'mail') throw new ProtocolError(`expected a mail record or end of list, got ${rec.type}`);
    }
  }
}
