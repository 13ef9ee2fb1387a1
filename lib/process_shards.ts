/**
 * @module
 * A `process` run over several shards: Worker threads that each run the
 * same supervised actor system as a one-shard run (`processPart`: reader,
 * `startSystem`, `JsonlStore`) over their share of the records,
 * while this thread supervises them, prints progress and merges their
 * summaries.
 *
 * ```
 * process (this thread: supervises, sums progress, merges the summaries)
 * ├── shard 0 (Worker) ── reads every line, parses its own ── actor system ── JsonlStore ─┐
 * ├── shard 1 (Worker) ── reads every line, parses its own ── actor system ── JsonlStore ─┼─► OUT/processed_data.jsonl
 * └── …                                                                                    └─► OUT/failed_data.jsonl (O_APPEND)
 * then: OUT/summary.json, merged from the shards' summaries
 * ```
 *
 * Why shards and not one stage on a Worker: a record costs about 4 µs of
 * CPU on one thread, and handing records between threads costs about as
 * much as (de)serialising them, a third of that, so moving a stage to a
 * thread saves little. A shard hands nothing over: it reads the input
 * itself and `JSON.parse`s only its own lines. Which lines are its own is
 * decided from the text by `lineShardAt` (`lib/line_shard.ts`):
 * a hash of the record id, so a repeated id always lands in the same shard
 * and is a duplicate there, as in one shard (idempotency holds). Lines
 * without an id that can be read (not JSON, no `id`, overlong, blank) go
 * to shard 0, which refuses them as one shard does. Line numbers in
 * failure reasons are the line numbers of the whole file. The shards'
 * stores append to the same two output files (`shared` in
 * `openJsonlWriter`: one `O_APPEND` write a commit, never
 * interleaved), so nothing is copied at the end.
 *
 * Restart strategy: none. A shard that fails (its pipeline gives up, a
 * write fails) or dies (an uncaught error, a Worker that cannot load, one
 * that says nothing for {@linkcode SHARD_SILENCE_MS}) ends the run with
 * exit 1 and a message naming the shard; the other shards are terminated.
 * `summary.json` is removed at the start and written last, so a failed
 * run leaves no output that looks complete (the two JSON Lines files hold
 * what was committed, as after a failed run of one shard). Each shard
 * applies the fault plan (`faults`, `TROUPE_FAULTS`) on its own:
 * `throw_count: 3` throws three times in each shard.
 *
 * Differences from one shard:
 * - `processed_data.jsonl` and `failed_data.jsonl` are not in input order
 *   (the shards' commits interleave); each record is there exactly once.
 * - Anomaly scores: the transform stage scores a record against the
 *   running statistics of its event type, and each shard keeps its own, so
 *   a record is scored against the records its shard saw before it. Over a
 *   large file the scores are statistically the same, not bit-identical
 *   (1M records: 2513 anomalies with one shard, 2544 with two).
 * - In `summary.json`, a user's `events` list is the union of the shards'
 *   lists in shard order, not the order first seen in the file, and sums
 *   of values may differ in the last bits (the additions run in another
 *   order). Counts, minima, maxima and last activities are the same.
 * - `options.metrics` is not used: each shard has its own registry.
 *
 * Cost, measured on this machine (2 cores, Deno; docs/PERFORMANCE.md has
 * the runs): a shard pays for reading, decoding and scanning every line of
 * the file, about 0.35 s per million lines (12 % of a shard's 2.6 s of CPU
 * for half of a 1M-record file), and its Worker loads the actor system in
 * 0.1 to 0.15 s. So two shards take about 4.7 s of CPU where one takes
 * 4.0 s, and run 1M records at 410k records/s (median of 5) against 310k.
 * On Bun, one shard already reaches about 450k on this machine and two
 * are no faster (415k); a file under 16 MiB per shard is not worth a
 * Worker, hence {@linkcode AUTO_SHARD_BYTES}.
 */
