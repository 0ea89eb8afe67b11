/**
 * Namespaced logging in the style of `debug`: library code never writes to stdout.
 * `FEDLORA_LOG=debug` (or DEBUG=fedlora:*) turns on debug lines; info/warn always go to stderr
 * unless FEDLORA_LOG=silent. The CLI may install a sink (e.g. to keep progress bars tidy).
 */
export type Level = 'debug' | 'info' | 'warn' | 'error';
const order: Record<Level, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export type Sink = (level: Level, namespace: string, message: string) => void;

function envLevel(): number {
  const v = (typeof process !== 'undefined' ? process.env.FEDLORA_LOG : undefined) ?? '';
  if (v === 'silent') return 100;
  if (v === 'debug' || /(^|,)fedlora:\*/.test(process.env.DEBUG ?? '')) return order.debug;
  if (v === 'warn') return order.warn;
  if (v === 'error') return order.error;
  return order.info;
}

let threshold = envLevel();
let sink: Sink = (level, ns, msg) => {
  const t = new Date().toISOString().slice(11, 23);
  process.stderr.write(`${t} ${level.padEnd(5)} ${ns} ${msg}\n`);
};

export function setLogSink(s: Sink): void { sink = s; }
export function setLogLevel(l: Level | 'silent'): void { threshold = l === 'silent' ? 100 : order[l]; }

export interface Logger {
  debug(msg: string): void;
  info(msg: string): void;
  warn(msg: string): void;
  error(msg: string): void;
  child(sub: string): Logger;
}

export function logger(namespace: string): Logger {
  const emit = (level: Level) => (msg: string) => { if (order[level] >= threshold) sink(level, namespace, msg); };
  return {
    debug: emit('debug'), info: emit('info'), warn: emit('warn'), error: emit('error'),
    child: (sub: string) => logger(`${namespace}:${sub}`),
  };
}
