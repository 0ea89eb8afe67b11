// fedlora public library API.
export * from './shared/errors.js';
export * from './shared/tensor.js';
export * from './shared/model/safetensors.js';
export * from './shared/model/config.js';
export { CausalLM, loadCausalLM, checkpointFiles, disposeRuntime, type LoraRuntime, type LoadOptions } from './shared/model/causal-lm.js';
export * from './shared/model/tokenizer.js';
export * from './shared/model/random-init.js';
export * from './shared/lora/adapter.js';
export * from './shared/lora/peft.js';
export * from './shared/train/trainer.js';
export * from './shared/train/eval.js';
export { selectBackend, currentBackend, BACKEND_CHOICES, type BackendChoice, type BackendName, type BackendSelection } from './shared/backend/index.js';
export * from './shared/aggregation/index.js';
export * as crypto from './shared/crypto/index.js';
export { createTrainer, type LocalTrainer, type CreateTrainerOptions, type TrainOptions, type TrainResult } from './client/trainer.js';
