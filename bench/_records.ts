/**
 * @module
 * Request bodies for the load generator (`bench/load.ts`): NDJSON bodies of
 * `batch` seed 000 `DataRecord`s whose ids never repeat within a run, since
 * a duplicate costs the pipeline less than an insert.
 *
 * The records themselves come from `bench/make_records.ts` (the generator of
 * the `process` benchmarks): a sample of it is written once to a temporary
 * file and cut into "tails", the JSON text that follows the id. A body is
 * then `{"id":<next id>,` + tail per line, so building one costs a string
 * join and an encode (about 0.1 ms for 1000 records), not a
 * `JSON.stringify` per record.
 *
 * @example
 * ```ts
 * const bodies = new BodyMaker({ batch: 1000, idStart: 1 });
 * const body = bodies.next(); // Uint8Array of 1000 NDJSON lines, ids 1..1000
 * ```
 */
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type ProcessedRecord, toUtcIso } from "../lib/schemas.ts";
import { writeRecords } from "./make_records.ts";

/** Distinct record tails built by default; bodies cycle through them. */
export const DEFAULT_TAILS = 10_000;

const ID_PREFIX = /^\{"id":[^,]*,/;

/**
 * Returns `count` record tails: lines of `bench/make_records.ts` without
 * their leading `{"id":N,`, such as `"timestamp":"2025-01-15T10:00:00Z",...}`.
 */
export function recordTails(count: number = DEFAULT_TAILS, seed = 1): string[] {
  const dir = mkdtempSync(join(tmpdir(), "troupe_bench_"));
  try {
    const file = join(dir, "records.ndjson");
    writeRecords(file, { count, seed });
    const lines = readFileSync(file, "utf8").split("\n").filter((l) => l.length > 0);
    return lines.map((line) => {
      const match = ID_PREFIX.exec(line);
      if (match === null) throw new Error(`Unexpected record line "${line.slice(0, 80)}"`);
      return line.slice(match[0].length);
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Options of {@linkcode BodyMaker}. */
export interface BodyMakerOptions {
  /** Records per body. */
  batch: number;
  /** Id of the first record; each body takes the next `batch` ids. @default 1 */
  idStart?: number;
  /** Record tails to cycle through. @default recordTails() */
  tails?: readonly string[];
}

/** Builds NDJSON bodies of `batch` records with ids counting up from `idStart`. */
export class BodyMaker {
  readonly batch: number;
  #nextId: number;
  #tails: readonly string[];
  #tail = 0;
  #encoder = new TextEncoder();

  constructor(options: BodyMakerOptions) {
    if (!Number.isSafeInteger(options.batch) || options.batch < 1) {
      throw new RangeError(`Batch must be a positive integer (got ${options.batch})`);
    }
    this.batch = options.batch;
    this.#nextId = options.idStart ?? 1;
    this.#tails = options.tails ?? recordTails();
    if (this.#tails.length === 0) throw new RangeError("No record tails to build bodies from");
  }

  /** The id the next body starts with. */
  get nextId(): number {
    return this.#nextId;
  }

  /** The next body: `batch` NDJSON lines, each ending in a newline. */
  next(): Uint8Array<ArrayBuffer> {
    const parts = new Array<string>(this.batch);
    const tails = this.#tails;
    for (let i = 0; i < this.batch; i++) {
      parts[i] = `{"id":${this.#nextId++},${tails[this.#tail]}\n`;
      this.#tail = (this.#tail + 1) % tails.length;
    }
    return this.#encoder.encode(parts.join(""));
  }
}

const PROCESSED_EVENTS = ["login", "page_view", "click", "purchase", "logout"];
const PROCESSED_START_MS = Date.UTC(2025, 0, 15, 10);

/**
 * `count` transformed records with ids `firstId`, `firstId + 1`, …, over 100
 * users and 5 event types, as the store stage receives them (store benches).
 */
export function processedRecords(firstId: number, count: number): ProcessedRecord[] {
  return Array.from({ length: count }, (_, i) => {
    const id = firstId + i;
    const timestamp_ms = PROCESSED_START_MS + id * 10;
    return {
      id,
      timestamp: toUtcIso(timestamp_ms),
      timestamp_ms,
      user_id: `user_${String(id % 100).padStart(3, "0")}`,
      event: PROCESSED_EVENTS[i % PROCESSED_EVENTS.length],
      value: (id % 97) / 4,
      metadata: { ip: "192.168.1.1", page: `/p/${id % 13}` },
      received_at: toUtcIso(timestamp_ms + 5),
      anomaly_score: 0,
      is_anomaly: false,
    };
  });
}
