/**
 * The runtime layer: sessions over ONNX Runtime, taps, batched runs, and (Node only) a worker-thread pool.
 * Browser code should import './portable.js' instead, which leaves out the pool.
 */

export { type PoolOptions, WorkerPool } from './pool.js';
export * from './portable.js';
