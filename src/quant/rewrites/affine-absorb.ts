/**
 * Scalar affine absorption on an exported QDQ model (research note part C): a float chain
 *
 *   q_t → DequantizeLinear(s_t, zp_t) → t → [Mul / Div / Add / Sub by scalar constants] → z → QuantizeLinear(s_z, zp_z)
 *       → DequantizeLinear → consumers
 *
 * computes z = A·t + B = A·s_t·(q_t − zp_t) + B = s'·(q_t − zp') with s' = A·s_t and zp' = zp_t − B / s'. When
 * A > 0 and round(zp') fits the zero-point type, the consumers can read `DequantizeLinear(q_t, s', round(zp'))`
 * directly: the chain, its Q and its DQ disappear, so ONNX Runtime fuses the consumers (QLinearConv, ...) with no
 * float work in between and no second rounding of z. The rounding of zp' shifts every value by
 * δ = s'·(zp' − round(zp')) (at most half a step); for consumer Convs δ is moved into the bias
 * (bias −= δ·ΣW, exact except on padded borders), other consumers keep it.
 *
 * Consumer Conv biases are int32 with scale s_x·s_w, so they are requantized for the new input scale s'.
 * Use with a QuantSim that leaves the chain's nodes float (exclude them: `absorbableAffineChains`).
 */
import type { Node } from '../../ir/graph.js';
import type { Model } from '../../ir/model.js';
import type { PassRecord } from '../../ir/pass.js';
import { Tensor } from '../../ir/tensor.js';
import { DataType } from '../../onnx/dtype.js';
import { decodeToFloat32, roundHalfEven } from '../../onnx/formats.js';
import { AttributeType } from '../../onnx/proto.js';
import { type AffineChain, affineChainEndingAt, affineStep } from './affine-into-conv.js';
import {
  builder,
  Constants,
  dropUnusedInitializers,
  isDefaultDomain,
  label,
  removeUnused,
} from './common.js';

function scalarOf(consts: Constants, name: string | undefined): number | undefined {
  const t = consts.get(name);
  if (t?.size !== 1) return undefined;
  if (t.dtype === DataType.FLOAT) return (t.data as Float32Array)[0];
  if (t.dtype === DataType.UINT8 || t.dtype === DataType.INT8) return Number((t.data as Uint8Array)[0]);
  return undefined;
}

function zpRange(dtype: DataType): [number, number] | undefined {
  if (dtype === DataType.UINT8) return [0, 255];
  if (dtype === DataType.INT8) return [-128, 127];
  if (dtype === DataType.UINT16) return [0, 65535];
  if (dtype === DataType.INT16) return [-32768, 32767];
  return undefined;
}

function zpStorage(dtype: DataType, v: number) {
  switch (dtype) {
    case DataType.UINT8:
      return Uint8Array.of(v);
    case DataType.INT8:
      return Int8Array.of(v);
    case DataType.UINT16:
      return Uint16Array.of(v);
    default:
      return Int16Array.of(v);
  }
}

/** Ops whose float inputs get a quantizer under the ONNX Runtime targets (so a chain feeding them ends in a Q). */
export const QUANTIZED_READERS = [
  'Conv',
  'Gemm',
  'MatMul',
  'Add',
  'Mul',
  'Concat',
  'AveragePool',
  'GlobalAveragePool',
  'Sigmoid',
  'LeakyRelu',
  'Softmax',
];

/** Ops whose output is quantized under the ONNX Runtime targets (so a chain starting there starts at a DQ). */
export const QUANTIZED_WRITERS = [...QUANTIZED_READERS, 'Relu', 'Clip', 'MaxPool'];

/**
 * The scalar affine chains (Mul / Div / Add / Sub by scalar constants, A > 0) of a float model that
 * `absorbAffineIntoQdq` can remove after export, provided QuantSim leaves the chain's nodes float: chains whose
 * input is written by a quantized op and whose output is read only by quantized ops. Returns the chains and the
 * names of their nodes (to pass as `exclude`).
 */
export function absorbableAffineChains(
  model: Model,
  readers: readonly string[] = QUANTIZED_READERS,
  writers: readonly string[] = QUANTIZED_WRITERS,
): { nodes: string[]; chains: AffineChain[] } {
  const g = model.graph;
  const consts = new Constants(g);
  const producers = g.producers();
  const consumers = g.consumers();
  const outputs = new Set(g.outputs.map((o) => o.name));
  const read = new Set(readers);
  const write = new Set(writers);
  const chains: AffineChain[] = [];
  for (const n of g.nodes) {
    const z = n.outputs[0];
    if (!z || outputs.has(z)) continue;
    const cs = consumers.get(z) ?? [];
    if (cs.length === 0 || !cs.every((c) => read.has(c.opType) && isDefaultDomain(c))) continue;
    // A reader that is itself an affine step would extend the chain: this is not its end.
    if (cs.some((c) => affineStep(c, consts, 4) !== undefined)) continue;
    const chain = affineChainEndingAt(z, 4, consts, producers, consumers, outputs);
    if (chain?.A.length !== 1 || chain.B.length !== 1 || !(chain.A[0]! > 0)) continue;
    const p = producers.get(chain.root);
    if (!p || !write.has(p.opType) || !isDefaultDomain(p)) continue;
    chains.push(chain);
  }
  return { nodes: chains.flatMap((c) => c.nodes.map((m) => m.name)).filter(Boolean), chains };
}

