export {
  STRATEGIES, getStrategy, aggregatePlain, sharedLayout, slotWeightSums, validateParticipants, validateGlobal,
  type Strategy, type StrategyName, type Participant, type ClientUpdate,
} from './strategy.js';
export { refactorAdapter, refactorModule, adapterForRank, type RefactoredModule } from './refactor.js';
export { initLoraA, initLoraAdapter, seededStream } from './init.js';
export { makeLayout, flatten, unflatten, slotOf, elementSlots, MAX_LAYOUT_ELEMENTS, type FlatLayout, type LayoutEntry } from './layout.js';
export { householderQR, jacobiSVD } from './linalg.js';
