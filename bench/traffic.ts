/**
 * Bytes per client per round for GPT-2-124M shapes (d = 768, 12 layers, the gpt2 family's default
 * targets c_attn, c_proj, c_fc: every linear layer of the blocks) under LoRA (FedIT), DoRA (FedIT with
 * magnitude vectors), FFA and LoRA-XS, against the full fp32 model.
 *   npx tsx bench/traffic.ts [--ranks 8,16]
 *
 * Uploads are measured on real encoded messages: the plain `Update` (codec + anonymous seal to a
 * coordinator box key) and the masked secure-aggregation upload ({ id, masked: Uint32Array } as
 * the masked encoder sends it, sealed). The secure key-agreement messages (advertise, shares,
 * unmask) do not depend on the vector length; bench/secagg.ts measures them. Downloads are the
 * global adapter the signed round:start carries (4 bytes per value of every tensor, framing
 * excluded): LoRA-XS sends its frozen factors with the cores every round.
 */
import { encode } from '../shared/codec/index.js';
import { generateBoxKeyPair } from '../shared/crypto/index.js';
import { getStrategy, sharedLayout } from '../shared/aggregation/index.js';
import { normalizeConfig, linearModules } from '../shared/model/config.js';
import { defaultTargetModules } from '../shared/model/model-info.js';
import { loraMName, matchesTarget, type LoraAdapter } from '../shared/lora/adapter.js';
import { sealForCoordinator } from '../shared/protocol/index.js';
import { setLogLevel } from '../shared/log.js';

setLogLevel('error');
const arg = (name: string, dflt: string) => { const i = process.argv.indexOf(`--${name}`); return i >= 0 ? process.argv[i + 1]! : dflt; };
const RANKS = arg('ranks', '8,16').split(',').map(Number);
const out = (s: string) => process.stdout.write(s + '\n');

// GPT-2 small (124M) as in its Hugging Face config.json
const cfg = normalizeConfig({ model_type: 'gpt2', architectures: ['GPT2LMHeadModel'], vocab_size: 50257, n_positions: 1024, n_embd: 768, n_layer: 12, n_head: 12, n_inner: null, layer_norm_epsilon: 1e-5, activation_function: 'gelu_new', tie_word_embeddings: true });
const d = 768, L = 12, V = 50257, P = 1024;
// wte + wpe + per block (2 layer norms, c_attn, attn.c_proj, c_fc, mlp.c_proj with biases) + ln_f
const params = V * d + P * d + L * (4 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d)) + 2 * d;
const FULL = params * 4;
const targets = defaultTargetModules(cfg);
const shapes = new Map([...linearModules(cfg)].filter(([m]) => matchesTarget(m, targets)));
const base = { targetModules: targets, fanInFanOut: true, useRslora: false, taskType: 'CAUSAL_LM' };
const box = generateBoxKeyPair();
const ctx = (kind: 'update' | 'secagg/masked') => ({ roundId: 'bench:1:1', round: 1, sender: 'client-0000', kind });

function plainUpload(n: number): number {
  const update = { roundId: 'bench:1:1', rank: 16, weight: 100, vector: new Float32Array(n), metrics: { trainLoss: 1, steps: 10, trainMs: 1000 } };
  return sealForCoordinator(encode(update), ctx('update'), box.publicKey).byteLength;
}

function maskedUpload(n: number): number {
  const masked = { id: 'client-0000', masked: new Uint32Array(n), metrics: { trainLoss: 1, steps: 10, trainMs: 1000 } };
  return sealForCoordinator(encode(masked), ctx('secagg/masked'), box.publicKey).byteLength;
}

const numel = (a: LoraAdapter) => [...a.tensors.values()].reduce((s, t) => s + t.data.length, 0);
const mb = (b: number) => (b >= 1e6 ? `${(b / 1e6).toFixed(2)} MB` : `${(b / 1e3).toFixed(1)} KB`);
const ratio = (b: number) => `${Math.round(FULL / b).toLocaleString('en-US')}×`;

out(`GPT-2-124M: ${params.toLocaleString('en-US')} parameters, fp32 ${mb(FULL)} (${FULL.toLocaleString('en-US')} bytes); targets ${targets.join(', ')} → ${shapes.size} modules`);
out('strategy      r   shared values   upload plain (ratio)      upload masked (ratio)     download/round (global)');
for (const r of RANKS) {
  for (const name of ['fedit', 'fedit+dora', 'ffa', 'lora-xs']) {
    const dora = name.endsWith('+dora');
    const s = getStrategy(dora ? name.slice(0, -5) : name);
    // lora-xs: the stand-in factors have the SVD factors' shapes, which is all the byte count needs
    const g0 = s.init(shapes, r, 2 * r, 1, base);
    // DoRA: a magnitude vector [out] per module on top (values do not change the byte count)
    const g: LoraAdapter = { config: { ...g0.config, ...(dora ? { useDora: true } : {}) }, tensors: new Map(g0.tensors) };
    if (dora) for (const [m, sh] of shapes) g.tensors.set(loraMName(m), { shape: [sh.out], data: new Float32Array(sh.out).fill(1) });
    const n = sharedLayout(s, g).size;
    const up = plainUpload(n), upM = maskedUpload(n), down = 4 * numel(g);
    out(`${name.padEnd(10)} ${String(r).padStart(4)} ${n.toLocaleString('en-US').padStart(15)}   ${`${mb(up)} (${ratio(up)})`.padEnd(24)} ${`${mb(upM)} (${ratio(upM)})`.padEnd(25)} ${mb(down)}`);
  }
}
