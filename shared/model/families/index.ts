/**
 * The model-family registry with the built-in families registered. Import from here (not from
 * registry.ts) so the built-ins are always present; a new family is one descriptor file plus one
 * line below.
 */
import { registerFamily } from './registry.js';
import { gpt2Family } from './gpt2.js';
import { llamaFamily } from './llama.js';

registerFamily(gpt2Family);
registerFamily(llamaFamily);

export { registerFamily, unregisterFamily, getFamily, familyOf, familyForModelType, registeredFamilies, supportedModelTypes } from './registry.js';
export { LAYER_NORM, RMS_NORM } from './norms.js';
export { gpt2Family, llamaFamily };
export type { FamilyDescriptor, FamilyConfigFields, BlockLinear, BlockKit, NormSpec } from './types.js';
