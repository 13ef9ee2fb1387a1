/**
 * @module
 * The `process` command (seed 003's file job): runs the records of an
 * NDJSON file through the same actor system as the HTTP service, with a
 * {@linkcode JsonlStore} in place of SQLite, and writes into the output
 * directory `processed_data.jsonl`, `failed_data.jsonl` and `summary.json`.
 *
 * ```
 * FILE ─► read 64 KiB ─► split lines ─► JSON.parse ─► chunk of batch_size ─► system.submit ─► … ─► JsonlStore
 *                                          │                                 (≤ maxInFlight tickets)
 *                                          └─ not JSON: failed record (stage "validate", "line N …") ─► JsonlStore
 * ```
 *
 * The file is read with a `FileHandle` into one reused 64 KiB buffer and
 * decoded in streaming mode, so a file of a million lines is never one
 * string. Blank lines are skipped; a line that is not JSON becomes a failed
 * record whose reason names its line number (from 1) and whose `raw` is
 * the line's text; a line longer than `limits.max_body_bytes` characters
 * is refused the same way without being held whole. Everything else is
 * offered to the pipeline, whose validate stage refuses what is not a
 * `DataRecord`.
 *
 * Chunks are submitted while at most `maxInFlight` tickets are unsettled;
 * at the bound, the reader waits for the oldest. A 429 (no room for a
 * minute) waits and retries the chunk; a 503 (the pipeline starting or
 * restarting) retries for up to 30 s before giving up. The storage
 * connections (up to `pipeline.stages.store.max_workers`) all share the one
 * store, so the configuration needs no change for file mode.
 *
 * Exit codes of {@linkcode runProcess}: 0 done, 1 output or pipeline
 * failure, 2 the input cannot be read. Progress goes to stderr about once a
 * second, then one final line.
 *
 * With more than one shard (`options.shards`, `process.shards`, by
 * default one per 16 MiB of input), {@linkcode processFile} hands the run
 * to `lib/process_shards.ts`, whose Worker threads each run
 * {@linkcode processPart} over their own lines: the reader keeps a line
 * when `lineShardAt` (`lib/line_shard.ts`) gives it this shard, and passes
 * over the others without cutting them out of the decoded text.
 *
 * Throughput with one shard, measured on this machine (2 cores, shared
 * with other work, load average about 2) with a 1M-record file from
 * `bench/make_records.ts` (137 MB) and the default configuration
 * (`deno run -A bench/process_mode.ts`, 5 runs, min / median / max):
 * 290k / 310k / 372k records/s on Deno (4.0 s of CPU), 373k / 447k / 466k
 * on Bun (3.1 s); the code before sharding gave 160k / 244k / 262k on
 * Deno (5.0 s) and 199k / 251k / 313k on Bun in the same session. One
 * shard keeps one core busy, plus the runtime's GC and compiler threads
 * (CPU ≈ 1.15 × wall). A CPU profile of one shard (Deno, 4.2 s sampled):
 * `JSON.parse` of the lines 20 %, the store's `JSON.stringify` 15 %,
 * garbage collection 15 %, xstate 9 % (about 0.4 ms a batch of 1000, so
 * the batch size sets it), encoding and writing the output 7 %, transform 6 %,
 * reading, decoding and splitting 5 %, validate 5 %. Cut for this: the
 * store's dedup `Set` (a bitmap for integer ids, 0.2 µs an id) and
 * `Date.parse` plus formatting in the transform stage (UTC strings are
 * read with integer arithmetic, 0.3 µs a record).
 */
import { type FileHandle, open } from "node:fs/promises";
import process from "node:process";
import { startSystem } from "../actors/mod.ts";
import type { TroupeSystem } from "../actors/mod.ts";
import type { Ticket } from "./batch.ts";
import type { Config } from "./config.ts";
import type { FaultInjector } from "./faults.ts";
import { type JsonlStore, openJsonlWriter, type ProcessSummary } from "./jsonl_store.ts";
import { lineShardAt } from "./line_shard.ts";
import { createMetrics, type Metrics } from "./metrics.ts";
import { processShards, shardCount } from "./process_shards.ts";
import type { FailedRecord } from "./schemas.ts";

