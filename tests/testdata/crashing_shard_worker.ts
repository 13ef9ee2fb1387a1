/**
 * @module
 * A shard worker for tests: the real one (`lib/process_shard_worker.ts`),
 * except that shard 1 throws an uncaught error as soon as it is started,
 * while its run has begun: a crash of the thread, not a failed run.
 */
import "../../lib/process_shard_worker.ts";
import type { ShardStart } from "../../lib/process_shards.ts";

const scope = globalThis as unknown as {
  addEventListener(type: "message", listener: (event: MessageEvent<ShardStart>) => void): void;
};

scope.addEventListener("message", (event) => {
  if (event.data.index === 1) throw new Error("injected crash of shard 1");
});
