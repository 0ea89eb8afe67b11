import { access } from 'node:fs/promises';
import { ConfigError } from '../../shared/errors.js';
import { formatPublicKey, generateIdentity, saveIdentity } from '../../shared/crypto/index.js';
import { str, type Command } from './flags.js';

export const keygenCommand: Command = {
  name: 'keygen',
  summary: 'Create an Ed25519 identity (client or coordinator); prints the public key line for enrollment.',
  usage: 'fedlora keygen --out FILE [--name NAME]',
  flags: {
    out: { type: 'string', placeholder: 'FILE', help: 'identity file to create (mode 0600); refuses to overwrite; required' },
    name: { type: 'string', placeholder: 'NAME', help: 'name to print after the key in the enrollment line' },
  },
  async run(v) {
    const out = str(v.out, 'out', true)!;
    const name = str(v.name, 'name');
    if (name !== undefined && (/[\u0000-\u001f\u007f#]/.test(name) || name.length > 128)) throw new ConfigError('--name must be printable, without #, at most 128 chars');
    if (await access(out).then(() => true, () => false)) throw new ConfigError(`${out} already exists; refusing to overwrite an identity`);
    const id = generateIdentity();
    await saveIdentity(out, id);
    process.stderr.write(`wrote ${out} (keep it private); add this line to the coordinator's --authorized-clients file:\n`);
    process.stdout.write(`${formatPublicKey(id.publicKey)}${name ? ` ${name}` : ''}\n`);
    return 0;
  },
};
