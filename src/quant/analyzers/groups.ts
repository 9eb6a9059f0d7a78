/**
 * Scale groups of a granularity, as analyzers see them: one observation is split into per-group runs of
 * values (a counting sort by group index), and the shape of later observations is checked against the first.
 *
 * - per tensor: one group, any shape per observation;
 * - per channel: dims[axis] groups; every other dimension may change between observations (dynamic axes);
 * - per block / per vector: the groups are laid out over the whole tensor (ONNX opset-21 blocked scales), so every
 *   observation must have the same shape (weights, or fixed-shape activations).
 */
import { QnnxError } from '../../errors.js';
import {
  type Encoding,
  encodingFromRange,
  groupIndexer,
  normAxis,
  scaleDimsFor,
  twoLevelScales,
} from '../encoding.js';
import type { Granularity, QuantScheme } from '../scheme.js';

/** One observation split by group: group g's values are values[offsets[g] .. offsets[g + 1]). */
export interface GroupedValues {
  groups: number;
  offsets: Int32Array;
  values: Float32Array;
}

/** Splits x by scale group (no copy per tensor). */
export function splitByGroup(x: Float32Array, dims: readonly number[], g: Granularity): GroupedValues {
  if (g.kind === 'tensor') return { groups: 1, offsets: Int32Array.of(0, x.length), values: x };
  if (g.kind === 'channel') {
    const a = normAxis(g.axis, dims.length);
    const c = dims[a];
    let inner = 1;
    for (let k = a + 1; k < dims.length; k++) inner *= dims[k];
    const outer = c * inner === 0 ? 0 : x.length / (c * inner);
    const per = outer * inner;
    const values = new Float32Array(x.length);
    const offsets = new Int32Array(c + 1);
    for (let ch = 0; ch <= c; ch++) offsets[ch] = ch * per;
    let src = 0;
    for (let o = 0; o < outer; o++) {
      for (let ch = 0; ch < c; ch++) {
        const dst = ch * per + o * inner;
        values.set(x.subarray(src, src + inner), dst);
        src += inner;
      }
    }
    return { groups: c, offsets, values };
  }
  const { groups, index } = groupIndexer(dims, g);
  const counts = new Int32Array(groups + 1);
  for (let i = 0; i < x.length; i++) counts[index(i) + 1]++;
  for (let k = 0; k < groups; k++) counts[k + 1] += counts[k];
  const offsets = counts.slice();
  const values = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) values[counts[index(i)]++] = x[i];
  return { groups, offsets, values };
}

/** Remembers the first observation's layout and checks later ones against it. */
export class GroupShape {
  /** Dims of the first observation (null before any). */
  dims: number[] | null = null;
  groups = 0;

  constructor(readonly granularity: Granularity) {}

  /** Checks one observation's dims; returns the group count. Throws E_SHAPE on a mismatch. */
  check(dims: readonly number[], length: number): number {
    const n = dims.reduce((a, b) => a * b, 1);
    if (n !== length) {
      throw new QnnxError(
        'E_SHAPE',
        `observed ${length} values for dims [${dims.join(', ')}] (${n} elements)`,
      );
    }
    const g = this.granularity;
    let groups = 1;
    if (g.kind === 'channel') groups = dims[normAxis(g.axis, dims.length)];
    else if (g.kind !== 'tensor') groups = scaleDimsFor(dims, g).reduce((a, b) => a * b, 1);
    if (this.dims === null) {
      this.dims = [...dims];
      this.groups = groups;
      return groups;
    }
    if (g.kind === 'channel' && groups !== this.groups) {
      throw new QnnxError(
        'E_SHAPE',
        `per-channel statistics along axis ${g.axis}: ${this.groups} channels first, now ${groups} (dims [${dims.join(', ')}])`,
      );
    }
    if ((g.kind === 'block' || g.kind === 'vector') && dims.join(',') !== this.dims.join(',')) {
      throw new QnnxError(
        'E_SHAPE',
        `per-${g.kind} statistics need the same shape every time: [${this.dims.join(', ')}] first, now [${dims.join(', ')}]`,
      );
    }
    return groups;
  }

  /** Shape of the scale tensor of the encoding ([] per tensor, [C] per channel, blocked dims otherwise). */
  scaleDims(): number[] {
    if (this.dims === null)
      throw new QnnxError('E_USAGE', 'no statistics: observe at least one tensor first');
    return scaleDimsFor(this.dims, this.granularity);
  }

  reset(): void {
    this.dims = null;
    this.groups = 0;
  }
}

/** Min and max of values[from, to), NaN skipped; ±Infinity kept. Empty: [+Infinity, -Infinity]. */
export function rangeOf(values: ArrayLike<number>, from = 0, to = values.length): [number, number] {
  let lo = Number.POSITIVE_INFINITY;
  let hi = Number.NEGATIVE_INFINITY;
  for (let i = from; i < to; i++) {
    const v = values[i];
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  return [lo, hi];
}

/** Throws E_DATA when a range holds ±Infinity (histograms and OCTAV need finite data). */
export function checkFiniteRange(lo: number, hi: number, what: string): void {
  if (lo === Number.NEGATIVE_INFINITY || hi === Number.POSITIVE_INFINITY) {
    throw new QnnxError('E_DATA', `${what}: the data holds ${lo === -Infinity ? '-Infinity' : 'Infinity'}`);
  }
}

/**
 * The encoding of per-group ranges on the scheme's grid (encodingFromRange), with VS-Quant's two-level scales
 * applied for per-vector schemes. Groups that saw no data ([+Infinity, -Infinity]) get the range [0, 0].
 */
export function encodingForRanges(
  scheme: QuantScheme,
  lo: Float64Array,
  hi: Float64Array,
  shape: GroupShape,
): Encoding {
  for (let g = 0; g < lo.length; g++) {
    if (lo[g] > hi[g]) {
      lo[g] = 0;
      hi[g] = 0;
    }
  }
  const enc = encodingFromRange(scheme, lo, hi, shape.scaleDims());
  return scheme.granularity.kind === 'vector' ? twoLevelScales(enc, shape.dims!) : enc;
}

/**
 * Per-group [min, max] of one observation into lo/hi (length = groups), NaN skipped; a group with no values gets
 * [+Infinity, -Infinity]. No copy of the data.
 */
export function batchRanges(
  x: Float32Array,
  dims: readonly number[],
  g: Granularity,
  lo: Float64Array,
  hi: Float64Array,
): void {
  lo.fill(Number.POSITIVE_INFINITY);
  hi.fill(Number.NEGATIVE_INFINITY);
  if (g.kind === 'tensor') {
    const [a, b] = rangeOf(x);
    lo[0] = a;
    hi[0] = b;
    return;
  }
  if (g.kind === 'channel') {
    const ax = normAxis(g.axis, dims.length);
    const c = dims[ax];
    let inner = 1;
    for (let k = ax + 1; k < dims.length; k++) inner *= dims[k];
    let i = 0;
    while (i < x.length) {
      for (let ch = 0; ch < c; ch++) {
        let a = lo[ch];
        let b = hi[ch];
        for (const end = i + inner; i < end; i++) {
          const v = x[i];
          if (v < a) a = v;
          if (v > b) b = v;
        }
        lo[ch] = a;
        hi[ch] = b;
      }
    }
    return;
  }
  const { index } = groupIndexer(dims, g);
  for (let i = 0; i < x.length; i++) {
    const k = index(i);
    const v = x[i];
    if (v < lo[k]) lo[k] = v;
    if (v > hi[k]) hi[k] = v;
  }
}
