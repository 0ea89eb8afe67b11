export * from './events.js';
export * from './messages.js';
export * from './rpc.js';
export * from './glob.js';
export * as guard from './guard.js';
export * from './manifest.js';
export * from './secure.js';
