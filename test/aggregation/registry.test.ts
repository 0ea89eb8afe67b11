import { expect } from 'chai';
import {
  aggregatePlain, getStrategy, hasStrategy, linearStrategy, registerStrategy, strategyNames, unregisterStrategy, type Strategy,
} from '../../shared/aggregation/index.js';
import { ConfigError, FedloraError, ProtocolError } from '../../shared/errors.js';
import { parseHelloReply } from '../../shared/protocol/index.js';
import { parseScenario } from '../../simulations/scenario.js';
import { loraAName, loraBName } from '../../shared/lora/adapter.js';

const BUILT_INS = ['fedit', 'ffa', 'rank-aware', 'fedsa', 'fedavgm', 'lora-xs'];

/** B-only, slot-divided: a strategy none of the built-ins is. */
function toy(name = 'toy-b-slot'): Strategy {
  return linearStrategy({
    name, description: 'toy: only B shared, averaged per rank slot; A frozen',
    shareA: false, shareB: true, personalA: false, personalB: false, trainA: false, divisor: 'slot', refactorable: false,
  });
}

function helloReply(strategy: string): unknown {
  return { protocolVersion: 1, sessionId: 's1', modelId: 'a'.repeat(64), files: [], chunkSize: 1024, strategy, maxRank: 4, rounds: 1, completedRounds: 0 };
}

describe('strategy registry', () => {
  afterEach(() => { for (const n of strategyNames()) if (!BUILT_INS.includes(n)) unregisterStrategy(n); });

  it('lists the built-ins in a fixed order', () => {
    expect(strategyNames()).to.deep.equal(BUILT_INS);
    for (const n of BUILT_INS) expect(getStrategy(n).name).to.equal(n);
  });

  it('a registered strategy is found by name everywhere names are checked, and gone once unregistered', () => {
    const s = registerStrategy(toy());
    expect(strategyNames()).to.deep.equal([...BUILT_INS, 'toy-b-slot']);
    expect(getStrategy('toy-b-slot')).to.equal(s);
    expect(hasStrategy('toy-b-slot')).to.equal(true);
    expect(parseHelloReply(helloReply('toy-b-slot')).strategy).to.equal('toy-b-slot');
    expect(parseScenario({ strategy: 'toy-b-slot', compare: 'all' }).compare).to.deep.equal(BUILT_INS);
    expect(s.isShared(loraBName('m'))).to.equal(true);
    expect(s.isTrainable(loraAName('m'))).to.equal(false);
    // and it aggregates: slot 1 divided by the weight of the rank-2 client only
    const prev = { config: { r: 2, loraAlpha: 4, targetModules: ['m'], fanInFanOut: false, useRslora: false, taskType: 'CAUSAL_LM' },
      tensors: new Map([[loraAName('m'), { shape: [2, 1], data: new Float32Array([5, 5]) }], [loraBName('m'), { shape: [1, 2], data: new Float32Array([0, 0]) }]]) };
    const out = aggregatePlain(s, [
      { rank: 1, weight: 1, tensors: new Map([[loraBName('m'), { shape: [1, 1], data: new Float32Array([2]) }]]) },
      { rank: 2, weight: 3, tensors: new Map([[loraBName('m'), { shape: [1, 2], data: new Float32Array([6, 4]) }]]) },
    ], prev, 2);
    expect([...out.tensors.get(loraBName('m'))!.data]).to.deep.equal([5, 4]);

    expect(unregisterStrategy('toy-b-slot')).to.equal(true);
    expect(unregisterStrategy('toy-b-slot')).to.equal(false);
    expect(hasStrategy('toy-b-slot')).to.equal(false);
    expect(() => getStrategy('toy-b-slot')).to.throw(ConfigError);
    expect(() => parseHelloReply(helloReply('toy-b-slot'))).to.throw(ProtocolError, /helloReply\.strategy/);
    expect(() => parseScenario({ strategy: 'toy-b-slot' })).to.throw(ConfigError, /strategy/);
  });

  it('an unknown name is a ConfigError listing every registered name', () => {
    registerStrategy(toy('toy-two'));
    try {
      getStrategy('fedprox');
      expect.fail('expected a throw');
    } catch (e) {
      expect(e).to.be.instanceOf(ConfigError);
      expect((e as FedloraError).code).to.equal('CONFIG');
      expect((e as Error).message).to.contain('"fedprox"').and.contain('fedit, ffa, rank-aware, fedsa, fedavgm, lora-xs, toy-two');
    }
    for (const bad of ['', '__proto__', 'constructor', 'toString']) expect(() => getStrategy(bad), bad).to.throw(ConfigError);
    expect(() => getStrategy(undefined as unknown as string)).to.throw(ConfigError);
  });

  it('refuses duplicates (unless replacing), built-in replacement, bad names and incomplete strategies', () => {
    registerStrategy(toy());
    expect(() => registerStrategy(toy())).to.throw(ConfigError, /already registered/);
    const replacement = toy();
    registerStrategy(replacement, { replace: true });
    expect(getStrategy('toy-b-slot')).to.equal(replacement);
    expect(() => registerStrategy(toy('fedit'), { replace: true })).to.throw(ConfigError, /built in/);
    expect(() => unregisterStrategy('ffa')).to.throw(ConfigError, /built in/);
    for (const name of ['Toy', 'toy strategy', '-toy', '__proto__', 'x'.repeat(65), 'tö']) expect(() => registerStrategy(toy(name)), name).to.throw(ConfigError, /must match/);
    // a strategy written before servers existed: everything but createServer
    const full = toy('toy-x') as unknown as Record<string, unknown>;
    const noServer = Object.fromEntries(['name', 'description', 'refactorable', 'isShared', 'isPersonal', 'isTrainable', 'contribution', 'finalize', 'init'].map((k) => [k, full[k]]));
    expect(() => registerStrategy(noServer as unknown as Strategy)).to.throw(ConfigError, /createServer/);
    expect(() => linearStrategy({ ...specOf('toy-y'), shareB: true, personalB: true })).to.throw(ConfigError, /both shared and personal/);
    expect(strategyNames()).to.deep.equal([...BUILT_INS, 'toy-b-slot']);
  });
});

function specOf(name: string) {
  return { name, description: 'spec', shareA: true, shareB: false, personalA: false, personalB: false, trainA: true, divisor: 'slot' as const, refactorable: false };
}
