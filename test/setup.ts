// Quiet library info logs in the test process (FEDLORA_LOG=info brings them back); child processes
// started by tests keep their own level, since some tests read their log lines.
import { setLogLevel } from '../shared/log.js';
import { setRunning, startWatchdog } from './watchdog.js';
if (!process.env.FEDLORA_LOG) setLogLevel('warn');

// A test that never yields cannot be stopped by mocha's timeout: the watchdog ends such a run and names it.
startWatchdog();

export const mochaHooks = {
  beforeEach(this: Mocha.Context): void { setRunning(this.currentTest?.fullTitle() ?? ''); },
  afterEach(): void { setRunning(''); },
};
