import { join } from 'node:path';
import { ConfigError } from '../../shared/errors.js';
import { loadState } from '../../coordinator/state-store.js';
import { baseModelName, savePeftAdapter } from '../../shared/lora/peft.js';
import { mergeAdapterIntoModel } from '../../shared/lora/merge.js';
import { hasXs, xsToLora } from '../../shared/lora/xs.js';
import { writePrivacyJson } from '../../shared/privacy/export.js';
import { str, type Command } from './flags.js';

export const exportCommand: Command = {
  name: 'export',
  summary: 'Write the global adapter of a coordinator --state as a PEFT adapter, and optionally a merged model.',
  usage: 'fedlora export --state DIR --out DIR [--merged-model DIR --model DIR]',
  flags: {
    state: { type: 'string', placeholder: 'DIR', help: 'coordinator state folder (its latest completed round is exported); required' },
    out: { type: 'string', placeholder: 'DIR', help: 'folder for adapter_config.json + adapter_model.safetensors (PEFT format); required' },
    model: { type: 'string', placeholder: 'DIR', help: 'base model folder (needed for --merged-model)' },
    'merged-model': { type: 'string', placeholder: 'DIR', help: 'also write base + adapter merged into a standalone Hugging Face model folder here' },
    backend: { type: 'string', placeholder: 'NAME', default: 'auto', help: 'tfjs backend for merging: auto | tensorflow | webgpu | wasm | cpu' },
  },
  async run(v) {
    const stateDir = str(v.state, 'state', true)!;
    const out = str(v.out, 'out', true)!;
    const mergedDir = str(v['merged-model'], 'merged-model');
    const model = str(v.model, 'model');
    if (mergedDir && !model) throw new ConfigError('--merged-model needs --model (the base model folder)');
    const loaded = await loadState(stateDir);
    if (!loaded) throw new ConfigError(`${join(stateDir, 'state.json')} not found: no completed round to export`);
    // base_model_name_or_path: what the coordinator recorded; else --model's name; else the base model's content hash
    const recorded = loaded.adapter.config.baseModelNameOrPath;
    const baseName = recorded ?? (model ? await baseModelName(model) : loaded.state.modelId);
    // a LoRA-XS run's checkpoint holds the cores R beside the frozen factors: export the plain LoRA it equals
    const adapter = hasXs(loaded.adapter) ? xsToLora(loaded.adapter) : loaded.adapter;
    await savePeftAdapter({ ...adapter, config: { ...adapter.config, baseModelNameOrPath: baseName } }, out);
    // a DP run's guarantee travels with the adapter (privacy.json beside adapter_config.json)
    const dp = [...loaded.state.history].reverse().find((r) => r.privacy)?.privacy;
    if (dp) await writePrivacyJson(out, dp);
    process.stderr.write(`wrote the global adapter after round ${loaded.state.completedRounds} (${loaded.state.strategy}, r=${loaded.adapter.config.r}) to ${out}\n`);
    if (mergedDir) {
      const { merged } = await mergeAdapterIntoModel(model!, adapter, mergedDir, { backend: str(v.backend, 'backend') ?? 'auto' });
      process.stderr.write(`wrote a merged model (${merged} linear layers updated) to ${mergedDir}\n`);
    }
    return 0;
  },
};
