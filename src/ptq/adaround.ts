/**
 * AdaRound (Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training Quantization"), as AIMET runs
 * it (aimet_onnx adaround_optimizer.py / adaround_loss.py): for each Conv/Gemm/MatMul in topological order,
 * learn whether each weight rounds up or down on the grid of its (already computed) encoding.
 *
 *   W̃ = s·clip(⌊W/s⌋ + h(V), qmin − zp, qmax − zp),  h(V) = clip(σ(V)·(ζ − γ) + γ, 0, 1), ζ = 1.1, γ = −0.1
 *   loss = mean over output positions of ||f(W·x) − f(W̃·x̃)||² (summed over output channels)
 *          + λ·Σ(1 − |2h(V) − 1|^β)
 *
 * x is the float model's input of the layer, x̃ its input in the quantized-so-far model (earlier layers with their
 * AdaRounded weights, activation quantizers off, see layer-cache.ts), f the Relu/Clip that follows the layer
 * (none otherwise). The regularizer is off for the first `warmStart` (20 %) of the iterations, then β anneals from
 * 20 to 2 by the cosine schedule. V starts where h(V) = W/s − ⌊W/s⌋ and is optimized with Adam (lr 1e-3) on
 * random batches of 32 cached rows (AIMET: 32 images). The final rounding is ⌊W/s⌋ + 1[h(V) ≥ 0.5], i.e. up
 * where V ≥ 0. Unlike AIMET, a layer whose learned rounding reconstructs worse than nearest rounding (exact MSE
 * over all cached rows) keeps nearest rounding (`fallback`): an unconverged run, with many h(V) still inside
 * (0, 1) when the hard rounding is taken, can end above nearest, most often on grids that clip (sequential MSE).
 *
 * Per iteration, ONNX Runtime computes ∂recon/∂W̃ and one fused TypeScript loop does everything elementwise
 * (h(V), W̃, the regularizer's gradient, Adam). Two engines give ∂recon/∂W̃:
 * - 'sampled' (AIMET's loop): the layer op on a random batch of rows gathered inside a small ONNX model from the
 *   cached data (fed zero-copy), backward pass from the autodiff engine; needed when the loss has an activation;
 * - 'gram': for a loss without activation the loss is quadratic in W̃, so from G = Σ x̃·x̃ᵀ and M = Σ y·x̃ᵀ
 *   (per group, im2col columns for Conv, computed once over all cached rows) the exact full-data gradient is
 *   2(W̃·G − M)/P: one batched MatMul per iteration whatever the amount of data. Same results as 'sampled' with
 *   every row in the batch (checked to 4 digits on PP-OCR layers), 25-40x faster there.
 *
 * The result replaces each float weight W in `sim.model` by W̃ = fround(q·s), q the AdaRounded grid value. The
 * quantizer then reproduces q exactly: fround(W̃/s) = q·(1 + ε) with |ε| ≤ 2^−23, and |q| ≤ 2^16 keeps
 * |q·ε| ≤ 2^−7 < 0.5, so round-to-nearest gives q back; so the QDQ export (and AIMET encodings export) writes
 * AdaRound's integers with no change of its own, and DequantizeLinear computes exactly W̃ (checked per layer:
 * `mismatches` is always 0). Weight encodings are not changed.
 */
import { QnnxError } from '../errors.js';
import { GraphBuilder, valueInfo } from '../ir/builder.js';
import { type Attribute, Node } from '../ir/graph.js';
import { Model } from '../ir/model.js';
import { DataType } from '../onnx/dtype.js';
import { type Encoding, groupIndexer } from '../quant/encoding.js';
import { quantize } from '../quant/quantizer.js';
import { intRange } from '../quant/scheme.js';
import { matcher, type QuantSim } from '../quant/sim/quantsim.js';
import { type Feeds, type SerializableSessionOptions, Session } from '../runtime/session.js';
import { copyModelStructure } from '../runtime/taps.js';
import type { HostTensor } from '../tensor.js';
import { addGradients } from '../train/autodiff/engine.js';
import { Rng } from '../train/builder/prng.js';
import {
  floatData,
  type LayerActivation,
  LayerCache,
  type LayerCacheOptions,
  type MakeRunner,
  replaceInitializer,
  type SkippedLayer,
  type Stacked,
  type WeightedLayer,
  weightedLayers,
} from './layer-cache.js';

export const ADAROUND_ZETA = 1.1;
export const ADAROUND_GAMMA = -0.1;

