import { expect } from 'chai';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadScenario, parseScenario } from '../../simulations/scenario.js';
import { privacySvg, writePrivacyReport, type PrivacyReport } from '../../simulations/report/privacy.js';
import { noiseForEpsilon, rdpEpsilon } from '../../shared/privacy/index.js';
import { ConfigError } from '../../shared/errors.js';

describe('dp scenario and privacy–utility report', () => {
  it('the dp preset has 100 clients sampled 20 per round and two finite budgets', async () => {
    const s = await loadScenario('dp');
    expect(s.clients).to.equal(100);
    expect(s.clientsPerRound).to.equal(20);
    expect(s.dp).to.deep.equal({ mode: 'central', clip: 8, delta: 1e-5, budgets: [8, 2] });
  });

  it('refuses malformed dp fields, naming them', () => {
    const base = { name: 'x', clients: 10, clientsPerRound: 5 };
    for (const [dp, field] of [
      [{ budgets: [] }, 'dp.budgets'], [{ budgets: [1, 1] }, 'dp.budgets'], [{ budgets: [0] }, 'dp.budgets[0]'],
      [{ budgets: [2], mode: 'local' }, 'dp.mode'], [{ budgets: [2], clip: -1 }, 'dp.clip'], [{ budgets: [2], delta: 0.5 }, 'dp.delta'], [{ budgets: [2], z: 1 }, 'dp.z'],
    ] as const) {
      expect(() => parseScenario({ ...base, dp }), JSON.stringify(dp)).to.throw(ConfigError, field);
    }
    expect(parseScenario(base).dp).to.equal(null);
    expect(parseScenario({ ...base, dp: { budgets: [2, 8] } }).dp).to.deep.equal({ mode: 'central', clip: 1, delta: 1e-5, budgets: [8, 2] });
  });

  it('noiseForEpsilon spends the budget to within 0.1% and no more', () => {
    for (const [q, T, E] of [[0.2, 10, 8], [0.2, 10, 2], [0.05, 100, 1]] as const) {
      const z = noiseForEpsilon({ q, steps: T, delta: 1e-5, epsilon: E });
      expect(rdpEpsilon({ q, z, steps: T, delta: 1e-5 })).to.be.within(0.99 * E, E);
      expect(rdpEpsilon({ q, z: z / 1.002, steps: T, delta: 1e-5 })).to.be.above(E * 0.999);
    }
  });

  it('writes privacy.json, an SVG curve with ∞ and the finite points, and an HTML page', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'fedlora-privacy-report-'));
    try {
      const r: PrivacyReport = {
        scenario: 'dp', mode: 'central', clip: 8, delta: 1e-5, q: 0.2, clients: 100, clientsPerRound: 20, strategy: 'rank-aware', command: 'fedlora simulate --scenario dp',
        references: [{ label: 'local-only', accuracy: 0.71 }],
        points: [
          { budget: null, epsilon: null, z: 0, rounds: 10, accuracy: 0.93, lastAccuracy: 0.94, f1: 0.8, loss: 0.2, dir: 'eps-inf', wallMs: 1000 },
          { budget: 8, epsilon: 7.99, z: 0.9, rounds: 10, accuracy: 0.75, lastAccuracy: 0.74, f1: 0.3, loss: 0.5, dir: 'eps-8', wallMs: 1000 },
          { budget: 2, epsilon: 1.99, z: 2.2, rounds: 10, accuracy: 0.7, lastAccuracy: 0.7, f1: 0.1, loss: 0.9, dir: 'eps-2', wallMs: 1000 },
        ],
      };
      const files = await writePrivacyReport(dir, r);
      expect(JSON.parse(await readFile(files.json, 'utf8'))).to.deep.equal(r);
      const svg = privacySvg(r);
      expect(svg).to.include('∞').and.include('7.99').and.include('1.99').and.include('0.930').and.include('local-only 0.710');
      expect((svg.match(/<circle /g) ?? []).length).to.equal(3);
      expect(await readFile(files.html, 'utf8')).to.include('<svg').and.include('eps-8/report.html');
    } finally { await rm(dir, { recursive: true, force: true }); }
  });
});
