export * from './common.js';
export * from './node-spec.js';
export * from './agent-settings.js';
export * from './validate.js';
