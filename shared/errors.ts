/**
 * Error classes with a stable machine-readable `code`. Everything fedlora throws on bad input
 * derives from FedloraError so callers (and the wire protocol) can map it to `{ ok:false, code }`.
 */
export class FedloraError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }
}

/** A model, config, tokenizer, safetensors or adapter file is malformed or does not fit. */
export class ModelFormatError extends FedloraError {
  readonly file: string | undefined;
  constructor(message: string, file?: string, options?: { cause?: unknown }) {
    super('MODEL_FORMAT', file ? `${file}: ${message}` : message, options);
    this.file = file;
  }
}

/**
 * A persisted coordinator state (state.json, its checkpoint folder) is malformed or inconsistent.
 * Carries the file and the offending field so an operator can fix or discard the --state folder
 * instead of hitting a TypeError deep inside the coordinator.
 */
export class StateError extends FedloraError {
  readonly file: string;
  readonly field: string | undefined;
  constructor(message: string, file: string, field?: string, options?: { cause?: unknown }) {
    super('STATE_INVALID', `${file}: ${field ? `${field}: ` : ''}${message}`, options);
    this.file = file;
    this.field = field;
  }
}

/** A config value or CLI flag is invalid. */
export class ConfigError extends FedloraError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('CONFIG', message, options);
  }
}

/** A wire message is malformed, oversized, stale or otherwise refused. */
export class ProtocolError extends FedloraError {
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
  }
}

/** Signature, sealing, sharing or masking failed verification. */
export class CryptoError extends FedloraError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('CRYPTO', message, options);
  }
}

/** A dataset file is malformed. */
export class DataError extends FedloraError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('DATA', message, options);
  }
}

/** No usable compute backend. */
export class BackendError extends FedloraError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('BACKEND', message, options);
  }
}

export function errorMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
