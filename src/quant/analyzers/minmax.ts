/**
 * Min/max analyzers (AIMET 'tf', PyTorch MinMaxObserver and MovingAverageMinMaxObserver), for every granularity.
 * State: two float64 numbers per group.
 */
import { QnnxError } from '../../errors.js';
import type { Encoding } from '../encoding.js';
import type { QuantScheme } from '../scheme.js';
import type { EncodingAnalyzer } from './analyzer.js';
import { batchRanges, encodingForRanges, GroupShape } from './groups.js';

/** Running min and max of everything observed, per group. */
export class MinMaxAnalyzer implements EncodingAnalyzer {
  protected readonly shape: GroupShape;
  protected lo = new Float64Array(0);
  protected hi = new Float64Array(0);
  private batchLo = new Float64Array(0);
  private batchHi = new Float64Array(0);

  constructor(readonly scheme: QuantScheme) {
    this.shape = new GroupShape(scheme.granularity);
  }

  observe(x: Float32Array, dims: readonly number[]): void {
    const first = this.shape.dims === null;
    const groups = this.shape.check(dims, x.length);
    if (first) {
      this.lo = new Float64Array(groups).fill(Number.POSITIVE_INFINITY);
      this.hi = new Float64Array(groups).fill(Number.NEGATIVE_INFINITY);
      this.batchLo = new Float64Array(groups);
      this.batchHi = new Float64Array(groups);
    }
    batchRanges(x, dims, this.scheme.granularity, this.batchLo, this.batchHi);
    this.update(this.batchLo, this.batchHi);
  }

  /** Folds one batch's per-group ranges into the state. */
  protected update(lo: Float64Array, hi: Float64Array): void {
    for (let g = 0; g < lo.length; g++) {
      if (lo[g] < this.lo[g]) this.lo[g] = lo[g];
      if (hi[g] > this.hi[g]) this.hi[g] = hi[g];
    }
  }

  computeEncoding(): Encoding {
    return encodingForRanges(this.scheme, this.lo.slice(), this.hi.slice(), this.shape);
  }

  /** The per-group [min, max] observed so far (copies). */
  ranges(): { min: Float64Array; max: Float64Array } {
    return { min: this.lo.slice(), max: this.hi.slice() };
  }

  reset(): void {
    this.shape.reset();
    this.lo = new Float64Array(0);
    this.hi = new Float64Array(0);
    this.batchLo = new Float64Array(0);
    this.batchHi = new Float64Array(0);
  }

  retainedBytes(): number {
    return this.lo.byteLength + this.hi.byteLength + this.batchLo.byteLength + this.batchHi.byteLength;
  }
}

/**
 * Exponential moving average of each batch's min and max, as PyTorch's MovingAverageMinMaxObserver (and its
 * per-channel variant): the first batch sets the range, then min += c * (batch_min - min), likewise max, with
 * c = momentum (averaging_constant, default 0.01).
 */
export class MovingAverageAnalyzer extends MinMaxAnalyzer {
  readonly momentum: number;

  constructor(scheme: QuantScheme, momentum = 0.01) {
    super(scheme);
    if (!(momentum > 0 && momentum <= 1)) {
      throw new QnnxError('E_USAGE', `moving-average momentum must be in (0, 1], got ${momentum}`);
    }
    this.momentum = momentum;
  }

  protected override update(lo: Float64Array, hi: Float64Array): void {
    const c = this.momentum;
    for (let g = 0; g < lo.length; g++) {
      if (lo[g] > hi[g]) continue; // no values for this group in the batch
      if (this.lo[g] > this.hi[g]) {
        this.lo[g] = lo[g];
        this.hi[g] = hi[g];
      } else {
        this.lo[g] += c * (lo[g] - this.lo[g]);
        this.hi[g] += c * (hi[g] - this.hi[g]);
      }
    }
  }
}
