/**
 * @module
 * A shard worker for tests: the real one (`lib/process_shard_worker.ts`),
 * except that shard 1 ends its thread as soon as it is started, without an
 * error and without a word (as a worker that is killed would): `close()`
 * in Deno, `process.exit()` in Bun, whose workers have no `close`.
 */
import process from "node:process";
import "../../lib/process_shard_worker.ts";
import type { ShardStart } from "../../lib/process_shards.ts";

const scope = globalThis as unknown as {
  addEventListener(type: "message", listener: (event: MessageEvent<ShardStart>) => void): void;
  close?: () => void;
};

scope.addEventListener("message", (event) => {
  if (event.data.index !== 1) return;
  if (typeof scope.close === "function") scope.close();
  else process.exit(0);
});