export interface AdaRoundOptions {
  /** Iterations per layer (default 10000, 15000 for weights below 8 bits: newer AIMET's defaults). */
  iterations?: number;
  /** λ, the weight of the rounding regularizer (default 0.01). */
  regularization?: number;
  /** β annealed from [0] to [1] (default [20, 2]). */
  betaRange?: [number, number];
  /** Fraction of the iterations without the regularizer (default 0.2). */
  warmStart?: number;
  /** Adam learning rate (default 1e-3). */
  learningRate?: number;
  /**
   * Rows (samples, times the model's batch size) per iteration of the 'sampled' engine (default 32, raised to
   * hold at least 128 output positions for Gemm/MatMul layers).
   */
  batchSize?: number;
  /** Seed of the batch sampling (default 0). */
  seed?: number;
  /** Include the Relu/Clip after a layer in its loss, f(W·x) (default true; AIMET's act_func). */
  activation?: boolean;
  /** ONNX Runtime intra-op threads for the optimization sessions (default 1). */
  threads?: number;
  /**
   * Keep nearest rounding for a layer whose learned rounding has a higher reconstruction MSE on the cached data
   * than nearest rounding (default true; AIMET has no such check). The learned rounding of an unconverged run
   * (few iterations, many h(V) still inside (0, 1)) can round worse than nearest.
   */
  fallback?: boolean;
  /**
   * 'sampled': AIMET's loop, the layer op on a random batch of rows per iteration; 'gram': the exact full-data
   * loss of a layer without activation from its Gram matrices (cost per iteration independent of the data);
   * 'auto' (default): 'gram' where the loss has no activation and it is the cheaper (see gramFits), else
   * 'sampled'.
   */
  engine?: 'auto' | 'sampled' | 'gram';
}

export interface AdaRoundModelOptions extends AdaRoundOptions, LayerCacheOptions {
  /** Node names, op types or /regex/ of layers to leave at nearest rounding. */
  exclude?: string[];
  /** Called after each layer. */
  onLayer?: (report: AdaRoundLayerReport, done: number, total: number) => void;
}

/** One layer's problem: the op, its float weight and bias, the encoding, and its cached data. */
export interface LayerProblem {
  opType: 'Conv' | 'Gemm' | 'MatMul';
  /** The node's attributes (strides, pads, group, transB, alpha, ...). */
  attributes: Attribute[];
  weight: { dims: number[]; data: Float32Array };
  bias?: { dims: number[]; data: Float32Array };
  encoding: Encoding;
  activation?: LayerActivation;
  /** Layer input (x̃), samples stacked along axis 0. */
  x: Stacked;
  /** Float target f(W·x), stacked the same way. */
  target: Stacked;
}

export interface AdaRoundLayerResult {
  /** AdaRounded grid values relative to the zero point (q − zp), in the weight's layout. */
  q: Int32Array;
  /** W̃ = fround(q·s): the float weight that quantizes back to q exactly. */
  weight: Float32Array;
  /** Reconstruction MSE (mean over output elements of f(W·x) − f(Ŵ·x̃)) with nearest rounding. */
  mseNearest: number;
  /** The same with the returned rounding: min(mseLearned, mseNearest) unless `fallback: false`. */
  mseAdaRound: number;
  /** The same with the learned rounding ⌊W/s⌋ + 1[V ≥ 0]. */
  mseLearned: number;
  /** Whether the learned rounding was worse than nearest and nearest rounding is returned instead. */
  fellBack: boolean;
  /** Fraction of weights whose returned rounding differs from nearest (0 after a fallback). */
  changed: number;
  /** Fraction of h(V) strictly inside (0.01, 0.99) at the end of the optimization (AIMET: 0 when converged). */
  undecided: number;
  /** Weights whose re-quantized W̃ is not q (always 0; a check of the export path). */
  mismatches: number;
  iterations: number;
  engine: 'sampled' | 'gram';
  /** Rows the layer's data holds, and rows per iteration ('sampled'). */
  rows: number;
  batch: number;
  seconds: number;
}

export interface AdaRoundLayerReport extends Omit<AdaRoundLayerResult, 'q' | 'weight'> {
  node: string;
  weight: string;
  samples: number;
}

export interface AdaRoundReport {
  layers: AdaRoundLayerReport[];
  skipped: SkippedLayer[];
  samples: number;
  seconds: number;
}

const f32 = Math.fround;

/** AIMET's β schedule: cosine from start to end over the iterations after the warm start. */
export function adaroundBeta(iteration: number, iterations: number, range: [number, number], warm: number) {
  const w = warm * iterations;
  const rel = (iteration - w) / (iterations - w);
  return range[1] + 0.5 * (range[0] - range[1]) * (1 + Math.cos(rel * Math.PI));
}

/** h(V), the rectified sigmoid. */
export function rectifiedSigmoid(v: number): number {
  const s = 1 / (1 + Math.exp(-v));
  return Math.min(1, Math.max(0, s * (ADAROUND_ZETA - ADAROUND_GAMMA) + ADAROUND_GAMMA));
}

