export * from './accountant.js';
export * from './sampler.js';
export * from './dp.js';
export * from './export.js';
