/**
 * A synthetic but realistic-looking report (seeded), for tests, for previewing the renderers and as
 * a worked example of the report.json shape. The numbers are invented; nothing here trains.
 */
import { Rng } from '../../shared/data/random.js';
import { REPORT_SCHEMA_VERSION, type Report, type RoundRecord, type ClientRound, type EvalMetrics, type CurvePoint } from './types.js';
import { finalFigure } from './stats.js';

function metrics(acc: number, rng: Rng, n: number): EvalMetrics {
  const a = Math.min(0.995, Math.max(0.3, acc + rng.normal() * 0.01));
  return { accuracy: a, f1: Math.max(0, a - 0.04 + rng.normal() * 0.01), loss: Math.max(0.02, 1.4 * (1 - a) + 0.05), n };
}

const mean = (xs: number[]) => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : 0);

function meanMetrics(ms: EvalMetrics[]): EvalMetrics {
  return {
    accuracy: mean(ms.map((m) => m.accuracy ?? 0)),
    f1: mean(ms.map((m) => m.f1 ?? 0)),
    loss: mean(ms.map((m) => m.loss ?? 0)),
    n: ms.reduce((s, m) => s + (m.n ?? 0), 0),
  };
}

export function sampleReport(opts: { clients?: number; rounds?: number; seed?: number } = {}): Report {
  const nc = opts.clients ?? 8;
  const nr = opts.rounds ?? 10;
  const rng = new Rng(opts.seed ?? 1);
  const ranks = [4, 8, 16];
  const clients = Array.from({ length: nc }, (_, i) => {
    const spam = Math.round(10 + rng.next() * 120);
    const ham = Math.round(20 + rng.next() * 300);
    const train = Math.round((spam + ham) * 0.8);
    return { id: `c${String(i + 1).padStart(2, '0')}`, rank: ranks[i % 3] as number, trainExamples: train, evalExamples: spam + ham - train, labelCounts: { ham, spam } };
  });
  const adapterBytes = (r: number) => r * 2 * 64 * 4 * 2 * 4 * 4; // A and B, 4 modules, 4 layers, f32
  const fullModelBytes = 9_437_184;
  const rounds: RoundRecord[] = [];
  for (let r = 1; r <= nr; r++) {
    const progress = 1 - Math.exp(-r / 3);
    const sampled = rng.shuffle(clients).slice(0, Math.max(2, Math.ceil(nc * 0.75)));
    const dropped = sampled[rng.int(sampled.length)] as (typeof clients)[number];
    const perClient: ClientRound[] = clients.map((c) => {
      const participated = sampled.includes(c);
      const isDrop = c === dropped;
      return {
        clientId: c.id,
        participated,
        dropped: participated && isDrop,
        rank: c.rank,
        trainLoss: participated ? 0.9 * (1 - progress) + 0.12 + rng.next() * 0.05 : null,
        localSteps: participated ? 20 : 0,
        global: metrics(0.62 + 0.28 * progress, rng, c.evalExamples),
        personalized: metrics(0.66 + 0.3 * progress, rng, c.evalExamples),
        bytesUp: participated && !isDrop ? adapterBytes(16) * 0.5 : 0,
        bytesDown: participated ? adapterBytes(c.rank) : 0,
      };
    });
    const up = perClient.reduce((s, c) => s + c.bytesUp, 0);
    const down = perClient.reduce((s, c) => s + c.bytesDown, 0);
    const phaseMs = { distribute: 40 + rng.next() * 20, train: 2500 + rng.next() * 600, secagg: 300 + rng.next() * 80, aggregate: 25 + rng.next() * 10, eval: 400 + rng.next() * 100 };
    rounds.push({
      round: r,
      participants: sampled.map((c) => c.id),
      dropouts: [dropped.id],
      trainLoss: mean(perClient.filter((c) => typeof c.trainLoss === 'number').map((c) => c.trainLoss as number)),
      global: meanMetrics(perClient.map((c) => c.global as EvalMetrics)),
      personalized: meanMetrics(perClient.map((c) => c.personalized as EvalMetrics)),
      clients: perClient,
      bytes: { up, down, fullModelEquivalent: sampled.length * fullModelBytes * 2 },
      phaseMs,
      wallMs: Object.values(phaseMs).reduce((a, b) => a + b, 0),
    });
  }
  const curve = (base: number, gain: number): CurvePoint[] =>
    Array.from({ length: nr }, (_, i) => {
      const acc = Math.min(0.99, base + gain * (1 - Math.exp(-(i + 1) / 3)) + rng.normal() * 0.005);
      return { round: i + 1, accuracy: acc, f1: acc - 0.05, loss: 1.4 * (1 - acc) + 0.05 };
    });
  const K = 3;
  const points = (key: 'global' | 'personalized'): CurvePoint[] => rounds.map((x) => ({ round: x.round, loss: x[key].loss, accuracy: x[key].accuracy, f1: x[key].f1 }));
  const localPer = clients.map((c) => ({ clientId: c.id, metrics: metrics(0.74 + rng.next() * 0.1, rng, c.evalExamples) }));
  const strategies = ['fedit', 'ffa', 'rank-aware', 'fedsa'].map((s, i) => {
    const cv = curve(0.6, 0.26 + i * 0.012);
    const f = cv[cv.length - 1] as CurvePoint;
    void f;
    return { strategy: s, curve: cv, final: { global: finalFigure(cv, K) }, bytesUpTotal: rounds.reduce((a, r) => a + r.bytes.up, 0) * (s === 'ffa' || s === 'fedsa' ? 0.5 : 1) };
  });
  const central = curve(0.65, 0.31);
  const localCurve = curve(0.7, 0.1);
  return {
    schemaVersion: REPORT_SCHEMA_VERSION,
    title: 'fedlora simulation: spam filtering on SpamAssassin (sample)',
    createdAt: new Date(Date.UTC(2025, 0, 1, 12)).toISOString(),
    scenario: { name: 'spam-default-sample', strategy: 'rank-aware', seed: opts.seed ?? 1, clients: nc, clientsPerRound: Math.ceil(nc * 0.75), rounds: nr, partition: { kind: 'dirichlet', alpha: 0.5 }, rankMix: { 4: 0.4, 8: 0.3, 16: 0.3 }, personalization: ['*.lora_B.*'], dropoutPerRound: 1 },
    versions: { fedlora: '0.1.0', node: process.version, tfjs: '4.22.0', protocol: 1 },
    environment: { platform: `${process.platform}-${process.arch}`, cpus: 2, backend: 'wasm' },
    model: { name: 'fedlora-tiny-llama', parameters: 2_359_296, adapterParameters: 16_384, fullModelBytes },
    metricsNote: 'F1 of the "spam" class; means are unweighted over clients.',
    clients,
    rounds,
    final: { global: finalFigure(points('global'), K), personalized: finalFigure(points('personalized'), K), rounds: nr },
    evaluation: { global: 'test', testExamples: 256, perClient: { min: Math.min(...clients.map((c) => c.evalExamples)), max: Math.max(...clients.map((c) => c.evalExamples)), total: clients.reduce((a, c) => a + c.evalExamples, 0) }, finalWindow: K },
    references: {
      alwaysMajority: { label: 'ham', test: { loss: null, accuracy: 0.695, f1: 0.41, n: 256 }, clients: { loss: null, accuracy: 0.66, f1: 0.39, n: 200 } },
      perClientMajority: { clients: { loss: null, accuracy: 0.74, f1: 0.42, n: 200 } },
    },
    baselines: {
      localOnly: { final: finalFigure(localCurve, K), perClient: localPer, curve: localCurve },
      centralized: { final: finalFigure(central, K), curve: central },
      strategies,
    },
    wallMs: rounds.reduce((a, r) => a + r.wallMs, 0),
    notes: ['Synthetic sample data for renderer tests.'],
  };
}