/** Per-element scale, floor of W/s and grid bounds of a weight under an encoding. */
export function gridOf(w: Float32Array, dims: number[], enc: Encoding) {
  const s = enc.scheme;
  if (s.format !== 'int') throw new QnnxError('E_USAGE', `AdaRound needs an integer grid, got ${s.format}`);
  const { qmin, qmax } = intRange(s.bits, s.signed, s.narrow);
  const { index } = groupIndexer(dims, s.granularity);
  const n = w.length;
  const scale = new Float32Array(n);
  const floor = new Float32Array(n);
  const lo = new Float32Array(n);
  const hi = new Float32Array(n);
  const frac = new Float64Array(n);
  let uniform = true;
  for (let i = 0; i < n; i++) {
    const g = index(i);
    const sc = enc.scale[g];
    const zp = enc.zeroPoint[g];
    const r = f32(w[i] / sc);
    const fl = Math.floor(r);
    scale[i] = sc;
    floor[i] = fl;
    frac[i] = r - fl;
    lo[i] = qmin - zp;
    hi[i] = qmax - zp;
    if (lo[i] !== lo[0] || hi[i] !== hi[0]) uniform = false;
  }
  return { scale, floor, lo, hi, frac, uniform };
}

/** V with h(V) = frac (AIMET's initialization). */
function initialV(frac: Float64Array): Float64Array {
  const v = new Float64Array(frac.length);
  for (let i = 0; i < frac.length; i++) {
    const p = (frac[i] - ADAROUND_GAMMA) / (ADAROUND_ZETA - ADAROUND_GAMMA);
    v[i] = -Math.log(1 / p - 1);
  }
  return v;
}

type Grid = ReturnType<typeof gridOf>;

function newModel(name: string): { model: Model; b: GraphBuilder } {
  const model = new Model();
  model.opsetImports = [{ domain: '', version: 17 }];
  model.graph.name = name;
  const b = new GraphBuilder(model.graph);
  for (const n of ['Wq', 'X', 'T', 'idx']) b.reserve(n);
  return { model, b };
}

/** The layer op applied to gathered rows of X with the weight input Wq, then f, minus the gathered targets. */
function layerResidual(b: GraphBuilder, p: LayerProblem, activation: boolean, batch: number | 'n'): string {
  const g = b.graph;
  g.inputs.push(valueInfo('Wq', DataType.FLOAT, p.weight.dims));
  g.inputs.push(valueInfo('X', DataType.FLOAT, p.x.dims));
  g.inputs.push(valueInfo('T', DataType.FLOAT, p.target.dims));
  g.inputs.push(valueInfo('idx', DataType.INT64, [batch]));
  const xb = b.op('Gather', ['X', 'idx'], { axis: 0 });
  const tb = b.op('Gather', ['T', 'idx'], { axis: 0 });
  const inputs = [xb, 'Wq'];
  if (p.bias) inputs.push(b.floats('bias', p.bias.dims, p.bias.data));
  const attrs = Object.fromEntries(p.attributes.map((a) => [a.name, a]));
  const y = b.node(p.opType, inputs, { attrs }).outputs[0];
  let fy = y;
  const act = activation ? p.activation : undefined;
  if (act?.kind === 'relu') fy = b.op('Relu', [y]);
  else if (act?.kind === 'clip') {
    fy = b.op('Clip', [
      y,
      Number.isFinite(act.min) ? b.floats('min', [], [act.min]) : '',
      Number.isFinite(act.max) ? b.floats('max', [], [act.max]) : '',
    ]);
  }
  return b.op('Sub', [fy, tb]);
}

/** Sum of squared residuals over the gathered rows, for a given W̃ (the exact reconstruction error). */
function evalModel(p: LayerProblem, activation: boolean): { model: Model; out: string } {
  const { model, b } = newModel('adaround_eval');
  const d = layerResidual(b, p, activation, 'n');
  const out = b.op('ReduceSum', [b.op('Mul', [d, d])], { keepdims: 0 });
  model.graph.outputs.push(valueInfo(out, DataType.FLOAT, []));
  return { model, out };
}

/**
 * ∂recon/∂W̃ on a random batch of rows, recon = AIMET's loss (squares summed over channels, mean over the
 * batch's output positions); the backward pass comes from the autodiff engine.
 */
function sampledModel(p: LayerProblem, batch: number, activation: boolean): { model: Model; out: string } {
  const { model, b } = newModel('adaround_sampled');
  const d = layerResidual(b, p, activation, batch);
  const chAxis = p.opType === 'MatMul' ? p.target.dims.length - 1 : 1;
  const perPos = b.op('ReduceSum', [b.op('Mul', [d, d]), b.int64s('axes', [1], [chAxis])], { keepdims: 0 });
  const recon = b.op('ReduceMean', [perPos], { keepdims: 0 });
  const { gradients } = addGradients(model, {
    loss: recon,
    wrt: ['Wq'],
    inputShapes: { Wq: p.weight.dims, X: p.x.dims, T: p.target.dims, idx: [batch] },
  });
  const out = gradients.get('Wq')!;
  model.graph.outputs.push(valueInfo(out, DataType.FLOAT, p.weight.dims));
  return { model, out };
}

