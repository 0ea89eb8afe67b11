export { Client, DEBUG_CONTRIBUTION_ENV, type ClientOptions, type ClientRoundSummary, type TrainerFactory, type TrainerFactoryOptions } from './client.js';
export { ensureModel, type EnsureModelOptions, type EnsuredModel } from './model-cache.js';
