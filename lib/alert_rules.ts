/**
 * @module
 * What each alert rule looks at: pure evaluators over the metric
 * {@linkcode History}. An evaluator answers, for one moment, whether the
 * condition holds (`breach`), whether it is clearly over (`clear`, past the
 * resolve threshold, so a value hovering at the threshold does not flap),
 * the value, and a description. The state machine around it
 * (`actors/alert_rule.ts`) adds `for` and `keep_firing_for`.
 *
 * Built-in rules (seed 001's checkers, for this runtime): memory leak,
 * CPU spike, actor leak, event-loop lag, mailbox saturation. Custom rules
 * are thresholds on any history series.
 */
import type { History } from "./history.ts";

/** One evaluation of a rule. */
export interface Evaluation {
  /** The value the rule compared, or `null` without data. */
  value: number | null;
  breach: boolean;
  clear: boolean;
  description: string;
}

/** A rule's evaluator. */
export type Evaluator = (history: History, now: number) => Evaluation;

const NO_DATA: Evaluation = { value: null, breach: false, clear: true, description: "no data" };

/** Least-squares fit of `y` on `x`: slope, intercept and R². */
export function linearFit(
  points: ReadonlyArray<[number, number]>,
): { slope: number; intercept: number; r2: number } {
  const n = points.length;
  if (n < 2) return { slope: 0, intercept: points[0]?.[1] ?? 0, r2: 0 };
  let sx = 0, sy = 0;
  for (const [x, y] of points) {
    sx += x;
    sy += y;
  }
  const mx = sx / n, my = sy / n;
  let sxx = 0, sxy = 0, syy = 0;
  for (const [x, y] of points) {
    sxx += (x - mx) ** 2;
    sxy += (x - mx) * (y - my);
    syy += (y - my) ** 2;
  }
  if (sxx === 0) return { slope: 0, intercept: my, r2: 0 };
  const slope = sxy / sxx;
  const r2 = syy === 0 ? 0 : (sxy * sxy) / (sxx * syy);
  return { slope, intercept: my - slope * mx, r2 };
}

/** The lowest sample of each bucket of `bucketMs`: the floor after garbage collections. */
export function bucketFloors(
  samples: ReadonlyArray<[number, number]>,
  bucketMs: number,
): Array<[number, number]> {
  const floors = new Map<number, number>();
  for (const [t, v] of samples) {
    const b = Math.floor(t / bucketMs) * bucketMs;
    const cur = floors.get(b);
    if (cur === undefined || v < cur) floors.set(b, v);
  }
  return [...floors.entries()].sort((a, b) => a[0] - b[0]);
}

/** Options of {@linkcode memoryLeak}. */
export interface MemoryLeakOptions {
  /** Window looked at. @default 600000 (10 min) */
  windowMs: number;
  /** Bucket whose floor is taken. @default 30000 */
  bucketMs: number;
  /** Fit quality needed. @default 0.8 */
  minR2: number;
  /** Growth of the floor over the window, as a fraction. @default 0.1 */
  minGrowth: number;
  /** Buckets needed before judging. @default 6 */
  minBuckets: number;
  /** The heap limit, bytes, for the projection. */
  heapLimitBytes: number;
}

/**
 * Memory leak: the floor of heap used per bucket rises along a straight
 * line (R² above `minR2`) and grew more than `minGrowth` over the window.
 * The description states the slope and the projected time to the heap limit.
 */
