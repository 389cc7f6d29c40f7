// A private doveadm-only Dovecot configuration (no server, no auth): `doveadm -c CONF` run as
// root with USER/HOME in the environment acts as that user, with mail access as mail_uid.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { MAIL_GID, MAIL_UID } from '../corpus.js';

export interface DoveadmEnv {
  configPath: string;
  env: NodeJS.ProcessEnv;
}

/**
 * `separator`: adds `namespace inbox { inbox = yes; separator = ... }`. Dovecot refuses to sync
 * between storages whose hierarchy separators differ (Maildir++ '.', mbox '/') unless the
 * namespace names one explicitly: "Mail locations must use the same hierarchy separator (specify
 * namespace prefix="" { separator } explicitly)".
 */
export function writeDoveadmConfig(dir: string, o: { separator?: string } = {}): DoveadmEnv {
  fs.mkdirSync(dir, { recursive: true });
  fs.chmodSync(dir, 0o755);
  const home = path.join(dir, 'home');
  fs.mkdirSync(home, { recursive: true });
  fs.chownSync(home, MAIL_UID, MAIL_GID);
  const conf = `# dsync benchmark: doveadm-only private config (bench/lib/dovecot.ts); all settings default otherwise
base_dir = ${dir}/run
state_dir = ${dir}/state
log_path = ${dir}/dovecot.log
info_log_path = ${dir}/dovecot.log
mail_uid = ${MAIL_UID}
mail_gid = ${MAIL_GID}
first_valid_uid = 1
first_valid_gid = 1
mail_location =
ssl = no
protocols =
${o.separator ? `namespace inbox {\n  inbox = yes\n  separator = ${o.separator}\n}\n` : ''}`;
  const configPath = path.join(dir, 'dovecot.conf');
  fs.writeFileSync(configPath, conf, { mode: 0o644 });
  return { configPath, env: { PATH: process.env.PATH ?? '/usr/bin:/bin', USER: 'bench', HOME: home, LANG: 'C' } };
}

export function dovecotVersion(): string {
  const r = spawnSync('dovecot', ['--version'], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : 'unknown';
}

/** doveadm's own command line for a sync: `doveadm -c CONF -o mail_location=maildir:A sync|backup [-f] maildir:B`. */
export function doveadmSyncCmd(d: DoveadmEnv, mode: 'mirror' | 'backup', a: string, b: string, full: boolean, extra: string[] = []): string[] {
  return doveadmCmd(d, mode, `maildir:${a}`, `maildir:${b}`, full, extra);
}

/** The same between any two locations (`maildir:DIR`, `mbox:DIR:INBOX=FILE`, ...). */
export function doveadmCmd(d: DoveadmEnv, mode: 'mirror' | 'backup', local: string, remote: string, full = false, extra: string[] = []): string[] {
  return ['doveadm', '-c', d.configPath, ...extra, '-o', `mail_location=${local}`, mode === 'mirror' ? 'sync' : 'backup', ...(full ? ['-f'] : []), remote];
}

/**
 * A sync with B served by `doveadm dsync-server`, started by doveadm itself as the command its
 * destination names (what it runs through ssh for `remote:host`).
 */
export function doveadmRemoteCmd(d: DoveadmEnv, mode: 'mirror' | 'backup', a: string, b: string, login: string[] = []): string[] {
  // Over ssh the server gets the login's environment (root's HOME, which mail_uid cannot enter).
  const env = login.length > 0 ? `env HOME=${d.env.HOME} USER=${d.env.USER} ` : '';
  const server = `${login.join(' ')}${login.length > 0 ? ' ' : ''}${env}doveadm -c ${d.configPath} -o mail_location=maildir:${b} dsync-server`;
  return ['doveadm', '-c', d.configPath, '-o', `mail_location=maildir:${a}`, mode === 'mirror' ? 'sync' : 'backup', server];
}

/** Opens every mailbox once (`doveadm index '*'`): uidlists and dovecot.index* as Dovecot leaves them. */
export function primeWithDovecot(d: DoveadmEnv, maildir: string): void {
  const r = spawnSync('doveadm', ['-c', d.configPath, '-o', `mail_location=maildir:${maildir}`, 'index', '*'], { encoding: 'utf8', env: d.env });
  if (r.status !== 0) throw new Error(`doveadm index failed (exit ${r.status}): ${r.stderr}`);
}
