/**
 * @module
 * The transform stage worker: trims and normalises each record (`user_id`
 * trimmed, `event` trimmed and lower-cased, timestamp to UTC ISO 8601),
 * stamps `received_at`, and scores it: the z-score of `value` against the
 * running mean and deviation of its event type, `is_anomaly` when |z| > 3
 * once the type has at least 30 samples (seed 003's anomaly score).
 *
 * Events: see `actors/_stage_worker.ts`.
 */
import type { Batch } from "../lib/batch.ts";
import type { DataRecord, ProcessedRecord } from "../lib/schemas.ts";
import { toUtcIso } from "../lib/schemas.ts";
import type { StageDeps } from "./_stage_deps.ts";
import { createStageWorkerMachine } from "./_stage_worker.ts";

/** Samples an event type needs before a record can be an anomaly. */
export const MIN_ANOMALY_SAMPLES = 30;
/** |z| above which a record is an anomaly. */
export const ANOMALY_Z = 3;

interface Running {
  n: number;
  mean: number;
  m2: number;
}

/**
 * Running mean and deviation per event type (Welford's method), shared by
 * every transform worker of a pipeline.
 */
export class AnomalyTracker {
  #stats = new Map<string, Running>();

  /** Scores `value` against what was seen of `event` so far, then learns it. */
  score(event: string, value: number): { z: number; anomaly: boolean } {
    let s = this.#stats.get(event);
    if (s === undefined) {
      s = { n: 0, mean: 0, m2: 0 };
      this.#stats.set(event, s);
    }
    let z = 0;
    if (s.n >= 2) {
      const sd = Math.sqrt(s.m2 / (s.n - 1));
      // A constant series has no spread to measure against: score 0.
      if (sd > 0) z = (value - s.mean) / sd;
    }
    const anomaly = s.n >= MIN_ANOMALY_SAMPLES && Math.abs(z) > ANOMALY_Z;
    s.n++;
    const d = value - s.mean;
    s.mean += d / s.n;
    s.m2 += d * (value - s.mean);
    return { z, anomaly };
  }

  /** Samples seen of `event`. */
  samples(event: string): number {
    return this.#stats.get(event)?.n ?? 0;
  }
}

/** `2025-01-15T10:00:05Z` or `2025-01-15T10:00:05.250Z`: already canonical, no reformatting needed. */
const CANONICAL_UTC = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.(?!000Z)\d{3})?Z$/;
/**
 * The digit at `i` of `s` (0 to 9), or -1. `charCodeAt` past the end is
 * NaN, which fails both comparisons.
 */
function digitAt(s: string, i: number): number {
  const c = s.charCodeAt(i) - 48;
  return c >= 0 && c <= 9 ? c : -1;
}

/** The value of the two digits at `i`, or -1. */
function twoDigits(s: string, i: number): number {
  const a = digitAt(s, i);
  const b = digitAt(s, i + 1);
  return a < 0 || b < 0 ? -1 : a * 10 + b;
}

/**
 * Epoch ms of `YYYY-MM-DDTHH:MM:SSZ` or `YYYY-MM-DDTHH:MM:SS.mmmZ` whose
 * fields are all in range (a real day, hours below 24, year 100 or later,
 * where `Date.UTC` takes the year as written); `undefined` for any other
 * string, which `Date.parse` reads.
 */
function plainUtcMs(ts: string): number | undefined {
  const length = ts.length;
  if (length !== 20 && length !== 24) return undefined;
  if (
    ts.charCodeAt(4) !== 45 || ts.charCodeAt(7) !== 45 || ts.charCodeAt(10) !== 84 ||
    ts.charCodeAt(13) !== 58 || ts.charCodeAt(16) !== 58 || ts.charCodeAt(length - 1) !== 90
  ) return undefined; // - - T : : Z
  const hi = twoDigits(ts, 0);
  const lo = twoDigits(ts, 2);
  const mo = twoDigits(ts, 5);
  const d = twoDigits(ts, 8);
  const h = twoDigits(ts, 11);
  const mi = twoDigits(ts, 14);
  const sec = twoDigits(ts, 17);
  if (hi < 1 || lo < 0 || mo < 1 || mo > 12 || d < 1 || h < 0 || h > 23) return undefined;
  if (mi < 0 || mi > 59 || sec < 0 || sec > 59) return undefined;
  let frac = 0;
  if (length === 24) {
    const a = digitAt(ts, 20);
    const b = digitAt(ts, 21);
    const c = digitAt(ts, 22);
    if (ts.charCodeAt(19) !== 46 || a < 0 || b < 0 || c < 0) return undefined; // .
    frac = a * 100 + b * 10 + c;
  }
  const y = hi * 100 + lo;
  const days = mo === 2
    ? (y % 4 === 0 && (y % 100 !== 0 || y % 400 === 0) ? 29 : 28)
    : (mo === 4 || mo === 6 || mo === 9 || mo === 11 ? 30 : 31);
  if (d > days) return undefined;
  return Date.UTC(y, mo - 1, d, h, mi, sec, frac);
}

/**
 * The canonical UTC form of a validated ISO 8601 timestamp, with its epoch
 * ms. Most clients send UTC already: those strings are read with integer
 * arithmetic and `Date.UTC` (a `.000Z` one loses its `.000`), about a
 * third of the cost of `Date.parse` and formatting a `Date`; anything else
 * takes that way, with the same result.
 */
export function normaliseTimestamp(ts: string): { iso: string; ms: number } {
  const plain = plainUtcMs(ts);
  if (plain !== undefined) {
    const zeroMs = ts.length === 24 && ts.endsWith(".000Z");
    return { iso: zeroMs ? `${ts.slice(0, 19)}Z` : ts, ms: plain };
  }
  const ms = Date.parse(ts);
  return { iso: CANONICAL_UTC.test(ts) ? ts : toUtcIso(ms), ms };
}

/** Transforms one validated record. */
export function transformRecord(
  r: DataRecord,
  receivedAt: string,
  anomaly: AnomalyTracker,
): ProcessedRecord {
  const event = r.event.trim().toLowerCase();
  const { iso, ms } = normaliseTimestamp(r.timestamp);
  const { z, anomaly: isAnomaly } = anomaly.score(event, r.value);
  return {
    id: r.id,
    timestamp: iso,
    timestamp_ms: ms,
    user_id: r.user_id.trim(),
    event,
    value: r.value,
    metadata: r.metadata ?? {},
    received_at: receivedAt,
    anomaly_score: Math.round(z * 1e6) / 1e6,
    is_anomaly: isAnomaly,
  };
}

/** Transforms the validated records of each batch. */
export async function transformBatches(batches: Batch[], deps: StageDeps): Promise<void> {
  for (const b of batches) {
    await deps.faults.check("transform", () => b.valid.map((r) => r.id));
  }
  for (const b of batches) {
    const receivedAt = new Date(b.receivedAt).toISOString();
    const out = new Array<ProcessedRecord>(b.valid.length);
    for (let i = 0; i < b.valid.length; i++) {
      out[i] = transformRecord(b.valid[i], receivedAt, deps.anomaly);
    }
    b.processed = out;
    b.valid = [];
  }
}

/** Worker machine of the transform stage. */
export const transformStageMachine = createStageWorkerMachine("transform_stage", transformBatches);
