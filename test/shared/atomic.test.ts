import { expect } from 'chai';
import { mkdir, mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { atomicWrite, fsyncDir, renameDurable } from '../../shared/fs/atomic.js';

describe('shared/fs/atomic', () => {
  let dir: string;
  beforeEach(async () => { dir = await mkdtemp(join(tmpdir(), 'fedlora-atomic-')); });
  afterEach(async () => { await rm(dir, { recursive: true, force: true }); });

  it('writes strings and bytes, replaces an existing file, and leaves no temp file behind', async () => {
    const f = join(dir, 'a.json');
    await atomicWrite(f, '{"v":1}\n');
    expect(await readFile(f, 'utf8')).to.equal('{"v":1}\n');
    await atomicWrite(f, Uint8Array.of(1, 2, 3));
    expect([...await readFile(f)]).to.deep.equal([1, 2, 3]);
    expect(await readdir(dir)).to.deep.equal(['a.json']);
  });

  it('creates the file with the requested mode (0600 for secrets)', async () => {
    const f = join(dir, 'secret');
    await writeFile(f, 'old', { mode: 0o644 });
    await atomicWrite(f, 'new', { mode: 0o600 });
    expect((await stat(f)).mode & 0o777).to.equal(0o600);
    expect(await readFile(f, 'utf8')).to.equal('new');
  });

  it('a failed write throws and leaves the old file and no temp file', async () => {
    const f = join(dir, 'keep');
    await atomicWrite(f, 'old');
    let err: unknown;
    try { await atomicWrite(join(dir, 'missing', 'x'), 'new'); } catch (e) { err = e; }
    expect((err as NodeJS.ErrnoException)?.code).to.equal('ENOENT');
    // a directory where the file should go: the rename fails after the temp file was written
    await mkdir(join(dir, 'taken'));
    await writeFile(join(dir, 'taken', 'inside'), '');
    err = undefined;
    try { await atomicWrite(join(dir, 'taken'), 'new'); } catch (e) { err = e; }
    expect(err, 'rename over a non-empty directory fails').to.be.instanceOf(Error);
    expect((await readdir(dir)).sort()).to.deep.equal(['keep', 'taken']);
    expect(await readFile(f, 'utf8')).to.equal('old');
  });

  it('renameDurable moves a file; fsyncDir accepts a directory', async () => {
    await mkdir(join(dir, 'sub'));
    await writeFile(join(dir, 'part'), 'x');
    await renameDurable(join(dir, 'part'), join(dir, 'sub', 'final'));
    expect(await readFile(join(dir, 'sub', 'final'), 'utf8')).to.equal('x');
    await fsyncDir(dir);
  });
});
