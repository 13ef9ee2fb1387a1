/**
 * @module
 * The storage backend of the `process` command: a {@linkcode StoreWriter}
 * that appends to JSON Lines files in one output directory and keeps the
 * aggregates in memory, then writes them once as `summary.json`.
 *
 * ```
 * DIR/processed_data.jsonl   one ProcessedRecord per line, each id once
 * DIR/failed_data.jsonl      one FailedRecord per line (stage, reason, raw, failed_at)
 * DIR/summary.json           counts, per-user and per-event aggregates, timing
 * ```
 *
 * The store pool opens up to five connections (`pipeline.stages.store`);
 * here they are thin handles over ONE {@linkcode JsonlStore} (see
 * {@linkcode JsonlStore.handle}), so the lines of two commits never
 * interleave and duplicates are caught across all of them. Closing a
 * handle only detaches it; the owner closes the store.
 *
 * The shards of a sharded `process` run each have their own store over
 * the same two files, opened `shared` (see {@linkcode JsonlWriterOptions}).
 *
 * A commit formats every line first, then writes each file with one
 * synchronous `writeSync` (to the page cache: about 0.1 µs a record, a
 * third of a millisecond for a commit of 4000), so commits are serialised
 * by the thread and lines land in commit order. `JSON.stringify` of the
 * records is most of a commit's cost (about 0.8 of 1.7 µs a record on
 * Deno; a hand-built template string measured no faster). Dedup is by
 * {@linkcode dedupKey}: integer keys below 2^26 in a bitmap (1 bit an id,
 * grown as needed; a `Set` of a million numbers cost about 0.2 µs an id,
 * the bitmap almost nothing), any other key in a `Set`. The first record of
 * an id wins, any later one (in the same commit or
 * not) is reported as a duplicate and not written. If a write fails, the
 * files are cut back to their length before the commit and the ids it
 * claimed are released, so the commit writes nothing, as the
 * {@linkcode StoreWriter} contract asks; the first such error is kept in
 * {@linkcode JsonlStore.error} so the caller can stop.
 */
import { Buffer } from "node:buffer";
import { closeSync, ftruncateSync, mkdirSync, openSync, writeFileSync, writeSync } from "node:fs";
import { join } from "node:path";
import {
  type AggregateDeltas,
  aggregateRecords,
  mergeEvent,
  mergeUser,
  type StoredUser,
} from "./aggregate.ts";
import type {
  EventAggregate,
  FailedRecord,
  ProcessedRecord,
  RecordId,
  UserAggregate,
} from "./schemas.ts";
import type { CommitOutcome, CommitUnit, StoreWriter } from "./store.ts";

/** File of the stored records, in the output directory. */
export const PROCESSED_FILE = "processed_data.jsonl";
/** File of the failed records, in the output directory. */
export const FAILED_FILE = "failed_data.jsonl";
/** File of the summary, in the output directory. */
export const SUMMARY_FILE = "summary.json";

/** Largest scratch buffer a store keeps for encoding its commits. */
const SCRATCH_MAX_BYTES = 16 << 20;
const UTF8 = new TextEncoder();

/** Counts kept while records are committed. */
export interface JsonlCounts {
  /** Records stored (written to `processed_data.jsonl`). */
  processed: number;
  /** Failed records written to `failed_data.jsonl`. */
  failed: number;
  /** Records not written because their id was already stored. */
  duplicates: number;
  /** Stored records with `is_anomaly`. */
  anomalies: number;
  /** Sum of `value` over the stored records. */
  total_value: number;
}

/** What `summary.json` holds. */
export interface ProcessSummary extends JsonlCounts {
  /** Per-user aggregates of the stored records, by `user_id`. */
  users: Record<string, Omit<UserAggregate, "user_id">>;
  /** Per-event aggregates of the stored records, by event. */
  events: Record<string, Omit<EventAggregate, "event">>;
  /** Wall time of the whole run. */
  elapsed_ms: number;
  /** Input records (non-blank lines) per second of `elapsed_ms`. */
  records_per_second: number;
}

/** Timing of a run, for {@linkcode JsonlStore.summary}. */
export interface RunTiming {
  elapsedMs: number;
  /** Records read from the input. */
  records: number;
}

/**
 * Appends records to JSON Lines files and keeps their aggregates; one per
 * output directory, shared by every storage connection through
 * {@linkcode JsonlStore.handle}.
 */
