#!/usr/bin/env node
/**
 * `fedlora <command> [flags]`. Thin: parses flags and calls coordinator/, client/, simulations/.
 * Add a subcommand by adding a Command to COMMANDS.
 */
import { FedloraError, errorMessage } from '../shared/errors.js';
import { coordinatorCommand } from './commands/coordinator.js';
import { clientCommand } from './commands/client.js';
import { keygenCommand } from './commands/keygen.js';
import { exportCommand } from './commands/export.js';
import { simulateCommand } from './commands/simulate.js';
import { helpText, parseFlags, type Command } from './commands/flags.js';
import { packageVersion } from '../shared/package-root.js';

export const COMMANDS: Command[] = [coordinatorCommand, clientCommand, simulateCommand, keygenCommand, exportCommand];

function usage(): string {
  return `fedlora — federated LoRA fine-tuning\n\nUsage: fedlora <command> [options]\n\nCommands:\n${COMMANDS.map((c) => `  ${c.name.padEnd(14)}${c.summary}`).join('\n')}\n\nRun \`fedlora <command> --help\` for the options of a command; \`fedlora --version\` prints the version.\n`;
}

export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === '--help' || name === '-h' || name === 'help') { process.stdout.write(usage()); return name ? 0 : 2; }
  if (name === '--version' || name === '-v' || name === 'version') { process.stdout.write(`${packageVersion()}\n`); return 0; }
  const cmd = COMMANDS.find((c) => c.name === name);
  if (!cmd) { process.stderr.write(`fedlora: unknown command ${JSON.stringify(name)}\n\n${usage()}`); return 2; }
  let values;
  try {
    values = parseFlags(cmd, rest);
  } catch (e) {
    process.stderr.write(`fedlora ${cmd.name}: ${errorMessage(e)}\nRun \`fedlora ${cmd.name} --help\` for the options.\n`);
    return 2;
  }
  if (values.help === true) { process.stdout.write(helpText(cmd)); return 0; }
  try {
    return await cmd.run(values);
  } catch (e) {
    const config = e instanceof FedloraError && e.code === 'CONFIG';
    process.stderr.write(`fedlora ${cmd.name}: ${errorMessage(e)}\n`);
    return config ? 2 : 1;
  }
}

main(process.argv.slice(2)).then((code) => process.exit(code), (e: unknown) => {
  process.stderr.write(`fedlora: ${errorMessage(e)}\n`);
  process.exit(1);
});
