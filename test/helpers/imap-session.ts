// A logged-in imapflow client against a local test server.
import { ImapFlow } from 'imapflow';

/**
 * Connects to 127.0.0.1:`port` without TLS, logs in and returns the client (logger off).
 * The caller must `await client.logout()` (or `client.close()`) when done.
 * Note: imapflow's mailboxCreate() also SUBSCRIBEs the new mailbox.
 */
export async function imapSession(port: number, user: string, pass: string): Promise<ImapFlow> {
  const client = new ImapFlow({
    host: '127.0.0.1',
    port,
    secure: false,
    auth: { user, pass },
    logger: false,
    // Our private Dovecot has ssl = no; never try STARTTLS.
    doSTARTTLS: false,
    disableAutoIdle: true,
    connectionTimeout: 10_000,
    greetingTimeout: 10_000,
    socketTimeout: 60_000,
  });
  // An 'error' event without a listener would crash the test process.
  client.on('error', () => undefined);
  await client.connect();
  return client;
}

/** Raw access to imapflow's command executor (not part of its typed API). */
export interface RawUntagged {
  command: string;
  attributes?: RawAttr[];
}
export type RawAttr = { type?: string; value?: unknown } | RawAttr[];

type Exec = (
  command: string,
  attributes: unknown[],
  options?: { untagged?: Record<string, (u: RawUntagged) => Promise<void> | void> },
) => Promise<{ next: () => void }>;

/**
 * Runs one raw IMAP command, calling `onUntagged` for each untagged response whose
 * keyword is in `keywords`. Used for LIST/LSUB, where imapflow's list() merges and
 * filters results (it drops subscribed-but-nonexistent mailboxes).
 */
export async function rawCommand(
  client: ImapFlow,
  command: string,
  args: unknown[],
  keywords: string[],
  onUntagged: (u: RawUntagged) => void,
): Promise<void> {
  const exec = (client as unknown as { exec: Exec }).exec.bind(client);
  const untagged: Record<string, (u: RawUntagged) => Promise<void>> = {};
  for (const k of keywords) untagged[k] = async (u) => onUntagged(u);
  const res = await exec(command, args, { untagged });
  res.next();
}
