/**
 * A small deterministic LocalTrainer for protocol/coordinator tests: "training" pulls every
 * trainable tensor toward a client-specific target, "evaluation" is the squared distance to it.
 * It is not under test here; the coordinator, client and wire are. Real training runs in test/e2e.
 */
import type { LocalTrainer, EvalMetrics } from '../../client/trainer.js';
import type { LoraAdapter } from '../../shared/lora/adapter.js';
import type { TensorMap } from '../../shared/tensor.js';
import { readModelInfo } from '../../coordinator/model-info.js';

export const FIXTURE = 'test/fixtures/hf/llama-tiny/base';

export async function pullTrainer(target: number, examples = 10): Promise<LocalTrainer & { trained: TensorMap[] }> {
  const info = await readModelInfo(FIXTURE);
  const trained: TensorMap[] = [];
  const dist = (a: LoraAdapter) => {
    let s = 0, n = 0;
    for (const t of a.tensors.values()) for (const x of t.data) { s += (x - target) ** 2; n++; }
    return s / Math.max(1, n);
  };
  return {
    moduleShapes: info.linears,
    trainExamples: examples,
    evalExamples: 4,
    trained,
    async train(start, o) {
      const tensors: TensorMap = new Map();
      for (const [k, t] of start.tensors) {
        const d = new Float32Array(t.data);
        if (o.trainable(k)) for (let i = 0; i < d.length; i++) d[i] = d[i]! + 0.5 * (target - d[i]!);
        tensors.set(k, { shape: [...t.shape], data: d });
      }
      trained.push(tensors);
      const adapter = { config: start.config, tensors };
      return { adapter, trainLoss: dist(adapter), steps: o.steps, examples };
    },
    async evaluate(a): Promise<EvalMetrics> { return { loss: dist(a), accuracy: 0.5, examples: 4 }; },
    dispose() { /* nothing held */ },
  };
}
