/**
 * AIMET encodings JSON: export a QuantSim's encodings in the layouts AIMET writes, and import AIMET files back
 * onto a QuantSim. Three layouts exist (from quic/aimet's `AffineEncoding` in aimet_onnx `encodings`):
 *
 * - "0.6.1" (legacy): `{activation_encodings: {name: [enc]}, param_encodings: {name: [enc per channel]}}` with
 *   `enc = {bitwidth, dtype: "int", is_symmetric: "True"|"False", min, max, scale, offset}`.
 * - "1.0.0": `{version, activation_encodings: [..], param_encodings: [..], excluded_layers, quantizer_args}`,
 *   entries `{name, dtype: "INT"|"FLOAT", bw, is_sym, enc_type: PER_TENSOR|PER_CHANNEL|PER_BLOCK, scale: [..],
 *   offset: [..], block_size?}`. A 2-D PER_BLOCK tensor whose channel axis is 1 (MatMul/Gemm [K, N] weights) is
 *   written in (channel, block) order, as AIMET does.
 * - "2.0.0": `{version, producer, encodings: [{name, output_dtype: "int8"|"uint4"|..., y_scale, y_zero_point?,
 *   axis?, block_size?}]}`: ONNX QuantizeLinear's own parameters. y_scale is a number (per tensor), a list (per
 *   channel, `axis` = channel axis) or a nested list in the blocked scale's shape (`axis` = block axis).
 *   y_zero_point is left out when all zero.
 *
 * Sign conventions. Ours (and ONNX's): q = clamp(round(x / s) + zp), x' = (q - zp) s. AIMET's: q = clamp(round(x /
 * s - offset)) on the same signed/unsigned grid, so offset = -zp; 2.0.0 stores zp itself. The 0.6.1 and 1.0.0
 * layouts store the offset of the *unsigned* view of the grid, dequantizing (q_u + offset) s with q_u in
 * [0, 2^b - 1], and mark signed grids `is_sym`: signed ⇒ offset = -zp - 2^(b-1) (symmetric int8: -128), unsigned
 * ⇒ offset = -zp (uint8 zero point 128: -128). 0.6.1's min = offset·s and max = (offset + 2^b - 1)·s.
 *
 * Not covered: AIMET's LPBQ and VECTOR encodings, fractional zero points (`zero_point_shift`), float encodings
 * other than float16/bfloat16 (1.0.0) and float8 (2.0.0). Per-vector (VS-Quant) encodings are exported as
 * PER_BLOCK with their effective scales, which quantize identically.
 */
import { QnnxError } from '../../errors.js';
import { type Encoding, normAxis, scaleDimsFor } from '../encoding.js';
import type { Granularity, NumberFormat, QuantScheme } from '../scheme.js';
import type { Quantizer, QuantSim } from '../sim/quantsim.js';

export type AimetVersion = '0.6.1' | '1.0.0' | '2.0.0';

export interface AimetExportOptions {
  /** Layout to write (default '1.0.0'). */
  version?: AimetVersion;
  /** 2.0.0 `producer` record (default {package: 'qnnx', version: '0.1.0'}). */
  producer?: { package: string; version: string };
}

/** One encoding read from an AIMET file. */
export interface ImportedEncoding {
  name: string;
  /** 'activation' or 'param' in 0.6.1/1.0.0 files (they keep the two apart); undefined in 2.0.0. */
  section?: 'activation' | 'param';
  encoding: Encoding;
  /**
   * False when the file does not say which axis the scales run along (0.6.1/1.0.0 per-channel and per-block):
   * the granularity's axis is then a placeholder (0), the scales are in file order, and applyEncodings takes
   * the axis from the quantizer.
   */
  axisKnown: boolean;
}

export interface AimetEncodings {
  version: AimetVersion;
  encodings: Map<string, ImportedEncoding>;
  /** Entries that could not be read as an encoding, with the reason. */
  skipped: { name: string; reason: string }[];
}