import { closeSync, mkdirSync, openSync, rmSync, writeFileSync } from "node:fs";
import { open, stat } from "node:fs/promises";
import os from "node:os";
import { join } from "node:path";
import process from "node:process";
import type { Config } from "./config.ts";
import type { FaultPlan } from "./faults.ts";
import { FAILED_FILE, PROCESSED_FILE, type ProcessSummary, SUMMARY_FILE } from "./jsonl_store.ts";
import type { PartResult, ProcessError, ProcessOptions } from "./process_file.ts";
import { workerEntry } from "./worker_entry.ts";

/** Shards picked automatically at most (more would mostly add memory and startup time). */
export const MAX_AUTO_SHARDS = 4;
/**
 * Input bytes per automatic shard. A shard costs 0.1 to 0.15 s to start
 * (its Worker loads the actor system) and reads the whole file (0.35 s of
 * CPU per million lines); 16 MiB, about 120k records, is half a second of
 * work for one shard, about where a second one starts to pay.
 */
export const AUTO_SHARD_BYTES = 16 * 1024 * 1024;
/**
 * A shard that sends nothing (it reports progress about every 50 ms) for
 * this long is taken for dead: a Deno worker that ends without an error
 * sends no event at all.
 */
export const SHARD_SILENCE_MS = 30_000;
/** How long a shard may take to load before its first word (a loaded machine is slow). */
const SHARD_START_MS = 60_000;
/** How often the coordinator checks its shards and the progress clock. */
const HEALTH_INTERVAL_MS = 250;

/** What the coordinator sends a shard worker, once. */
export interface ShardStart {
  index: number;
  count: number;
  config: Config;
  input: string;
  /** The output directory, whose two files every shard appends to. */
  out: string;
  faults: FaultPlan | undefined;
  maxInFlight: number | undefined;
}

/** How one shard ended. */
type ShardOutcome =
  | { ok: true; value: { summary: ProcessSummary; records: number } }
  | { ok: false; error: ProcessError };

/** What a shard worker sends back: progress, then one `done` or `failed`. */
export type ShardMessage =
  | { kind: "progress"; done: number }
  | { kind: "done"; summary: ProcessSummary; records: number }
  | { kind: "failed"; error: ProcessError };

/**
 * How many shards a run of `options` uses: `options.shards`, else
 * `config.process.shards`, else one per {@linkcode AUTO_SHARD_BYTES} of
 * input, at most one per CPU and at most {@linkcode MAX_AUTO_SHARDS}.
 */
export async function shardCount(options: ProcessOptions): Promise<number> {
  const asked = options.shards ?? options.config.process.shards;
  if (asked !== null && asked !== undefined) return Math.max(1, Math.floor(asked));
  let size: number;
  try {
    size = (await stat(options.input)).size;
  } catch {
    return 1; // the one-shard path reports why
  }
  return Math.max(1, Math.min(MAX_AUTO_SHARDS, cpuCount(), Math.floor(size / AUTO_SHARD_BYTES)));
}

function cpuCount(): number {
  try {
    return os.availableParallelism?.() ?? os.cpus().length;
  } catch {
    return 1;
  }
}

/**
 * Runs `options` over `count` shard workers and merges their output into
 * `options.out`; see the module comment. Never throws for a problem with
 * the files, the pipeline or a worker.
 */
