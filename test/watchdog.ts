/**
 * A watchdog for the test process. Mocha's per-test timeout is a timer on the main thread: a test that
 * never yields (a synchronous loop, a blocked wait) stops it from firing, and the run would then hang
 * until CI's own limit. Here the main thread stamps a shared clock every second; a worker thread, which
 * keeps running while the main thread is stuck, notices when the stamp is older than the limit
 * (FEDLORA_TEST_STALL_S, default 120 s), prints the test that was running and the main thread's stack
 * (through the inspector, which interrupts a running loop), and ends the process with SIGKILL, so a
 * failing run ends fast and says where it stopped.
 */
import { Worker } from 'node:worker_threads';

const WORKER = `
const { workerData } = require('node:worker_threads');
const fs = require('node:fs');
const inspector = require('node:inspector');
const beat = new Float64Array(workerData.beat);
const title = new Uint8Array(workerData.title);
const stallMs = workerData.stallMs;
const say = (s) => { try { fs.writeSync(2, s + '\\n'); } catch {} };
const current = () => {
  const n = title.indexOf(0);
  return Buffer.from(title.subarray(0, n < 0 ? title.length : n)).toString('utf8');
};
const timer = setInterval(() => {
  const idle = Date.now() - beat[0];
  if (idle < stallMs) return;
  clearInterval(timer);
  say('\\n[test watchdog] the main thread of the test process has not run for ' + Math.round(idle / 1000) + ' s (limit ' +
    Math.round(stallMs / 1000) + ' s; FEDLORA_TEST_STALL_S): a synchronous loop or a blocked wait. Running: ' + (current() || '(between tests)'));
  let ended = false;
  const end = () => {
    if (ended) return;
    ended = true;
    say('[test watchdog] ending the run (SIGKILL)');
    process.kill(process.pid, 'SIGKILL');
  };
  try {
    const s = new inspector.Session();
    s.connectToMainThread();
    const urls = new Map();
    s.on('Debugger.scriptParsed', (m) => urls.set(m.params.scriptId, m.params.url));
    s.on('Debugger.paused', (m) => {
      const frames = m.params.callFrames.slice(0, 30).map((f) =>
        '    at ' + (f.functionName || '<anonymous>') + ' (' + (f.url || urls.get(f.location.scriptId) || '?') + ':' + (f.location.lineNumber + 1) + ':' + ((f.location.columnNumber || 0) + 1) + ')');
      say('[test watchdog] main thread stack (generated positions):\\n' + frames.join('\\n'));
      end();
    });
    s.post('Debugger.enable', () => s.post('Debugger.pause'));
  } catch (e) {
    say('[test watchdog] no stack: ' + (e && e.message));
  }
  setTimeout(end, 10000);
}, 1000);
`;

let title: Uint8Array | null = null;

export function startWatchdog(): void {
  if (title) return;
  const raw = process.env.FEDLORA_TEST_STALL_S?.trim();
  const seconds = raw ? Number(raw) : 120;
  if (!Number.isFinite(seconds) || seconds <= 0) throw new RangeError(`FEDLORA_TEST_STALL_S must be a positive number of seconds, got ${JSON.stringify(raw)}`);
  const beat = new Float64Array(new SharedArrayBuffer(8));
  title = new Uint8Array(new SharedArrayBuffer(1024));
  beat[0] = Date.now();
  setInterval(() => { beat[0] = Date.now(); }, 1000).unref();
  // execArgv [] : the watchdog is plain JavaScript and must not load the TypeScript loader
  const w = new Worker(WORKER, { eval: true, execArgv: [], workerData: { beat: beat.buffer, title: title.buffer, stallMs: seconds * 1000 } });
  w.unref();
}

/** Records the running test's full title for the watchdog's message. */
export function setRunning(name: string): void {
  if (!title) return;
  const bytes = Buffer.from(name, 'utf8').subarray(0, title.length - 1);
  title.fill(0);
  title.set(bytes);
}