export class JsonlStore implements StoreWriter {
  /** The output directory. */
  readonly dir: string;
  #processed: FileOut;
  #failed: FileOut;
  #seen = new IdSet();
  #users = new Map<string, StoredUser>();
  #events = new Map<string, EventAggregate>();
  #counts: JsonlCounts = { processed: 0, failed: 0, duplicates: 0, anomalies: 0, total_value: 0 };
  #error: Error | undefined;
  #closed = false;
  #scratch = new Uint8Array(0);
  /** Whether other stores append to the same files (see {@linkcode JsonlWriterOptions.shared}). */
  #shared: boolean;

  /** Use {@linkcode openJsonlWriter}. */
  constructor(dir: string, processedFd: number, failedFd: number, shared = false) {
    this.dir = dir;
    this.#shared = shared;
    this.#processed = { fd: processedFd, length: 0 };
    this.#failed = { fd: failedFd, length: 0 };
  }

  /** Counts so far (a copy). */
  get counts(): JsonlCounts {
    return { ...this.#counts };
  }

  /** The first write error, if any; the caller should stop when it is set. */
  get error(): Error | undefined {
    return this.#error;
  }

  /** Whether {@linkcode close} has run. */
  get closed(): boolean {
    return this.#closed;
  }

  /**
   * A {@linkcode StoreWriter} over this store for one storage connection:
   * its `close` only detaches the handle, so the pool may open and close as
   * many as it likes while the files stay open.
   */
  handle(): StoreWriter {
    return new JsonlHandle(this);
  }

  /** Writes the units' new records and failed records; see the module comment. */
  commit(units: readonly CommitUnit[]): Promise<CommitOutcome[]> {
    try {
      return Promise.resolve(this.#commit(units));
    } catch (error) {
      return Promise.reject(error);
    }
  }

  /**
   * Writes failed records that never entered the pipeline (input lines that
   * are not JSON); throws (and writes nothing) when the write fails.
   */
  addFailed(failed: readonly FailedRecord[]): void {
    this.#checkOpen();
    if (failed.length === 0) return;
    const text = failedLines(failed);
    const mark = this.#failed.length;
    try {
      this.#append(this.#failed, text);
    } catch (error) {
      throw this.#fail(error, [[this.#failed, mark]]);
    }
    this.#counts.failed += failed.length;
  }

  ping(): Promise<void> {
    return this.#closed
      ? Promise.reject(new Error(`JSONL store "${this.dir}" is closed`))
      : Promise.resolve();
  }

  /** Closes both files; idempotent. Write the summary before or after, as you like. */
  close(): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      closeSync(this.#processed.fd);
      closeSync(this.#failed.fd);
    }
    return Promise.resolve();
  }

  /** The summary of everything committed so far, with `timing`. */
  summary(timing: RunTiming): ProcessSummary {
    const users: ProcessSummary["users"] = {};
    for (const key of [...this.#users.keys()].sort()) {
      const u = this.#users.get(key)!;
      users[key] = {
        total_events: u.total_events,
        total_value: u.total_value,
        events: u.events,
        last_activity: u.last_activity,
      };
    }
    const events: ProcessSummary["events"] = {};
    for (const key of [...this.#events.keys()].sort()) {
      const e = this.#events.get(key)!;
      events[key] = {
        count: e.count,
        total_value: e.total_value,
        min_value: e.min_value,
        max_value: e.max_value,
      };
    }
    const seconds = timing.elapsedMs / 1000;
    return {
      ...this.#counts,
      users,
      events,
      elapsed_ms: Math.round(timing.elapsedMs),
      records_per_second: seconds > 0 ? Math.round(timing.records / seconds) : 0,
    };
  }

  /** Writes `summary.json` (pretty-printed) and returns what it wrote. */
  writeSummary(timing: RunTiming): ProcessSummary {
    const summary = this.summary(timing);
    writeFileSync(join(this.dir, SUMMARY_FILE), JSON.stringify(summary, null, 2) + "\n");
    return summary;
  }

  #commit(units: readonly CommitUnit[]): CommitOutcome[] {
    this.#checkOpen();
    const seen = this.#seen;
    const claimed: Array<string | number> = [];
    const lines: string[] = [];
    const failed: FailedRecord[] = [];
    const deltas: AggregateDeltas[] = [];
    let anomalies = 0;
    let duplicates = 0;
    const outcomes = units.map((unit): CommitOutcome => {
      const inserted = new Array<boolean>(unit.records.length);
      const fresh: ProcessedRecord[] = [];
      for (let i = 0; i < unit.records.length; i++) {
        const r = unit.records[i];
        const key = dedupKey(r.id);
        if (seen.has(key)) {
          inserted[i] = false;
          duplicates++;
          continue;
        }
        seen.add(key);
        claimed.push(key);
        inserted[i] = true;
        fresh.push(r);
        lines.push(JSON.stringify(r));
        if (r.is_anomaly) anomalies++;
      }
      for (const f of unit.failed) failed.push(f);
      // The aggregate stage's deltas assume every record is new.
      deltas.push(
        unit.deltas !== undefined && fresh.length === unit.records.length
          ? unit.deltas
          : aggregateRecords(fresh),
      );
      return { inserted };
    });

    const marks: Array<[FileOut, number]> = [
      [this.#processed, this.#processed.length],
      [this.#failed, this.#failed.length],
    ];
    try {
      if (lines.length > 0) this.#append(this.#processed, lines.join("\n") + "\n");
      if (failed.length > 0) this.#append(this.#failed, failedLines(failed));
    } catch (error) {
      for (const key of claimed) seen.delete(key);
      throw this.#fail(error, marks);
    }

    const c = this.#counts;
    c.processed += lines.length;
    c.failed += failed.length;
    c.duplicates += duplicates;
    c.anomalies += anomalies;
    for (const d of deltas) {
      for (const u of d.users.values()) {
        this.#users.set(u.user_id, mergeUser(this.#users.get(u.user_id), u));
      }
      for (const e of d.events.values()) {
        this.#events.set(e.event, mergeEvent(this.#events.get(e.event), e));
        c.total_value += e.total;
      }
    }
    return outcomes;
  }

  #append(file: FileOut, text: string): void {
    const bytes = this.#encode(text);
    let written = 0;
    while (written < bytes.length) {
      written += this.#shared
        // O_APPEND: the kernel puts each write at the end, whoever else appends.
        ? writeSync(file.fd, bytes, written, bytes.length - written)
        // At an explicit position: after a cut-back, the descriptor's own offset is past the end.
        : writeSync(file.fd, bytes, written, bytes.length - written, file.length + written);
    }
    file.length += bytes.length;
  }

  /**
   * The UTF-8 bytes of `text`, in a scratch buffer kept between commits: a fresh buffer of a
   * megabyte for every commit cost 40 times the encoding itself (new pages faulted in each time).
   * A text too long for a kept buffer is encoded on its own.
   */
  #encode(text: string): Uint8Array {
    const most = text.length * 3; // UTF-8 bytes per UTF-16 code unit, at most
    if (most > SCRATCH_MAX_BYTES) return Buffer.from(text, "utf8");
    if (this.#scratch.length < most) this.#scratch = new Uint8Array(Math.max(most, 1 << 16));
    const { written } = UTF8.encodeInto(text, this.#scratch);
    return this.#scratch.subarray(0, written);
  }

  /** Cuts the files back to `marks`, remembers the first error, and returns the one to throw. */
  #fail(error: unknown, marks: Array<[FileOut, number]>): Error {
    // A shared file cannot be cut back: other stores' lines may follow. The error ends the run.
    for (const [file, length] of this.#shared ? [] : marks) {
      try {
        if (file.length !== length) ftruncateSync(file.fd, length);
        file.length = length;
      } catch {
        // The write error is the news; a failed cut leaves a torn last line at worst.
      }
    }
    const cause = error instanceof Error ? error : new Error(String(error));
    const wrapped = new Error(`Cannot write to "${this.dir}": ${cause.message}`, { cause });
    this.#error ??= wrapped;
    return wrapped;
  }

  #checkOpen(): void {
    if (this.#closed) throw new Error(`JSONL store "${this.dir}" is closed`);
  }
}

/** Options of {@linkcode openJsonlWriter}. */
export interface JsonlWriterOptions {
  /**
   * Other stores (the shards of a `process` run, on other threads) append
   * to the same files: open them for appending without truncating, and
   * write each commit with one `O_APPEND` write, which the kernel never
   * interleaves with another for a regular file, so lines stay whole. A
   * failed write cannot be cut back (another store's lines may follow):
   * the store keeps the error and the run must fail, as it does.
   * @default false
   */
  shared?: boolean;
}

/**
 * Creates `dir` if missing and opens (truncating, unless `shared`) its
 * `processed_data.jsonl` and `failed_data.jsonl`. Throws when the directory
 * or a file cannot be created.
 *
 * @example
 * ```ts
 * const store = openJsonlWriter("out");
 * const system = startSystem({ config, metrics, openWriter: () => Promise.resolve(store.handle()) });
 * // … submit, drain, stop …
 * store.writeSummary({ elapsedMs, records });
 * await store.close();
 * ```
 */
export function openJsonlWriter(dir: string, options: JsonlWriterOptions = {}): JsonlStore {
  const flags = options.shared ? "a" : "w";
  mkdirSync(dir, { recursive: true });
  const processed = openSync(join(dir, PROCESSED_FILE), flags);
  let failed: number;
  try {
    failed = openSync(join(dir, FAILED_FILE), flags);
  } catch (error) {
    closeSync(processed);
    throw error;
  }
  return new JsonlStore(dir, processed, failed, options.shared ?? false);
}

/** Integer keys below this are kept in the bitmap of an {@linkcode IdSet} (8 MiB at most). */
const BITMAP_KEYS = 1 << 26;

/** The dedup keys seen: a bitmap for small non-negative integers, a `Set` for the rest. */
class IdSet {
  #bits = new Uint8Array(1024);
  #others = new Set<string | number>();

  has(key: string | number): boolean {
    if (typeof key === "number" && key >= 0 && key < BITMAP_KEYS) {
      const byte = key >>> 3;
      return byte < this.#bits.length && (this.#bits[byte] & (1 << (key & 7))) !== 0;
    }
    return this.#others.has(key);
  }

  add(key: string | number): void {
    if (typeof key === "number" && key >= 0 && key < BITMAP_KEYS) {
      const byte = key >>> 3;
      if (byte >= this.#bits.length) {
        let size = this.#bits.length * 2;
        while (size <= byte) size *= 2;
        const bits = new Uint8Array(size);
        bits.set(this.#bits);
        this.#bits = bits;
      }
      this.#bits[byte] |= 1 << (key & 7);
    } else {
      this.#others.add(key);
    }
  }

  delete(key: string | number): void {
    if (typeof key === "number" && key >= 0 && key < BITMAP_KEYS) {
      const byte = key >>> 3;
      if (byte < this.#bits.length) this.#bits[byte] &= ~(1 << (key & 7));
    } else {
      this.#others.delete(key);
    }
  }
}

interface FileOut {
  fd: number;
  /** Bytes written so far: where to cut back to after a failed write. */
  length: number;
}

/**
 * The key an id is deduplicated by. Two ids get the same key exactly when
 * `recordKey` (`lib/schemas.ts`) gives them the same string (so `1` and
 * `"1"` are one id), but integer ids, and strings that spell one like
 * `"42"`, become numbers, which a `Set` hashes in under half the time of a
 * string (measured on Deno: 0.35 against 0.8 µs an id over a million).
 *
 * @example
 * ```ts
 * dedupKey(42) === dedupKey("42"); // true
 * dedupKey("042");                 // "042": not the same id as 42
 * ```
 */
export function dedupKey(id: RecordId): string | number {
  if (typeof id === "number") return Number.isSafeInteger(id) ? id : String(id);
  const n = Number(id);
  return Number.isSafeInteger(n) && String(n) === id ? n : id;
}

/** One line per failed record; a `raw` that JSON cannot hold is written as its string form. */
function failedLines(failed: readonly FailedRecord[]): string {
  let text = "";
  for (const f of failed) {
    let line: string;
    try {
      line = JSON.stringify(f);
    } catch {
      line = JSON.stringify({ ...f, raw: String(f.raw) });
    }
    text += line + "\n";
  }
  return text;
}

/** A storage connection's view of the shared store. */
class JsonlHandle implements StoreWriter {
  #store: JsonlStore;
  #open = true;

  constructor(store: JsonlStore) {
    this.#store = store;
  }

  commit(units: readonly CommitUnit[]): Promise<CommitOutcome[]> {
    return this.#open
      ? this.#store.commit(units)
      : Promise.reject(new Error(`A handle on JSONL store "${this.#store.dir}" is closed`));
  }

  ping(): Promise<void> {
    return this.#open
      ? this.#store.ping()
      : Promise.reject(new Error(`A handle on JSONL store "${this.#store.dir}" is closed`));
  }

  close(): Promise<void> {
    this.#open = false;
    return Promise.resolve();
  }
}
