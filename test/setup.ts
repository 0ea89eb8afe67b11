// Quiet library info logs in the test process (FEDLORA_LOG=info brings them back); child processes
// started by tests keep their own level, since some tests read their log lines.
import { setLogLevel } from '../shared/log.js';
if (!process.env.FEDLORA_LOG) setLogLevel('warn');
