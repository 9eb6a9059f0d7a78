/**
 * Learning-rate schedules, computed in TypeScript once per optimizer step and fed to the training graph as a
 * scalar input (so changing the rate never rebuilds the graph). A schedule is a pure function of the 0-based
 * optimizer step, which also makes resuming from a checkpoint exact: the step count is the whole state.
 *
 *   constantLr(lr)                               lr
 *   stepLr({ lr, stepSize, gamma })              lr·gamma^floor(step/stepSize)            (PyTorch StepLR)
 *   cosineLr({ lr, totalSteps, minLr })          minLr + (lr − minLr)·(1 + cos(π·min(step, T)/T))/2
 *                                                                                (CosineAnnealingLR, closed form)
 *   linearWarmup(inner, { steps, startFactor })  inner(0)·(f + (1 − f)·step/steps) during the warm-up, then
 *                                                inner(step − steps)  (LinearLR then the inner schedule,
 *                                                as PyTorch's SequentialLR([LinearLR, inner], [steps]))
 *   sequentialLr([{ schedule, steps }, ...])     each schedule for its number of steps, counted from its start
 *   scaledLr(inner, factor)                      inner(step)·factor
 *   perEpochLr(inner, stepsPerEpoch)             an epoch-indexed schedule, changing at epoch boundaries
 *
 * `scheduleFromSpec` builds the first five from plain JSON (`ScheduleSpec`, for the CLI): e.g.
 * { kind: 'warmup', steps: 100, after: { kind: 'cosine', lr: 1e-3, totalSteps: 900 } }.
 */
import { QnnxError } from '../errors.js';

/** Learning rate for a 0-based optimizer step. */
export type LrSchedule = (step: number) => number;

export function constantLr(lr: number): LrSchedule {
  return () => lr;
}

export function stepLr(o: { lr: number; stepSize: number; gamma?: number }): LrSchedule {
  if (!(o.stepSize > 0))
    throw new QnnxError('E_USAGE', `stepLr: stepSize must be positive (got ${o.stepSize})`);
  const gamma = o.gamma ?? 0.1;
  return (step) => o.lr * gamma ** Math.floor(step / o.stepSize);
}

export function cosineLr(o: { lr: number; totalSteps: number; minLr?: number }): LrSchedule {
  if (!(o.totalSteps > 0)) {
    throw new QnnxError('E_USAGE', `cosineLr: totalSteps must be positive (got ${o.totalSteps})`);
  }
  const min = o.minLr ?? 0;
  return (step) =>
    min + ((o.lr - min) * (1 + Math.cos((Math.PI * Math.min(step, o.totalSteps)) / o.totalSteps))) / 2;
}

export function linearWarmup(inner: LrSchedule, o: { steps: number; startFactor?: number }): LrSchedule {
  const f = o.startFactor ?? 0;
  if (!(o.steps >= 0)) throw new QnnxError('E_USAGE', `linearWarmup: steps must be ≥ 0 (got ${o.steps})`);
  return (step) => (step < o.steps ? inner(0) * (f + ((1 - f) * step) / o.steps) : inner(step - o.steps));
}

export function sequentialLr(parts: { schedule: LrSchedule; steps: number }[]): LrSchedule {
  if (parts.length === 0) throw new QnnxError('E_USAGE', 'sequentialLr: no schedules given');
  return (step) => {
    let start = 0;
    for (let i = 0; i < parts.length - 1; i++) {
      if (step < start + parts[i].steps) return parts[i].schedule(step - start);
      start += parts[i].steps;
    }
    return parts[parts.length - 1].schedule(step - start);
  };
}

export function scaledLr(inner: LrSchedule, factor: number): LrSchedule {
  return (step) => inner(step) * factor;
}

/** Turns an epoch-indexed schedule into a step-indexed one (the rate changes at epoch boundaries only). */
export function perEpochLr(inner: LrSchedule, stepsPerEpoch: number): LrSchedule {
  return (step) => inner(Math.floor(step / stepsPerEpoch));
}

/** Plain-data schedule description (what the CLI parses and what a checkpoint can record). */
export type ScheduleSpec =
  | { kind: 'constant'; lr: number }
  | { kind: 'step'; lr: number; stepSize: number; gamma?: number }
  | { kind: 'cosine'; lr: number; totalSteps: number; minLr?: number }
  | { kind: 'warmup'; steps: number; startFactor?: number; after: ScheduleSpec }
  | { kind: 'sequential'; parts: { steps: number; schedule: ScheduleSpec }[] };

export function scheduleFromSpec(spec: ScheduleSpec): LrSchedule {
  switch (spec.kind) {
    case 'constant':
      return constantLr(spec.lr);
    case 'step':
      return stepLr(spec);
    case 'cosine':
      return cosineLr(spec);
    case 'warmup':
      return linearWarmup(scheduleFromSpec(spec.after), spec);
    case 'sequential':
      return sequentialLr(
        spec.parts.map((p) => ({ steps: p.steps, schedule: scheduleFromSpec(p.schedule) })),
      );
    default:
      throw new QnnxError('E_USAGE', `unknown learning-rate schedule ${JSON.stringify(spec)}`);
  }
}
