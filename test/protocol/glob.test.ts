import { expect } from 'chai';
import { ProtocolError } from '../../shared/errors.js';
import { LIMITS, PROTOCOL_VERSION, globMatch, globMatcher, parseHello } from '../../shared/protocol/index.js';
import { testRng } from '../crypto/seed.js';

/** The old semantics as a regex (dotAll so `?` also takes line terminators); only safe on short globs. */
function reference(glob: string): RegExp {
  let src = '';
  for (const ch of glob) src += ch === '*' ? '.*' : ch === '?' ? '.' : ch.replace(/[\\^$.*+?()|[\]{}\/-]/g, '\\$&');
  return new RegExp(`^${src}$`, 's');
}

const MODULES = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'];

function tensorNames(count: number, label: string): string[] {
  const rng = testRng(label);
  return Array.from({ length: count }, () => {
    const mod = MODULES[rng.int(MODULES.length)]!;
    const block = MODULES.indexOf(mod) >= 4 ? 'mlp' : 'self_attn';
    return `base_model.model.model.layers.${rng.int(80)}.${block}.${mod}.lora_${rng.int(2) ? 'A' : 'B'}.weight`;
  });
}

describe('protocol/glob', () => {
  it('agrees with the reference regex on seeded random short globs and names', () => {
    const rng = testRng('glob-equivalence');
    const globAlphabet = ['a', 'b', '.', '_', '*', '*', '?', '?', '(', '[', '\\', '+', '$', '\n'];
    const nameAlphabet = ['a', 'b', '.', '_', '(', '[', '\\', '+', '$', '\n'];
    const draw = (alpha: string[], max: number) => Array.from({ length: rng.int(max + 1) }, () => alpha[rng.int(alpha.length)]!).join('');
    let matches = 0;
    const cases = 20_000;
    for (let i = 0; i < cases; i++) {
      const glob = draw(globAlphabet, 8);
      // Names are half the time built from the glob itself so that matches are common.
      const name = i % 2 ? draw(nameAlphabet, 10) : glob.replace(/\*/g, () => draw(nameAlphabet, 3)).replace(/\?/g, () => draw(nameAlphabet.slice(0, 4), 1) || 'a');
      const want = reference(glob).test(name);
      expect(globMatch(glob, name), `glob ${JSON.stringify(glob)} name ${JSON.stringify(name)}`).to.equal(want);
      expect(globMatcher([glob])(name)).to.equal(want);
      if (want) matches++;
    }
    expect(matches).to.be.above(cases / 10); // the generator really exercises both outcomes
  });

  it('keeps the documented cases: * spans dots, ? is one char, all else literal, anchored', () => {
    expect(globMatch('*', '')).to.equal(true);
    expect(globMatch('', '')).to.equal(true);
    expect(globMatch('', 'a')).to.equal(false);
    expect(globMatch('?', '')).to.equal(false);
    expect(globMatch('a*a', 'a')).to.equal(false);
    expect(globMatch('a*a', 'aa')).to.equal(true);
    expect(globMatch('*.lora_B.*', 'x.lora_B.weight')).to.equal(true);
    expect(globMatch('*.lora_B.*', 'x.lora_Bweight')).to.equal(false);
    expect(globMatch('layers.1?.*', 'layers.11.q')).to.equal(true);
    expect(globMatch('layers.1?.*', 'layers.1.q')).to.equal(false);
    expect(globMatch('a.b', 'aXb')).to.equal(false);
    expect(globMatch('**ab**', 'xxabyy')).to.equal(true);
    expect(globMatcher([])('anything')).to.equal(false);
  });

  it('a 256-character adversarial glob over 1,000 tensor names runs without backtracking blow-up', () => {
    const names = tensorNames(1000, 'glob-names');
    const evil = '*?'.repeat(127) + '*!';
    expect(evil).to.have.length(LIMITS.maxPersonalGlobLength);
    // The guard accepts it (and 64 of them), so the matcher has to cope.
    const hello = { protocolVersion: PROTOCOL_VERSION, clientId: 'c-1', capabilities: { maxRank: 4, backend: 'cpu', examples: 1 } };
    const globs = Array.from({ length: LIMITS.maxPersonalGlobs }, (_, i) => evil.slice(0, evil.length - 2 - (i % 2)) + '*!');
    expect(parseHello({ ...hello, personal: globs }).personal).to.have.length(64);
    // Names are ~60 chars, so '*?'×127 fails on length alone; these short-minimum shapes are the
    // ones that made the regex explode (the 13-char '*?*?*?*?*?*?!' took 10–16 s per name).
    const classic = '*?'.repeat(30) + '!';
    const starry = ('*'.repeat(6) + '?').repeat(36) + '*!'; // 36 wildcards under 218 stars
    const scan = '*' + ('?'.repeat(20) + 'Z').repeat(12) + '*'; // long near-miss middle segment
    const near = '*?'.repeat(20) + 't'; // matches every name of ≥ 21 chars ending in 't'
    expect(starry.length).to.be.at.most(256);
    expect(scan.length).to.be.at.most(256);
    const t0 = performance.now();
    const hits = (g: string[]) => names.filter(globMatcher(g)).length;
    const counts = { evil: hits([evil]), all64: hits(globs), classic: hits([classic]), starry: hits([starry]), scan: hits([scan]), near: hits([near]) };
    const ms = performance.now() - t0;
    console.log(`      adversarial globs (${globs.length + 5} in all, ≤256 chars) over ${names.length} tensor names: ${ms.toFixed(1)} ms`);
    expect(counts).to.deep.equal({ evil: 0, all64: 0, classic: 0, starry: 0, scan: 0, near: names.length });
    // Same glob shape with a literal every name contains: all match.
    expect(names.every(globMatcher(['*?'.repeat(10) + '*lora_?.weight']))).to.equal(true);
  });

  it('the hello guard bounds personal globs: at most 64, each at most 256 chars', () => {
    const hello = { protocolVersion: PROTOCOL_VERSION, clientId: 'c-1', capabilities: { maxRank: 4, backend: 'cpu', examples: 1 } };
    const code = (f: () => unknown) => { try { f(); } catch (e) { expect(e).to.be.instanceOf(ProtocolError); return (e as ProtocolError).code; } return 'did-not-throw'; };
    expect(code(() => parseHello({ ...hello, personal: ['*'.repeat(257)] }))).to.equal('TOO_LARGE');
    expect(code(() => parseHello({ ...hello, personal: Array(65).fill('*') }))).to.equal('TOO_LARGE');
    expect(code(() => parseHello({ ...hello, personal: [''] }))).to.equal('BAD_MESSAGE');
    expect(parseHello({ ...hello, personal: ['*'.repeat(256)] }).personal).to.have.length(1);
  });
});