export interface ApplyResult {
  /** Quantizers that took an encoding from the file. */
  applied: string[];
  /** Names in the file with no quantizer in the sim. */
  unmatched: string[];
  /** Names whose quantizer shares another quantizer's encoding (data-movement outputs): left to follow it. */
  derived: string[];
  /** Names whose encoding does not fit the quantizer (group count, format), with the reason. */
  mismatched: { name: string; reason: string }[];
  /** Enabled quantizers (not shared, not biases) still without an encoding after applying. */
  missing: string[];
}

// ---------------------------------------------------------------------------------------------------------------
// Export
// ---------------------------------------------------------------------------------------------------------------

function isParam(q: Quantizer): boolean {
  return q.kind === 'weight' || q.kind === 'bias';
}

function isIntFormat(f: NumberFormat): boolean {
  return f === 'int';
}

/** The AIMET-style dtype name of an integer or float8 scheme: int8, uint4, float8e4m3fn, ... */
function dtypeName(s: QuantScheme): string {
  return isIntFormat(s.format) ? `${s.signed ? '' : 'u'}int${s.bits}` : s.format;
}

/** File offsets of the unsigned grid view (0.6.1/1.0.0): signed ⇒ -zp - 2^(b-1), unsigned ⇒ -zp. */
function legacyOffsets(enc: Encoding): number[] {
  const s = enc.scheme;
  const shift = s.signed ? 2 ** (s.bits - 1) : 0;
  return Array.from(enc.zeroPoint, (z) => -z - shift);
}

/** Channel axis of a blocked encoding of a 2-D tensor (the axis that is not blocked), else undefined. */
function blockedChannelAxis(enc: Encoding): number | undefined {
  const g = enc.scheme.granularity;
  if ((g.kind !== 'block' && g.kind !== 'vector') || enc.scaleDims.length !== 2) return undefined;
  return normAxis(g.axis, 2) === 0 ? 1 : 0;
}

/** Row-major [r, c] → [c, r]. */
function transpose2d<T extends { length: number; [i: number]: number }>(
  x: T,
  rows: number,
  cols: number,
  out: T,
): T {
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = x[r * cols + c];
  return out;
}

/** Scales and zero points in 1.0.0's order (2-D blocked with channel axis 1: channel-major). */
function legacyOrder(enc: Encoding): { scale: number[]; offset: number[] } {
  const offsets = legacyOffsets(enc);
  if (blockedChannelAxis(enc) !== 1) return { scale: Array.from(enc.scale), offset: offsets };
  const [rows, cols] = enc.scaleDims;
  return {
    scale: Array.from(transpose2d(enc.scale, rows, cols, new Float32Array(enc.scale.length))),
    offset: transpose2d(offsets, rows, cols, new Array<number>(offsets.length)),
  };
}

function encType(g: Granularity): 'PER_TENSOR' | 'PER_CHANNEL' | 'PER_BLOCK' {
  return g.kind === 'tensor' ? 'PER_TENSOR' : g.kind === 'channel' ? 'PER_CHANNEL' : 'PER_BLOCK';
}

function entry100(name: string, enc: Encoding): Record<string, unknown> | string {
  const s = enc.scheme;
  if (s.format === 'float16' || s.format === 'bfloat16')
    return { name, dtype: 'FLOAT', bw: 16, enc_type: 'PER_TENSOR' };
  if (!isIntFormat(s.format)) return `${s.format} encodings have no 1.0.0 form (use 2.0.0)`;
  const { scale, offset } = legacyOrder(enc);
  const out: Record<string, unknown> = {
    name,
    dtype: 'INT',
    bw: s.bits,
    is_sym: s.signed,
    enc_type: encType(s.granularity),
    scale,
    offset,
  };
  const g = s.granularity;
  if (g.kind === 'block' || g.kind === 'vector') out.block_size = g.size;
  return out;
}

