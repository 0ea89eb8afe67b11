export { Client, type ClientFaults, type ClientOptions, type ClientRoundSummary, type TrainerFactory, type TrainerFactoryOptions } from './client.js';
export { ensureModel, type EnsureModelOptions, type EnsuredModel } from './model-cache.js';
export { ParticipantRound, type LocalResult, type ParticipantHost, type ParticipantRoundOptions, type RoundState, type SecAggNotice } from './participant/index.js';
export { dumpContributions, type ClientObservers, type ContributionObservation } from './participant/index.js';
export * as upload from './upload/index.js';
