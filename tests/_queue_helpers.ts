/**
 * @module
 * Fixtures of the queue-mode tests: a real troupe service in this process
 * in queue mode (SQLite in a temporary directory, Redis from
 * `tests/_redis_server.ts`), and a plain Redis client for the test to look
 * at the streams or play a dead consumer.
 */
import { Redis } from "ioredis";
import { FaultInjector, type FaultPlanInput } from "../lib/faults.ts";
import { encodeEntry } from "../lib/queue.ts";
import { openQueue, startService } from "../main.ts";
import { quietLogs, testConfig, type TestService, waitFor } from "./_helpers.ts";

/** Queue settings that make the tests quick: short reads, quick takeovers. */
export const FAST_QUEUE = { partitions: 4, block_ms: 100, claim_idle_ms: 600, batch_count: 20 };

/** Starts a service in queue mode on `redisUrl`; `overrides.queue` is laid over {@linkcode FAST_QUEUE}. */
export async function startQueuedService(
  redisUrl: string,
  overrides: Record<string, unknown> & { queue?: Record<string, unknown> } = {},
  faults?: FaultPlanInput,
): Promise<TestService> {
  await quietLogs();
  const data = await Deno.makeTempDir({ prefix: "troupe_queue_" });
  const config = testConfig(data, {
    ...overrides,
    queue: { ...FAST_QUEUE, ...overrides.queue, url: redisUrl },
  });
  const queue = await openQueue(config);
  const service = startService(
    config,
    faults ? new FaultInjector(faults) : undefined,
    undefined,
    queue,
  );
  const url = `http://127.0.0.1:${service.server.port}`;
  try {
    await waitFor(() => service.system.readiness().ready, 10_000, "queued service ready");
  } catch (error) {
    await service.stop();
    await Deno.remove(data, { recursive: true }).catch(() => {});
    throw error;
  }
  return {
    ...service,
    url,
    dir: data,
    config,
    close: async () => {
      await service.stop();
      await Deno.remove(data, { recursive: true }).catch(() => {});
    },
  };
}

/** A plain client for the test's own look at Redis. */
export function redisClient(url: string): Redis {
  const client = new Redis(url, { maxRetriesPerRequest: 1, retryStrategy: () => null });
  client.on("error", () => {});
  return client;
}

/** Appends one troupe entry holding `records` to `stream`; returns its id. */
export async function appendEntry(
  client: Redis,
  stream: string,
  records: unknown[],
): Promise<string> {
  return String(await client.xadd(stream, "*", ...encodeEntry(records, "test")));
}

/** Pending entries of the group on `stream` (delivered, not acknowledged). */
export async function pendingCount(
  client: Redis,
  stream: string,
  group = "troupe",
): Promise<number> {
  const summary = await client.xpending(stream, group) as [number, ...unknown[]];
  return Number(summary[0]);
}

/** Sum of the sample values of `name` (any labels matching `labels`) in a `/metrics` text. */
export function metricValue(
  text: string,
  name: string,
  labels: Record<string, string> = {},
): number {
  let sum = 0;
  for (const line of text.split("\n")) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    if (!Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`))) continue;
    sum += Number(line.slice(line.lastIndexOf(" ") + 1));
  }
  return sum;
}

/** `GET /metrics` of `url` as text. */
export async function scrape(url: string): Promise<string> {
  const res = await fetch(`${url}/metrics`);
  return await res.text();
}