function entry061(enc: Encoding): Record<string, unknown>[] | string {
  const s = enc.scheme;
  if (s.format === 'float16' || s.format === 'bfloat16') return [{ bitwidth: 16, dtype: 'float' }];
  if (!isIntFormat(s.format)) return `${s.format} encodings have no 0.6.1 form (use 2.0.0)`;
  if (s.granularity.kind === 'block' || s.granularity.kind === 'vector')
    return 'per-block encodings have no 0.6.1 form (use 1.0.0 or 2.0.0)';
  const offsets = legacyOffsets(enc);
  const top = 2 ** s.bits - 1;
  return Array.from(enc.scale, (sc, i) => ({
    bitwidth: s.bits,
    dtype: 'int',
    is_symmetric: s.signed ? 'True' : 'False',
    min: offsets[i] * sc,
    max: (offsets[i] + top) * sc,
    scale: sc,
    offset: offsets[i],
  }));
}

/** Nested arrays in the shape `dims` (row-major) from flat values. */
function nest(values: number[], dims: number[]): unknown {
  if (dims.length <= 1) return values;
  const inner = dims.slice(1).reduce((a, b) => a * b, 1);
  return Array.from({ length: dims[0] }, (_, i) =>
    nest(values.slice(i * inner, (i + 1) * inner), dims.slice(1)),
  );
}

function entry200(name: string, enc: Encoding): Record<string, unknown> | undefined | string {
  const s = enc.scheme;
  if (s.format === 'float16' || s.format === 'bfloat16') return undefined; // 2.0.0 has no entry for them
  const g = s.granularity;
  const scale = Array.from(enc.scale);
  const zp = Array.from(enc.zeroPoint);
  const out: Record<string, unknown> = { name, output_dtype: dtypeName(s) };
  if (g.kind === 'tensor') {
    out.y_scale = scale[0];
    if (zp[0] !== 0) out.y_zero_point = zp[0];
  } else if (g.kind === 'channel') {
    out.y_scale = scale;
    if (zp.some((z) => z !== 0)) out.y_zero_point = zp;
    out.axis = g.axis;
  } else {
    out.y_scale = nest(scale, enc.scaleDims);
    if (zp.some((z) => z !== 0)) out.y_zero_point = nest(zp, enc.scaleDims);
    out.axis = g.axis;
    out.block_size = g.size;
  }
  return out;
}

/**
 * The AIMET encodings document for a QuantSim's encodings (enabled quantizers with an encoding), as a plain
 * object ready for JSON.stringify. Throws E_USAGE for an encoding the layout cannot express.
 */
export function exportAimetEncodings(
  sim: QuantSim,
  options: AimetExportOptions = {},
): Record<string, unknown> {
  const version = options.version ?? '1.0.0';
  const quantizers = [...sim.quantizers.values()].filter((q) => q.enabled && q.encoding);
  const fail = (name: string, reason: string) => {
    throw new QnnxError('E_USAGE', `tensor '${name}': ${reason}`, { tensor: name });
  };
  if (version === '2.0.0') {
    const encodings: Record<string, unknown>[] = [];
    for (const q of quantizers) {
      const e = entry200(q.tensor, q.encoding!);
      if (typeof e === 'string') fail(q.tensor, e);
      else if (e) encodings.push(e);
    }
    return { version, producer: options.producer ?? { package: 'qnnx', version: '0.1.0' }, encodings };
  }
  if (version === '1.0.0') {
    const activation: unknown[] = [];
    const param: unknown[] = [];
    for (const q of quantizers) {
      const e = entry100(q.tensor, q.encoding!);
      if (typeof e === 'string') fail(q.tensor, e);
      else (isParam(q) ? param : activation).push(e);
    }
    return {
      version,
      activation_encodings: activation,
      param_encodings: param,
      excluded_layers: sim.skipped.map((s) => s.node),
      quantizer_args: quantizerArgs(sim),
    };
  }
  if (version === '0.6.1') {
    const activation: Record<string, unknown> = {};
    const param: Record<string, unknown> = {};
    for (const q of quantizers) {
      const e = entry061(q.encoding!);
      if (typeof e === 'string') fail(q.tensor, e);
      else (isParam(q) ? param : activation)[q.tensor] = e;
    }
    return {
      version,
      activation_encodings: activation,
      param_encodings: param,
      quantizer_args: quantizerArgs(sim),
    };
  }
  throw new QnnxError('E_USAGE', `unknown AIMET encodings version '${version}' (0.6.1, 1.0.0, 2.0.0)`);
}

