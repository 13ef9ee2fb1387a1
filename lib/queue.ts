/**
 * @module
 * The pure pieces of queue mode (`queue.url`, `TROUPE_QUEUE`): which of the
 * K streams a record goes to, how a request's records become stream
 * entries and back, stream names, URL masking, and the interfaces the
 * consumers and the ingest route see. Nothing here talks to Redis; the
 * Redis side is `lib/redis_queue.ts`, loaded only when a queue is
 * configured, so the single-process path never loads a Redis client.
 *
 * Partitioning: a record goes to stream `hash(user_id) mod K`, so one
 * user's records stay in one stream, in the order they were appended. The
 * hash is FNV-1a (32 bit) over the UTF-16 code units of the `user_id`
 * trimmed as the transform stage trims it (for ASCII ids it equals FNV-1a
 * over the UTF-8 bytes). A record without a usable `user_id` goes to
 * partition 0: the validate stage downstream refuses it with its reason,
 * and it ends in the failed store like any invalid record.
 *
 * An entry holds one request's records of one partition: field `records`
 * (a JSON array) and field `request` (the request id, for tracing).
 */
import type { IngestResult } from "./batch.ts";
import type { FailedRecord } from "./schemas.ts";

/** The stage named in the failed store for entries the queue gave up on. */
export const QUEUE_STAGE = "queue";

/** FNV-1a, 32 bit, over the UTF-16 code units of `s`. */
export function fnv1a(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

/**
 * The partition, 0 to `partitions - 1`, of a record with this `user_id`:
 * FNV-1a of the trimmed id, modulo `partitions`; 0 for anything that is not
 * a non-empty string.
 *
 * @example
 * ```ts
 * partitionOf("user_001", 8) === partitionOf(" user_001 ", 8); // true
 * ```
 */
export function partitionOf(userId: unknown, partitions: number): number {
  if (typeof userId !== "string" || partitions <= 1) return 0;
  const id = userId.trim();
  return id.length === 0 ? 0 : fnv1a(id) % partitions;
}

/** The partition of a raw record, as received. */
export function partitionOfRecord(record: unknown, partitions: number): number {
  if (record === null || typeof record !== "object" || Array.isArray(record)) return 0;
  return partitionOf((record as { user_id?: unknown }).user_id, partitions);
}

/**
 * Groups `records` by partition, keeping their order inside each partition.
 * The map iterates in ascending partition order.
 */
export function groupByPartition(
  records: readonly unknown[],
  partitions: number,
): Map<number, unknown[]> {
  const groups = new Map<number, unknown[]>();
  for (const r of records) {
    const p = partitionOfRecord(r, partitions);
    const g = groups.get(p);
    if (g === undefined) groups.set(p, [r]);
    else g.push(r);
  }
  return new Map([...groups].sort((a, b) => a[0] - b[0]));
}

/** The key of stream `partition`: `${prefix}:${partition}`. */
export function streamKey(prefix: string, partition: number): string {
  return `${prefix}:${partition}`;
}

/** The default consumer name: `${hostname}-${pid}`, unique per process. */
export function defaultConsumerName(hostname: string, pid: number): string {
  return `${hostname || "troupe"}-${pid}`;
}

/**
 * `url` with its password (and a user name's secret part) replaced by
 * `***`, for logs. Anything that does not parse as a URL is cut to its
 * scheme.
 *
 * @example
 * ```ts
 * maskUrl("redis://:s3cret@127.0.0.1:6379/0"); // "redis://:***@127.0.0.1:6379/0"
 * ```
 */
export function maskUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password !== "") u.password = "***";
    return u.toString();
  } catch {
    const scheme = /^[a-z][a-z0-9+.-]*:/i.exec(url)?.[0];
    return scheme === undefined ? "(not a URL)" : `${scheme}//(unparsable)`;
  }
}

/** One stream entry: its id and its fields. */
export interface StreamEntry {
  id: string;
  fields: Record<string, string>;
}

/**
 * Entries from a Redis reply of `[id, [field, value, ...]]` pairs, as
 * `XREADGROUP` and `XAUTOCLAIM` give them. Entries deleted meanwhile come
 * as `[id, null]` and keep empty fields.
 */
export function toEntries(reply: unknown): StreamEntry[] {
  if (!Array.isArray(reply)) return [];
  const out: StreamEntry[] = [];
  for (const item of reply) {
    if (!Array.isArray(item) || typeof item[0] !== "string") continue;
    const fields: Record<string, string> = {};
    const flat = Array.isArray(item[1]) ? item[1] : [];
    for (let i = 0; i + 1 < flat.length; i += 2) fields[String(flat[i])] = String(flat[i + 1]);
    out.push({ id: item[0], fields });
  }
  return out;
}

