/**
 * @module
 * The Prometheus metrics of troupe, exposed on `/metrics` in the text format
 * (version 0.0.4). Every metric is prefixed `troupe_`, except the runtime
 * metrics of prom-client's `collectDefaultMetrics` (`process_*`, `nodejs_*`),
 * which keep their usual names so stock dashboards work.
 *
 * Nothing is registered at import time: {@linkcode createMetrics} builds a
 * fresh {@linkcode Registry} each time, so tests can create as many as they
 * like without name clashes, and `main.ts` creates exactly one.
 *
 * Label values are bounded on purpose: stages and actors are named by the
 * code, and HTTP routes by their pattern (`/v1/users/:user_id`), never by the
 * raw path.
 */
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from "prom-client";

/** The `Content-Type` of the Prometheus text exposition format 0.0.4. */
export const PROMETHEUS_CONTENT_TYPE: string = "text/plain; version=0.0.4; charset=utf-8";

/**
 * Buckets of `troupe_stage_duration_seconds`, one observation per batch:
 * from 100 µs (a small batch through validate) to 5 s (a storage commit
 * stuck behind a lock).
 */
export const STAGE_DURATION_BUCKETS: readonly number[] = [
  0.0001,
  0.00025,
  0.0005,
  0.001,
  0.0025,
  0.005,
  0.01,
  0.025,
  0.05,
  0.1,
  0.25,
  0.5,
  1,
  2.5,
  5,
];

/**
 * Buckets of `troupe_http_request_duration_seconds`: from 0.5 ms (a health
 * check) to 10 s (an ingest request waiting for its batch to commit under
 * back-pressure).
 */
export const HTTP_DURATION_BUCKETS: readonly number[] = [
  0.0005,
  0.001,
  0.0025,
  0.005,
  0.01,
  0.025,
  0.05,
  0.1,
  0.25,
  0.5,
  1,
  2.5,
  5,
  10,
];

/** prom-client default metrics that fail promtool's lint, dropped from the registry. */
const UNLINTABLE_DEFAULTS = [
  "nodejs_active_handles_total",
  "nodejs_active_requests_total",
  "nodejs_active_resources_total",
];

/** Outcomes of one ingested record, the values of the `outcome` label of `troupe_records_total`. */
export const RECORD_OUTCOMES = ["accepted", "duplicate", "rejected"] as const;

/** The metrics of one troupe process, all registered in {@linkcode Metrics.registry}. */
export interface Metrics {
  /** The registry to expose: `await registry.metrics()`. */
  registry: Registry;
  /** `troupe_records_total{outcome="accepted|duplicate|rejected"}`: records ingested, by outcome. */
  recordsTotal: Counter<"outcome">;
  /** `troupe_mailbox_depth{stage}`: records waiting in the bounded mailbox in front of a stage. */
  mailboxDepth: Gauge<"stage">;
  /** `troupe_mailbox_capacity{stage}`: how many records that mailbox holds before ingest answers 429/503. */
  mailboxCapacity: Gauge<"stage">;
  /** `troupe_stage_workers{stage}`: worker actors currently running in a stage's pool. */
  stageWorkers: Gauge<"stage">;
  /** `troupe_scale_decisions_total{stage,direction="up|down"}`: pool resizes decided by the scaler. */
  scaleDecisionsTotal: Counter<"stage" | "direction">;
  /** `troupe_actor_restarts_total{actor}`: restarts of a supervised actor by its supervisor. */
  actorRestartsTotal: Counter<"actor">;
  /** `troupe_stage_duration_seconds{stage}`: time a stage spends on one batch. */
  stageDuration: Histogram<"stage">;
  /** `troupe_stage_batches_total{stage,outcome="ok|error"}`: batches a stage finished, by outcome. */
  stageBatchesTotal: Counter<"stage" | "outcome">;
  /** `troupe_http_request_duration_seconds{method,route,status}`: HTTP request latency, by route pattern. */
  httpDuration: Histogram<"method" | "route" | "status">;
  /** `troupe_ready`: 1 while the service accepts traffic (`/readyz` answers 200), 0 otherwise. */
  ready: Gauge;
  /** `troupe_stored_records`: records in storage, set from the storage counts by whoever scrapes. */
  storedRecords: Gauge;
  /** `troupe_circuit_breaker_state{name}`: 0 closed, 1 half open, 2 open. */
  breakerState: Gauge<"name">;
  /** `ALERTS{alertname,alertstate,severity}`: 1 per pending or firing alert, as Prometheus names it. */
  alerts: Gauge<"alertname" | "alertstate" | "severity">;
  /** `troupe_alert_notifications_total{target="alertmanager|webhook",outcome="sent|failed"}`: POSTs of the notifier. */
  alertNotificationsTotal: Counter<"target" | "outcome">;
}