/** Options of {@linkcode runProcess} and {@linkcode processFile}. */
export interface ProcessOptions {
  config: Config;
  /** The NDJSON file to read. */
  input: string;
  /** Output directory; created if missing, its three files replaced. */
  out: string;
  faults?: FaultInjector;
  /** @default a fresh registry without the default process metrics */
  metrics?: Metrics;
  /**
   * Receives each progress or error line, without its newline.
   * @default a writer to stderr
   */
  stderr?: (line: string) => void;
  /** Tickets (chunks of `process.batch_size` records) submitted and not settled yet. @default 16 */
  maxInFlight?: number;
  /** Milliseconds between progress lines. @default 1000 */
  progressIntervalMs?: number;
  /**
   * Shards (Worker threads) to split the records over; 1 runs everything
   * on this thread. See `lib/process_shards.ts`.
   * @default `config.process.shards`, else automatic
   */
  shards?: number;
  /**
   * The shard worker's entry module; tests substitute one that fails.
   * @default `lib/process_shard_worker.ts`
   */
  shardWorkerUrl?: string | URL;
  /**
   * A shard that sends nothing for this long is taken for dead.
   * @default 30000
   */
  shardSilenceMs?: number;
}

/**
 * What one shard of a sharded run is given (see {@linkcode processPart}):
 * which lines are its own, and whom to tell of its progress.
 */
export interface PartOptions extends ProcessOptions {
  /** Process only the lines that {@linkcode lineShardAt} gives to `index` of `count`. */
  shard?: { index: number; count: number };
  /** Receives the records done so far, about every 50 ms. */
  onProgress?: (done: number) => void;
  /** Whether to write `summary.json`; a shard leaves it to the coordinator. @default true */
  writeSummary?: boolean;
  /**
   * Append to the output files that other shards append to as well,
   * without truncating them (`openJsonlWriter`'s `shared`). @default false
   */
  sharedOutput?: boolean;
}

/** What {@linkcode processPart} returns: the summary, and the input records it took. */
export type PartResult =
  | { ok: true; value: { summary: ProcessSummary; records: number } }
  | { ok: false; error: ProcessError };

/** Why a run failed, with the exit code it maps to. */
export interface ProcessError {
  /** 1: output or pipeline failure; 2: the input cannot be read. */
  exitCode: 1 | 2;
  message: string;
}

/** The outcome of {@linkcode processFile}. */
export type ProcessResult =
  | { ok: true; value: ProcessSummary }
  | { ok: false; error: ProcessError };

/**
 * Bytes read from the input at a time. Their decoded text stays under V8's
 * large-object size (128 KiB), so it is made in the young generation's
 * reused pages: with reads of 1 MiB every chunk's text took fresh pages,
 * and two shards spent a third of their CPU time in the kernel faulting
 * them in.
 */
const READ_BYTES = 1 << 16;
/** How long one submit waits for room in the first mailbox before a 429. */
const SUBMIT_WAIT_MS = 60_000;
/** How long 503 answers (pipeline starting or restarting) are retried. */
const UNAVAILABLE_LIMIT_MS = 30_000;
/** How often the run checks that the store and the supervisors are still healthy. */
const HEALTH_INTERVAL_MS = 50;
/** Characters of an overlong line kept as its `raw`. */
const RAW_PREVIEW = 1_000;

/** Thrown inside a run to end it with an exit code. */
class ProcessFailure extends Error {
  readonly exitCode: 1 | 2;
  constructor(exitCode: 1 | 2, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "ProcessFailure";
    this.exitCode = exitCode;
  }
}