/** Groups, rows per group and columns (reduction size) of the layer's weight as a [g, Og, K] matrix. */
function matrixShape(p: LayerProblem): { g: number; og: number; k: number; transposed: boolean } {
  const wd = p.weight.dims;
  const node = new Node(p.opType, [], [], p.attributes);
  if (p.opType === 'Conv') {
    const g = node.attrInt('group', 1);
    return { g, og: wd[0] / g, k: p.weight.data.length / wd[0], transposed: false };
  }
  if (p.opType === 'Gemm' && node.attrInt('transB', 0))
    return { g: 1, og: wd[0], k: wd[1], transposed: false };
  return { g: 1, og: wd[1], k: wd[0], transposed: true };
}

/**
 * Gram statistics of a layer without activation over a chunk of rows of X/T: G = Σ u·uᵀ per group (u the im2col
 * column of x̃), M = Σ y·uᵀ (y = target − bias), and Σ y².
 */
function statsModel(p: LayerProblem): { model: Model; G: string; M: string; c: string } {
  const { model, b } = newModel('adaround_stats');
  const g = model.graph;
  g.inputs.push(valueInfo('X', DataType.FLOAT, ['n', ...p.x.dims.slice(1)]));
  g.inputs.push(valueInfo('T', DataType.FLOAT, ['n', ...p.target.dims.slice(1)]));
  const { g: groups, og, k } = matrixShape(p);
  const node = new Node(p.opType, [], [], p.attributes);
  let y = 'T';
  if (p.bias) {
    const beta = p.opType === 'Gemm' ? node.attrFloat('beta', 1) : 1;
    const bias = p.bias.data.map((v) => v * beta);
    const bdims =
      p.opType === 'Conv' ? [1, bias.length, ...p.target.dims.slice(2).map(() => 1)] : p.bias.dims;
    y = b.op('Sub', ['T', b.floats('bias', bdims, bias)]);
  }
  let G: string;
  let M: string;
  if (p.opType === 'Conv') {
    const channels = p.x.dims[1];
    const kernel = p.weight.dims.slice(2);
    const kk = kernel.reduce((a, v) => a * v, 1);
    let u = 'X';
    const plain =
      kk === 1 &&
      (node.attrInts('strides') ?? []).every((s) => s === 1) &&
      (node.attrInts('pads') ?? []).every((s) => s === 0) &&
      (node.attrString('auto_pad') ?? 'NOTSET') === 'NOTSET';
    if (!plain) {
      // im2col as a depthwise Conv with a one-hot kernel: channel c·kk + j is input channel c at offset j,
      // the order of the weight's flattened [C/g, k...] within a group.
      const e = new Float32Array(channels * kk * kk);
      for (let ch = 0; ch < channels; ch++) for (let j = 0; j < kk; j++) e[(ch * kk + j) * kk + j] = 1;
      const E = b.floats('unfold', [channels * kk, 1, ...kernel], e);
      const attrs: Record<string, Attribute | number> = {};
      for (const a of p.attributes) if (a.name !== 'group') attrs[a.name] = a;
      attrs.group = channels;
      u = b.node('Conv', ['X', E], { attrs }).outputs[0];
    }
    const u4 = b.op('Reshape', [u, b.int64s('shape', [4], [0, groups, k, -1])]);
    const y4 = b.op('Reshape', [y, b.int64s('shape', [4], [0, groups, og, -1])]);
    const ut = b.op('Transpose', [u4], { perm: [0, 1, 3, 2] });
    const axes0 = b.int64s('axes', [1], [0]);
    G = b.op('ReduceSum', [b.op('MatMul', [u4, ut]), axes0], { keepdims: 0 });
    M = b.op('ReduceSum', [b.op('MatMul', [y4, ut]), axes0], { keepdims: 0 });
  } else {
    const x2 = b.op('Reshape', ['X', b.int64s('shape', [2], [-1, k])]);
    const y2 = b.op('Reshape', [y, b.int64s('shape', [2], [-1, og])]);
    G = b.op('Gemm', [x2, x2], { transA: 1 });
    M = b.op('Gemm', [y2, x2], { transA: 1 });
  }
  const c = b.op('ReduceSumSquare', [y], { keepdims: 0 });
  g.outputs.push(valueInfo(G, DataType.FLOAT, []));
  g.outputs.push(valueInfo(M, DataType.FLOAT, []));
  g.outputs.push(valueInfo(c, DataType.FLOAT, []));
  return { model, G, M, c };
}

/**
 * ∂recon/∂W̃ of the exact full-data loss of a layer without activation, from its Gram statistics (divided by the
 * number of output positions P): recon = Σ_g tr(W̃ G W̃ᵀ) − 2 tr(W̃ Mᵀ) + c, so ∂recon/∂W̃ = 2(W̃·G − M) (G is
 * symmetric), at a cost per iteration of g·Og·K² whatever the amount of data.
 */