/** Options of {@linkcode createMetrics}. */
export interface CreateMetricsOptions {
  /**
   * Also register prom-client's default runtime metrics in the registry
   * (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
   * `nodejs_heap_size_used_bytes`, `nodejs_eventloop_lag_seconds`, ...).
   *
   * They start an event-loop delay monitor and a GC observer that live as
   * long as the process, so a test that creates many registries may turn
   * them off.
   *
   * @default true
   */
  defaultMetrics?: boolean;
}

/**
 * Creates the metrics of troupe in a registry of their own.
 *
 * @example
 * ```ts
 * const metrics = createMetrics();
 * metrics.recordsTotal.inc({ outcome: "accepted" }, 100);
 * const body = await metrics.registry.metrics();
 * new Response(body, { headers: { "content-type": PROMETHEUS_CONTENT_TYPE } });
 * ```
 */
export function createMetrics(options: CreateMetricsOptions = {}): Metrics {
  const registry = new Registry();
  const registers = [registry];
  if (options.defaultMetrics ?? true) {
    collectDefaultMetrics({ register: registry });
    // prom-client names three gauges `*_total`, which `promtool check metrics`
    // rejects (only counters may end in _total); their `nodejs_active_handles`
    // style twins without the suffix stay, so nothing is lost.
    for (const name of UNLINTABLE_DEFAULTS) registry.removeSingleMetric(name);
  }

  const recordsTotal = new Counter({
    name: "troupe_records_total",
    help: "Records ingested, by outcome (accepted, duplicate or rejected).",
    labelNames: ["outcome"] as const,
    registers,
  });
  // Exposed at 0 from the start so that rate() sees the first increment.
  for (const outcome of RECORD_OUTCOMES) recordsTotal.inc({ outcome }, 0);

  const breakerState = new Gauge({
    name: "troupe_circuit_breaker_state",
    help: "State of a circuit breaker: 0 closed, 1 half open, 2 open.",
    labelNames: ["name"] as const,
    registers,
  });
  breakerState.set({ name: "store" }, 0);

  const ready = new Gauge({
    name: "troupe_ready",
    help: "1 while the service accepts traffic, 0 otherwise.",
    registers,
  });
  ready.set(0);

  return {
    registry,
    recordsTotal,
    mailboxDepth: new Gauge({
      name: "troupe_mailbox_depth",
      help: "Records waiting in the bounded mailbox in front of a stage.",
      labelNames: ["stage"] as const,
      registers,
    }),
    mailboxCapacity: new Gauge({
      name: "troupe_mailbox_capacity",
      help: "Records the bounded mailbox in front of a stage holds before ingest pushes back.",
      labelNames: ["stage"] as const,
      registers,
    }),
    stageWorkers: new Gauge({
      name: "troupe_stage_workers",
      help: "Worker actors running in a stage's pool.",
      labelNames: ["stage"] as const,
      registers,
    }),
    scaleDecisionsTotal: new Counter({
      name: "troupe_scale_decisions_total",
      help: "Pool resizes decided by the scaler, by stage and direction (up or down).",
      labelNames: ["stage", "direction"] as const,
      registers,
    }),
    actorRestartsTotal: new Counter({
      name: "troupe_actor_restarts_total",
      help: "Restarts of a supervised actor by its supervisor.",
      labelNames: ["actor"] as const,
      registers,
    }),
    stageDuration: new Histogram({
      name: "troupe_stage_duration_seconds",
      help: "Time a stage spends on one batch.",
      labelNames: ["stage"] as const,
      buckets: [...STAGE_DURATION_BUCKETS],
      registers,
    }),
    stageBatchesTotal: new Counter({
      name: "troupe_stage_batches_total",
      help: "Batches a stage finished, by outcome (ok or error).",
      labelNames: ["stage", "outcome"] as const,
      registers,
    }),
    httpDuration: new Histogram({
      name: "troupe_http_request_duration_seconds",
      help: "HTTP request latency, by method, route pattern and status.",
      labelNames: ["method", "route", "status"] as const,
      buckets: [...HTTP_DURATION_BUCKETS],
      registers,
    }),
    ready,
    storedRecords: new Gauge({
      name: "troupe_stored_records",
      help: "Records in storage, as counted when scraped.",
      registers,
    }),
    breakerState,
    alerts: new Gauge({
      name: "ALERTS",
      help: "Pending and firing alerts of troupe's own rules, 1 each.",
      labelNames: ["alertname", "alertstate", "severity"] as const,
      registers,
    }),
    alertNotificationsTotal: new Counter({
      name: "troupe_alert_notifications_total",
      help: "Alert notifications posted by the notifier, by target and outcome.",
      labelNames: ["target", "outcome"] as const,
      registers,
    }),
  };
}