/**
 * Runs the records of `options.input` through a fresh actor system into
 * `options.out` and returns the summary it wrote, or why it could not.
 * Never throws for a problem with the files or the pipeline.
 *
 * @example
 * ```ts
 * const result = await processFile({ config: defaultConfig(), input: "records.ndjson", out: "out" });
 * if (result.ok) console.log(result.value.processed, result.value.failed);
 * ```
 */
export async function processFile(options: ProcessOptions): Promise<ProcessResult> {
  const shards = await shardCount(options);
  const result = shards > 1 ? await processShards(options, shards) : await processPart(options);
  if (!result.ok) return result;
  const { summary, records } = result.value;
  sayTo(options)(
    `processed ${records} records in ${(summary.elapsed_ms / 1000).toFixed(1)} s ` +
      `(${summary.records_per_second}/s): ${summary.processed} stored, ${summary.failed} failed, ` +
      `${summary.duplicates} duplicates, ${summary.anomalies} anomalies; output in ${options.out}`,
  );
  return { ok: true, value: summary };
}

/**
 * {@linkcode processFile} on this thread, over every line or (with
 * `options.shard`) over one shard's lines: the engine of a run with one
 * shard, and of each shard worker of a run with more.
 */
export async function processPart(options: PartOptions): Promise<PartResult> {
  const started = performance.now();
  const say = sayTo(options);
  let input: FileHandle;
  try {
    input = await open(options.input, "r");
  } catch (error) {
    return failure(2, `Cannot read input "${options.input}": ${errorMessage(error)}`);
  }
  try {
    if ((await input.stat()).isDirectory()) {
      await input.close();
      return failure(2, `Cannot read input "${options.input}": it is a directory`);
    }
  } catch (error) {
    await input.close().catch(() => {});
    return failure(2, `Cannot read input "${options.input}": ${errorMessage(error)}`);
  }
  let store: JsonlStore;
  try {
    store = openJsonlWriter(options.out, { shared: options.sharedOutput });
  } catch (error) {
    await input.close().catch(() => {});
    return failure(1, `Cannot write to output directory "${options.out}": ${errorMessage(error)}`);
  }
  const config = fileModeConfig(options.config);
  const system = startSystem({
    config,
    metrics: options.metrics ?? createMetrics({ defaultMetrics: false }),
    openWriter: () => Promise.resolve(store.handle()),
    faults: options.faults,
  });
  const run = new Run(system, store, { ...options, config }, say, started);
  try {
    await run.read(input);
    await run.finish();
    const timeoutMs = options.config.server.shutdown_timeout_ms;
    if (!(await system.drain(timeoutMs))) {
      throw new ProcessFailure(1, `The pipeline did not drain within ${timeoutMs} ms`);
    }
    run.check();
    run.stop();
    system.stop();
    const elapsedMs = performance.now() - started;
    let summary: ProcessSummary;
    try {
      const timing = { elapsedMs, records: run.records };
      summary = options.writeSummary === false ? store.summary(timing) : store.writeSummary(timing);
    } catch (error) {
      throw new ProcessFailure(
        1,
        `Cannot write the summary into "${options.out}": ${errorMessage(error)}`,
      );
    }
    return { ok: true, value: { summary, records: run.records } };
  } catch (error) {
    if (error instanceof ProcessFailure) return failure(error.exitCode, error.message);
    throw error;
  } finally {
    run.stop();
    system.stop();
    await store.close().catch(() => {});
    await input.close().catch(() => {});
  }
}

/**
 * The `process` command: {@linkcode processFile}, then the error (if any) on
 * stderr. Resolves with the exit code: 0 done, 1 output or pipeline
 * failure, 2 the input cannot be read.
 *
 * @example
 * ```ts
 * const code = await runProcess({ config, input: "records.ndjson", out: "out" });
 * ```
 */
