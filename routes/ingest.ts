/**
 * @module
 * `POST /v1/records`: the only way records come in. The body is one JSON
 * object, a JSON array or NDJSON, optionally gzip; the answer comes only
 * after every batch of the request is committed.
 *
 * | status | when |
 * |---|---|
 * | 200 | committed: `{"accepted","duplicates","rejected","errors"}` |
 * | 422 | same body, when nothing was accepted and something was rejected |
 * | 400 / 413 / 415 | the body cannot be read (see `lib/body.ts`) |
 * | 400 | `invalid_idempotency_key`: not 1 to 255 printable ASCII characters |
 * | 422 | `idempotency_key_reused`: the `Idempotency-Key` came with another body |
 * | 429 | the pipeline is full, or too many requests at once; `Retry-After` says when to come back |
 * | 503 | not ready or shutting down; `Retry-After` |
 *
 * In queue mode (`queue.url`) the records are not processed here: they are
 * grouped by partition (a hash of `user_id`, `lib/queue.ts`) and appended
 * to the partitions' Redis streams, one entry per partition, in one
 * `MULTI`; the answer is **202** `{"queued", "partitions": [{"partition",
 * "stream", "id", "records"}]}` once Redis has every entry. Validation
 * happens when a consumer commits them: invalid records end in the failed
 * store with their reason. When Redis cannot take them: 503
 * `queue_unavailable` with `Retry-After`, and nothing was appended.
 *
 * Before its body is read, a request waits (up to `ingest.max_wait_ms`, then
 * 429) until the pipeline holds fewer than `ingest.max_pipeline_records`
 * records ({@linkcode Admission}): the bodies of the others stay unread in
 * their sockets, so memory follows the pipeline's capacity, not the number
 * of clients.
 *
 * With an `Idempotency-Key` header (see `lib/idempotency.ts`), a 200, 202 or 422
 * answer is remembered for the key; the same key with the same body gets it
 * again, with `Idempotent-Replayed: true`, and nothing is processed. A second
 * request arriving while the first is still processed waits for its answer.
 * Without the header nothing is hashed or remembered.
 */
import { type Context, Hono } from "hono";
import type { ContentfulStatusCode } from "hono/utils/http-status";
import { setImmediate } from "node:timers";
import type { TroupeSystem } from "../actors/mod.ts";
import { Admission, type Pass } from "../lib/admission.ts";
import { PipelineUnavailableError } from "../lib/batch.ts";
import { type BodyLimits, type BodyResult, readRecords } from "../lib/body.ts";
import {
  hashRequestBody,
  type IdempotencyCache,
  type IdempotentAnswer,
  parseIdempotencyKey,
} from "../lib/idempotency.ts";
import type { Metrics, QueueMetrics } from "../lib/metrics.ts";
import type { QueueProducer } from "../lib/queue.ts";
import type { IngestStats } from "../lib/stats.ts";
import { ApiError } from "./_errors.ts";
import type { AppEnv } from "./_middleware.ts";

/** What the ingest routes need. */
export interface IngestDeps {
  system: TroupeSystem;
  limits: BodyLimits;
  metrics: Metrics;
  stats: IngestStats;
  /** How long to wait for mailbox room before answering 429. */
  maxWaitMs: number;
  /** Ingest requests handled at once; more are answered 429 before their body is read. */
  maxConcurrent: number;
  /** Records in the pipeline above which a request waits before its body is read. */
  maxPipelineRecords: number;
  /** Records per batch: what an admitted request counts for until it is submitted. */
  batchSize: number;
  /** Answers remembered by `Idempotency-Key`. */
  idempotency: IdempotencyCache;
  /** Queue mode: append to Redis Streams instead of processing here. */
  queue?: { producer: QueueProducer; metrics: QueueMetrics };
}