export async function processShards(options: ProcessOptions, count: number): Promise<PartResult> {
  const started = performance.now();
  const say = options.stderr ?? ((line: string) => void process.stderr.write(line + "\n"));
  const { input, out } = options;
  try {
    const file = await open(input, "r");
    try {
      if ((await file.stat()).isDirectory()) {
        return failure(2, `Cannot read input "${input}": it is a directory`);
      }
    } finally {
      await file.close().catch(() => {});
    }
  } catch (error) {
    return failure(2, `Cannot read input "${input}": ${errorMessage(error)}`);
  }
  try {
    mkdirSync(out, { recursive: true });
    rmSync(join(out, SUMMARY_FILE), { force: true });
    // Empty files for the shards to append to (each opens them itself, for appending).
    for (const name of [PROCESSED_FILE, FAILED_FILE]) closeSync(openSync(join(out, name), "w"));
  } catch (error) {
    return failure(1, `Cannot write to output directory "${out}": ${errorMessage(error)}`);
  }

  const shards: Shard[] = [];
  const interval = options.progressIntervalMs ?? 1_000;
  const silenceMs = options.shardSilenceMs ?? SHARD_SILENCE_MS;
  let lastProgress = started;
  const health = setInterval(() => {
    const now = performance.now();
    for (const s of shards) s.checkSilence(now, silenceMs);
    if (now - lastProgress < interval) return;
    lastProgress = now;
    const done = shards.reduce((n, s) => n + s.done, 0);
    const rate = Math.round(done / ((now - started) / 1000));
    say(`processed ${done} records (${rate}/s)`);
  }, Math.min(HEALTH_INTERVAL_MS, interval));
  try {
    const url = options.shardWorkerUrl ?? workerEntry("process_shard_worker.ts");
    for (let index = 0; index < count; index++) {
      shards.push(
        new Shard(url, {
          index,
          count,
          config: options.config,
          input,
          out,
          faults: options.faults?.plan,
          maxInFlight: options.maxInFlight,
        }),
      );
    }
    const results = await allOrFirstFailure(shards.map((s) => s.result));
    if (!results.ok) return results;
    for (const s of shards) s.stop();
    const records = results.value.reduce((n, r) => n + r.records, 0);
    const summary = mergeSummaries(results.value.map((r) => r.summary), {
      elapsedMs: performance.now() - started,
      records,
    });
    try {
      writeFileSync(join(out, SUMMARY_FILE), JSON.stringify(summary, null, 2) + "\n");
    } catch (error) {
      return failure(1, `Cannot write the summary into "${out}": ${errorMessage(error)}`);
    }
    return { ok: true, value: { summary, records } };
  } finally {
    clearInterval(health);
    for (const s of shards) s.stop();
  }
}

/**
 * Merges the summaries of the shards (in shard order) into the summary of
 * the whole run: counts and sums added, minima and maxima kept, a user's
 * `events` lists joined in order without repeats, `last_activity` the
 * latest. `timing` gives `elapsed_ms` and `records_per_second`.
 *
 * @example
 * ```ts
 * const summary = mergeSummaries([a, b], { elapsedMs: 1200, records: 10_000 });
 * ```
 */
export function mergeSummaries(
  parts: readonly ProcessSummary[],
  timing: { elapsedMs: number; records: number },
): ProcessSummary {
  const users = new Map<string, ProcessSummary["users"][string] & { last_ms: number }>();
  const events = new Map<string, ProcessSummary["events"][string]>();
  const counts = { processed: 0, failed: 0, duplicates: 0, anomalies: 0, total_value: 0 };
  for (const part of parts) {
    counts.processed += part.processed;
    counts.failed += part.failed;
    counts.duplicates += part.duplicates;
    counts.anomalies += part.anomalies;
    counts.total_value += part.total_value;
    for (const [id, u] of Object.entries(part.users)) {
      const last_ms = Date.parse(u.last_activity);
      const current = users.get(id);
      if (current === undefined) {
        users.set(id, { ...u, events: [...u.events], last_ms });
        continue;
      }
      current.total_events += u.total_events;
      current.total_value += u.total_value;
      for (const e of u.events) if (!current.events.includes(e)) current.events.push(e);
      if (last_ms > current.last_ms) {
        current.last_ms = last_ms;
        current.last_activity = u.last_activity;
      }
    }
    for (const [name, e] of Object.entries(part.events)) {
      const current = events.get(name);
      if (current === undefined) {
        events.set(name, { ...e });
        continue;
      }
      current.count += e.count;
      current.total_value += e.total_value;
      current.min_value = Math.min(current.min_value, e.min_value);
      current.max_value = Math.max(current.max_value, e.max_value);
    }
  }
  const usersOut: ProcessSummary["users"] = {};
  for (const id of [...users.keys()].sort()) {
    const { last_ms: _, ...u } = users.get(id)!;
    usersOut[id] = u;
  }
  const eventsOut: ProcessSummary["events"] = {};
  for (const name of [...events.keys()].sort()) eventsOut[name] = events.get(name)!;
  const seconds = timing.elapsedMs / 1000;
  return {
    ...counts,
    users: usersOut,
    events: eventsOut,
    elapsed_ms: Math.round(timing.elapsedMs),
    records_per_second: seconds > 0 ? Math.round(timing.records / seconds) : 0,
  };
}

