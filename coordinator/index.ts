export { Coordinator, type CoordinatorOptions, type CoordinatorStatus } from './coordinator.js';
export { ModelStore, manifestId, sha256File } from './model-store.js';
export { readModelInfo, targetShapes, defaultTargetModules, readSafetensorsShapes, type ModelInfo } from './model-info.js';
export { loadState, saveState, type PersistedState } from './state-store.js';
export { CoordinatorMetrics, type RoundRecord, type ParticipantRecord } from './metrics.js';
