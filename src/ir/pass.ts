/**
 * The common shape of graph passes. A pass rewrites a Model in place (tensors are large; copying them for every
 * pass would double memory) and returns a record of what it did. Passes never touch sessions or files.
 */
import type { Model } from './model.js';

export interface PassRecord {
  /** The pass's name, e.g. 'dead-node-elimination'. */
  pass: string;
  /** Whether the model changed. */
  changed: boolean;
  /** Counts and notes specific to the pass (nodes removed, tensors folded, ...). */
  details: Record<string, unknown>;
}

export type Pass<O = Record<string, never>> = (model: Model, options?: O) => PassRecord;
