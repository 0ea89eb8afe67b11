/**
 * Run-time assets resolve against the package, not the working directory: the presets, the bundled
 * model (a preset's relative paths and the default), the version. A user's own scenario file keeps
 * its relative paths relative to the working directory.
 */
import { expect } from 'chai';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { packagePath, packageRoot, packageVersion } from '../../shared/package-root.js';
import { BUNDLED_MODEL_DIR, DEFAULTS, PRESETS_DIR, loadScenario, presetNames } from '../../simulations/scenario.js';

describe('package paths', () => {
  const repo = resolve(fileURLToPath(new URL('../..', import.meta.url)));
  let dir: string;
  let cwd: string;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'fedlora-paths-'));
    cwd = process.cwd();
    process.chdir(dir); // a working directory with nothing of fedlora in it
  });
  after(async () => {
    process.chdir(cwd);
    await rm(dir, { recursive: true, force: true });
  });

  it('finds the package root and version from package.json, not the working directory', () => {
    expect(packageRoot()).to.equal(repo);
    expect(packageVersion()).to.equal((JSON.parse(readFileSync(join(repo, 'package.json'), 'utf8')) as { version: string }).version);
    expect(packagePath('simulations', 'scenarios')).to.equal(PRESETS_DIR);
  });

  it('lists and loads presets from another working directory; their model is the bundled one', async () => {
    expect(await presetNames()).to.include.members(['default', 'tiny-ci']);
    const s = await loadScenario('tiny-ci');
    expect(s.model).to.equal(BUNDLED_MODEL_DIR);
    expect(existsSync(join(s.model, 'config.json'))).to.equal(true);
  });

  it('a scenario without a model gets the bundled model (an absolute path)', async () => {
    const f = join(dir, 'no-model.json');
    await writeFile(f, JSON.stringify({ name: 'no-model', clients: 3, clientsPerRound: 3, minClients: 2 }));
    const s = await loadScenario(f);
    expect(DEFAULTS.model).to.equal(BUNDLED_MODEL_DIR);
    expect(s.model).to.equal(BUNDLED_MODEL_DIR);
  });

  it('a user file keeps its relative model path relative to the working directory', async () => {
    const f = join(dir, 'own-model.json');
    await writeFile(f, JSON.stringify({ name: 'own', model: 'models/mine', dataset: 'data/mail.jsonl' }));
    const s = await loadScenario(f);
    expect(s.model).to.equal('models/mine');
    expect(s.dataset).to.equal('data/mail.jsonl');
  });

  it('a user file that extends a preset inherits the preset\'s model inside the package, or overrides it', async () => {
    const inherit = join(dir, 'extends.json');
    await writeFile(inherit, JSON.stringify({ extends: 'tiny-ci', name: 'mine', rounds: 1 }));
    expect((await loadScenario(inherit)).model).to.equal(BUNDLED_MODEL_DIR);
    const own = join(dir, 'extends-own.json');
    await writeFile(own, JSON.stringify({ extends: 'tiny-ci', name: 'mine', model: 'models/mine' }));
    expect((await loadScenario(own)).model).to.equal('models/mine');
  });
});