/** Absorbs float scalar affine chains between a DequantizeLinear and a QuantizeLinear (see the file comment). */
export function absorbAffineIntoQdq(
  model: Model,
  options: {
    /** Convs whose bias the export already corrected for the shift (`exportQdq`'s `compensatedConvs`). */
    compensated?: readonly Node[];
  } = {},
): PassRecord {
  const compensated = new Set(options.compensated ?? []);
  const g = model.graph;
  const consts = new Constants(g);
  const b = builder(g);
  const outputs = new Set(g.outputs.map((o) => o.name));
  let producers = g.producers();
  let consumers = g.consumers();
  const absorbed: string[] = [];
  const skipped: { chain: string; reason: string }[] = [];
  let biasesAdjusted = 0;
  let biasesClamped = 0;
  let uncompensated = 0;
  const dead: Node[] = [];

  for (const qz of [...g.nodes]) {
    if (qz.opType !== 'QuantizeLinear' || !isDefaultDomain(qz)) continue;
    const z = qz.inputs[0]!;
    const chain = affineChainEndingAt(z, 4, consts, producers, consumers, outputs);
    if (!chain) continue;
    const name = chain.nodes.map(label).join('+');
    const dqt = producers.get(chain.root);
    if (dqt?.opType !== 'DequantizeLinear' || dqt.attr('axis') !== undefined) {
      if (dqt?.opType === 'DequantizeLinear')
        skipped.push({ chain: name, reason: 'input is not per-tensor' });
      continue;
    }
    if ((consumers.get(z)?.length ?? 0) !== 1 || outputs.has(z)) {
      skipped.push({ chain: name, reason: 'chain output has other readers' });
      continue;
    }
    if (chain.A.length !== 1 || chain.B.length !== 1) {
      skipped.push({ chain: name, reason: 'per-channel constants' });
      continue;
    }
    const A = chain.A[0]!;
    const B = chain.B[0]!;
    const st = scalarOf(consts, dqt.inputs[1]);
    const zpT = consts.get(dqt.inputs[2]);
    const zpt = dqt.inputs[2] ? scalarOf(consts, dqt.inputs[2]) : 0;
    const qt = dqt.inputs[0]!;
    const zdtype = zpT?.dtype ?? DataType.UINT8;
    const range = zpRange(zdtype);
    if (st === undefined || zpt === undefined || !range || !(A > 0)) {
      skipped.push({ chain: name, reason: A > 0 ? 'unsupported quantization parameters' : 'negative scale' });
      continue;
    }
    const dqzs = consumers.get(qz.outputs[0]!) ?? [];
    if (
      dqzs.length === 0 ||
      dqzs.some((d) => d.opType !== 'DequantizeLinear') ||
      outputs.has(qz.outputs[0]!)
    ) {
      skipped.push({ chain: name, reason: 'quantized chain output is read by something other than a DQ' });
      continue;
    }
    const s2 = Math.fround(A * st);
    const zpExact = zpt - B / s2;
    const zr = roundHalfEven(zpExact);
    if (zr < range[0] || zr > range[1]) {
      skipped.push({ chain: name, reason: `zero point ${zpExact.toFixed(1)} out of range` });
      continue;
    }
    const delta = s2 * (zpExact - zr); // represented value − true value
    const sName = b.uniqueName(`${qt}_affine_scale`);
    g.addInitializer(new Tensor(sName, DataType.FLOAT, [], Float32Array.of(s2)));
    const zName = b.uniqueName(`${qt}_affine_zero_point`);
    g.addInitializer(new Tensor(zName, zdtype, [], zpStorage(zdtype, zr)));
    for (const dqz of dqzs) {
      // Reuse the DQ node (and its output name): only its inputs change.
      dqz.inputs = [qt, sName, zName];
      for (const c of consumers.get(dqz.outputs[0]!) ?? []) {
        if (c.opType === 'Conv' && c.inputs[0] === dqz.outputs[0]) {
          const r = adjustConvBias(c, s2, compensated.has(c) ? 0 : delta);
          if (r === 'adjusted' || r === 'clamped') biasesAdjusted++;
          if (r === 'clamped') biasesClamped++;
          if (r === 'failed' && delta !== 0) uncompensated++;
        } else if (delta !== 0) uncompensated++;
      }
    }
    dead.push(qz, ...chain.nodes);
    absorbed.push(name);
    // The graph changed: refresh the maps for the next match.
    g.nodes = g.nodes.filter((n) => n !== qz);
    producers = g.producers();
    consumers = g.consumers();
  }
  const removed = removeUnused(g, dead);
  g.sort();
  return {
    pass: 'affine-absorb-qdq',
    changed: absorbed.length > 0,
    details: {
      chainsAbsorbed: absorbed.length,
      nodesRemoved: removed + absorbed.length,
      biasesAdjusted,
      biasesClamped,
      uncompensatedReaders: uncompensated,
      skipped,
    },
  };

  /**
   * Requantizes the int32 bias of a QDQ Conv for the input scale `sx` and subtracts δ·ΣW per output channel.
   * Adds a bias when the Conv has none and δ ≠ 0.
   */
  function adjustConvBias(conv: Node, sx: number, delta: number): 'adjusted' | 'clamped' | 'failed' | 'none' {
    const wdq = producers.get(conv.inputs[1] ?? '');
    if (wdq?.opType !== 'DequantizeLinear') return 'failed';
    const wq = consts.get(wdq.inputs[0]);
    const ws = consts.get(wdq.inputs[1]);
    if (!wq || !ws || (wq.dtype !== DataType.INT8 && wq.dtype !== DataType.UINT8)) return 'failed';
    const wzp = wdq.inputs[2] ? consts.get(wdq.inputs[2]) : undefined;
    const O = wq.dims[0]!;
    const per = wq.size / O;
    const wsv = ws.data as Float32Array;
    const wzv = wzp ? decodeToFloat32(wzp.dtype, wzp.data, wzp.size) : undefined;
    const wv = wq.data as Int8Array | Uint8Array;
    const sumW = new Float64Array(O);
    for (let o = 0; o < O; o++) {
      const s = wsv.length === 1 ? wsv[0]! : wsv[o]!;
      const zp = wzv ? (wzv.length === 1 ? wzv[0]! : wzv[o]!) : 0;
      let acc = 0;
      for (let k = 0; k < per; k++) acc += wv[o * per + k]! - zp;
      sumW[o] = acc * s;
    }
    // Current bias in float.
    const bias = new Float64Array(O);
    const bIn = conv.inputs[2];
    if (bIn) {
      const bdq = producers.get(bIn);
      if (bdq && bdq.opType === 'DequantizeLinear') {
        const bq = consts.get(bdq.inputs[0]);
        const bs = consts.get(bdq.inputs[1]);
        if (!bq || !bs || bq.dtype !== DataType.INT32) return 'failed';
        const bqv = bq.data as Int32Array;
        const bsv = bs.data as Float32Array;
        for (let o = 0; o < O; o++) bias[o] = bqv[o]! * (bsv.length === 1 ? bsv[0]! : bsv[o]!);
      } else {
        const bf = consts.floats(bIn);
        if (!bf) return 'failed';
        bias.set(bf.values);
      }
    } else if (delta === 0) return 'none';
    for (let o = 0; o < O; o++) bias[o] -= delta * sumW[o]!;
    const scale = new Float32Array(O);
    const values = new Int32Array(O);
    let clamped = false;
    for (let o = 0; o < O; o++) {
      scale[o] = Math.fround(sx * (wsv.length === 1 ? wsv[0]! : wsv[o]!));
      const v = roundHalfEven(bias[o]! / scale[o]!);
      if (!Number.isFinite(v) || Math.abs(v) > 2 ** 31 - 1) {
        clamped = true;
        values[o] = Number.isFinite(v) ? Math.sign(v) * (2 ** 31 - 1) : 0;
      } else values[o] = v;
    }
    const base = conv.name || conv.outputs[0] || 'conv';
    const qName = b.uniqueName(`${base}_bias_absorbed_quantized`);
    g.addInitializer(new Tensor(qName, DataType.INT32, [O], values));
    const scName = b.uniqueName(`${base}_bias_absorbed_scale`);
    g.addInitializer(new Tensor(scName, DataType.FLOAT, [O], scale));
    const zpName = b.uniqueName(`${base}_bias_absorbed_zero_point`);
    g.addInitializer(new Tensor(zpName, DataType.INT32, [O], new Int32Array(O)));
    const out = b.uniqueName(`${base}_bias_absorbed`);
    const dq = b.node('DequantizeLinear', [qName, scName, zpName], {
      outputs: [out],
      name: `${base}_bias_absorbed_DequantizeLinear`,
    });
    dq.setAttr('axis', AttributeType.INT, 0);
    const old = conv.inputs[2];
    if (conv.inputs.length < 3) conv.inputs.push(out);
    else conv.inputs[2] = out;
    for (const t of [qName, scName, zpName]) consts.add(g.initializer(t)!);
    if (old) {
      const oldDq = producers.get(old);
      if (oldDq && (consumers.get(old)?.length ?? 0) <= 1) {
        g.nodes = g.nodes.filter((n) => n !== oldDq);
        dropUnusedInitializers(g, oldDq.inputs);
      } else dropUnusedInitializers(g, [old]);
    }
    return clamped ? 'clamped' : 'adjusted';
  }
}
