export { contributionVector, personalRule, type ContributionInput } from './contribution.js';
export { applyMods, clipToRound, dpClip, skellamNoise, float32Ceil, BUILTIN_MODS, BUILTIN_FIXED_MODS, type FixedPointMod, type UploadContext, type UploadMod } from './mods.js';
export { maskedEncoder, plainEncoder, summand, type Seal, type UploadEncoder } from './encode.js';
export { buildUpload, type UploadRun } from './pipeline.js';
