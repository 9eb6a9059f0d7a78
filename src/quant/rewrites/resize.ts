/**
 * Nearest-neighbour upsampling by integer factors (Resize mode 'nearest', coordinate_transformation_mode
 * 'asymmetric', nearest_mode 'floor', scales [1, 1, s_h, s_w]: what PP-OCR det's FPN uses) rewritten exactly as
 * replication: Unsqueeze to [N, C, H, 1, W, 1], Expand to [N, C, H, s_h, W, s_w], Reshape to [N, C, H·s_h, W·s_w]
 * (the target shape is Shape(x) · [1, 1, s_h, s_w], folded when the shape is static).
 *
 * Why it exists: ONNX Runtime runs a QDQ Resize on uint8 data, and its uint8 nearest Resize is slow (17 % of the
 * int8 PP-OCRv4 det time at 640x640, 11 ms; the float model's Resize runs in the NCHWc layout and is far cheaper).
 * Unsqueeze / Expand / Reshape also run on the 8-bit data (their Q/DQ are dropped). Measured with onnxruntime-node
 * 1.30, though, its uint8 Expand with an innermost broadcast is slower still (27 ms), so quantizeWithRewrites
 * leaves this off by default; it is exact and may pay off on runtimes with a fast broadcast copy.
 */
import { GraphBuilder } from '../../ir/builder.js';
import type { Node } from '../../ir/graph.js';
import type { Model } from '../../ir/model.js';
import type { PassRecord } from '../../ir/pass.js';
import { Constants, isDefaultDomain, label } from './common.js';

/** Integer upsampling factors [s_h, s_w] when `n` is a replicating 4-D nearest Resize, else undefined. */
function replicationFactors(n: Node, consts: Constants): [number, number] | undefined {
  if (n.opType !== 'Resize' || !isDefaultDomain(n)) return undefined;
  if (n.attrString('mode', 'nearest') !== 'nearest') return undefined;
  const ctm = n.attrString('coordinate_transformation_mode', 'half_pixel');
  const nm = n.attrString('nearest_mode', 'round_prefer_floor');
  // asymmetric + floor: x_in = floor(x_out / s), exact replication for integer s. (With integer s, 'half_pixel'
  // and round_prefer_floor/ceil pick other source pixels at block edges, so only this combination.)
  if (ctm !== 'asymmetric' || nm !== 'floor') return undefined;
  if (n.attr('axes') || n.attrInt('antialias', 0) !== 0) return undefined;
  const scales = consts.floats(n.inputs[2]);
  if (scales?.values.length !== 4 || (n.inputs[3] ?? '') !== '') return undefined;
  const [a, b, sh, sw] = Array.from(scales.values);
  if (a !== 1 || b !== 1 || !Number.isInteger(sh) || !Number.isInteger(sw) || sh! < 1 || sw! < 1)
    return undefined;
  return [sh!, sw!];
}

export function resizeNearestToExpand(model: Model): PassRecord {
  const g = model.graph;
  const consts = new Constants(g);
  const b = new GraphBuilder(g);
  const opset = model.opset('') ?? 13;
  const rewritten: string[] = [];
  for (const n of [...g.nodes]) {
    const f = replicationFactors(n, consts);
    if (!f) continue;
    const [sh, sw] = f;
    const base = n.name || n.outputs[0] || 'Resize';
    const x = n.inputs[0]!;
    const at = g.nodes.indexOf(n);
    const added: Node[] = [];
    let u: string;
    if (opset >= 13) {
      const axes = b.int64s(`${base}_axes`, [2], [3, 5]);
      added.push(b.node('Unsqueeze', [x, axes], { name: `${base}_unsqueeze` }));
    } else {
      added.push(b.node('Unsqueeze', [x], { name: `${base}_unsqueeze`, attrs: { axes: [3, 5] } }));
    }
    u = added[0]!.outputs[0]!;
    const rep = b.int64s(`${base}_repeats`, [6], [1, 1, 1, sh, 1, sw]);
    added.push(b.node('Expand', [u, rep], { name: `${base}_expand` }));
    u = added[1]!.outputs[0]!;
    added.push(b.node('Shape', [x], { name: `${base}_shape` }));
    const factors = b.int64s(`${base}_factors`, [4], [1, 1, sh, sw]);
    added.push(b.node('Mul', [added[2]!.outputs[0]!, factors], { name: `${base}_target` }));
    added.push(
      b.node('Reshape', [u, added[3]!.outputs[0]!], { name: `${base}_reshape`, outputs: [n.outputs[0]!] }),
    );
    // b.node appended the nodes at the end; move them to the Resize's place.
    g.nodes = g.nodes.filter((m) => m !== n && !added.includes(m));
    g.nodes.splice(at, 0, ...added);
    rewritten.push(label(n));
  }
  return { pass: 'resize-nearest-to-expand', changed: rewritten.length > 0, details: { rewritten } };
}