function quantizerArgs(sim: QuantSim): Record<string, unknown> {
  const a = sim.activationScheme();
  const w = [...sim.quantizers.values()].find((q) => q.kind === 'weight')?.scheme;
  return {
    activation_bitwidth: a.bits,
    param_bitwidth: w?.bits ?? sim.target.weights.bits,
    dtype: a.format === 'int' ? 'int' : 'float',
    is_symmetric: a.symmetry === 'symmetric',
    per_channel_quantization: w?.granularity.kind === 'channel',
    quant_scheme: 'post_training_tf',
  };
}

/** JSON text of `exportAimetEncodings` (2-space indent, as AIMET writes with indent 4 - any indent parses). */
export function aimetEncodingsJson(sim: QuantSim, options: AimetExportOptions = {}): string {
  return `${JSON.stringify(exportAimetEncodings(sim, options), null, 2)}\n`;
}

// ---------------------------------------------------------------------------------------------------------------
// Import
// ---------------------------------------------------------------------------------------------------------------

class EntryError extends Error {}

function num(v: unknown, what: string): number {
  const n = typeof v === 'string' ? Number(v) : v;
  if (typeof n !== 'number' || !Number.isFinite(n)) throw new EntryError(`${what} is not a finite number`);
  return n;
}

function intOf(v: unknown, what: string): number {
  const n = num(v, what);
  if (!Number.isInteger(n))
    throw new EntryError(`${what} ${n} is not an integer (fractional zero points are not supported)`);
  return n;
}

/** Flattens a number or nested arrays of numbers, returning values and shape. */
function flatten(v: unknown, what: string): { values: number[]; dims: number[] } {
  if (!Array.isArray(v)) return { values: [num(v, what)], dims: [] };
  if (v.length === 0) return { values: [], dims: [0] };
  if (!Array.isArray(v[0])) return { values: v.map((x) => num(x, what)), dims: [v.length] };
  const parts = v.map((x) => flatten(x, what));
  const inner = parts[0].dims;
  for (const p of parts)
    if (p.dims.join() !== inner.join()) throw new EntryError(`${what} is a ragged nested list`);
  return { values: parts.flatMap((p) => p.values), dims: [v.length, ...inner] };
}

function intSchemeOf(
  bits: number,
  signed: boolean,
  zeroPoints: ArrayLike<number>,
  granularity: Granularity,
): QuantScheme {
  let allZero = true;
  for (let i = 0; i < zeroPoints.length; i++) if (zeroPoints[i] !== 0) allZero = false;
  return {
    format: 'int',
    bits,
    signed,
    symmetry: signed && allZero ? 'symmetric' : 'asymmetric',
    narrow: false,
    granularity,
    scaleType: 'float',
  };
}

function checkBits(bits: number, what: string): void {
  if (!Number.isInteger(bits) || bits < 2 || bits > 32)
    throw new EntryError(`${what} ${bits} is not a supported bit width`);
}

const FLOAT8: readonly string[] = ['float8e4m3fn', 'float8e4m3fnuz', 'float8e5m2', 'float8e5m2fnuz'];

