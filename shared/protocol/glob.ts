/**
 * Globs over PEFT tensor names for personalization (`--personal`): `*` matches any run of
 * characters (dots included), `?` one character; everything else is literal; a glob matches the
 * whole name. Both the client (to keep tensors home) and the coordinator (to know who contributes
 * what) use this one matcher.
 *
 * Why not a RegExp: `*` as `.*` backtracks, and a peer-supplied glob like `*?*?*?…!` makes V8 try
 * every way of splitting the name between the stars — seconds per tensor name at 15 characters,
 * exponential beyond. Here the glob is split at its stars into segments and each middle segment is
 * matched at its leftmost possible place (any later placement leaves less room for the rest, so
 * leftmost never loses a match). Matching one name is O(len(name) · len(glob)), no backtracking.
 *
 * Characters are UTF-16 code units, like the tensor names we compare against; `?` matches any one
 * of them, line terminators included (the regex it replaces refused those; tensor names have none).
 */

interface CompiledGlob {
  /** Pieces between stars; star-free globs have exactly one and must match the whole name. */
  readonly segments: readonly string[];
  readonly starred: boolean;
  /** Sum of segment lengths: names shorter than this never match. */
  readonly minLength: number;
}

const QMARK = 0x3f; // '?'

function compileGlob(glob: string): CompiledGlob {
  if (typeof glob !== 'string') throw new TypeError(`glob must be a string, got ${typeof glob}`);
  const parts = glob.split('*');
  const starred = parts.length > 1;
  // Empty pieces between adjacent stars add nothing; keep the first and last (the anchors) even when empty.
  const segments = starred ? [parts[0]!, ...parts.slice(1, -1).filter((s) => s.length > 0), parts[parts.length - 1]!] : parts;
  return { segments, starred, minLength: segments.reduce((a, s) => a + s.length, 0) };
}

/** Does `seg` (with `?` wildcards) match `name` at offset `at`? Caller guarantees it fits. */
function segmentAt(name: string, at: number, seg: string): boolean {
  for (let i = 0; i < seg.length; i++) {
    const c = seg.charCodeAt(i);
    if (c !== QMARK && c !== name.charCodeAt(at + i)) return false;
  }
  return true;
}

function matchCompiled(g: CompiledGlob, name: string): boolean {
  const n = name.length;
  if (n < g.minLength) return false;
  const segs = g.segments;
  if (!g.starred) return n === g.minLength && segmentAt(name, 0, segs[0]!);
  const head = segs[0]!, tail = segs[segs.length - 1]!;
  if (!segmentAt(name, 0, head) || !segmentAt(name, n - tail.length, tail)) return false;
  // Middle segments must fit, in order and without overlapping, between head and tail.
  let pos = head.length;
  const end = n - tail.length;
  for (let k = 1; k < segs.length - 1; k++) {
    const seg = segs[k]!;
    let at = pos;
    const last = end - seg.length;
    while (at <= last && !segmentAt(name, at, seg)) at++;
    if (at > last) return false;
    pos = at + seg.length;
  }
  return true;
}

/** Whether `name` matches `glob` (whole name). For many names, build a matcher once with globMatcher. */
export function globMatch(glob: string, name: string): boolean {
  return matchCompiled(compileGlob(glob), name);
}

/** One predicate for a list of globs: true when any of them matches the whole name. */
export function globMatcher(globs: readonly string[]): (name: string) => boolean {
  const compiled = globs.map(compileGlob);
  return (name) => compiled.some((g) => matchCompiled(g, name));
}
