/**
 * Globs over PEFT tensor names for personalization (`--personal`): `*` matches any run of
 * characters (dots included), `?` one character; everything else is literal. Both the client
 * (to keep tensors home) and the coordinator (to know who contributes what) use this one matcher.
 */
export function globToRegExp(glob: string): RegExp {
  let src = '';
  for (const ch of glob) {
    if (ch === '*') src += '.*';
    else if (ch === '?') src += '.';
    else src += ch.replace(/[\\^$.+()|[\]{}]/g, '\\$&');
  }
  return new RegExp(`^${src}$`);
}

export function globMatcher(globs: readonly string[]): (name: string) => boolean {
  const res = globs.map(globToRegExp);
  return (name) => res.some((r) => r.test(name));
}
