import { expect } from 'chai';
import { partitionIid, partitionDirichlet, splitClients, labelCounts } from '../../simulations/partition.js';
import { ConfigError } from '../../shared/errors.js';

const items = Array.from({ length: 1000 }, (_, i) => ({ i, label: ['a', 'b', 'c', 'd', 'e'][i % 5] as string }));
const labelOf = (x: { label: string }) => x.label;
const ids = (parts: { i: number }[][]) => parts.map((p) => p.map((x) => x.i));

function entropyOf(counts: Record<string, number>): number {
  const n = Object.values(counts).reduce((a, b) => a + b, 0);
  return -Object.values(counts).reduce((h, c) => (c ? h + (c / n) * Math.log(c / n) : h), 0);
}

describe('partition', () => {
  it('iid: covers every item once, sizes differ by ≤ 1, deterministic in the seed', () => {
    const p = partitionIid(items, 7, 1);
    expect(p.flat().map((x) => x.i).sort((a, b) => a - b)).to.deep.equal(items.map((x) => x.i));
    const sizes = p.map((x) => x.length);
    expect(Math.max(...sizes) - Math.min(...sizes)).to.be.at.most(1);
    expect(ids(partitionIid(items, 7, 1))).to.deep.equal(ids(p));
    expect(ids(partitionIid(items, 7, 2))).to.not.deep.equal(ids(p));
    expect(() => partitionIid(items.slice(0, 3), 4, 1)).to.throw(ConfigError);
  });

  it('dirichlet: a partition of the items, deterministic, every client ≥ minimum', () => {
    const p = partitionDirichlet(items, labelOf, 20, 0.3, 'seed', { minPerClient: 10 });
    expect(p).to.have.length(20);
    expect(p.flat().map((x) => x.i).sort((a, b) => a - b)).to.deep.equal(items.map((x) => x.i));
    for (const c of p) expect(c.length).to.be.at.least(10);
    expect(ids(partitionDirichlet(items, labelOf, 20, 0.3, 'seed', { minPerClient: 10 }))).to.deep.equal(ids(p));
    expect(ids(partitionDirichlet(items, labelOf, 20, 0.3, 'other', { minPerClient: 10 }))).to.not.deep.equal(ids(p));
  });

  it('dirichlet: small alpha skews labels, large alpha is near IID', () => {
    const meanEntropy = (alpha: number) => {
      const p = partitionDirichlet(items, items.map(labelOf), 10, alpha, 5);
      const h = labelCounts(p, labelOf).map(entropyOf);
      return h.reduce((a, b) => a + b, 0) / h.length;
    };
    const skewed = meanEntropy(0.1);
    const iid = meanEntropy(1000);
    expect(iid).to.be.closeTo(Math.log(5), 0.05);
    expect(skewed).to.be.lessThan(0.6 * Math.log(5));
  });

  it('dirichlet: repairs to the minimum when draws cannot satisfy it', () => {
    const p = partitionDirichlet(items.slice(0, 60), labelOf, 30, 0.01, 9, { minPerClient: 2, maxAttempts: 1 });
    for (const c of p) expect(c.length).to.be.at.least(2);
    expect(p.flat()).to.have.length(60);
    expect(() => partitionDirichlet(items.slice(0, 10), labelOf, 6, 1, 1)).to.throw(ConfigError, /at least 2/);
    expect(() => partitionDirichlet(items, labelOf, 4, 0, 1)).to.throw(ConfigError);
    expect(() => partitionDirichlet(items, ['a'], 4, 1, 1)).to.throw(ConfigError);
  });

  it('splitClients: disjoint per client, stratified by label, ≥ 1 eval item', () => {
    const parts = partitionDirichlet(items, labelOf, 8, 1, 3);
    const splits = splitClients(parts, 0.2, 3, labelOf);
    splits.forEach((s, c) => {
      const part = parts[c]!;
      expect(s.train.length + s.eval.length).to.equal(part.length);
      expect(new Set([...s.train, ...s.eval].map((x) => x.i)).size).to.equal(part.length);
      expect(s.eval.length).to.equal(Math.round(0.2 * part.length));
      const pc = labelCounts([part], labelOf)[0]!;
      const ec = labelCounts([s.eval], labelOf)[0]!;
      for (const [k, v] of Object.entries(ec)) expect(v).to.be.at.most(Math.ceil((0.2 * (pc[k] ?? 0))) + 1);
    });
    expect(splitClients(parts, 0.2, 3, labelOf).map((s) => s.eval.map((x) => x.i))).to.deep.equal(splits.map((s) => s.eval.map((x) => x.i)));
    const tiny = splitClients([[items[0]!, items[1]!]], 0.01, 1);
    expect(tiny[0]!.eval).to.have.length(1);
    expect(tiny[0]!.train).to.have.length(1);
  });
});
