/**
 * @module
 * Redis Streams behind queue mode, through `ioredis`. Loaded by `main.ts`
 * with a dynamic `import()` only when `queue.url` (or `TROUPE_QUEUE`) is
 * set, so the single-process path never loads a Redis client.
 *
 * {@linkcode RedisQueue} owns the producer connection that ingest appends
 * to, and opens one more connection per consumer actor (a blocking
 * `XREADGROUP` holds its connection). The two kinds behave differently on
 * a lost connection, on purpose:
 *
 * - the producer reconnects by itself with exponential backoff
 *   (`lib/backoff.ts`) and queues nothing while it is down
 *   (`enableOfflineQueue: false`): ingest answers 503 at once rather than
 *   holding requests, and `/readyz` says why;
 * - a consumer connection never reconnects by itself (`retryStrategy:
 *   null`): its commands fail, and the consumer actor closes it, backs off
 *   and opens a new one, so reconnecting is a state of the actor.
 *
 * Every command has a timeout (`commandTimeout`; for the blocking read,
 * `block_ms` plus 5 s), so a Redis that stops answering surfaces as an
 * error instead of a hang.
 */
import { hostname } from "node:os";
import process from "node:process";
import { Redis } from "ioredis";
import type { Logger } from "@logtape/logtape";
import { createBackoff, nextDelay } from "./backoff.ts";
import {
  type AppendResult,
  encodeEntry,
  groupByPartition,
  maskUrl,
  type QueueBackend,
  type QueueConnection,
  type QueueProducer,
  type QueueSettings,
  type StreamEntry,
  streamKey,
  type StreamStats,
  toEntries,
} from "./queue.ts";
import { defaultConsumerName } from "./queue.ts";
import type { Config } from "./config.ts";

/** Milliseconds a command may take before it fails (the blocking read adds its `block_ms`). */
export const COMMAND_TIMEOUT_MS = 5_000;

/** The queue settings of `config`, with the consumer name filled in; `null` without a queue. */
export function queueSettings(config: Config): QueueSettings | null {
  const q = config.queue;
  if (q.url === null) return null;
  return {
    url: q.url,
    partitions: q.partitions,
    stream_prefix: q.stream_prefix,
    group: q.group,
    consumer: q.consumer ?? defaultConsumerName(hostname(), process.pid),
    block_ms: q.block_ms,
    batch_count: q.batch_count,
    claim_idle_ms: q.claim_idle_ms,
    max_deliveries: q.max_deliveries,
  };
}

/** Compares two stream ids (`ms-seq`) numerically. */
export function compareIds(a: string, b: string): number {
  const [am, as = "0"] = a.split("-");
  const [bm, bs = "0"] = b.split("-");
  const d = BigInt(am) - BigInt(bm);
  if (d !== 0n) return d < 0n ? -1 : 1;
  const e = BigInt(as) - BigInt(bs);
  return e === 0n ? 0 : e < 0n ? -1 : 1;
}

/** The Redis producer and the factory of consumer connections. */
export class RedisQueue implements QueueProducer, QueueBackend {
  readonly settings: QueueSettings;
  readonly #producer: Redis;
  readonly #log: Logger;
  #lastError: string | null = null;

  constructor(settings: QueueSettings, log: Logger) {
    this.settings = settings;
    this.#log = log;
    let backoff = createBackoff(50, 2_000);
    this.#producer = new Redis(settings.url, {
      connectionName: `troupe-producer:${settings.consumer}`,
      enableOfflineQueue: false,
      maxRetriesPerRequest: 1,
      connectTimeout: COMMAND_TIMEOUT_MS,
      commandTimeout: COMMAND_TIMEOUT_MS,
      retryStrategy: (times) => {
        if (times === 1) backoff = createBackoff(50, 2_000);
        const next = nextDelay(backoff);
        backoff = next.backoff;
        return next.delayMs;
      },
    });
    this.#producer.on("error", (error: Error) => {
      if (this.#lastError !== error.message) {
        this.#log.warn("Queue producer: {error}", { error: error.message });
      }
      this.#lastError = error.message;
    });
    this.#producer.on("ready", () => {
      if (this.#lastError !== null) this.#log.info("Queue producer reconnected");
      this.#lastError = null;
    });
  }

  get ready(): boolean {
    return this.#producer.status === "ready";
  }

  get status(): string {
    const where = maskUrl(this.settings.url);
    return this.#lastError === null
      ? `Redis at ${where} is ${this.#producer.status}`
      : `Redis at ${where} is ${this.#producer.status}: ${this.#lastError}`;
  }

  /** Resolves once the producer is connected, or rejects after `timeoutMs`. */
  async waitReady(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!this.ready) {
      if (Date.now() > deadline) {
        throw new Error(`Cannot connect to the queue: ${this.status} after ${timeoutMs} ms`);
      }
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  async append(records: readonly unknown[], requestId: string): Promise<AppendResult> {
    const { partitions, stream_prefix } = this.settings;
    const groups = groupByPartition(records, partitions);
    const entries: AppendResult["entries"] = [];
    if (groups.size === 0) return { queued: 0, entries };
    // One MULTI: the request's entries are appended all together or not at all.
    const multi = this.#producer.multi();
    for (const [partition, rs] of groups) {
      multi.xadd(streamKey(stream_prefix, partition), "*", ...encodeEntry(rs, requestId));
    }
    const replies = await multi.exec();
    if (replies === null) throw new Error("The queue transaction was aborted");
    let i = 0;
    for (const [partition, rs] of groups) {
      const [error, id] = replies[i++];
      if (error !== null) throw error;
      entries.push({
        partition,
        stream: streamKey(stream_prefix, partition),
        id: String(id),
        records: rs.length,
      });
    }
    return { queued: records.length, entries };
  }

  async connect(): Promise<QueueConnection> {
    const { settings } = this;
    const client = new Redis(settings.url, {
      lazyConnect: true,
      connectionName: `troupe-consumer:${settings.consumer}`,
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      retryStrategy: () => null,
      connectTimeout: COMMAND_TIMEOUT_MS,
      commandTimeout: settings.block_ms + COMMAND_TIMEOUT_MS,
    });
    // The failing command reports the error; this only keeps ioredis from printing it.
    client.on("error", () => {});
    try {
      await client.connect();
    } catch (error) {
      client.disconnect();
      throw new Error(
        `Cannot connect to the queue at ${maskUrl(settings.url)}: ${(error as Error).message}`,
        { cause: error },
      );
    }
    return new RedisConnection(client, settings);
  }

  /** Closes the producer connection. */
  async close(): Promise<void> {
    await Promise.race([
      this.#producer.quit().catch(() => {}),
      new Promise((r) => setTimeout(r, 1_000)),
    ]);
    this.#producer.disconnect();
  }
}