/** The field list of the entry holding `records`: `["records", json, "request", id]`. */
export function encodeEntry(records: readonly unknown[], requestId: string): string[] {
  return ["records", JSON.stringify(records), "request", requestId];
}

/** An entry's records, or why it cannot be read. */
export type DecodedEntry =
  | { ok: true; records: unknown[]; request: string | null }
  | { ok: false; error: string };

/** Reads an entry written by {@linkcode encodeEntry}; never throws. */
export function decodeEntry(entry: StreamEntry): DecodedEntry {
  const raw = entry.fields.records;
  if (raw === undefined) {
    return { ok: false, error: `Stream entry ${entry.id} has no "records" field` };
  }
  let records: unknown;
  try {
    records = JSON.parse(raw);
  } catch (error) {
    return {
      ok: false,
      error: `Stream entry ${entry.id} holds no JSON in "records": ${(error as Error).message}`,
    };
  }
  if (!Array.isArray(records)) {
    return { ok: false, error: `Stream entry ${entry.id} holds no JSON array in "records"` };
  }
  return { ok: true, records, request: entry.fields.request ?? null };
}

/** Splits `items` into runs of at most `size`. */
export function chunk<T>(items: readonly T[], size: number): T[][] {
  const n = Math.max(1, Math.floor(size));
  if (items.length <= n) return [items as T[]];
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += n) out.push(items.slice(i, i + n));
  return out;
}

/** The `queue` config section, as the queue code uses it. */
export interface QueueSettings {
  url: string;
  partitions: number;
  stream_prefix: string;
  group: string;
  consumer: string;
  block_ms: number;
  batch_count: number;
  claim_idle_ms: number;
  max_deliveries: number;
}

/** What ingest gets back once Redis has every entry of a request. */
export interface AppendResult {
  /** Records appended. */
  queued: number;
  /** One entry per partition touched. */
  entries: { partition: number; stream: string; id: string; records: number }[];
}

/** Length, lag and pending entries of one stream's consumer group. */
export interface StreamStats {
  /** Entries in the stream (acknowledged ones are deleted). */
  length: number;
  /** Entries not delivered to any consumer yet. */
  lag: number;
  /** Entries delivered and not acknowledged. */
  pending: number;
}

/** The ingest side: appends a request's records to the streams. */
export interface QueueProducer {
  readonly settings: QueueSettings;
  /** Appends every partition's entry in one `MULTI`; resolves once Redis has all of them. */
  append(records: readonly unknown[], requestId: string): Promise<AppendResult>;
  /** Whether the producer connection is up. */
  readonly ready: boolean;
  /** Why it is not, for `/readyz`. */
  readonly status: string;
}

/** A consumer's own connection (blocking reads need one each). */
export interface QueueConnection {
  /** Creates the group at the start of the stream (and the stream); an existing group is fine. */
  ensureGroup(stream: string): Promise<void>;
  /** `XREADGROUP GROUP g c COUNT n BLOCK ms STREAMS stream >`. */
  read(stream: string, count: number, blockMs: number): Promise<StreamEntry[]>;
  /** `XAUTOCLAIM stream g c minIdle 0-0 COUNT n`: entries idle longer than `minIdleMs`, now ours. */
  claim(stream: string, minIdleMs: number, count: number): Promise<StreamEntry[]>;
  /** Delivery counts of our pending entries with these ids (`XPENDING`, extended form). */
  deliveries(stream: string, ids: readonly string[]): Promise<Map<string, number>>;
  /** Resets the idle time of entries we still work on (`XCLAIM … JUSTID`: no delivery counted). */
  touch(stream: string, ids: readonly string[]): Promise<void>;
  /** `XACK` then `XDEL` in one `MULTI`: the stream is a queue, not a log. */
  ack(stream: string, ids: readonly string[]): Promise<void>;
  stats(stream: string): Promise<StreamStats>;
  close(): void;
}

/** Opens consumer connections: what the consumer actors get instead of a Redis client. */
export interface QueueBackend {
  readonly settings: QueueSettings;
  connect(): Promise<QueueConnection>;
}

/** Where a consumer hands its entries' records: the local pipeline. */
export interface QueueSink {
  /** Offers records to the pipeline (`TroupeSystem.submit`, allowed while draining). */
  submit(records: unknown[]): Promise<
    | { ok: true; ticket: { promise: Promise<IngestResult> } }
    | { ok: false; status: 429 | 503; retryAfterSeconds: number; message: string }
  >;
  /** Whether the pipeline can take records at all (its supervisors are up). */
  alive(): boolean;
  /** Stores failed records (stage `queue`) and resolves after their commit. */
  fail(failed: FailedRecord[]): Promise<void>;
  /** Most records offered in one `submit`. */
  readonly maxSubmit: number;
}
