export {
  aggregatePlain, linearStrategy, sharedLayout, slotWeightSums, validateParticipants, validateGlobal, checkServerOptions,
  type Strategy, type StrategyName, type StrategyServer, type LinearStrategySpec, type Participant, type ClientUpdate,
  type JsonValue, type SavedServerState, type ServerOptions, type TrainedSlots,
} from './strategy.js';
export { registerStrategy, unregisterStrategy, getStrategy, hasStrategy, strategyNames } from './registry.js';
export { fedAvgMStrategy, FEDAVGM_DEFAULTS, type FedAvgMOptions } from './fedavgm.js';
export { aggregateRound, type RoundContributor, type RoundInput } from './round.js';
export { refactorAdapter, refactorAdapterWithTransforms, refactorModule, adapterForRank, type RefactoredModule, type ModuleTransforms } from './refactor.js';
export { initLoraA, initLoraAdapter, seededStream } from './init.js';
export { makeLayout, flatten, unflatten, slotOf, elementSlots, MAX_LAYOUT_ELEMENTS, type FlatLayout, type LayoutEntry } from './layout.js';
export { householderQR, jacobiSVD } from './linalg.js';
export {
  checkServerOpt, describeServerOpt, serverOptimizerOf, withServerOptimizer, SERVER_OPT_NAMES, SERVER_OPT_DEFAULTS,
  type ServerOptConfig, type ServerOptName, type ResolvedServerOpt,
} from './server-opt.js';
export { LORA_XS, LoraXsStrategy, loraXsStrategy, needsXsFactors } from './lora-xs.js';
