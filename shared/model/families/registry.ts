/**
 * Model families by name, and HF `model_type` → family. A table rather than conditionals so that
 * supporting a new architecture is one descriptor file plus one registerFamily call.
 */
import { ConfigError, ModelFormatError } from '../../errors.js';
import type { ModelConfig } from '../config.js';
import type { FamilyDescriptor } from './types.js';

const byName = new Map<string, FamilyDescriptor>();
const byModelType = new Map<string, FamilyDescriptor>();

/**
 * Adds a family. A taken name is refused unless `replace` is set, and a model_type read by another
 * family always is: a silent takeover would change how existing checkpoints load.
 */
export function registerFamily(desc: FamilyDescriptor, opts: { replace?: boolean } = {}): void {
  if (!desc.name) throw new ConfigError('a model family needs a name');
  if (desc.modelTypes.length === 0) throw new ConfigError(`model family "${desc.name}" reads no model_type`);
  if (byName.has(desc.name) && !opts.replace) throw new ConfigError(`model family "${desc.name}" is already registered`);
  for (const mt of desc.modelTypes) {
    const owner = byModelType.get(mt);
    if (owner && owner.name !== desc.name) throw new ConfigError(`model_type "${mt}" already belongs to family "${owner.name}"`);
  }
  unregisterFamily(desc.name);
  byName.set(desc.name, desc);
  for (const mt of desc.modelTypes) byModelType.set(mt, desc);
}

/** Removes a family and its model_types; false if it was not registered. */
export function unregisterFamily(name: string): boolean {
  const d = byName.get(name);
  if (!d) return false;
  byName.delete(name);
  for (const [mt, owner] of byModelType) if (owner.name === name) byModelType.delete(mt);
  return true;
}

/** Registered families, in registration order. */
export function registeredFamilies(): FamilyDescriptor[] {
  return [...byName.values()];
}

/** Every model_type some registered family reads. */
export function supportedModelTypes(): string[] {
  return [...byModelType.keys()];
}

function describeRegistry(): string {
  return registeredFamilies().map((d) => `${d.name} (${d.modelTypes.join(', ')})`).join('; ');
}

export function getFamily(name: string): FamilyDescriptor {
  const d = byName.get(name);
  if (!d) throw new ModelFormatError(`unknown model family ${JSON.stringify(name)}; registered families: ${describeRegistry()}`);
  return d;
}

/** The family reading this HF `model_type`; `file` names the config in the error. */
export function familyForModelType(modelType: unknown, file?: string): FamilyDescriptor {
  const d = typeof modelType === 'string' ? byModelType.get(modelType) : undefined;
  if (!d) {
    throw new ModelFormatError(`unsupported model_type ${JSON.stringify(modelType)}; fedlora supports ${supportedModelTypes().join(', ')} (registered families: ${describeRegistry()})`, file);
  }
  return d;
}

/** The family of a normalised config, or of a raw HF config.json object (by its `model_type`). */
export function familyOf(config: Pick<ModelConfig, 'family'> | { model_type?: unknown }): FamilyDescriptor {
  if ('family' in config && typeof config.family === 'string') return getFamily(config.family);
  return familyForModelType((config as { model_type?: unknown }).model_type);
}