function parse200(e: Record<string, unknown>): ImportedEncoding | undefined {
  const name = String(e.name ?? '');
  if ('per_block_int_scale' in e) throw new EntryError('LPBQ encodings are not supported');
  const dtype = String(e.output_dtype ?? '');
  const m = /^(u?)int(\d+)$/.exec(dtype);
  const isF8 = FLOAT8.includes(dtype);
  if (!m && !isF8) {
    if (dtype === 'float16' || dtype === 'bfloat16') return undefined; // float16 carries no parameters
    throw new EntryError(`output_dtype '${dtype}' is not supported`);
  }
  const sc = flatten(e.y_scale, 'y_scale');
  const zpRaw =
    e.y_zero_point === undefined || e.y_zero_point === null
      ? undefined
      : flatten(e.y_zero_point, 'y_zero_point');
  if (zpRaw && zpRaw.values.length !== sc.values.length)
    throw new EntryError('y_zero_point and y_scale differ in size');
  const zeroPoint = Int32Array.from(
    zpRaw ? zpRaw.values.map((z) => intOf(z, 'y_zero_point')) : new Array(sc.values.length).fill(0),
  );
  let granularity: Granularity;
  let scaleDims: number[];
  if (e.block_size !== undefined) {
    granularity = {
      kind: 'block',
      axis: intOf(e.axis ?? 0, 'axis'),
      size: intOf(e.block_size, 'block_size'),
    };
    scaleDims = sc.dims;
  } else if (e.axis !== undefined && e.axis !== null && sc.dims.length > 0) {
    granularity = { kind: 'channel', axis: intOf(e.axis, 'axis') };
    scaleDims = [sc.values.length];
  } else {
    if (sc.values.length !== 1) throw new EntryError(`${sc.values.length} scales without an axis`);
    granularity = { kind: 'tensor' };
    scaleDims = [];
  }
  let scheme: QuantScheme;
  if (m) {
    const bits = Number(m[2]);
    checkBits(bits, 'bit width');
    scheme = intSchemeOf(bits, m[1] === '', zeroPoint, granularity);
  } else {
    if (zeroPoint.some((z) => z !== 0)) throw new EntryError('float8 encodings need zero point 0');
    scheme = {
      format: dtype as NumberFormat,
      bits: 8,
      signed: true,
      symmetry: 'symmetric',
      narrow: false,
      granularity,
      scaleType: 'float',
    };
  }
  const encoding: Encoding = { scheme, scale: Float32Array.from(sc.values), zeroPoint, scaleDims };
  return { name, encoding, axisKnown: true };
}

/** 0.6.1/1.0.0 offsets (unsigned grid view) → zero points on the signed or unsigned grid. */
function zeroPointsFromLegacy(offsets: number[], bits: number, signed: boolean): Int32Array {
  const shift = signed ? 2 ** (bits - 1) : 0;
  return Int32Array.from(offsets, (o) => -intOf(o, 'offset') - shift);
}