export async function runProcess(options: ProcessOptions): Promise<number> {
  const result = await processFile(options);
  if (result.ok) return 0;
  sayTo(options)(`troupe: ${result.error.message}`);
  return result.error.exitCode;
}

/** `config` with the file mode's batch size (`process.batch_size`) for the pipeline's. */
function fileModeConfig(config: Config): Config {
  return { ...config, pipeline: { ...config.pipeline, batch_size: config.process.batch_size } };
}

/** Where a run's progress and error lines go. */
function sayTo(options: ProcessOptions): (line: string) => void {
  return options.stderr ?? ((line: string) => void process.stderr.write(line + "\n"));
}

function failure(exitCode: 1 | 2, message: string): { ok: false; error: ProcessError } {
  return { ok: false, error: { exitCode, message } };
}

function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** A line longer than the limit of a {@linkcode LineSplitter}: only its start is kept. */
export class OverlongLine {
  /** The first characters of the line (at most 1000). */
  readonly preview: string;
  constructor(preview: string) {
    this.preview = preview;
  }
}

/**
 * Cuts a stream of UTF-8 bytes into lines. Bytes may be split anywhere,
 * even inside a character; lines end at `"\n"` and lose one trailing
 * `"\r"`; a leading byte order mark is dropped; a last line without a
 * newline still counts. A line longer than `maxLine` characters (counting
 * its `"\r"`) comes out as an {@linkcode OverlongLine} and is never held
 * whole: once the unfinished line passes the limit, the rest of it is
 * skipped as it arrives.
 *
 * @example
 * ```ts
 * const splitter = new LineSplitter(10_485_760);
 * splitter.push(new TextEncoder().encode('{"id":1}\r\n{"id"')); // ['{"id":1}']
 * splitter.push(new TextEncoder().encode(":2}"));               // []
 * splitter.end();                                               // ['{"id":2}']
 * ```
 */
export class LineSplitter {
  /** Longest line returned as text, in UTF-16 code units. */
  readonly maxLine: number;
  #decoder = new TextDecoder();
  #carry = "";
  #skipping = false;
  #keep: ((text: string, start: number, end: number) => boolean) | undefined;

  /**
   * With `keep`, a line (not overlong) for which `keep(text, start, end)`
   * is false comes out as `null`, never cut out of the decoded text: a
   * shard passes over the lines of the other shards this way.
   */
  constructor(maxLine: number, keep?: (text: string, start: number, end: number) => boolean) {
    this.maxLine = maxLine;
    this.#keep = keep;
  }

  /** Feeds the next bytes; returns the lines they complete. */
  push(bytes: Uint8Array): Array<string | OverlongLine | null> {
    return this.#split(this.#decoder.decode(bytes, { stream: true }), false);
  }

  /** Ends the input; returns the last line when it had no newline. */
  end(): Array<string | OverlongLine | null> {
    return this.#split(this.#decoder.decode(), true);
  }

