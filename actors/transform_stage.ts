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

/** The canonical UTC form of a validated ISO 8601 timestamp, with its epoch ms. */
export function normaliseTimestamp(ts: string): { iso: string; ms: number } {
  const ms = Date.parse(ts);
  // Most clients already send canonical UTC; formatting a Date costs more than this test.
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
