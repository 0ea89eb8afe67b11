/**
 * Client side of base-model distribution. The model is identified by the coordinator's modelId
 * (sha256 over the file manifest). A pre-provisioned folder or a cache entry whose files hash to
 * the manifest is used as is; anything else is downloaded in chunks into `<file>.part`, resumed
 * from the part's length after a disconnect, hashed, and only then renamed into place.
 */
import { createHash } from 'node:crypto';
import { mkdir, open, readFile, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { ModelFormatError, ProtocolError } from '../shared/errors.js';
import { logger } from '../shared/log.js';
import { atomicWrite, renameDurable } from '../shared/fs/atomic.js';
import { manifestId, sha256File, type ModelFile } from '../shared/protocol/index.js';

const log = logger('fedlora:client:model');

/** Fetches `length` bytes of `file` at `offset` from the coordinator. */
export type ChunkFetcher = (file: string, offset: number, length: number) => Promise<Uint8Array>;

export interface EnsureModelOptions {
  modelId: string;
  files: readonly ModelFile[];
  chunkSize: number;
  cacheRoot: string;
  /** A folder that may already hold the files (pre-provisioned). */
  provisioned?: string;
  fetch: ChunkFetcher;
  onProgress?: (done: number, total: number) => void;
}

export interface EnsuredModel { dir: string; downloaded: number; source: 'provisioned' | 'cache' | 'download' }

async function matches(dir: string, files: readonly ModelFile[]): Promise<boolean> {
  for (const f of files) {
    const s = await stat(join(dir, f.name)).catch(() => null);
    if (!s || !s.isFile() || s.size !== f.size) return false;
  }
  for (const f of files) if ((await sha256File(join(dir, f.name))) !== f.sha256) return false;
  return true;
}

export async function ensureModel(o: EnsureModelOptions): Promise<EnsuredModel> {
  if (manifestId(o.files) !== o.modelId) throw new ProtocolError('MODEL_MISMATCH', 'the coordinator\'s file list does not hash to its modelId');
  if (o.provisioned && (await matches(o.provisioned, o.files))) {
    log.info(`using pre-provisioned model in ${o.provisioned}`);
    return { dir: o.provisioned, downloaded: 0, source: 'provisioned' };
  }
  const dir = join(o.cacheRoot, o.modelId);
  const marker = join(dir, '.complete');
  const done = await readFile(marker, 'utf8').catch(() => '');
  if (done.trim() === o.modelId && (await matches(dir, o.files))) {
    log.info(`using cached model ${o.modelId.slice(0, 12)}…`);
    return { dir, downloaded: 0, source: 'cache' };
  }
  await mkdir(dir, { recursive: true });
  const total = o.files.reduce((s, f) => s + f.size, 0);
  let progress = 0;
  let downloaded = 0;
  for (const f of o.files) {
    const final = join(dir, f.name);
    const have = await stat(final).catch(() => null);
    if (have?.size === f.size && (await sha256File(final)) === f.sha256) { progress += f.size; continue; }
    const part = `${final}.part`;
    let offset = (await stat(part).catch(() => null))?.size ?? 0;
    if (offset > f.size) { await rm(part); offset = 0; }
    if (offset > 0) log.info(`resuming ${f.name} at ${offset}/${f.size} bytes`);
    progress += offset;
    const fh = await open(part, 'a');
    try {
      while (offset < f.size) {
        const want = Math.min(o.chunkSize, f.size - offset);
        const data = await o.fetch(f.name, offset, want);
        if (data.byteLength !== want) throw new ProtocolError('BAD_MESSAGE', `${f.name}: asked for ${want} bytes at ${offset}, got ${data.byteLength}`);
        await fh.write(data, 0, data.byteLength, offset);
        offset += data.byteLength;
        progress += data.byteLength;
        downloaded += data.byteLength;
        o.onProgress?.(progress, total);
      }
      await fh.sync();
    } finally {
      await fh.close();
    }
    const h = await sha256File(part);
    if (h !== f.sha256) {
      await rm(part, { force: true });
      throw new ModelFormatError(`downloaded file hashes to ${h.slice(0, 12)}…, the coordinator announced ${f.sha256.slice(0, 12)}…; discarded`, f.name);
    }
    await renameDurable(part, final);
  }
  if (!(await matches(dir, o.files))) throw new ModelFormatError('model cache does not verify after download', dir);
  await atomicWrite(marker, `${o.modelId}\n`);
  log.info(`model ${o.modelId.slice(0, 12)}… downloaded (${downloaded} bytes) and verified`);
  return { dir, downloaded, source: 'download' };
}

export function sha256(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}
