// Dovecot-style %-variables, as used in mail_location, userdb args and dsync_remote_cmd:
//   %u  %{user}      the full user name (user@domain)
//   %n  %{username}  the part before '@'
//   %d  %{domain}    the part after '@' ('' without one)
//   %h  %{home}      the home directory
//   %%               a literal '%'
// plus any long name the caller supplies (%{host}, %{login}). A modifier letter may come first:
// %Lu / %L{user} lower-case, %Uu / %U{user} upper-case. An unknown variable is an error.
import { ConfigError } from './errors.js';

export interface VarValues {
  /** %u: the full user name. %n and %d are derived from it unless given. */
  user?: string;
  username?: string;
  domain?: string;
  /** %h */
  home?: string;
  /** Any further %{name} variables. */
  [name: string]: string | undefined;
}

const SHORT: Record<string, string> = { u: 'user', n: 'username', d: 'domain', h: 'home' };

/** Fills in %n/%d from %u when not given. */
function withDerived(vars: VarValues): VarValues {
  const out: VarValues = { ...vars };
  if (vars.user !== undefined) {
    const at = vars.user.indexOf('@');
    out.username ??= at >= 0 ? vars.user.slice(0, at) : vars.user;
    out.domain ??= at >= 0 ? vars.user.slice(at + 1) : '';
  }
  return out;
}

/**
 * Expands %-variables in `template`. `what` names the setting in error messages.
 * `onVar` (optional) sees each variable's expanded value, e.g. to notice empty ones.
 */
export function expandPercentVars(
  template: string,
  vars: VarValues,
  what = 'value',
  onVar?: (name: string, value: string) => void,
): string {
  const all = withDerived(vars);
  let out = '';
  for (let i = 0; i < template.length; i++) {
    const c = template[i]!;
    if (c !== '%') {
      out += c;
      continue;
    }
    let j = i + 1;
    if (template[j] === '%') {
      out += '%';
      i = j;
      continue;
    }
    let modifier: 'L' | 'U' | undefined;
    if ((template[j] === 'L' || template[j] === 'U') && (template[j + 1] === '{' || SHORT[template[j + 1] ?? ''])) {
      modifier = template[j] as 'L' | 'U';
      j++;
    }
    let name: string;
    let end: number;
    if (template[j] === '{') {
      const close = template.indexOf('}', j);
      if (close < 0) throw new ConfigError(`${what}: unterminated %{ in '${template}'`);
      name = template.slice(j + 1, close);
      end = close;
    } else {
      const letter = template[j];
      if (letter === undefined) throw new ConfigError(`${what}: '%' at the end of '${template}' (use %% for a literal %)`);
      const long = SHORT[letter];
      if (long === undefined) throw new ConfigError(`${what}: unknown variable %${letter} in '${template}'`);
      name = long;
      end = j;
    }
    const value = all[name];
    if (value === undefined) {
      throw new ConfigError(`${what}: variable %{${name}} has no value here (in '${template}')`);
    }
    const v = modifier === 'L' ? value.toLowerCase() : modifier === 'U' ? value.toUpperCase() : value;
    onVar?.(name, v);
    out += v;
    i = end;
  }
  return out;
}