function gramModel(p: LayerProblem, G: Float32Array, M: Float32Array): { model: Model; out: string } {
  const { model, b } = newModel('adaround_gram');
  const wdims = p.weight.dims;
  model.graph.inputs.push(valueInfo('Wq', DataType.FLOAT, wdims));
  const { g: groups, og, k, transposed } = matrixShape(p);
  const alpha = p.opType === 'Gemm' ? new Node(p.opType, [], [], p.attributes).attrFloat('alpha', 1) : 1;
  const w = b.op('Reshape', [
    transposed ? b.op('Transpose', ['Wq'], { perm: [1, 0] }) : 'Wq',
    b.int64s('shape', [3], [groups, og, k]),
  ]);
  const Gi = b.floats('G', [groups, k, k], G);
  const Mi = b.floats('M', [groups, og, k], M);
  // d/dW of recon(alpha·W) = alpha·2(alpha·W·G − M)
  const aw = b.op('MatMul', [w, Gi]);
  const d = b.op('Sub', [alpha === 1 ? aw : b.op('Mul', [aw, b.floats('alpha', [], [alpha])]), Mi]);
  const d2 = b.op('Mul', [d, b.floats('two_alpha', [], [2 * alpha])]);
  const back = transposed
    ? b.op('Transpose', [b.op('Reshape', [d2, b.int64s('shape', [2], [og, k])])], { perm: [1, 0] })
    : b.op('Reshape', [d2, b.int64s('shape', [wdims.length], wdims)]);
  model.graph.outputs.push(valueInfo(back, DataType.FLOAT, wdims));
  return { model, out: back };
}

/** |V| beyond which h(V) is clipped to exactly 0 or 1 (ln 11 ≈ 2.398, with a margin for rounding). */
const SATURATED = Math.log(11) + 1e-6;
const SIG_TABLE = 8192;
const POW_TABLE = 4096;

interface Schedule {
  lambda: number;
  betaStart: number;
  betaEnd: number;
  warm: number;
  lr: number;
}

/**
 * The optimization loop: V (updated in place) by Adam with PyTorch's semantics (β = 0.9, 0.999, eps 1e-8), the
 * gradient of the reconstruction loss with respect to W̃ from `reconGrad` (ONNX Runtime), and everything
 * elementwise (h(V), W̃, the clips, the regularizer and its gradient, Adam) in one fused loop: measured 5-10x
 * faster than the same chain as ~60 elementwise ONNX nodes, which dominated the time of every layer.
 */
async function optimize(
  V: Float64Array,
  grid: Grid,
  iterations: number,
  s: Schedule,
  reconGrad: (wq: Float32Array) => Promise<Float32Array>,
): Promise<void> {
  const n = V.length;
  const m = new Float64Array(n);
  const v = new Float64Array(n);
  const h = new Float64Array(n);
  const dh = new Float64Array(n);
  const wq = new Float32Array(n);
  const inGrid = new Uint8Array(n);
  const { floor, lo, hi, scale } = grid;
  const zg = ADAROUND_ZETA - ADAROUND_GAMMA;
  // σ on [−SATURATED, SATURATED] and |x|^(β−1) on [0, 1] from tables with linear interpolation (errors below 1e-8
  // and 3e-6): Math.exp and Math.pow were 70 % of the loop's time.
  const sig = new Float64Array(SIG_TABLE + 2);
  for (let j = 0; j <= SIG_TABLE + 1; j++)
    sig[j] = 1 / (1 + Math.exp(-(-SATURATED + (j * 2 * SATURATED) / SIG_TABLE)));
  const sigScale = SIG_TABLE / (2 * SATURATED);
  const usePowTable = n >= 4 * POW_TABLE;
  const pw = new Float64Array(POW_TABLE + 2);
  for (let it = 0; it < iterations; it++) {
    for (let i = 0; i < n; i++) {
      const vi = V[i];
      if (vi > SATURATED || vi < -SATURATED) {
        // h is clipped to 0 or 1 (σ(V)·1.2 − 0.1 crosses 1 at V = ln 11): no gradient
        h[i] = vi > 0 ? 1 : 0;
        dh[i] = 0;
      } else {
        const u = (vi + SATURATED) * sigScale;
        const j = u | 0;
        const sg = sig[j] + (u - j) * (sig[j + 1] - sig[j]);
        const hr = sg * zg + ADAROUND_GAMMA;
        // clamp passes the gradient at its bounds (torch.clamp, ONNX Runtime's Clip)
        h[i] = hr < 0 ? 0 : hr > 1 ? 1 : hr;
        dh[i] = hr >= 0 && hr <= 1 ? zg * sg * (1 - sg) : 0;
      }
      const qf = floor[i] + h[i];
      inGrid[i] = qf >= lo[i] && qf <= hi[i] ? 1 : 0;
      wq[i] = f32((qf < lo[i] ? lo[i] : qf > hi[i] ? hi[i] : qf) * scale[i]);
    }
    const gw = await reconGrad(wq);
    const regOn = it >= s.warm * iterations;
    const beta = regOn ? adaroundBeta(it, iterations, [s.betaStart, s.betaEnd], s.warm) : 0;
    // d/dh λ(1 − |2h − 1|^β) = −2λβ·|2h − 1|^(β−1)·sign(2h − 1)
    const regScale = 2 * s.lambda * beta;
    if (regOn && usePowTable) for (let j = 0; j <= POW_TABLE + 1; j++) pw[j] = (j / POW_TABLE) ** (beta - 1);
    const t = it + 1;
    const step = s.lr / (1 - 0.9 ** t);
    const bc2 = Math.sqrt(1 - 0.999 ** t);
    for (let i = 0; i < n; i++) {
      let g = 0;
      if (dh[i] !== 0) {
        let gh = inGrid[i] ? gw[i] * scale[i] : 0;
        if (regOn) {
          const x = 2 * h[i] - 1;
          const ax = x < 0 ? -x : x;
          let p: number;
          if (usePowTable) {
            const u = ax * POW_TABLE;
            const j = u | 0;
            p = pw[j] + (u - j) * (pw[j + 1] - pw[j]);
          } else p = ax ** (beta - 1);
          gh -= x > 0 ? regScale * p : x < 0 ? -regScale * p : 0;
        }
        g = gh * dh[i];
      }
      m[i] += 0.1 * (g - m[i]);
      v[i] = 0.999 * v[i] + 0.001 * g * g;
      V[i] -= (step * m[i]) / (Math.sqrt(v[i]) / bc2 + 1e-8);
    }
  }
}