/** Resolves with every value, or with the first failure as soon as one comes. */
function allOrFirstFailure<T>(
  results: ReadonlyArray<Promise<{ ok: true; value: T } | { ok: false; error: ProcessError }>>,
): Promise<{ ok: true; value: T[] } | { ok: false; error: ProcessError }> {
  return new Promise((resolve) => {
    const values = new Array<T>(results.length);
    let left = results.length;
    results.forEach((promise, i) =>
      promise.then((result) => {
        if (!result.ok) return resolve(result);
        values[i] = result.value;
        if (--left === 0) resolve({ ok: true, value: values });
      })
    );
  });
}

/** One shard worker: its progress and its outcome, which never rejects. */
class Shard {
  /** Records whose fate the shard knows so far. */
  done = 0;
  readonly result: Promise<ShardOutcome>;
  #name: string;
  #worker: Worker | undefined;
  #settle!: (result: ShardOutcome) => void;
  #settled = false;
  /** When the shard last sent anything. */
  #lastWord = performance.now();
  /** Whether the shard has sent anything (it says `progress` 0 once loaded). */
  #heard = false;

  constructor(url: string | URL, start: ShardStart) {
    this.result = new Promise((resolve) => (this.#settle = resolve));
    this.#name = `Shard ${start.index} of ${start.count}`;
    const fail = (message: string, exitCode: 1 | 2 = 1) => this.#fail(message, exitCode);
    let worker: Worker;
    try {
      worker = new Worker(typeof url === "string" ? url : url.href, { type: "module" });
    } catch (error) {
      fail(`could not start: ${errorMessage(error)}`);
      return;
    }
    this.#worker = worker;
    worker.onmessage = (event: MessageEvent<ShardMessage>) => {
      this.#lastWord = performance.now();
      this.#heard = true;
      const message = event.data;
      if (message.kind === "progress") {
        this.done = message.done;
      } else if (message.kind === "done") {
        this.done = message.records;
        this.#finish({ ok: true, value: { summary: message.summary, records: message.records } });
      } else if (message.kind === "failed") {
        fail(`failed: ${message.error.message}`, message.error.exitCode);
      }
    };
    worker.onerror = (event: ErrorEvent) => {
      // Handled here: left alone, a worker's uncaught error would end the whole process.
      event.preventDefault();
      fail(`died: ${event.message}`);
    };
    worker.onmessageerror = () => fail("sent a message that cannot be read");
    // Bun tells when a worker ends; Deno has no such event (its deaths come as `error`).
    worker.addEventListener("close", () => fail("exited before it finished"));
    worker.postMessage(start);
  }

  /** Fails the shard when it has sent nothing for `silenceMs` (or while loading, for longer). */
  checkSilence(now: number, silenceMs: number): void {
    const limit = this.#heard ? silenceMs : Math.max(silenceMs, SHARD_START_MS);
    if (!this.#settled && now - this.#lastWord > limit) {
      this.#fail(`stopped answering (nothing for ${Math.round(silenceMs)} ms)`);
    }
  }

  /** Ends the worker; idempotent. */
  stop(): void {
    this.#settled = true;
    this.#worker?.terminate();
    this.#worker = undefined;
  }

  #fail(message: string, exitCode: 1 | 2 = 1): void {
    this.#finish({ ok: false, error: { exitCode, message: `${this.#name} ${message}` } });
  }

  #finish(result: ShardOutcome): void {
    if (this.#settled) return;
    this.#settled = true;
    this.#settle(result);
  }
}

function failure(exitCode: 1 | 2, message: string): { ok: false; error: ProcessError } {
  return { ok: false, error: { exitCode, message } };
}

function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
