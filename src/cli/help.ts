// The --help text. docs/dsync.1.md is the long form of the same; keep them in step.
import { DEFAULT_REMOTE_CMD } from './settings.js';

export function helpText(): string {
  return `Usage: dsync [options] mirror LOCATION2     two-way sync (alias: sync)
       dsync [options] backup LOCATION2     one-way: make LOCATION2 a copy of the local mail
       dsync [options] server               the remote side: speaks the protocol on stdin/stdout

The local mail is mail_location (from -o or the -c config, or the -u user's userdb "mail" field).
Options must come before the command word.

Options:
  -c FILE      read this Dovecot config file (with its !include files). Without -c no config
               file is read, not even /etc/dovecot/dovecot.conf: only -o settings apply.
  -o KEY=VALUE set a setting, overriding the config and userdb (repeatable),
               e.g. -o mail_location=maildir:~/Maildir
  -u USER      sync USER's mail: looked up in the config's userdb (passwd-file, static, passwd)
               or /etc/passwd. As root, dsync switches to the user's uid/gid (or mail_uid/mail_gid).
  -C CHAR      replacement for characters a mailbox name cannot hold (dsync_alt_char, default _)
  -m MAILBOX   sync only this mailbox
  -f           full sync: compare every message, skip nothing on metadata
  -R           backup in reverse: LOCATION2 is copied over the local mail
  -v           verbose: say what changed in each mailbox
  -D           debug logging
  -h, --help   show this help
  -V, --version
               show the version

LOCATION2:
  maildir:PATH[:KEY=VALUE...]   a local Maildir, e.g. maildir:/backup/Maildir:LAYOUT=fs
  mbox:PATH[:INBOX=FILE]        a local mbox directory
  [user@]host                   run dsync on host over ssh; user is the remote -u user
  remote:[login@]host           the same, with login as the ssh login
  COMMAND WORDS...              any command line that runs "dsync server" elsewhere, e.g.
                                ssh -i key host dsync -u alice  ("server" is appended if missing)
  Remote commands come from the dsync_remote_cmd setting, default:
    ${DEFAULT_REMOTE_CMD}
  (a word whose %-variables are all empty, like -l%{login} without a login, is left out).
  The remote dsync also reads no config without -c: pass it -c or -o in that command.

Variables in mail_location and LOCATION2: ~ and %h (home), %u (user), %n (user without
@domain), %d (domain), %% (a literal %); long forms %{user}, %{home}, ...

Exit status:
  0   everything synced
  2   done, but mailboxes changed during the run: run dsync again
  64  command-line usage error
  65  done, but mailboxes the other side's format cannot hold were left out (see warnings)
  67  no such user (-u)
  75  temporary failure (I/O error, remote side failed, ...)
  77  permission denied (e.g. -u another user without being root)
  78  configuration error (unreadable config, mail_location not set, ...)

Examples:
  dsync -o mail_location=maildir:~/Maildir mirror maildir:/backup/Maildir
  dsync -c /etc/dovecot/dovecot.conf -u alice backup alice@replica.example.com
`;
}