  #split(decoded: string, last: boolean): Array<string | OverlongLine | null> {
    const lines: Array<string | OverlongLine | null> = [];
    const text = this.#skipping ? decoded : this.#carry + decoded;
    this.#carry = "";
    let start = 0;
    for (let nl = text.indexOf("\n"); nl !== -1; nl = text.indexOf("\n", start)) {
      if (this.#skipping) this.#skipping = false;
      else lines.push(this.#cut(text, start, nl));
      start = nl + 1;
    }
    if (this.#skipping) return lines;
    if (last) {
      if (start < text.length) lines.push(this.#cut(text, start, text.length));
    } else if (text.length - start > this.maxLine) {
      lines.push(new OverlongLine(text.slice(start, start + RAW_PREVIEW)));
      this.#skipping = true;
    } else {
      this.#carry = start === 0 ? text : text.slice(start);
    }
    return lines;
  }

  #cut(text: string, start: number, end: number): string | OverlongLine | null {
    const long = end - start > this.maxLine;
    if (end > start && text.charCodeAt(end - 1) === 13) end--; // "\r"
    if (long) return new OverlongLine(text.slice(start, Math.min(end, start + RAW_PREVIEW)));
    if (this.#keep !== undefined && !this.#keep(text, start, end)) return null;
    return text.slice(start, end);
  }
}

/** The state of one run: the chunk being filled, tickets in flight, progress. */
class Run {
  /** Non-blank lines read so far. */
  records = 0;
  #system: TroupeSystem;
  #store: JsonlStore;
  #options: PartOptions;
  #say: (line: string) => void;
  #started: number;
  /** This run's shard, or `undefined` for every line. */
  #shard: { index: number; count: number } | undefined;
  #batchSize: number;
  #maxLine: number;
  #maxInFlight: number;
  #chunk: unknown[] = [];
  #parseFailures: FailedRecord[] = [];
  #inFlight: Array<{ ticket: Ticket; size: number }> = [];
  /** Records whose fate is known (settled tickets and lines that are not JSON). */
  #done = 0;
  #timer: ReturnType<typeof setInterval>;
  #lastProgress: number;
  #abort: Promise<never>;
  #reject!: (error: ProcessFailure) => void;
  #aborted: ProcessFailure | undefined;

  constructor(
    system: TroupeSystem,
    store: JsonlStore,
    options: PartOptions,
    say: (line: string) => void,
    started: number,
  ) {
    this.#system = system;
    this.#store = store;
    this.#options = options;
    this.#shard = options.shard !== undefined && options.shard.count > 1
      ? options.shard
      : undefined;
    this.#say = say;
    this.#started = started;
    this.#lastProgress = started;
    this.#batchSize = options.config.pipeline.batch_size;
    this.#maxLine = options.config.limits.max_body_bytes;
    this.#maxInFlight = Math.max(1, options.maxInFlight ?? 16);
    this.#abort = new Promise<never>((_, reject) => (this.#reject = reject));
    this.#abort.catch(() => {}); // observed through race(); never unhandled
    this.#timer = setInterval(() => this.#tick(), HEALTH_INTERVAL_MS);
  }

  /** Reads the whole input, submitting chunks as they fill. */
  async read(input: FileHandle): Promise<void> {
    const buffer = new Uint8Array(READ_BYTES);
    const shard = this.#shard;
    const splitter = new LineSplitter(
      this.#maxLine,
      shard === undefined
        ? undefined
        : (text, start, end) => lineShardAt(text, start, end, shard.count) === shard.index,
    );
    let line = 0;
    for (;;) {
      let bytesRead: number;
      try {
        ({ bytesRead } = await input.read(buffer, 0, READ_BYTES, null));
      } catch (error) {
        throw new ProcessFailure(
          2,
          `Cannot read input "${this.#options.input}": ${errorMessage(error)}`,
          { cause: error },
        );
      }
      const lines = bytesRead === 0 ? splitter.end() : splitter.push(buffer.subarray(0, bytesRead));
      for (const text of lines) {
        line++;
        if (text === null) continue; // another shard's
        if (typeof text === "string") {
          this.#line(text, line);
        } else if (this.#shard === undefined || this.#shard.index === 0) {
          // No id can be read from a cut line: the first shard refuses it.
          this.#refuse(
            `${text.preview}…`,
            `line ${line} is longer than ${this.#maxLine} characters`,
          );
        }
        if (
          this.#chunk.length >= this.#batchSize || this.#parseFailures.length >= this.#batchSize
        ) await this.#flush();
      }
      if (bytesRead === 0) break;
    }
    await this.#flush();
  }

  /** Waits for every ticket in flight. */
  async finish(): Promise<void> {
    while (this.#inFlight.length > 0) await this.#settleOldest();
    this.check();
  }

  /** Throws when the run has been aborted (store write error, pipeline gave up). */
  check(): void {
    this.#tick(false);
    if (this.#aborted) throw this.#aborted;
  }

  stop(): void {
    clearInterval(this.#timer);
  }

  #line(text: string, line: number): void {
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch (error) {
      if (text.trim() === "") return; // blank (or only whitespace, or "\r")
      this.#refuse(text, `line ${line} is not valid JSON: ${errorMessage(error)}`);
      return;
    }
    this.records++;
    this.#chunk.push(value);
  }

  /** Refuses a line before the pipeline: it goes to the failed file with the next chunk. */
  #refuse(raw: string, reason: string): void {
    this.records++;
    this.#parseFailures.push({
      record_id: null,
      stage: "validate",
      reason,
      raw,
      failed_at: new Date().toISOString(),
    });
  }

  async #flush(): Promise<void> {
    if (this.#parseFailures.length > 0) {
      const failed = this.#parseFailures;
      this.#parseFailures = [];
      try {
        this.#store.addFailed(failed);
      } catch (error) {
        throw new ProcessFailure(1, errorMessage(error), { cause: error });
      }
      this.#done += failed.length;
    }
    if (this.#chunk.length === 0) return;
    const chunk = this.#chunk;
    this.#chunk = [];
    while (this.#inFlight.length >= this.#maxInFlight) await this.#settleOldest();
    const ticket = await this.#submit(chunk);
    // A ticket can fail (the root supervisor gave up) before it is awaited.
    ticket.promise.catch(() => {});
    this.#inFlight.push({ ticket, size: chunk.length });
  }

  async #submit(records: unknown[]): Promise<Ticket> {
    let unavailableSince: number | undefined;
    for (;;) {
      const outcome = await this.#race(
        this.#system.submit(records, { maxWaitMs: SUBMIT_WAIT_MS }),
      );
      if (outcome.ok) return outcome.ticket;
      if (outcome.status === 429) {
        await this.#race(sleep(Math.min(1_000, outcome.retryAfterSeconds * 1_000)));
        continue;
      }
      const now = performance.now();
      unavailableSince ??= now;
      if (this.#system.draining || now - unavailableSince > UNAVAILABLE_LIMIT_MS) {
        throw new ProcessFailure(1, `The pipeline is unavailable: ${outcome.message}`);
      }
      await this.#race(sleep(20));
    }
  }

