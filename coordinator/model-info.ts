export * from '../shared/model/model-info.js';