/** One consumer's connection. */
class RedisConnection implements QueueConnection {
  readonly #client: Redis;
  readonly #s: QueueSettings;

  constructor(client: Redis, settings: QueueSettings) {
    this.#client = client;
    this.#s = settings;
  }

  async ensureGroup(stream: string): Promise<void> {
    try {
      // From the start of the stream: entries appended before any consumer ran count too.
      await this.#client.xgroup("CREATE", stream, this.#s.group, "0", "MKSTREAM");
    } catch (error) {
      if (!String((error as Error).message).startsWith("BUSYGROUP")) throw error;
    }
  }

  async read(stream: string, count: number, blockMs: number): Promise<StreamEntry[]> {
    const { group, consumer } = this.#s;
    const reply = await this.#client.xreadgroup(
      "GROUP",
      group,
      consumer,
      "COUNT",
      count,
      "BLOCK",
      blockMs,
      "STREAMS",
      stream,
      ">",
    ) as [string, unknown][] | null;
    return reply === null || reply.length === 0 ? [] : toEntries(reply[0][1]);
  }

  async claim(stream: string, minIdleMs: number, count: number): Promise<StreamEntry[]> {
    const { group, consumer } = this.#s;
    const reply = await this.#client.xautoclaim(
      stream,
      group,
      consumer,
      minIdleMs,
      "0-0",
      "COUNT",
      count,
    ) as [string, unknown, unknown?];
    // Entries deleted from the stream meanwhile (reply[2]) leave the group's list by themselves.
    return toEntries(reply[1]).filter((e) => Object.keys(e.fields).length > 0);
  }

  async deliveries(stream: string, ids: readonly string[]): Promise<Map<string, number>> {
    const out = new Map<string, number>();
    if (ids.length === 0) return out;
    const sorted = [...ids].sort(compareIds);
    const reply = await this.#client.xpending(
      stream,
      this.#s.group,
      sorted[0],
      sorted[sorted.length - 1],
      ids.length + 1000,
      this.#s.consumer,
    ) as [string, string, number, number][];
    const wanted = new Set(ids);
    for (const [id, , , count] of reply) if (wanted.has(id)) out.set(id, Number(count));
    return out;
  }

  async touch(stream: string, ids: readonly string[]): Promise<void> {
    if (ids.length === 0) return;
    const { group, consumer } = this.#s;
    await this.#client.xclaim(stream, group, consumer, 0, ...ids, "JUSTID");
  }

  async ack(stream: string, ids: readonly string[]): Promise<void> {
    if (ids.length === 0) return;
    const replies = await this.#client.multi()
      .xack(stream, this.#s.group, ...ids)
      .xdel(stream, ...ids)
      .exec();
    if (replies === null) throw new Error("The acknowledgement transaction was aborted");
    for (const [error] of replies) if (error !== null) throw error;
  }

  async stats(stream: string): Promise<StreamStats> {
    const replies = await this.#client.pipeline()
      .xinfo("GROUPS", stream)
      .xlen(stream)
      .exec();
    if (replies === null) throw new Error("The stats pipeline was aborted");
    const [[groupsError, groups], [lenError, len]] = replies;
    if (lenError !== null) throw lenError;
    const length = Number(len);
    if (groupsError !== null) {
      // No stream yet (XINFO on a missing key): nothing waits.
      if (String(groupsError.message).includes("no such key")) {
        return { length: 0, lag: 0, pending: 0 };
      }
      throw groupsError;
    }
    for (const flat of groups as unknown[][]) {
      const info: Record<string, unknown> = {};
      for (let i = 0; i + 1 < flat.length; i += 2) info[String(flat[i])] = flat[i + 1];
      if (info.name !== this.#s.group) continue;
      const pending = Number(info.pending ?? 0);
      // Redis 7 counts the lag itself unless deletions make it unknown (null); acknowledged
      // entries are deleted, so whatever is left and not pending has not been delivered.
      const lag = typeof info.lag === "number" ? info.lag : Math.max(0, length - pending);
      return { length, lag, pending };
    }
    return { length, lag: length, pending: 0 };
  }

  close(): void {
    this.#client.disconnect();
  }
}
