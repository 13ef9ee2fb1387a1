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
/** Where a record can fail: a pipeline stage, or the queue that gave up on its entry (queue mode). */
export const FAILURE_STAGES = [...STAGES, "queue"] as const;
/** One place a record can fail. */
export type FailureStage = typeof FAILURE_STAGES[number];

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
 * The usual shape of a timestamp, `2025-01-15T10:00:00Z`: `T`, seconds,
 * optional milliseconds, `Z` or `±hh:mm`. `Date.parse` reads every string of
 * this shape, so {@linkcode isRealDate} can check these with arithmetic alone.
 */
const COMMON_TIMESTAMP =
  /^\d{4}-\d\d-\d\dT(?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d(?:\.\d{3})?(?:Z|[+-](?:[01]\d|2[0-3]):[0-5]\d)$/;

/** The value of the decimal digits of `s` from `start` to `end`. */
function digits(s: string, start: number, end: number): number {
  let n = 0;
  for (let i = start; i < end; i++) n = n * 10 + s.charCodeAt(i) - 48;
  return n;
}

/**
 * Days in month `m` (1-12) of year `y`. Years 0-99 count as 1900-1999, as
 * `Date.UTC` takes them, so `0000-02-29` stays refused as it always was.
 */
function daysInMonth(y: number, m: number): number {
  if (m === 2) {
    const year = y < 100 ? y + 1900 : y;
    return year % 4 === 0 && (year % 100 !== 0 || year % 400 === 0) ? 29 : 28;
  }
  return m === 4 || m === 6 || m === 9 || m === 11 ? 30 : 31;
}

/**
 * Whether `ts`, if it has the usual shape, names a day that exists;
 * `undefined` for any other shape. A string of the usual shape that names a
 * real day also matches valibot's `ISO_TIMESTAMP_REGEX`.
 */
function isRealCommonDate(ts: string): boolean | undefined {
  if (!COMMON_TIMESTAMP.test(ts)) return undefined;
  const m = digits(ts, 5, 7);
  const d = digits(ts, 8, 10);
  return m >= 1 && m <= 12 && d >= 1 && d <= daysInMonth(digits(ts, 0, 4), m);
}

/**
 * Whether an ISO 8601 timestamp names a day that exists. `Date.parse`
 * alone would roll `2025-02-30` over to March 2.
 *
 * The usual shape is checked with integer arithmetic; other strings go
 * through `Date.parse` and a calendar round trip, so the answer never
 * depends on which way was taken.
 */
export function isRealDate(ts: string): boolean {
  const common = isRealCommonDate(ts);
  if (common !== undefined) return common;
  if (!Number.isFinite(Date.parse(ts))) return false;
  const y = Number(ts.slice(0, 4));
  const m = Number(ts.slice(5, 7));
  const d = Number(ts.slice(8, 10));
  const days = new Date(Date.UTC(y, m, 0)).getUTCDate();
  return m >= 1 && m <= 12 && d >= 1 && d <= days;
}

/** Longest string id, in UTF-16 code units. */
const MAX_ID_LENGTH = 256;

/** The limits each schema of {@linkcode dataRecordSchema} was built with. */
const schemaLimits = new WeakMap<object, Readonly<RecordLimits>>();

/**
 * Builds the `DataRecord` schema for the given limits (copied: changing
 * `limits` afterwards changes nothing).
 */
export function dataRecordSchema(given: RecordLimits = DEFAULT_RECORD_LIMITS) {
  const limits: Readonly<RecordLimits> = Object.freeze({
    maxStringLength: given.maxStringLength,
    maxDepth: given.maxDepth,
  });
  const text = () =>
    v.pipe(
      v.string("must be a string"),
      v.trim(),
      v.nonEmpty("must not be empty"),
      v.maxLength(limits.maxStringLength, `is longer than ${limits.maxStringLength} characters`),
    );
  const schema = v.object({
    // Numbers first: most ids are numbers, and a failed option costs an
    // issue object. The options take disjoint types, so the order changes
    // no outcome and no message.
    id: v.union([
      v.pipe(
        v.number(),
        v.safeInteger("must be a whole number"),
        v.minValue(0, "must not be negative"),
      ),
      v.pipe(
        v.string(),
        v.nonEmpty("must not be empty"),
        v.maxLength(MAX_ID_LENGTH, `is longer than ${MAX_ID_LENGTH} characters`),
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
  schemaLimits.set(schema, limits);
  return schema;
}

/**
 * The limits `schema` was built with by {@linkcode dataRecordSchema}, or
 * `undefined` for any other schema.
 */
export function recordLimitsOf(schema: object): Readonly<RecordLimits> | undefined {
  return schemaLimits.get(schema);
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

/**
 * Whether `node` holds no object and passes {@linkcode checkNesting}: the
 * usual `metadata`, checked without the stack `checkNesting` allocates.
 * `false` only means "not known to pass".
 */
function isFlatWithin(node: Record<string, unknown>, limits: RecordLimits): boolean {
  if (limits.maxDepth < 0) return false;
  const max = limits.maxStringLength;
  for (const key in node) {
    if (key.length > max) return false;
    const value = node[key];
    if (
      typeof value === "string" ? value.length > max : value !== null && typeof value === "object"
    ) {
      return false;
    }
  }
  return true;
}

/**
 * Validates the usual well-formed record without valibot: the same answer
 * as `v.parse(dataRecordSchema(limits), raw)`, down to the key order of the
 * output (schema order, `metadata` only when `raw` has the key) and the
 * `metadata` object itself, but several times faster. Returns `undefined`
 * for anything it does not accept, valid or not, so the caller runs the
 * schema and gets its message.
 *
 * Accepts a plain object with `id` a non-negative safe integer or a string
 * of 1 to 256 characters; `timestamp` matching valibot's
 * `ISO_TIMESTAMP_REGEX` and {@linkcode isRealDate}; `user_id` and `event`
 * strings of 1 to `maxStringLength` characters once trimmed; `value` a
 * finite number; `metadata` absent, `undefined`, `null`, or a non-array
 * object that passes {@linkcode checkNesting}. Other keys are dropped.
 *
 * @example
 * ```ts
 * const raw = { id: 1, timestamp: "2025-01-15T10:00:00Z", user_id: " u ", event: "e", value: 1 };
 * fastValidate(raw, DEFAULT_RECORD_LIMITS); // { id: 1, timestamp: "2025-01-15T10:00:00Z", user_id: "u", event: "e", value: 1 }
 * fastValidate({ ...raw, value: "1" }, DEFAULT_RECORD_LIMITS); // undefined
 * ```
 */
export function fastValidate(raw: unknown, limits: RecordLimits): DataRecord | undefined {
  if (typeof raw !== "object" || raw === null) return undefined;
  const proto = Object.getPrototypeOf(raw);
  if (proto !== Object.prototype && proto !== null) return undefined;
  const r = raw as Record<string, unknown>;
  const id = r.id;
  if (typeof id === "number") {
    if (!Number.isSafeInteger(id) || id < 0) return undefined;
  } else if (typeof id !== "string" || id.length === 0 || id.length > MAX_ID_LENGTH) {
    return undefined;
  }
  const timestamp = r.timestamp;
  if (typeof timestamp !== "string") return undefined;
  const real = isRealCommonDate(timestamp) ??
    (v.ISO_TIMESTAMP_REGEX.test(timestamp) && isRealDate(timestamp));
  if (!real) return undefined;
  const max = limits.maxStringLength;
  const rawUser = r.user_id;
  if (typeof rawUser !== "string") return undefined;
  const user_id = rawUser.trim();
  if (user_id.length === 0 || user_id.length > max) return undefined;
  const rawEvent = r.event;
  if (typeof rawEvent !== "string") return undefined;
  const event = rawEvent.trim();
  if (event.length === 0 || event.length > max) return undefined;
  const value = r.value;
  if (typeof value !== "number" || !Number.isFinite(value)) return undefined;
  if (!("metadata" in r)) return { id, timestamp, user_id, event, value } as DataRecord;
  const metadata = r.metadata;
  if (
    metadata !== undefined && metadata !== null &&
    (typeof metadata !== "object" || Array.isArray(metadata) ||
      !isFlatWithin(metadata as Record<string, unknown>, limits) &&
        checkNesting(metadata, limits) !== undefined)
  ) return undefined;
  return { id, timestamp, user_id, event, value, metadata } as DataRecord;
}

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
  stage: FailureStage;
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
