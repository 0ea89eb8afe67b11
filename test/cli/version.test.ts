/** `fedlora --version` prints package.json's version, found through the package root (not the working directory). */
import { expect } from 'chai';
import { readFileSync } from 'node:fs';
import { Cli } from './cli-harness.js';

describe('fedlora --version', () => {
  it('prints the version alone and exits 0', async () => {
    const version = (JSON.parse(readFileSync('package.json', 'utf8')) as { version: string }).version;
    const r = await new Cli(['--version']).exit;
    expect(r.code, r.stderr).to.equal(0);
    expect(r.stdout).to.equal(`${version}\n`);
  });
});
