/**
 * Content addressing of the base model: modelId = sha256 over the canonical manifest
 * (`name\tsize\tsha256\n` per file, sorted by name). Both sides compute it the same way.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import type { ModelFile } from './messages.js';

export async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path, { highWaterMark: 1 << 20 })) h.update(chunk as Buffer);
  return h.digest('hex');
}

export function manifestId(files: readonly ModelFile[]): string {
  const lines = [...files].sort((a, b) => (a.name < b.name ? -1 : 1)).map((f) => `${f.name}\t${f.size}\t${f.sha256}\n`).join('');
  return createHash('sha256').update(lines).digest('hex');
}
