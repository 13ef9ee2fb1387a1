/**
 * @module
 * How the service is doing: `GET /v1/stats` (figures), `GET /v1/actors`
 * (the supervision tree) and `GET /metrics` (Prometheus text format 0.0.4).
 */
import { Hono } from "hono";
import process from "node:process";
import type { ActorNode, TroupeSystem } from "../actors/mod.ts";
import { type Metrics, PROMETHEUS_CONTENT_TYPE } from "../lib/metrics.ts";
import { STAGES } from "../lib/schemas.ts";
import type { AlertBook } from "../lib/alerts.ts";
import type { IngestStats } from "../lib/stats.ts";
import type { StoreReader } from "../lib/store.ts";
import type { AppEnv } from "./_middleware.ts";

/** Counts the nodes of an actor tree. */
export function countActors(node: ActorNode): number {
  return 1 + node.children.reduce((n, c) => n + countActors(c), 0);
}

/** Stats, actor tree and metrics routes. */
export function createStatusRoutes(deps: {
  system: TroupeSystem;
  reader: StoreReader;
  metrics: Metrics;
  stats: IngestStats;
  /** Alerts to expose as `ALERTS`. */
  book?: AlertBook;
}): Hono<AppEnv> {
  const { system, reader, metrics, stats, book } = deps;
  const app = new Hono<AppEnv>();

  app.get("/v1/stats", async (c) => {
    const counts = await reader.counts();
    const latency = stats.latency();
    const mem = process.memoryUsage();
    return c.json({
      ...counts,
      throughput_records_per_second: Math.round(stats.rate()),
      latency_ms: { mean: round(latency.mean), p99: round(latency.p99) },
      error_rate: round(stats.errorRate, 6),
      ingested: {
        accepted: stats.accepted,
        duplicates: stats.duplicates,
        rejected: stats.rejected,
        requests: stats.requests,
        failed_requests: stats.failedRequests,
      },
      in_flight_records: system.load,
      actors: countActors(system.tree()),
      memory: {
        rss_bytes: mem.rss,
        heap_used_bytes: mem.heapUsed,
        heap_total_bytes: mem.heapTotal,
        external_bytes: mem.external,
      },
    });
  });

  app.get("/v1/actors", (c) => c.json(system.tree()));

  app.get("/metrics", async (c) => {
    const counts = await reader.counts();
    metrics.storedRecords.set(counts.stored_records);
    metrics.ready.set(system.readiness().ready ? 1 : 0);
    for (const s of STAGES) {
      const rt = system.runtimes[s];
      metrics.mailboxDepth.set({ stage: s }, rt.mailbox.depth);
      metrics.mailboxCapacity.set({ stage: s }, rt.mailbox.capacity);
      metrics.stageWorkers.set({ stage: s }, rt.workers);
    }
    metrics.alerts.reset();
    for (const a of book?.active() ?? []) {
      metrics.alerts.set({ alertname: a.name, alertstate: a.state, severity: a.severity }, 1);
    }
    return c.body(await metrics.registry.metrics(), 200, {
      "content-type": PROMETHEUS_CONTENT_TYPE,
    });
  });

  return app;
}

function round(x: number, digits = 3): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}
