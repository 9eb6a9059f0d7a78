/**
 * The one table of gradient rules. Each file under rules/ holds one op family and exports `rules`.
 */
import type { GradientRule } from './rule.js';
import { rules as activation } from './rules/activation.js';
import { rules as conv } from './rules/conv.js';
import { rules as dropout } from './rules/dropout.js';
import { rules as elementwise } from './rules/elementwise.js';
import { rules as fakeQuant } from './rules/fake-quant.js';
import { rules as matmul } from './rules/matmul.js';
import { rules as normalization } from './rules/normalization.js';
import { rules as pool } from './rules/pool.js';
import { rules as reduce } from './rules/reduce.js';
import { rules as shape } from './rules/shape.js';

const TABLE = new Map<string, GradientRule>();

for (const r of [
  ...activation,
  ...conv,
  ...dropout,
  ...elementwise,
  ...fakeQuant,
  ...matmul,
  ...normalization,
  ...pool,
  ...reduce,
  ...shape,
]) {
  if (TABLE.has(r.op)) throw new Error(`duplicate gradient rule for ${r.op}`);
  TABLE.set(r.op, r);
}

export function ruleFor(op: string): GradientRule | undefined {
  return TABLE.get(op);
}

/** Registers an extra rule (custom ops, or a different fake-quant gradient); replaces an existing one. */
export function registerRule(rule: GradientRule): void {
  TABLE.set(rule.op, rule);
}

export function registeredOps(): string[] {
  return [...TABLE.keys()].sort();
}
