/**
 * Weight initialisation. The default, `torch`, follows PyTorch's defaults so that a model built here starts from
 * the same distributions as its torch twin: `nn.Conv2d` and `nn.Linear` weights use kaiming_uniform_ with
 * a = √5, which is U(−1/√fan_in, 1/√fan_in), and their biases U(−1/√fan_in, 1/√fan_in); `nn.Embedding` is
 * N(0, 1); attention projections are xavier_uniform_ with zero biases (as `nn.MultiheadAttention`). `he` is
 * kaiming_normal_ (fan_in, ReLU gain √2) with zero biases; `xavier` is xavier_uniform_ with zero biases.
 * Normalisation layers always start at scale 1, shift 0, running mean 0 and running variance 1.
 */
import { QnnxError } from '../../errors.js';
import { Rng, streamSeed } from './prng.js';

export type InitScheme = 'torch' | 'he' | 'xavier';

export const INIT_SCHEMES: readonly InitScheme[] = ['torch', 'he', 'xavier'];

/** What a parameter is, for choosing its initial distribution. */
export type ParamRole =
  | { kind: 'weight'; fanIn: number; fanOut: number }
  | { kind: 'bias'; fanIn: number }
  | { kind: 'xavier'; fanIn: number; fanOut: number }
  | { kind: 'normal'; std: number }
  | { kind: 'constant'; value: number };

/** Bound of PyTorch's kaiming_uniform_(a=√5): gain √(2/(1+a²)) = √(1/3), bound = √3·gain/√fan_in = 1/√fan_in. */
export function torchDefaultBound(fanIn: number): number {
  return fanIn > 0 ? 1 / Math.sqrt(fanIn) : 0;
}

/** Initial values of one parameter: drawn from its own stream (seed, name), rounded to float32. */
export function initValues(
  scheme: InitScheme,
  role: ParamRole,
  count: number,
  seed: number,
  name: string,
): Float32Array {
  const out = new Float32Array(count);
  if (role.kind === 'constant') {
    out.fill(role.value);
    return out;
  }
  const rng = new Rng(streamSeed(seed, name));
  const uniform = (bound: number) => {
    for (let i = 0; i < count; i++) out[i] = rng.uniform(-bound, bound);
  };
  const normal = (std: number) => {
    for (let i = 0; i < count; i++) out[i] = rng.normal(0, std);
  };
  switch (role.kind) {
    case 'normal':
      normal(role.std);
      return out;
    case 'xavier':
      uniform(Math.sqrt(6 / (role.fanIn + role.fanOut)));
      return out;
    case 'weight':
      if (scheme === 'torch') uniform(torchDefaultBound(role.fanIn));
      else if (scheme === 'he') normal(Math.sqrt(2 / role.fanIn));
      else uniform(Math.sqrt(6 / (role.fanIn + role.fanOut)));
      return out;
    case 'bias':
      if (scheme === 'torch') uniform(torchDefaultBound(role.fanIn));
      return out;
    default:
      throw new QnnxError('E_USAGE', `unknown parameter role ${JSON.stringify(role)}`);
  }
}