export function memoryLeak(o: MemoryLeakOptions): Evaluator {
  return (history, now) => {
    const floors = bucketFloors(
      history.samples("heap_used_bytes", now - o.windowMs, now),
      o.bucketMs,
    );
    if (floors.length < o.minBuckets) return NO_DATA;
    const { slope, r2 } = linearFit(floors.map(([t, v]) => [t / 1000, v]));
    const first = floors[0][1], last = floors[floors.length - 1][1];
    const growth = first > 0 ? (last - first) / first : 0;
    const breach = slope > 0 && r2 > o.minR2 && growth > o.minGrowth;
    const perMinute = slope * 60;
    const toLimitS = slope > 0 ? (o.heapLimitBytes - last) / slope : Infinity;
    return {
      value: growth,
      breach,
      clear: !(slope > 0 && r2 > o.minR2 / 2 && growth > o.minGrowth / 2),
      description:
        `heap floor ${breach ? "rising" : "changing"} ${
          (perMinute / 1048576).toFixed(2)
        } MiB/min ` +
        `(R² ${r2.toFixed(2)}, +${(growth * 100).toFixed(1)}% over ${span(o.windowMs)})` +
        (Number.isFinite(toLimitS) && slope > 0
          ? `; heap limit in about ${Math.round(toLimitS / 60)} min`
          : ""),
    };
  };
}

/**
 * GC pressure: heap used near its limit (over `nearLimit` of it, on average
 * over the window) while the floor still rises, so collections run often
 * and free little.
 */
export function gcPressure(
  o: { windowMs: number; nearLimit: number; heapLimitBytes: number },
): Evaluator {
  return (history, now) => {
    const s = history.samples("heap_used_bytes", now - o.windowMs, now);
    if (s.length < 10) return NO_DATA;
    const mean = s.reduce((n, [, v]) => n + v, 0) / s.length;
    const share = mean / o.heapLimitBytes;
    const { slope } = linearFit(
      bucketFloors(s, Math.max(1000, o.windowMs / 6)).map(([t, v]) => [t / 1000, v]),
    );
    const breach = share > o.nearLimit && slope > 0;
    return {
      value: share,
      breach,
      clear: share < o.nearLimit * 0.9 || slope <= 0,
      description: `heap at ${(share * 100).toFixed(0)}% of its limit` +
        (slope > 0 ? `, floor still rising ${(slope * 60 / 1048576).toFixed(2)} MiB/min` : ""),
    };
  };
}

/** Options of {@linkcode cpuSpike}. */
export interface CpuSpikeOptions {
  /** EWMA smoothing factor. @default 0.1 */
  alpha: number;
  /** Band width in standard deviations. @default 3 */
  sigmas: number;
  /** Samples in a row above the band. @default 3 */
  samples: number;
  /** Absolute floor, share of one core. @default 0.8 */
  floor: number;
  /** Samples of history the band is learned from. @default 120 */
  baseline: number;
}

/**
 * CPU spike: process CPU (user + system) above an EWMA band (mean + 3σ)
 * for several samples in a row, and above an absolute floor, so a quiet
 * process that doubles from 1% to 2% does not count.
 */
export function cpuSpike(o: CpuSpikeOptions): Evaluator {
  return (history, now) => {
    const user = history.samples("process_cpu_user", 0, now);
    const system = history.samples("process_cpu_system", 0, now);
    const n = Math.min(user.length, system.length);
    if (n < o.samples + 10) return NO_DATA;
    const cpu = user.slice(user.length - n).map(([, u], i) => u + system[system.length - n + i][1]);
    const start = Math.max(0, n - o.samples - o.baseline);
    let mean = cpu[start], variance = 0;
    for (let i = start + 1; i < n - o.samples; i++) {
      const d = cpu[i] - mean;
      mean += o.alpha * d;
      variance = (1 - o.alpha) * (variance + o.alpha * d * d);
    }
    const band = mean + o.sigmas * Math.sqrt(variance);
    const recent = cpu.slice(n - o.samples);
    const lowest = Math.min(...recent);
    const breach = recent.every((c) => c > band && c > o.floor);
    return {
      value: cpu[n - 1],
      breach,
      clear: !recent.some((c) => c > band && c > o.floor),
      description:
        `process CPU ${
          (cpu[n - 1] * 100).toFixed(0)
        }% of a core (lowest of the last ${o.samples}: ` +
        `${(lowest * 100).toFixed(0)}%), band ${(band * 100).toFixed(0)}% (EWMA ${
          (mean * 100).toFixed(0)
        }% + ${o.sigmas}σ)`,
    };
  };
}

