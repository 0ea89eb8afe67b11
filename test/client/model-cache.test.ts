import { expect } from 'chai';
import { copyFile, mkdir, mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ensureModel } from '../../client/model-cache.js';
import { ModelStore } from '../../coordinator/model-store.js';
import { FedloraError } from '../../shared/errors.js';
import { setLogLevel } from '../../shared/log.js';

const FIXTURE = 'test/fixtures/hf/llama-tiny/base';

describe('client model cache', () => {
  let dir: string;
  let store: ModelStore;
  before(async () => { setLogLevel('error'); store = await ModelStore.open(FIXTURE); });
  after(async () => { await store.close(); });
  beforeEach(async () => { dir = await mkdtemp(join(tmpdir(), 'fedlora-cache-')); });
  afterEach(async () => { await rm(dir, { recursive: true, force: true }); });

  const base = () => ({ modelId: store.modelId, files: store.files, chunkSize: 64 * 1024, cacheRoot: join(dir, 'models') });

  it('downloads in chunks, verifies, then serves from cache; resumes a cut-off download from the .part offset', async () => {
    let calls = 0;
    let cutAfter = 3;
    const offsets: number[] = [];
    const fetch = async (file: string, offset: number, length: number) => {
      if (file === 'model.safetensors') offsets.push(offset);
      if (file === 'model.safetensors' && cutAfter-- === 0) throw new Error('connection lost');
      calls++;
      return store.readChunk(store.modelId, file, offset, length);
    };
    let err: unknown;
    try { await ensureModel({ ...base(), fetch }); } catch (e) { err = e; }
    expect(String(err)).to.match(/connection lost/);
    const part = await stat(join(dir, 'models', store.modelId, 'model.safetensors.part'));
    expect(part.size).to.equal(3 * 64 * 1024);
    offsets.length = 0;
    const r = await ensureModel({ ...base(), fetch });
    expect(r.source).to.equal('download');
    expect(offsets[0]).to.equal(3 * 64 * 1024); // resumed, not restarted
    expect(r.downloaded).to.equal(store.files.reduce((s, f) => s + f.size, 0) - 3 * 64 * 1024 - store.files.filter((f) => f.name < 'model.safetensors').reduce((s, f) => s + f.size, 0));
    const before = calls;
    const again = await ensureModel({ ...base(), fetch });
    expect(again.source).to.equal('cache');
    expect(calls).to.equal(before);
  });

  it('uses a pre-provisioned folder whose files hash to the modelId, and refuses tampered bytes', async () => {
    const never = async () => { throw new Error('should not download'); };
    const r = await ensureModel({ ...base(), provisioned: FIXTURE, fetch: never });
    expect(r).to.deep.include({ source: 'provisioned', dir: FIXTURE, downloaded: 0 });
    // a provisioned copy with one flipped byte is not trusted; a download that delivers flipped bytes is discarded
    const copy = join(dir, 'copy');
    await mkdir(copy);
    for (const f of store.files) await copyFile(join(FIXTURE, f.name), join(copy, f.name));
    await writeFile(join(copy, 'config.json'), '{"model_type":"llama"}');
    const evil = async (file: string, offset: number, length: number) => {
      const b = await store.readChunk(store.modelId, file, offset, length);
      if (file === 'model.safetensors' && offset === 0) b[100] = b[100]! ^ 0xff;
      return b;
    };
    let err: unknown;
    try { await ensureModel({ ...base(), provisioned: copy, fetch: evil }); } catch (e) { err = e; }
    expect(err).to.be.instanceOf(FedloraError);
    expect((err as FedloraError).code).to.equal('MODEL_FORMAT');
    expect(await readdir(join(dir, 'models', store.modelId))).to.not.include('model.safetensors');
  });

  it('refuses a file list that does not hash to the announced modelId', async () => {
    let err: unknown;
    try { await ensureModel({ ...base(), files: store.files.slice(1), fetch: async () => new Uint8Array(0) }); } catch (e) { err = e; }
    expect((err as FedloraError).code).to.equal('MODEL_MISMATCH');
  });
});