const tensor = (dims: number[], data: Float32Array): HostTensor => ({ dtype: DataType.FLOAT, dims, data });

/** Default iteration count for a bit width (AIMET: 10k, 15k below 8 bits). */
export function defaultIterations(bits: number): number {
  return bits < 8 ? 15000 : 10000;
}

/**
 * Whether the 'gram' engine applies and is the cheaper: the loss has no activation, the Gram matrices are small
 * (g·K² ≤ 16 M), and one iteration of it (O·K multiply-adds per column of K) costs less than a sampled batch
 * (forward and backward, about 3·P·O·K for P output positions in the batch): K ≤ 3·P.
 */
function gramFits(p: LayerProblem, activation: boolean, batchPositions: number): boolean {
  if (activation && p.activation) return false;
  const { g, k } = matrixShape(p);
  return g * k * k <= 2 ** 24 && k <= 3 * batchPositions;
}

/** G, M and c accumulated over all rows (float64), divided by the number of output positions. */
async function gramStatistics(p: LayerProblem, sessionOptions: SerializableSessionOptions) {
  const built = statsModel(p);
  const session = await Session.create(built.model, sessionOptions);
  const rows = p.x.dims[0];
  const xRow = p.x.data.length / rows;
  const tRow = p.target.data.length / rows;
  const { g, og, k } = matrixShape(p);
  const G = new Float64Array(g * k * k);
  const M = new Float64Array(g * og * k);
  let c = 0;
  // One row's unfolded input is about xRow·kk floats; keep a chunk's under 16 M floats.
  const kk = p.opType === 'Conv' ? p.weight.dims.slice(2).reduce((a, v) => a * v, 1) : 1;
  const chunk = Math.max(1, Math.min(rows, Math.floor(2 ** 24 / Math.max(1, xRow * kk, tRow))));
  try {
    for (let r0 = 0; r0 < rows; r0 += chunk) {
      const m = Math.min(chunk, rows - r0);
      const out = await session.run({
        X: tensor([m, ...p.x.dims.slice(1)], p.x.data.subarray(r0 * xRow, (r0 + m) * xRow)),
        T: tensor([m, ...p.target.dims.slice(1)], p.target.data.subarray(r0 * tRow, (r0 + m) * tRow)),
      });
      const gd = out[built.G].data as Float32Array;
      const md = out[built.M].data as Float32Array;
      for (let i = 0; i < G.length; i++) G[i] += gd[i];
      for (let i = 0; i < M.length; i++) M[i] += md[i];
      c += (out[built.c].data as Float32Array)[0];
    }
  } finally {
    await session.release();
  }
  const positions = p.target.data.length / (g * og);
  return {
    G: Float32Array.from(G, (v) => v / positions),
    M: Float32Array.from(M, (v) => v / positions),
    c: c / positions,
  };
}

/**
 * AdaRound for one layer: optimizes the rounding of `p.weight` on `p.encoding`'s grid so that the layer
 * reproduces `p.target` from `p.x`. Returns the grid values and W̃; changes nothing else.
 */