/** Outcomes of stream entries, the values of the `outcome` label of `troupe_queue_entries_total`. */
export const QUEUE_ENTRY_OUTCOMES = ["appended", "committed", "reclaimed", "gave_up"] as const;

/** The metrics of queue mode, registered only when a queue is configured. */
export interface QueueMetrics {
  /** `troupe_stream_lag{stream}`: entries not delivered to any consumer of the group yet. */
  streamLag: Gauge<"stream">;
  /** `troupe_stream_pending{stream}`: entries delivered to a consumer and not acknowledged. */
  streamPending: Gauge<"stream">;
  /** `troupe_stream_length{stream}`: entries in the stream (acknowledged ones are deleted). */
  streamLength: Gauge<"stream">;
  /**
   * `troupe_queue_entries_total{outcome}`: entries this instance appended (ingest),
   * committed and acknowledged, reclaimed from another consumer, or gave up on.
   */
  queueEntriesTotal: Counter<"outcome">;
  /** `troupe_queue_records_total{outcome="appended|committed"}`: records in those entries. */
  queueRecordsTotal: Counter<"outcome">;
}

/**
 * Registers the queue metrics in `registry`. The stream gauges are set by
 * the consumers about once a second from `XINFO GROUPS` and `XLEN`, never
 * by a scrape.
 */
export function createQueueMetrics(registry: Registry): QueueMetrics {
  const registers = [registry];
  const queueEntriesTotal = new Counter({
    name: "troupe_queue_entries_total",
    help:
      "Stream entries appended by ingest, committed and acknowledged, reclaimed from another consumer, or given up on.",
    labelNames: ["outcome"] as const,
    registers,
  });
  for (const outcome of QUEUE_ENTRY_OUTCOMES) queueEntriesTotal.inc({ outcome }, 0);
  const queueRecordsTotal = new Counter({
    name: "troupe_queue_records_total",
    help: "Records in the stream entries appended by ingest or committed by the consumers.",
    labelNames: ["outcome"] as const,
    registers,
  });
  for (const outcome of ["appended", "committed"]) queueRecordsTotal.inc({ outcome }, 0);
  return {
    streamLag: new Gauge({
      name: "troupe_stream_lag",
      help: "Entries of a stream not delivered to any consumer of the group yet.",
      labelNames: ["stream"] as const,
      registers,
    }),
    streamPending: new Gauge({
      name: "troupe_stream_pending",
      help: "Entries of a stream delivered to a consumer and not acknowledged yet.",
      labelNames: ["stream"] as const,
      registers,
    }),
    streamLength: new Gauge({
      name: "troupe_stream_length",
      help: "Entries in a stream; acknowledged entries are deleted.",
      labelNames: ["stream"] as const,
      registers,
    }),
    queueEntriesTotal,
    queueRecordsTotal,
  };
}
