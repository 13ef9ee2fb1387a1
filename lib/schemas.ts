/**
 * @module
 * Data shapes that cross a boundary: the record a client sends (seed 000's
 * `DataRecord`), the record troupe stores after the transform stage, the
 * failed record kept with its stage and reason, and the aggregates.
 *
 * Each valibot schema and its inferred type share a name. Limits that come
 * from configuration (string length, metadata depth) are applied by
 * {@linkcode dataRecordSchema}; {@linkcode DataRecord} uses the defaults.
 */
import * as v from "valibot";

/** Limits a single record must respect; part of the `limits` config section. */
export interface RecordLimits {
  /** Longest string allowed anywhere in a record, in UTF-16 code units. @default 65536 */
  maxStringLength: number;
  /** Deepest nesting allowed inside `metadata` (an object directly in it is depth 1). @default 32 */
  maxDepth: number;
}

/** Default per-record limits. */
export const DEFAULT_RECORD_LIMITS: RecordLimits = { maxStringLength: 65_536, maxDepth: 32 };

/** Names of the pipeline stages, in order. */
export const STAGES = ["validate", "transform", "aggregate", "store"] as const;
/** One pipeline stage. */
export type StageName = typeof STAGES[number];

/**
 * Checks that `value` nests no deeper than `maxDepth` and holds no string
 * longer than `maxStringLength`. Iterative, so hostile nesting cannot
 * overflow the stack. Returns a message naming the problem, or `undefined`.
 */
export function checkNesting(value: unknown, limits: RecordLimits): string | undefined {
  const stack: Array<[unknown, number]> = [[value, 0]];
  while (stack.length > 0) {
    const [node, depth] = stack.pop()!;
    if (typeof node === "string") {
      if (node.length > limits.maxStringLength) {
        return `string of ${node.length} characters exceeds the limit of ${limits.maxStringLength}`;
      }
    } else if (node !== null && typeof node === "object") {
      if (depth > limits.maxDepth) return `nesting exceeds the limit of ${limits.maxDepth} levels`;
      for (const key in node) {
        if (key.length > limits.maxStringLength) {
          return `key of ${key.length} characters exceeds the limit of ${limits.maxStringLength}`;
        }
        stack.push([(node as Record<string, unknown>)[key], depth + 1]);
      }
    }
  }
  return undefined;
}

/**
 * Whether an ISO 8601 timestamp names a day that exists. `Date.parse`
 * alone would roll `2025-02-30` over to March 2.
 */
export function isRealDate(ts: string): boolean {
  if (!Number.isFinite(Date.parse(ts))) return false;
  const y = Number(ts.slice(0, 4));
  const m = Number(ts.slice(5, 7));
  const d = Number(ts.slice(8, 10));
  const days = new Date(Date.UTC(y, m, 0)).getUTCDate();
  return m >= 1 && m <= 12 && d >= 1 && d <= days;
}

/** Builds the `DataRecord` schema for the given limits. */
export function dataRecordSchema(limits: RecordLimits = DEFAULT_RECORD_LIMITS) {
  const text = () =>
    v.pipe(
      v.string("must be a string"),
      v.trim(),
      v.nonEmpty("must not be empty"),
      v.maxLength(limits.maxStringLength, `is longer than ${limits.maxStringLength} characters`),
    );
  return v.object({
    id: v.union([
      v.pipe(
        v.string(),
        v.nonEmpty("must not be empty"),
        v.maxLength(256, "is longer than 256 characters"),
      ),
      v.pipe(
        v.number(),
        v.safeInteger("must be a whole number"),
        v.minValue(0, "must not be negative"),
      ),
    ], "must be a non-negative integer or a non-empty string"),
    timestamp: v.pipe(
      v.string("must be an ISO 8601 string"),
      v.isoTimestamp("must be ISO 8601 with a zone, for example 2025-01-15T10:00:00Z"),
      v.check(isRealDate, "is not a real date"),
    ),
    user_id: text(),
    event: text(),
    value: v.pipe(v.number("must be a number"), v.finite("must be finite")),
    metadata: v.nullish(
      v.pipe(
        v.custom<Record<string, unknown>>(
          (m) => typeof m === "object" && m !== null && !Array.isArray(m),
          "must be an object",
        ),
        v.rawCheck(({ dataset, addIssue }) => {
          if (!dataset.typed) return;
          // `metadata` itself is depth 0; an object directly in it is depth 1.
          const problem = checkNesting(dataset.value, limits);
          if (problem) addIssue({ message: problem });
        }),
      ),
    ),
  });
}

/**
 * A record as a client sends it (seed 000's `DataRecord`).
 *
 * @example
 * ```json
 * {"id":1,"timestamp":"2025-01-15T10:00:00Z","user_id":"user_001","event":"login","value":1.0,"metadata":{"ip":"192.168.1.1"}}
 * ```
 */
export const DataRecord = dataRecordSchema();
/** A record after validation (trimmed strings, unknown keys dropped). */
export type DataRecord = v.InferOutput<typeof DataRecord>;

/** A record id: a non-negative integer or a non-empty string. Stored by its string form. */
export type RecordId = string | number;

/** A record after the transform stage: what storage keeps and `GET /v1/records/:id` returns. */
export interface ProcessedRecord {
  id: RecordId;
  /** UTC ISO 8601; milliseconds only when not zero. */
  timestamp: string;
  /** Milliseconds since the epoch of `timestamp`, for ordering. */
  timestamp_ms: number;
  user_id: string;
  /** Trimmed and lower-cased. */
  event: string;
  value: number;
  metadata: Record<string, unknown>;
  /** When troupe received the request, UTC ISO 8601. */
  received_at: string;
  /**
   * z-score of `value` against the running mean and deviation of its event
   * type (0 until two samples, or when they do not vary); `is_anomaly` waits
   * for 30 samples.
   */
  anomaly_score: number;
  is_anomaly: boolean;
}

/** A record that a stage refused, kept in the failed store. */
export interface FailedRecord {
  /** The record's id when it had a usable one. */
  record_id: RecordId | null;
  stage: StageName;
  reason: string;
  /** The record as the refusing stage saw it: as received for `validate`, validated or transformed after. */
  raw: unknown;
  failed_at: string;
}

/** Per-user aggregate (seed 000's expected output). */
export interface UserAggregate {
  user_id: string;
  total_events: number;
  total_value: number;
  /** Distinct events, in first-seen order. */
  events: string[];
  last_activity: string;
}

/** Per-event aggregate. */
export interface EventAggregate {
  event: string;
  count: number;
  total_value: number;
  min_value: number;
  max_value: number;
}

/** Formats a date as UTC ISO 8601, dropping `.000` milliseconds: `2025-01-15T10:00:05Z`. */
export function toUtcIso(ms: number): string {
  const iso = new Date(ms).toISOString();
  return iso.endsWith(".000Z") ? `${iso.slice(0, -5)}Z` : iso;
}

/** The key a record id is stored and looked up by. `1` and `"1"` are the same id. */
export function recordKey(id: RecordId): string {
  return typeof id === "number" ? String(id) : id;
}