/** Routes that take records in. */
export function createIngestRoutes(deps: IngestDeps): Hono<AppEnv> {
  const { system, limits, metrics, stats, maxWaitMs, idempotency, maxConcurrent, queue } = deps;
  const app = new Hono<AppEnv>();
  const admission = new Admission(() => system.load, deps.maxPipelineRecords, deps.batchSize);

  /** Sends records through the pipeline; the answer's status and body, or throws an `ApiError`. */
  async function ingest(records: unknown[], started: number, pass: Pass) {
    const waited = performance.now() - started;
    const outcome = await system.submit(records, { maxWaitMs: Math.max(0, maxWaitMs - waited) });
    pass.submitted();
    if (!outcome.ok) {
      stats.observeFailure();
      if (outcome.status === 503) throw unavailable(outcome.message, outcome.retryAfterSeconds);
      throw new ApiError(429, "too_many_requests", outcome.message, {
        headers: { "retry-after": String(outcome.retryAfterSeconds) },
        details: { retry_after_seconds: outcome.retryAfterSeconds },
      });
    }
    let result;
    try {
      result = await outcome.ticket.promise;
    } catch (error) {
      stats.observeFailure();
      if (error instanceof PipelineUnavailableError) throw unavailable(error.message, 5);
      throw error;
    }
    metrics.recordsTotal.inc({ outcome: "accepted" }, result.accepted);
    metrics.recordsTotal.inc({ outcome: "duplicate" }, result.duplicates);
    metrics.recordsTotal.inc({ outcome: "rejected" }, result.rejected);
    stats.observe(result, performance.now() - started);
    const status = result.accepted === 0 && result.rejected > 0 && result.duplicates === 0
      ? 422 as const
      : 200 as const;
    return { status, result };
  }

  /** Queue mode: appends the records to the streams; 202 once Redis has them, or throws. */
  async function enqueue(records: unknown[], started: number, _pass: Pass, requestId: string) {
    const { producer, metrics: qm } = queue!;
    let appended;
    try {
      appended = await producer.append(records, requestId ?? "");
    } catch (error) {
      stats.observeFailure();
      const reason = error instanceof Error ? error.message : String(error);
      throw new ApiError(503, "queue_unavailable", `Cannot append to the queue: ${reason}`, {
        headers: { "retry-after": "1" },
        details: { retry_after_seconds: 1, queue: producer.status },
      });
    }
    qm.queueEntriesTotal.inc({ outcome: "appended" }, appended.entries.length);
    qm.queueRecordsTotal.inc({ outcome: "appended" }, appended.queued);
    stats.observe({ accepted: 0, duplicates: 0, rejected: 0 }, performance.now() - started);
    return {
      status: 202 as const,
      result: { queued: appended.queued, partitions: appended.entries },
    };
  }

  /** Processes the records here, or appends them to the queue in queue mode. */
  const run = queue === undefined
    ? (records: unknown[], started: number, pass: Pass, _requestId: string) =>
      ingest(records, started, pass)
    : enqueue;

  /** Throws the answer to a body that cannot be read. */
  function refuse(body: BodyResult & { ok: false }): never {
    stats.observeFailure();
    const { status, code, message, details } = body.error;
    throw new ApiError(status, code, message, { details });
  }

  /** Throws the 429 of a request refused before its body was read (which is dropped). */
  function refuseUnread(c: Context<AppEnv>, message: string): never {
    stats.observeFailure();
    c.req.raw.body?.cancel().catch(() => {});
    const retry = system.retryAfterSeconds();
    throw new ApiError(429, "too_many_requests", message, {
      headers: { "retry-after": String(retry) },
      details: { retry_after_seconds: retry },
    });
  }

  // Requests past the cap are refused before their bodies are read: bodies
  // waiting to be parsed are memory the mailboxes cannot bound.
  let active = 0;
  app.post("/v1/records", async (c, next) => {
    if (active >= maxConcurrent) {
      refuseUnread(c, `Too many ingest requests in progress (${active} of ${maxConcurrent})`);
    }
    active++;
    try {
      // Deno runs a request whose body has already arrived to its answer
      // without yielding, so without this turn every request saw active = 1
      // and the cap never held (bench/overload_drill.ts: 0 of 100% 429).
      // `setImmediate` is the turn: `setTimeout(0)` waits for the timer
      // clock and cost every request 2.2 ms on Deno (1.1 ms on Bun).
      await new Promise((resolve) => setImmediate(resolve));
      await next();
    } finally {
      active--;
    }
  }, async (c) => {
    const started = performance.now();
    if (system.draining) {
      stats.observeFailure();
      throw unavailable("The service is shutting down", 5);
    }
    const pass = await admission.enter(maxWaitMs);
    if (pass === null) {
      refuseUnread(
        c,
        `The pipeline is full: ${system.load} records in it, ${admission.waiting} requests waiting`,
      );
    }
    try {
      return await handle(c, started, pass);
    } finally {
      pass.leave();
    }
  });

  /** Reads, processes and answers one admitted request. */
  async function handle(c: Context<AppEnv>, started: number, pass: Pass) {
    const keyHeader = c.req.header("idempotency-key");
    if (keyHeader === undefined) {
      const body = await readRecords(c.req.raw, limits);
      if (!body.ok) refuse(body);
      const { status, result } = await run(
        body.value,
        started,
        pass,
        c.get("requestId"),
      );
      return c.json(result, status);
    }

    const key = parseIdempotencyKey(keyHeader);
    if (!key.ok) {
      stats.observeFailure();
      c.req.raw.body?.cancel().catch(() => {});
      throw new ApiError(400, "invalid_idempotency_key", key.error);
    }
    const hashed = hashRequestBody(c.req.raw);
    const body = await readRecords(hashed.request, limits);
    // Unreadable bodies are not remembered: the same bytes get the same answer anyway.
    if (!body.ok) refuse(body);
    const claim = await idempotency.claim(key.value, hashed.digest());
    if (claim.kind === "reused") {
      stats.observeFailure();
      throw new ApiError(
        422,
        "idempotency_key_reused",
        `Idempotency-Key ${JSON.stringify(key.value)} was already used with another request body`,
        { details: { idempotency_key: key.value } },
      );
    }
    if (claim.kind === "replay") return answer(c, claim.answer, true);
    try {
      const { status, result } = await run(
        body.value,
        started,
        pass,
        c.get("requestId"),
      );
      const remembered = { status, body: JSON.stringify(result) };
      claim.lease.remember(remembered);
      return answer(c, remembered, false);
    } finally {
      // 429, 503 and crashes are not remembered (200, 202 and 422 are): a retry must be
      // processed for real.
      claim.lease.release();
    }
  }

  return app;
}

/** Sends a remembered answer as `c.json` would have sent it. */
function answer(c: Context<AppEnv>, { status, body }: IdempotentAnswer, replayed: boolean) {
  const headers: Record<string, string> = { "content-type": "application/json" };
  if (replayed) headers["idempotent-replayed"] = "true";
  return c.body(body, status as ContentfulStatusCode, headers);
}

function unavailable(message: string, retryAfterSeconds: number): ApiError {
  return new ApiError(503, "unavailable", message, {
    headers: { "retry-after": String(retryAfterSeconds) },
    details: { retry_after_seconds: retryAfterSeconds },
  });
}
