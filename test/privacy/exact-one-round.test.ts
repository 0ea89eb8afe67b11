// Exact (ε, δ) of ONE round of the Poisson-subsampled Gaussian, by direct numerical integration of the
// hockey-stick divergence in both adjacency directions (remove: P=(1-q)N(0,z²)+qN(1,z²) vs Q=N(0,z²); add: Q vs P),
// then bisection on ε for δ = 1e-5. Checks the PLD accountant against it and prints classic/improved RDP beside it.
// Deterministic (no randomness).
import { expect } from 'chai';
import { pldEpsilon, rdpEpsilon } from '../../shared/privacy/accountant.js';

const phi = (x: number, m: number, s: number): number => Math.exp(-((x - m) ** 2) / (2 * s * s)) / (s * Math.sqrt(2 * Math.PI));

function hockeyStick(q: number, z: number, eps: number, removeDir: boolean): number {
  const h = z * 2e-4;
  let s = 0;
  for (let x = -12 * z - 2; x < 12 * z + 3; x += h) {
    const Q = phi(x, 0, z);
    const P = (1 - q) * Q + q * phi(x, 1, z);
    const d = removeDir ? P - Math.exp(eps) * Q : Q - Math.exp(eps) * P;
    if (d > 0) s += d * h;
  }
  return s;
}

function exactEpsilon(q: number, z: number, delta: number): number {
  let lo = 0;
  let hi = 20;
  for (let i = 0; i < 30; i++) {
    const m = (lo + hi) / 2;
    if (Math.max(hockeyStick(q, z, m, true), hockeyStick(q, z, m, false)) > delta) lo = m;
    else hi = m;
  }
  return hi;
}

describe('privacy: exact one-round ε of the subsampled Gaussian vs the accountants', function () {
  this.timeout(60_000);
  for (const z of [1, 2]) {
    it(`q=0.01 z=${z}: PLD ≥ exact and within 1%; RDP (classic, improved) only upper bounds`, () => {
      const q = 0.01;
      const delta = 1e-5;
      const exact = exactEpsilon(q, z, delta);
      const pld = pldEpsilon({ q, z, steps: 1, delta });
      const classic = rdpEpsilon({ q, z, steps: 1, delta });
      const improved = rdpEpsilon({ q, z, steps: 1, delta, conversion: 'improved' });
      console.log(`    q=${q} z=${z} r=1 δ=${delta}: exact ε=${exact.toFixed(4)} PLD=${pld.toFixed(4)} RDP classic=${classic.toFixed(4)} RDP improved=${improved.toFixed(4)}`);
      // bisection resolution 20/2^30 plus quadrature error; the PLD is pessimistic by construction
      expect(pld).to.be.at.least(exact * (1 - 1e-3));
      expect(pld).to.be.at.most(exact * 1.01);
      expect(improved).to.be.at.least(exact);
      expect(classic).to.be.at.least(improved);
    });
  }
});
