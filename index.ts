export * from './shared/errors.js';
export * from './shared/tensor.js';
export * from './shared/model/safetensors.js';
export * from './shared/lora/adapter.js';