  async #settleOldest(): Promise<void> {
    const head = this.#inFlight.shift()!;
    try {
      await this.#race(head.ticket.promise);
    } catch (error) {
      if (error instanceof ProcessFailure) throw error;
      throw new ProcessFailure(1, errorMessage(error), { cause: error });
    }
    this.#done += head.size;
  }

  /** `promise`, unless the run is aborted first. */
  #race<T>(promise: Promise<T>): Promise<T> {
    if (this.#aborted) return Promise.reject(this.#aborted);
    return Promise.race([promise, this.#abort]);
  }

  #tick(progress = true): void {
    if (this.#aborted === undefined) {
      const reason = this.#unhealthy();
      if (reason !== undefined) {
        this.#aborted = new ProcessFailure(1, reason);
        this.#reject(this.#aborted);
      }
    }
    this.#options.onProgress?.(this.#done);
    const now = performance.now();
    const interval = this.#options.progressIntervalMs ?? 1_000;
    if (progress && now - this.#lastProgress >= interval) {
      this.#lastProgress = now;
      const rate = Math.round(this.#done / ((now - this.#started) / 1000));
      this.#say(`processed ${this.#done} records (${rate}/s)`);
    }
  }

  /** Why the run cannot go on, or `undefined`. */
  #unhealthy(): string | undefined {
    const error = this.#store.error;
    if (error !== undefined) return error.message;
    const root = this.#system.root.getSnapshot();
    if (root.status !== "active") return "The actor system stopped";
    if (root.matches("failed")) {
      return `The pipeline gave up: ${root.context.lastError ?? "too many restarts"}`;
    }
    return undefined;
  }
}
