/**
 * Content-addressed base-model distribution. modelId = sha256 over a canonical manifest
 * (`name\tsize\tsha256\n` per file, sorted by name), so any change to any file changes the id.
 * Files are served in bounded chunks by (file, offset, length); clients resume by offset.
 */
import { open, readdir, stat, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { ConfigError, ProtocolError } from '../shared/errors.js';
import { FILE_RE, LIMITS, manifestId, sha256File, type ModelFile } from '../shared/protocol/index.js';

export { manifestId, sha256File };

export class ModelStore {
  readonly dir: string;
  readonly files: readonly ModelFile[];
  readonly modelId: string;
  /** Bytes of the weights file(s): what sending the full model would cost. */
  readonly weightBytes: number;
  #handles = new Map<string, Promise<FileHandle>>();

  private constructor(dir: string, files: ModelFile[], weightBytes: number) {
    this.dir = dir;
    this.files = files;
    this.modelId = manifestId(files);
    this.weightBytes = weightBytes;
  }

  static async open(dir: string): Promise<ModelStore> {
    const names = (await readdir(dir).catch((e: NodeJS.ErrnoException) => { throw new ConfigError(`--model ${dir}: ${e.code ?? e.message}`); }))
      .filter((n) => !n.startsWith('.')).sort();
    const files: ModelFile[] = [];
    let weightBytes = 0;
    for (const name of names) {
      const p = join(dir, name);
      const s = await stat(p);
      if (!s.isFile()) continue;
      if (!FILE_RE.test(name)) throw new ConfigError(`--model ${dir}: file name ${JSON.stringify(name)} cannot be distributed`);
      files.push({ name, size: s.size, sha256: await sha256File(p) });
      if (name.endsWith('.safetensors')) weightBytes += s.size;
    }
    if (!files.some((f) => f.name === 'config.json')) throw new ConfigError(`--model ${dir}: no config.json`);
    if (files.length > LIMITS.maxFiles) throw new ConfigError(`--model ${dir}: more than ${LIMITS.maxFiles} files`);
    return new ModelStore(dir, files, weightBytes);
  }

  async readChunk(modelId: string, file: string, offset: number, length: number): Promise<Uint8Array> {
    if (modelId !== this.modelId) throw new ProtocolError('MODEL_MISMATCH', `model ${modelId.slice(0, 12)}… is not served here (${this.modelId.slice(0, 12)}…)`);
    const f = this.files.find((x) => x.name === file);
    if (!f) throw new ProtocolError('UNKNOWN_FILE', `no model file ${file}`);
    if (offset > f.size) throw new ProtocolError('BAD_RANGE', `offset ${offset} past the end of ${file} (${f.size})`);
    const n = Math.min(length, f.size - offset);
    let p = this.#handles.get(file);
    if (!p) { p = open(join(this.dir, file), 'r'); this.#handles.set(file, p); }
    const fh = await p;
    const buf = new Uint8Array(n);
    let got = 0;
    while (got < n) {
      const { bytesRead } = await fh.read(buf, got, n - got, offset + got);
      if (bytesRead === 0) throw new ProtocolError('BAD_RANGE', `${file} shrank while being served`);
      got += bytesRead;
    }
    return buf;
  }

  async close(): Promise<void> {
    const hs = [...this.#handles.values()];
    this.#handles.clear();
    await Promise.allSettled(hs.map(async (h) => (await h).close()));
  }
}
