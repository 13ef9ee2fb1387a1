/**
 * @module
 * The entry of one shard worker of a sharded `process` run
 * (`lib/process_shards.ts`): it waits for one {@linkcode ShardStart},
 * runs `processPart` over the lines of its shard (the same reader, actor
 * system and JSON Lines store as a one-shard run, in this thread), and
 * answers with {@linkcode ShardMessage}s.
 *
 * ```
 * coordinator ◄──{ kind: "progress", done: 0 }── shard      once loaded
 * coordinator ──{ index, count, config, input, out, faults }──► shard
 * coordinator ◄──{ kind: "progress", done }── shard      about every 50 ms
 * coordinator ◄──{ kind: "done", summary, records }── shard
 *             or { kind: "failed", error: { exitCode, message } }
 * ```
 *
 * An error that escapes the run is posted as `failed` too, with its stack;
 * only a crash of the thread itself reaches the coordinator as an `error`
 * event. Log lines go to stderr at the configured level, as in one shard.
 */
import { FaultInjector } from "./faults.ts";
import { closeLogging, setupLogging } from "./log.ts";
import { processPart } from "./process_file.ts";
import type { ShardMessage, ShardStart } from "./process_shards.ts";

/** The worker's global scope, typed here so this file checks beside window code. */
const scope = globalThis as unknown as {
  onmessage: ((event: MessageEvent<ShardStart>) => void) | null;
  postMessage(message: ShardMessage): void;
};

async function run(start: ShardStart): Promise<ShardMessage> {
  await setupLogging({ level: start.config.log_level });
  try {
    const result = await processPart({
      config: start.config,
      input: start.input,
      out: start.out,
      faults: start.faults === undefined ? undefined : new FaultInjector(start.faults),
      maxInFlight: start.maxInFlight,
      shard: { index: start.index, count: start.count },
      writeSummary: false,
      sharedOutput: true,
      stderr: () => {},
      onProgress: (done) => scope.postMessage({ kind: "progress", done }),
    });
    return result.ok
      ? { kind: "done", summary: result.value.summary, records: result.value.records }
      : { kind: "failed", error: result.error };
  } finally {
    await closeLogging().catch(() => {});
  }
}

// Loaded: the first word, after which the coordinator expects one about every 50 ms.
scope.postMessage({ kind: "progress", done: 0 });

scope.onmessage = (event) => {
  scope.onmessage = null; // one run per worker
  run(event.data).then(
    (message) => scope.postMessage(message),
    (error) => {
      const text = error instanceof Error ? (error.stack ?? error.message) : String(error);
      scope.postMessage({ kind: "failed", error: { exitCode: 1, message: text } });
    },
  );
};
