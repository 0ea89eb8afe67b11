import { expect } from 'chai';
import { decode, encode } from '../../shared/codec/index.js';
import { ProtocolError } from '../../shared/errors.js';
import { globMatcher, parseHello, parseUpdate, parseChunkRequest, parseRoundStart, parseReply, errorReply, okReply, serveRequest, PROTOCOL_VERSION } from '../../shared/protocol/index.js';

function code(f: () => unknown): string {
  try { f(); } catch (e) { expect(e).to.be.instanceOf(ProtocolError); return (e as ProtocolError).code; }
  throw new Error('expected a ProtocolError');
}
const wire = (v: unknown) => decode(encode(v));

describe('protocol guards', () => {
  const hello = { protocolVersion: PROTOCOL_VERSION, clientId: 'c-1', capabilities: { maxRank: 4, backend: 'cpu', examples: 10 }, personal: ['*.lora_B.*'] };

  it('accepts a well-formed hello and refuses bad fields', () => {
    const h = parseHello(wire(hello));
    expect(h.capabilities).to.deep.equal({ maxRank: 4, backend: 'cpu', examples: 10, gpu: false });
    expect(code(() => parseHello(wire({ ...hello, clientId: 'a b' })))).to.equal('BAD_MESSAGE');
    expect(code(() => parseHello(wire({ ...hello, clientId: 'x'.repeat(300) })))).to.equal('TOO_LARGE');
    expect(code(() => parseHello(wire({ ...hello, capabilities: { ...hello.capabilities, maxRank: 0 } })))).to.equal('BAD_MESSAGE');
    expect(code(() => parseHello(wire({ ...hello, capabilities: { ...hello.capabilities, maxRank: 2.5 } })))).to.equal('BAD_MESSAGE');
    expect(code(() => parseHello(wire({ ...hello, personal: Array(100).fill('*') })))).to.equal('TOO_LARGE');
    expect(code(() => parseHello(wire([1, 2])))).to.equal('BAD_MESSAGE');
  });

  it('checks uploads against the round: id, rank, layout length, finite values, weight bound', () => {
    const expectation = { roundId: 's1:3:0', rank: 2, length: 6, maxWeight: 100 };
    const up = { roundId: 's1:3:0', rank: 2, weight: 10, vector: new Float32Array(6).fill(0.5), metrics: { trainLoss: 1.2, steps: 3, trainMs: 5 } };
    expect(parseUpdate(wire(up), expectation).vector.length).to.equal(6);
    expect(code(() => parseUpdate(wire({ ...up, roundId: 's1:2:0' }), expectation))).to.equal('STALE_ROUND');
    expect(code(() => parseUpdate(wire(up), null))).to.equal('STALE_ROUND');
    expect(code(() => parseUpdate(wire({ ...up, rank: 4 }), expectation))).to.equal('BAD_SHAPE');
    expect(code(() => parseUpdate(wire({ ...up, vector: new Float32Array(7) }), expectation))).to.equal('BAD_SHAPE');
    expect(code(() => parseUpdate(wire({ ...up, vector: new Float32Array([1, 2, 3, NaN, 5, 6]) }), expectation))).to.equal('NON_FINITE');
    expect(code(() => parseUpdate(wire({ ...up, vector: [1, 2, 3, 4, 5, 6] }), expectation))).to.equal('BAD_MESSAGE');
    expect(code(() => parseUpdate(wire({ ...up, weight: 1000 }), expectation))).to.equal('BAD_MESSAGE');
    expect(code(() => parseUpdate(wire({ ...up, metrics: { ...up.metrics, trainLoss: Infinity } }), expectation))).to.equal('NON_FINITE');
  });

  it('bounds chunk requests and validates round starts from the coordinator', () => {
    const id = 'a'.repeat(64);
    expect(parseChunkRequest(wire({ modelId: id, file: 'model.safetensors', offset: 0, length: 1024 })).length).to.equal(1024);
    expect(code(() => parseChunkRequest(wire({ modelId: id, file: '../etc/passwd', offset: 0, length: 1 })))).to.equal('BAD_MESSAGE');
    expect(code(() => parseChunkRequest(wire({ modelId: id, file: 'm', offset: 0, length: 64 * 1024 * 1024 })))).to.equal('BAD_MESSAGE');
    const rs = {
      roundId: 's:1:0', round: 1, rank: 2, maxRank: 4, strategy: 'rank-aware', deadline: Date.now(),
      config: { r: 2, loraAlpha: 8, targetModules: ['q_proj'], fanInFanOut: false, useRslora: false, taskType: 'CAUSAL_LM' },
      global: [{ name: 'base_model.model.q.lora_A.weight', shape: [2, 3], data: new Float32Array(6) }],
      layout: [{ name: 'base_model.model.q.lora_A.weight', shape: [4, 3] }],
      train: { steps: 5, epochs: 0, lr: 0.001, batchSize: 2, seed: 1 },
      modelId: id, globalHash: id, participants: [{ id: 'c0', key: new Uint8Array(32), rank: 2, weight: 10 }],
    };
    expect(parseRoundStart(wire(rs)).global[0]!.shape).to.deep.equal([2, 3]);
    expect(code(() => parseRoundStart(wire({ ...rs, rank: 8 })))).to.equal('BAD_MESSAGE');
    expect(code(() => parseRoundStart(wire({ ...rs, strategy: 'evil' })))).to.equal('BAD_MESSAGE');
    // DoRA: config.useDora is optional (absent = LoRA) and must be a boolean when present
    expect(parseRoundStart(wire(rs)).config.useDora).to.equal(undefined);
    expect(parseRoundStart(wire({ ...rs, config: { ...rs.config, useDora: true } })).config.useDora).to.equal(true);
    expect(code(() => parseRoundStart(wire({ ...rs, config: { ...rs.config, useDora: 'yes' } })))).to.equal('BAD_MESSAGE');
    expect(code(() => parseRoundStart(wire({ ...rs, participants: [rs.participants[0], rs.participants[0]] })))).to.equal('BAD_MESSAGE');
    expect(code(() => parseRoundStart(wire({ ...rs, participants: [{ ...rs.participants[0], key: new Uint8Array(31) }] })))).to.equal('BAD_MESSAGE');
    const secure = { k: 2, t: 2, nonce: new Uint8Array(32), modelHash: `${id}:${id}`, paramsSignature: new Uint8Array(64), quant: { clip: 8, fracBits: 20, maxTotalWeight: 30, maxClients: 3 } };
    expect(parseRoundStart(wire({ ...rs, secure })).secure!.quant.fracBits).to.equal(20);
    expect(code(() => parseRoundStart(wire({ ...rs, secure: { ...secure, t: 1 } })))).to.equal('BAD_MESSAGE');
    expect(code(() => parseRoundStart(wire({ ...rs, secure: { ...secure, nonce: new Uint8Array(8) } })))).to.equal('BAD_MESSAGE');
  });

  it('replies: ok and error replies round-trip; internal errors are not leaked', () => {
    expect(parseReply(okReply({ x: 1 })).x).to.equal(1);
    expect(code(() => parseReply(errorReply(new ProtocolError('STALE_ROUND', 'old'))))).to.equal('STALE_ROUND');
    const internal = decode(errorReply(new Error('/secret/path exploded'))) as Record<string, unknown>;
    expect(internal).to.deep.equal({ ok: false, code: 'INTERNAL', message: 'internal error' });
  });

  it('serveRequest acks every malformed call with an error', async () => {
    const replies: unknown[] = [];
    const errors: string[] = [];
    const h = serveRequest('x', (m) => ({ echo: (m as { v: number }).v }), { maxBytes: 64, onError: (_e, err) => errors.push((err as ProtocolError).code) });
    const call = (...args: unknown[]) => new Promise<void>((res) => { h(...args, (r: unknown) => { replies.push(decode(r)); res(); }); });
    await call(encode({ v: 7 }));
    await call('not binary');
    await call(new Uint8Array(100));
    await call(encode(1), encode(2));
    h(encode({ v: 1 })); // no ack: counted, nothing to answer
    expect(replies[0]).to.deep.equal({ echo: 7, ok: true });
    expect(replies.slice(1).map((r) => (r as { code: string }).code)).to.deep.equal(['BAD_ENCODING', 'TOO_LARGE', 'BAD_MESSAGE']);
    expect(errors).to.deep.equal(['BAD_ENCODING', 'TOO_LARGE', 'BAD_MESSAGE', 'NO_ACK']);
  });

  it('personal globs: * spans dots, everything else literal', () => {
    const m = globMatcher(['*.layers.1.*', '*.lora_B.*']);
    expect(m('base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight')).to.equal(true);
    expect(m('base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight')).to.equal(true);
    expect(m('base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight')).to.equal(false);
    expect(m('base_model.model.model.layers.11.x.lora_A.weight')).to.equal(false);
    expect(globMatcher(['a.b'])('aXb')).to.equal(false);
  });
});
