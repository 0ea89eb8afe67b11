/**
 * A synthetic GPT-2-shaped base model for bench/cluster.ts: config.json (the real GPT-2 124M
 * dimensions, or a one-layer model sized for `--values N`) and a model.safetensors that holds every
 * linear weight the config implies (c_attn, attn.c_proj, c_fc, mlp.c_proj per block, F32, all
 * zeros). That is what the coordinator reads: the manifest hash (ModelStore), config.json and the
 * safetensors header (readModelInfo cross-checks the shapes), from which it builds the LoRA layout.
 * The file is a valid safetensors file (header + data of the declared size); its data region is a
 * sparse hole, so writing it costs nothing and hashing it reads zeros. Synthetic clients never load it.
 */
import { mkdir, open, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

export interface Gpt2Shape { nLayer: number; nEmbd: number; nHead: number }

/** GPT-2 124M (Hugging Face `gpt2`). */
export const GPT2_124M: Gpt2Shape = { nLayer: 12, nEmbd: 768, nHead: 12 };
/** The bench's LoRA: rank 8 on GPT-2's default targets (c_attn, c_proj = attn.c_proj and mlp.c_proj, c_fc). */
export const LORA_RANK = 8;

/** The linear modules of one GPT-2 block as [in, out] (Conv1D weights are stored [in, out]). */
export function gpt2Linears(s: Gpt2Shape): { name: string; in: number; out: number }[] {
  const d = s.nEmbd;
  return [
    { name: 'attn.c_attn', in: d, out: 3 * d },
    { name: 'attn.c_proj', in: d, out: d },
    { name: 'mlp.c_fc', in: d, out: 4 * d },
    { name: 'mlp.c_proj', in: 4 * d, out: d },
  ];
}

/** Length of the flat LoRA update: Σ over blocks and modules of r·(in + out) (A is [r, in], B is [out, r]). */
export function loraValues(s: Gpt2Shape, r = LORA_RANK): number {
  return s.nLayer * gpt2Linears(s).reduce((acc, m) => acc + r * (m.in + m.out), 0);
}

/**
 * The shape for `--values N`: GPT-2 124M when N is its size, else one block whose width gives the
 * largest update ≤ N (a GPT-2 block at rank 8 has 128·n_embd values; n_embd ≥ 8 so rank 8 fits).
 */
export function shapeForValues(values: number | undefined): Gpt2Shape {
  if (values === undefined || values === loraValues(GPT2_124M)) return GPT2_124M;
  const perWidth = loraValues({ nLayer: 1, nEmbd: 1, nHead: 1 });
  const d = Math.floor(values / perWidth);
  if (!Number.isInteger(values) || d < LORA_RANK) throw new Error(`--values must be an integer ≥ ${perWidth * LORA_RANK} (one GPT-2 block of width ≥ ${LORA_RANK} at rank ${LORA_RANK}), got ${values}`);
  return { nLayer: 1, nEmbd: d, nHead: 1 };
}

/** Writes config.json + model.safetensors into `dir`; returns the update length the layout will have. */
export async function writeSyntheticGpt2(dir: string, s: Gpt2Shape): Promise<{ values: number; weightBytes: number }> {
  await mkdir(dir, { recursive: true });
  const config = {
    _name_or_path: `fedlora-bench-gpt2-synthetic-${s.nLayer}x${s.nEmbd}`,
    architectures: ['GPT2LMHeadModel'], model_type: 'gpt2', activation_function: 'gelu_new',
    n_embd: s.nEmbd, n_head: s.nHead, n_layer: s.nLayer, n_inner: null, n_positions: 1024, vocab_size: 50257,
    layer_norm_epsilon: 1e-5, tie_word_embeddings: true, bos_token_id: 50256, eos_token_id: 50256,
  };
  await writeFile(join(dir, 'config.json'), `${JSON.stringify(config, null, 2)}\n`);
  const header: Record<string, unknown> = { __metadata__: { format: 'pt', fedlora: 'bench-synthetic' } };
  let offset = 0;
  for (let l = 0; l < s.nLayer; l++) {
    for (const m of gpt2Linears(s)) {
      const bytes = m.in * m.out * 4;
      header[`transformer.h.${l}.${m.name}.weight`] = { dtype: 'F32', shape: [m.in, m.out], data_offsets: [offset, offset + bytes] };
      offset += bytes;
    }
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (json.length % 8)) % 8); // the data starts 8-byte aligned
  const hb = Buffer.from(json, 'utf8');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(hb.length));
  const fh = await open(join(dir, 'model.safetensors'), 'w');
  try {
    await fh.write(Buffer.concat([len, hb]), 0, 8 + hb.length, 0);
    await fh.truncate(8 + hb.length + offset); // zeros, as a hole
  } finally {
    await fh.close();
  }
  return { values: loraValues(s), weightBytes: offset };
}