function parse100(e: Record<string, unknown>, section: 'activation' | 'param'): ImportedEncoding | undefined {
  const name = String(e.name ?? '');
  const dtype = String(e.dtype ?? '').toUpperCase();
  const encTypeName = String(e.enc_type ?? 'PER_TENSOR');
  if (dtype === 'FLOAT') {
    const bw = num(e.bw, 'bw');
    if (bw !== 16) throw new EntryError(`FLOAT encodings of ${bw} bits are not supported`);
    const scheme: QuantScheme = {
      format: 'float16',
      bits: 16,
      signed: true,
      symmetry: 'symmetric',
      narrow: false,
      granularity: { kind: 'tensor' },
      scaleType: 'float',
    };
    return {
      name,
      section,
      encoding: { scheme, scale: Float32Array.of(1), zeroPoint: Int32Array.of(0), scaleDims: [] },
      axisKnown: true,
    };
  }
  if (dtype !== 'INT') throw new EntryError(`dtype '${dtype}' is not supported`);
  if (encTypeName === 'LPBQ' || encTypeName === 'VECTOR')
    throw new EntryError(`${encTypeName} encodings are not supported`);
  const bits = intOf(e.bw, 'bw');
  checkBits(bits, 'bw');
  const signed = e.is_sym === true || e.is_sym === 'True' || e.is_sym === 'true';
  if (!Array.isArray(e.scale) || !Array.isArray(e.offset))
    throw new EntryError('scale and offset must be lists');
  const scale = Float32Array.from(e.scale.map((s) => num(s, 'scale')));
  if (e.offset.length !== scale.length) throw new EntryError('scale and offset differ in length');
  const shift = e.zero_point_shift;
  if (Array.isArray(shift) ? shift.some((v) => Number(v) !== 0) : shift !== undefined && Number(shift) !== 0)
    throw new EntryError('zero_point_shift is not supported');
  const zeroPoint = zeroPointsFromLegacy(e.offset as number[], bits, signed);
  let granularity: Granularity;
  let scaleDims: number[];
  let axisKnown = true;
  if (encTypeName === 'PER_TENSOR') {
    if (scale.length !== 1) throw new EntryError(`PER_TENSOR with ${scale.length} scales`);
    granularity = { kind: 'tensor' };
    scaleDims = [];
  } else if (encTypeName === 'PER_CHANNEL') {
    granularity = { kind: 'channel', axis: 0 };
    scaleDims = [scale.length];
    axisKnown = false;
  } else if (encTypeName === 'PER_BLOCK') {
    granularity = { kind: 'block', axis: 0, size: intOf(e.block_size, 'block_size') };
    scaleDims = [scale.length];
    axisKnown = false;
  } else throw new EntryError(`enc_type '${encTypeName}' is not supported`);
  const scheme = intSchemeOf(bits, signed, zeroPoint, granularity);
  return { name, section, encoding: { scheme, scale, zeroPoint, scaleDims }, axisKnown };
}

function parse061(
  name: string,
  list: unknown,
  section: 'activation' | 'param',
): ImportedEncoding | undefined {
  if (!Array.isArray(list) || list.length === 0)
    throw new EntryError('expected a non-empty list of encodings');
  const first = list[0] as Record<string, unknown>;
  if (String(first.dtype ?? 'int').toLowerCase() === 'float') {
    const scheme: QuantScheme = {
      format: 'float16',
      bits: 16,
      signed: true,
      symmetry: 'symmetric',
      narrow: false,
      granularity: { kind: 'tensor' },
      scaleType: 'float',
    };
    return {
      name,
      section,
      encoding: { scheme, scale: Float32Array.of(1), zeroPoint: Int32Array.of(0), scaleDims: [] },
      axisKnown: true,
    };
  }
  const bits = intOf(first.bitwidth, 'bitwidth');
  checkBits(bits, 'bitwidth');
  const signed = String(first.is_symmetric) === 'True' || first.is_symmetric === true;
  const scale = Float32Array.from(list.map((x) => num((x as Record<string, unknown>).scale, 'scale')));
  const zeroPoint = zeroPointsFromLegacy(
    list.map((x) => (x as Record<string, unknown>).offset as number),
    bits,
    signed,
  );
  const perChannel = list.length > 1;
  const granularity: Granularity = perChannel ? { kind: 'channel', axis: 0 } : { kind: 'tensor' };
  return {
    name,
    section,
    encoding: {
      scheme: intSchemeOf(bits, signed, zeroPoint, granularity),
      scale,
      zeroPoint,
      scaleDims: perChannel ? [list.length] : [],
    },
    axisKnown: !perChannel,
  };
}