export async function adaroundLayer(
  p: LayerProblem,
  options: AdaRoundOptions = {},
): Promise<AdaRoundLayerResult> {
  const t0 = performance.now();
  const iterations = options.iterations ?? defaultIterations(p.encoding.scheme.bits);
  const lambda = options.regularization ?? 0.01;
  const [betaStart, betaEnd] = options.betaRange ?? [20, 2];
  const warm = options.warmStart ?? 0.2;
  const lr = options.learningRate ?? 1e-3;
  const activation = options.activation ?? true;
  const rows = p.x.dims[0];
  if (p.target.dims[0] !== rows) {
    throw new QnnxError('E_USAGE', `AdaRound: ${rows} input rows but ${p.target.dims[0]} target rows`);
  }
  if (options.engine === 'gram' && activation && p.activation) {
    throw new QnnxError('E_USAGE', "AdaRound: engine 'gram' needs a layer without activation in its loss");
  }
  // 32 rows (AIMET: 32 images), and at least 128 output positions per batch for layers whose rows hold few
  // positions (Gemm/MatMul; measured on the synthetic Linear: 32 rows 0.456x nearest's MSE, 128 rows 0.430x).
  const { g: groups, og } = matrixShape(p);
  const positions = p.target.data.length / rows / (groups * og);
  const batch = Math.max(1, Math.min(options.batchSize ?? Math.max(32, Math.ceil(128 / positions)), rows));
  const engine =
    options.engine === 'sampled' || (options.engine !== 'gram' && !gramFits(p, activation, batch * positions))
      ? 'sampled'
      : 'gram';
  const wdims = p.weight.dims;
  const grid = gridOf(p.weight.data, wdims, p.encoding);
  const n = p.weight.data.length;
  // Nearest rounding, relative to the zero point (what the quantizer gives).
  const qn = quantize(p.weight.data, wdims, p.encoding);
  const { index } = groupIndexer(wdims, p.encoding.scheme.granularity);
  for (let i = 0; i < n; i++) qn[i] -= p.encoding.zeroPoint[index(i)];
  const hardWeight = (up: (i: number) => boolean) => {
    const q = new Int32Array(n);
    const w = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      q[i] = Math.min(grid.hi[i], Math.max(grid.lo[i], grid.floor[i] + (up(i) ? 1 : 0)));
      w[i] = f32(q[i] * grid.scale[i]);
    }
    return { q, w };
  };

  const sessionOptions = {
    graphOptimizationLevel: 'all' as const,
    intraOpNumThreads: options.threads ?? 1,
    name: 'adaround',
  };
  const X = tensor(p.x.dims, p.x.data);
  const T = tensor(p.target.dims, p.target.data);
  const ev = evalModel(p, activation);
  const evalSession = await Session.create(ev.model, sessionOptions);
  const chunk = Math.max(1, Math.min(rows, Math.floor(2 ** 22 / Math.max(1, p.target.data.length / rows))));
  /** Exact MSE of the layer output (per output element) with the weight `w`. */
  const mse = async (w: Float32Array): Promise<number> => {
    let total = 0;
    for (let r0 = 0; r0 < rows; r0 += chunk) {
      const m = Math.min(chunk, rows - r0);
      const idx = new BigInt64Array(m);
      for (let k = 0; k < m; k++) idx[k] = BigInt(r0 + k);
      const out = await evalSession.run({
        Wq: tensor(wdims, w),
        X,
        T,
        idx: { dtype: DataType.INT64, dims: [m], data: idx },
      });
      total += (out[ev.out].data as Float32Array)[0];
    }
    return total / p.target.data.length;
  };

  const V = initialV(grid.frac);
  let mseNearest: number;
  let mseLearned: number;
  let nearest: { q: Int32Array; w: Float32Array };
  let learned: { q: Int32Array; w: Float32Array };
  try {
    nearest = hardWeight((i) => qn[i] > grid.floor[i]);
    mseNearest = await mse(nearest.w);
    if (iterations > 0) {
      const built =
        engine === 'gram'
          ? await gramStatistics(p, sessionOptions).then((st) => gramModel(p, st.G, st.M))
          : sampledModel(p, batch, activation);
      const session = await Session.create(built.model, sessionOptions);
      // Random batches of distinct rows (AIMET: randperm(rows)[:batch]).
      const rng = new Rng(options.seed ?? 0);
      const perm = Int32Array.from({ length: rows }, (_, i) => i);
      const sampler = {
        next(): BigInt64Array {
          const idx = new BigInt64Array(batch);
          for (let k = 0; k < batch; k++) {
            const j = k + rng.int(rows - k);
            const t = perm[k];
            perm[k] = perm[j];
            perm[j] = t;
            idx[k] = BigInt(perm[k]);
          }
          return idx;
        },
      };
      try {
        await optimize(V, grid, iterations, { lambda, betaStart, betaEnd, warm, lr }, async (wq) => {
          const feeds: Record<string, HostTensor> = { Wq: tensor(wdims, wq) };
          if (engine === 'sampled') {
            feeds.X = X;
            feeds.T = T;
            feeds.idx = { dtype: DataType.INT64, dims: [batch], data: sampler.next() };
          }
          return (await session.run(feeds, [built.out]))[built.out].data as Float32Array;
        });
      } finally {
        await session.release();
      }
    }
    learned = hardWeight((i) => V[i] >= 0);
    mseLearned = await mse(learned.w);
  } finally {
    await evalSession.release();
  }
  const fellBack = (options.fallback ?? true) && mseLearned > mseNearest;
  const final = fellBack ? nearest : learned;
  const mseAdaRound = fellBack ? mseNearest : mseLearned;
  let changed = 0;
  let undecided = 0;
  for (let i = 0; i < n; i++) {
    if (final.q[i] !== qn[i]) changed++;
    // A weight the grid clips to one value either way has no say (and no gradient): not counted.
    const forced =
      Math.min(grid.hi[i], Math.max(grid.lo[i], grid.floor[i])) ===
      Math.min(grid.hi[i], Math.max(grid.lo[i], grid.floor[i] + 1));
    const hv = rectifiedSigmoid(V[i]);
    if (!forced && hv > 0.01 && hv < 0.99) undecided++;
  }
  // The export path: the quantizer must give q back from W̃.
  const back = quantize(final.w, wdims, p.encoding);
  let mismatches = 0;
  for (let i = 0; i < n; i++) if (back[i] - p.encoding.zeroPoint[index(i)] !== final.q[i]) mismatches++;
  return {
    q: final.q,
    weight: final.w,
    mseNearest,
    mseAdaRound,
    mseLearned,
    fellBack,
    changed: changed / n,
    undecided: undecided / n,
    mismatches,
    iterations,
    engine,
    rows,
    batch,
    seconds: (performance.now() - t0) / 1000,
  };
}