/** Options of {@linkcode actorLeak}. */
export interface ActorLeakOptions {
  /** Window looked at. @default 300000 */
  windowMs: number;
  /** Growth over the window, as a fraction. @default 0.5 */
  minGrowth: number;
  /** Samples needed. @default 30 */
  minSamples: number;
}

/**
 * Actor leak (seed 001's goroutine leak): the count of actors of one type
 * keeps growing over the window, with no plateau: its last third still
 * rises as fast as the whole.
 */
export function actorLeak(o: ActorLeakOptions): Evaluator {
  return (history, now) => {
    let worst: Evaluation = NO_DATA;
    for (const name of history.names()) {
      if (!name.startsWith("actors_")) continue;
      const s = history.samples(name, now - o.windowMs, now);
      if (s.length < o.minSamples) continue;
      const first = s[0][1], last = s[s.length - 1][1];
      const growth = first > 0 ? (last - first) / first : 0;
      const whole = linearFit(s.map(([t, v]) => [t / 1000, v]));
      const tail = linearFit(s.slice(Math.floor(s.length * 2 / 3)).map(([t, v]) => [t / 1000, v]));
      const breach = growth > o.minGrowth && whole.slope > 0 && tail.slope >= whole.slope * 0.5;
      const e: Evaluation = {
        value: last,
        breach,
        clear: !breach,
        description:
          `${name.slice("actors_".length)} actors ${first} → ${last} in ${span(o.windowMs)}` +
          (breach ? ", still growing" : ""),
      };
      if (
        worst === NO_DATA || (e.breach && !worst.breach) ||
        (e.value ?? 0) > (worst.value ?? 0) && e.breach === worst.breach
      ) {
        worst = e;
      }
    }
    return worst;
  };
}

/** Options of {@linkcode threshold}. */
export interface ThresholdOptions {
  metric: string;
  /** `value`: the latest sample; `rate`: per second over the window; `increase`: over the window. */
  fn: "value" | "rate" | "increase" | "mean";
  windowMs: number;
  op: ">" | ">=" | "<" | "<=";
  threshold: number;
  /** Where the alert clears; defaults to the threshold. */
  resolveThreshold?: number;
}

/** A threshold on one history series. */
export function threshold(o: ThresholdOptions): Evaluator {
  const resolve = o.resolveThreshold ?? o.threshold;
  const above = o.op === ">" || o.op === ">=";
  const test = (v: number, t: number) =>
    o.op === ">" ? v > t : o.op === ">=" ? v >= t : o.op === "<" ? v < t : v <= t;
  return (history, now) => {
    const s = history.samples(o.metric, now - o.windowMs, now);
    if (s.length === 0) return NO_DATA;
    const [t0, v0] = s[0], [t1, v1] = s[s.length - 1];
    let value: number;
    if (o.fn === "value") value = v1;
    else if (o.fn === "mean") value = s.reduce((n, [, v]) => n + v, 0) / s.length;
    else if (o.fn === "increase") value = v1 - v0;
    else value = t1 > t0 ? (v1 - v0) / ((t1 - t0) / 1000) : 0;
    const breach = test(value, o.threshold);
    // Hysteresis: clear only once past the resolve threshold the other way.
    const clear = above ? value <= resolve && !breach : value >= resolve && !breach;
    return {
      value,
      breach,
      clear,
      description: `${o.fn}(${o.metric}) = ${round(value)} ${o.op} ${o.threshold}`,
    };
  };
}

/** `24 s`, `10 min`. */
function span(ms: number): string {
  return ms < 120_000 ? `${Math.round(ms / 1000)} s` : `${Math.round(ms / 60_000)} min`;
}

function round(x: number): number {
  return Math.round(x * 1000) / 1000;
}
