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
 * | 429 | the pipeline is full; `Retry-After` says when to come back |
 * | 503 | not ready or shutting down; `Retry-After` |
 */
import { Hono } from "hono";
import type { TroupeSystem } from "../actors/mod.ts";
import { PipelineUnavailableError } from "../lib/batch.ts";
import { type BodyLimits, readRecords } from "../lib/body.ts";
import type { Metrics } from "../lib/metrics.ts";
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
}

/** Routes that take records in. */
export function createIngestRoutes(deps: IngestDeps): Hono<AppEnv> {
  const { system, limits, metrics, stats, maxWaitMs } = deps;
  const app = new Hono<AppEnv>();

  app.post("/v1/records", async (c) => {
    const started = performance.now();
    if (system.draining) {
      stats.observeFailure();
      throw unavailable("The service is shutting down", 5);
    }
    const body = await readRecords(c.req.raw, limits);
    if (!body.ok) {
      stats.observeFailure();
      const { status, code, message, details } = body.error;
      throw new ApiError(status, code, message, { details });
    }
    const outcome = await system.submit(body.value, { maxWaitMs });
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
      ? 422
      : 200;
    return c.json(result, status);
  });

  return app;
}

function unavailable(message: string, retryAfterSeconds: number): ApiError {
  return new ApiError(503, "unavailable", message, {
    headers: { "retry-after": String(retryAfterSeconds) },
    details: { retry_after_seconds: retryAfterSeconds },
  });
}