/** The layer problem of a weighted layer with its cached data. */
export function layerProblem(sim: QuantSim, layer: WeightedLayer, x: Stacked, target: Stacked): LayerProblem {
  const g = sim.model.graph;
  const w = g.initializer(layer.weight)!;
  const bias = layer.bias ? g.initializer(layer.bias) : undefined;
  return {
    opType: layer.node.opType as LayerProblem['opType'],
    attributes: layer.node.attributes,
    weight: { dims: [...w.dims], data: floatData(w) },
    bias: bias ? { dims: [...bias.dims], data: floatData(bias) } : undefined,
    encoding: layer.quantizer.encoding!,
    activation: layer.activation,
    x,
    target,
  };
}

/**
 * AdaRound over a model: every Conv/Gemm/MatMul whose weight quantizer has an integer encoding (after
 * `sim.computeParameterEncodings()`, and after sequential MSE if used), in topological order. Replaces the float
 * weights of `sim.model` by their AdaRounded values W̃ = s·q (see the file comment); the encodings stay. Run it
 * before activation calibration, so activation ranges are observed on the AdaRounded model.
 */
export async function adaround(
  sim: QuantSim,
  samples: AsyncIterable<Feeds> | Iterable<Feeds>,
  makeRunner: MakeRunner,
  options: AdaRoundModelOptions = {},
): Promise<AdaRoundReport> {
  const t0 = performance.now();
  const excluded = matcher(options.exclude);
  const found = weightedLayers(sim, excluded ? (l) => !excluded(l.node) : undefined);
  const skipped = found.skipped;
  // Without the activation in the loss, the target is the layer's own output.
  const layers =
    options.activation === false
      ? found.layers.map((l) => ({ ...l, activation: undefined, target: l.node.outputs[0] }))
      : found.layers;
  const report: AdaRoundReport = { layers: [], skipped, samples: 0, seconds: 0 };
  if (layers.length === 0) return report;
  const cache = await LayerCache.create(sim, layers, samples, makeRunner, {
    ...options,
    reference: copyModelStructure(sim.model),
  });
  report.samples = cache.samples.length;
  try {
    for (const [k, layer] of layers.entries()) {
      const [x, target] = await cache.stack([
        { from: 'quantized', name: layer.input },
        { from: 'float', name: layer.target },
      ]);
      const r = await adaroundLayer(layerProblem(sim, layer, x, target), options);
      if (r.mismatches > 0) {
        throw new QnnxError(
          'E_USAGE',
          `AdaRound: ${r.mismatches} weights of '${layer.weight}' do not quantize back to their grid values`,
          { tensor: layer.weight },
        );
      }
      replaceInitializer(sim.model, layer.weight, r.weight);
      cache.setWeight(layer, r.weight);
      const { q: _q, weight: _w, ...rest } = r;
      const lr: AdaRoundLayerReport = { node: layer.name, weight: layer.weight, samples: x.samples, ...rest };
      report.layers.push(lr);
      options.onLayer?.(lr, k + 1, layers.length);
    }
  } finally {
    await cache.release();
  }
  report.seconds = (performance.now() - t0) / 1000;
  return report;
}
