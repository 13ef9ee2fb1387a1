/**
 * @module
 * In-memory metric history: one ring buffer per series at full resolution
 * (by default 15 minutes of 1-second samples), and queries that cut a time
 * range into steps with min, mean and max per step. Bounded twice: samples
 * per series and number of series.
 */

/** One step of a history query. */
export interface HistoryPoint {
  /** Start of the step, epoch ms. */
  t: number;
  min: number;
  mean: number;
  max: number;
  /** Samples in the step. */
  count: number;
}

/** A fixed-size ring of `(time, value)` samples, oldest overwritten first. */
export class RingSeries {
  readonly capacity: number;
  #t: Float64Array;
  #v: Float64Array;
  #next = 0;
  #size = 0;

  constructor(capacity: number) {
    if (!(capacity >= 1)) {
      throw new RangeError(`RingSeries capacity must be at least 1, got ${capacity}`);
    }
    this.capacity = capacity;
    this.#t = new Float64Array(capacity);
    this.#v = new Float64Array(capacity);
  }

  get size(): number {
    return this.#size;
  }

  /** Appends a sample; times are expected to be non-decreasing. */
  push(t: number, v: number): void {
    this.#t[this.#next] = t;
    this.#v[this.#next] = v;
    this.#next = (this.#next + 1) % this.capacity;
    if (this.#size < this.capacity) this.#size++;
  }

  /** The latest sample, if any. */
  last(): [number, number] | undefined {
    if (this.#size === 0) return undefined;
    const i = (this.#next - 1 + this.capacity) % this.capacity;
    return [this.#t[i], this.#v[i]];
  }

  /** Samples with `from <= t <= to`, oldest first. */
  range(from: number, to: number): Array<[number, number]> {
    const out: Array<[number, number]> = [];
    const start = (this.#next - this.#size + this.capacity) % this.capacity;
    for (let k = 0; k < this.#size; k++) {
      const i = (start + k) % this.capacity;
      const t = this.#t[i];
      if (t >= from && t <= to) out.push([t, this.#v[i]]);
    }
    return out;
  }
}

/** Cuts samples into steps of `stepMs` starting at `from`, with min, mean and max per step. */
export function downsample(
  samples: ReadonlyArray<[number, number]>,
  from: number,
  stepMs: number,
): HistoryPoint[] {
  const points: HistoryPoint[] = [];
  let current: HistoryPoint | undefined;
  let sum = 0;
  for (const [t, v] of samples) {
    const start = from + Math.floor((t - from) / stepMs) * stepMs;
    if (current === undefined || current.t !== start) {
      if (current !== undefined) current.mean = sum / current.count;
      current = { t: start, min: v, mean: v, max: v, count: 0 };
      points.push(current);
      sum = 0;
    }
    current.count++;
    sum += v;
    if (v < current.min) current.min = v;
    if (v > current.max) current.max = v;
  }
  if (current !== undefined) current.mean = sum / current.count;
  return points;
}

/** What {@linkcode History.record} says when a new series would pass the bound. */
export class TooManySeriesError extends Error {
  constructor(limit: number) {
    super(`History holds at most ${limit} series`);
    this.name = "TooManySeriesError";
  }
}

/** Named series of samples, bounded in samples per series and in series. */
export class History {
  readonly samplesPerSeries: number;
  readonly maxSeries: number;
  #series = new Map<string, RingSeries>();

  /** 900 samples = 15 minutes at 1 s. */
  constructor(samplesPerSeries = 900, maxSeries = 2000) {
    this.samplesPerSeries = samplesPerSeries;
    this.maxSeries = maxSeries;
  }

  /** Appends a sample; throws {@linkcode TooManySeriesError} for a new series past the bound. */
  record(name: string, t: number, v: number): void {
    let s = this.#series.get(name);
    if (s === undefined) {
      if (this.#series.size >= this.maxSeries) throw new TooManySeriesError(this.maxSeries);
      s = new RingSeries(this.samplesPerSeries);
      this.#series.set(name, s);
    }
    s.push(t, v);
  }

  /** Names of every series, sorted. */
  names(): string[] {
    return [...this.#series.keys()].sort();
  }

  has(name: string): boolean {
    return this.#series.has(name);
  }

  /** The latest value of a series. */
  latest(name: string): number | undefined {
    return this.#series.get(name)?.last()?.[1];
  }

  /** Raw samples of a series in a range. */
  samples(name: string, from: number, to: number): Array<[number, number]> {
    return this.#series.get(name)?.range(from, to) ?? [];
  }

  /** Steps of `stepMs` over `[from, to]` with min, mean and max. */
  query(name: string, from: number, to: number, stepMs: number): HistoryPoint[] {
    return downsample(this.samples(name, from, to), from, stepMs);
  }
}