/** Reads an AIMET encodings file (0.6.1, 1.0.0 or 2.0.0; JSON text or the parsed object). */
export function parseAimetEncodings(source: string | unknown): AimetEncodings {
  let doc: unknown = source;
  if (typeof source === 'string') {
    try {
      doc = JSON.parse(source);
    } catch (e) {
      throw new QnnxError('E_DATA', `AIMET encodings: not valid JSON (${(e as Error).message})`);
    }
  }
  if (!doc || typeof doc !== 'object' || Array.isArray(doc))
    throw new QnnxError('E_DATA', 'AIMET encodings: expected a JSON object');
  const d = doc as Record<string, unknown>;
  const encodings = new Map<string, ImportedEncoding>();
  const skipped: { name: string; reason: string }[] = [];
  const take = (name: string, f: () => ImportedEncoding | undefined) => {
    try {
      const e = f();
      if (e) encodings.set(e.name || name, e);
    } catch (err) {
      if (!(err instanceof EntryError)) throw err;
      skipped.push({ name, reason: err.message });
    }
  };
  let version: AimetVersion;
  if (Array.isArray(d.encodings)) {
    version = '2.0.0';
    for (const e of d.encodings as Record<string, unknown>[]) take(String(e?.name ?? ''), () => parse200(e));
  } else if (Array.isArray(d.activation_encodings) || Array.isArray(d.param_encodings)) {
    version = '1.0.0';
    for (const [key, section] of [
      ['activation_encodings', 'activation'],
      ['param_encodings', 'param'],
    ] as const) {
      const list = d[key];
      if (list === undefined) continue;
      if (!Array.isArray(list)) throw new QnnxError('E_DATA', `AIMET encodings: '${key}' is not a list`);
      for (const e of list as Record<string, unknown>[])
        take(String(e?.name ?? ''), () => parse100(e, section));
    }
  } else if (d.activation_encodings || d.param_encodings) {
    version = '0.6.1';
    for (const [key, section] of [
      ['activation_encodings', 'activation'],
      ['param_encodings', 'param'],
    ] as const) {
      const obj = d[key];
      if (obj === undefined) continue;
      if (!obj || typeof obj !== 'object')
        throw new QnnxError('E_DATA', `AIMET encodings: '${key}' is not an object`);
      for (const [name, list] of Object.entries(obj as Record<string, unknown>))
        take(name, () => parse061(name, list, section));
    }
  } else {
    throw new QnnxError(
      'E_DATA',
      'AIMET encodings: no encodings, activation_encodings or param_encodings found',
    );
  }
  return { version, encodings, skipped };
}

// ---------------------------------------------------------------------------------------------------------------
// Applying imported encodings to a QuantSim
// ---------------------------------------------------------------------------------------------------------------

function sameInt(a: QuantScheme, b: QuantScheme): boolean {
  return a.format === b.format && a.bits === b.bits && a.signed === b.signed;
}

/** The encoding as the quantizer will hold it: axis and order from the quantizer where the file is silent. */
function fitEncoding(q: Quantizer, imp: ImportedEncoding, dims: number[] | undefined): Encoding | string {
  const src = imp.encoding;
  const s = src.scheme;
  const qs = q.scheme;
  if ((s.format === 'int') !== (qs.format === 'int'))
    return `the file has a ${s.format} encoding, the quantizer is ${qs.format}`;
  const n = src.scale.length;
  let granularity = s.granularity;
  let scale = src.scale;
  let zeroPoint = src.zeroPoint;
  let scaleDims = src.scaleDims;
  const qg = qs.granularity;
  if (granularity.kind === 'channel') {
    let axis = granularity.axis;
    if (!imp.axisKnown) {
      if (qg.kind === 'channel') axis = qg.axis;
      else if (qg.kind === 'tensor' && dims) {
        const cands = dims.map((d, i) => (d === n ? i : -1)).filter((i) => i >= 0);
        if (cands.length !== 1)
          return 'per-channel encoding for a per-tensor quantizer; the file does not say the axis';
        axis = cands[0];
      } else return 'per-channel encoding for a blocked quantizer; the file does not say the axis';
    }
    if (dims && dims[normAxis(axis, dims.length)] !== n)
      return `${n} channel scales for a tensor with ${dims[normAxis(axis, dims.length)]} channels on axis ${axis}`;
    granularity = { kind: 'channel', axis };
    scaleDims = [n];
  } else if (granularity.kind === 'block') {
    let axis = granularity.axis;
    if (!imp.axisKnown) {
      if (qg.kind !== 'block' && qg.kind !== 'vector')
        return 'per-block encoding for a quantizer that is not blocked; the file does not say the axis';
      axis = qg.axis;
    }
    if (!dims) return 'per-block encoding for a tensor whose shape is not known';
    granularity = { kind: 'block', axis, size: granularity.size };
    const want = scaleDimsFor(dims, granularity);
    const count = want.reduce((a, b) => a * b, 1);
    if (count !== n)
      return `${n} block scales, a [${dims.join(', ')}] tensor in blocks of ${granularity.size} along axis ${axis} needs ${count}`;
    if (!imp.axisKnown && want.length === 2 && normAxis(axis, 2) === 0) {
      // 1.0.0 writes 2-D blocked tensors with channel axis 1 in (channel, block) order.
      scale = transpose2d(scale, want[1], want[0], new Float32Array(n));
      zeroPoint = transpose2d(zeroPoint, want[1], want[0], new Int32Array(n));
    } else if (imp.axisKnown && scaleDims.join() !== want.join()) {
      return `block scales of shape [${scaleDims.join(', ')}], the tensor needs [${want.join(', ')}]`;
    }
    scaleDims = want;
  } else if (n !== 1) return `${n} scales for a per-tensor encoding`;
  // Keep the quantizer's symmetry and narrow grid where the file's values are consistent with them.
  let scheme: QuantScheme;
  if (sameInt(s, qs) && s.format === 'int') {
    const zp0 = qs.symmetry === 'symmetric' ? (qs.signed ? 0 : Math.round(2 ** qs.bits / 2)) : undefined;
    const keeps =
      zp0 === undefined
        ? qs.symmetry !== 'unsigned-symmetric' || zeroPoint.every((z) => z === 0)
        : zeroPoint.every((z) => z === zp0);
    scheme = { ...qs, granularity, symmetry: keeps ? qs.symmetry : 'asymmetric', narrow: keeps && qs.narrow };
  } else
    scheme = {
      ...s,
      granularity,
      scaleType: qs.scaleType === 'pow2' && s.format === 'int' ? 'float' : s.scaleType,
    };
  return { scheme, scale: Float32Array.from(scale), zeroPoint: Int32Array.from(zeroPoint), scaleDims };
}

/**
 * Sets imported encodings on the QuantSim's quantizers with the same tensor names and reports what did not
 * match. By default it then calls `sim.finalizeEncodings()`, so shared (data-movement) and int32 bias encodings
 * follow the imported ones.
 */
export function applyEncodings(
  sim: QuantSim,
  imported: AimetEncodings | Map<string, ImportedEncoding>,
  options: { finalize?: boolean } = {},
): ApplyResult {
  const map = imported instanceof Map ? imported : imported.encodings;
  const result: ApplyResult = { applied: [], unmatched: [], derived: [], mismatched: [], missing: [] };
  const g = sim.model.graph;
  for (const [name, imp] of map) {
    const q = sim.quantizers.get(name);
    if (!q) {
      result.unmatched.push(name);
      continue;
    }
    if (q.sharedWith) {
      result.derived.push(name);
      continue;
    }
    const dims = g.initializer(name)?.dims;
    const enc = fitEncoding(q, imp, dims);
    if (typeof enc === 'string') {
      result.mismatched.push({ name, reason: enc });
      continue;
    }
    q.scheme = enc.scheme;
    q.encoding = enc;
    result.applied.push(name);
  }
  if (options.finalize ?? true) sim.finalizeEncodings();
  result.missing = [...sim.quantizers.values()]
    .filter((q) => q.enabled && !q.sharedWith && q.kind !== 'bias' && !q.encoding)
    .map((q) => q.tensor);
  return result;
}
