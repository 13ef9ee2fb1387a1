/**
 * @module
 * troupe's entry point: reads the command line and configuration, builds
 * the actor system and the HTTP app, and wires signals. Everything that
 * runs lives under the root supervisor:
 *
 * ```
 * HTTP (Hono) ─► ingest ─► [validate pool] ─► [transform pool] ─► [aggregate] ─► [store pool ≤5] ─► SQLite
 *                   ▲                                                                  │
 *                   └──────────────── answer once the batch is committed ◄─────────────┘
 *
 * root_supervisor
 * ├── pipeline
 * │   ├── pool.validate  ── validate_stage ×1..10
 * │   ├── pool.transform ── transform_stage ×1..n
 * │   ├── pool.aggregate ── aggregate_stage ×1..n
 * │   └── pool.store     ── storage_connection ×1..5
 * └── queue              ── stream_consumer ×partitions   (queue mode: TROUPE_QUEUE)
 * http server (stops first on shutdown; readiness drops before it)
 * ```
 *
 * @example
 * ```sh
 * deno task dev                       # serve on 127.0.0.1:8080, SQLite in ./data
 * deno run -A main.ts process --input records.ndjson --out out/
 * ```
 */
import { Hono } from "hono";
import process from "node:process";
import { startSystem, type TroupeSystem } from "./actors/mod.ts";
import denoJson from "./deno.json" with { type: "json" };
import type { BodyLimits } from "./lib/body.ts";
import { parseCommand } from "./lib/cli.ts";
import { type Config, formatConfigErrors, loadConfig } from "./lib/config.ts";
import { FaultInjector } from "./lib/faults.ts";
import { IdempotencyCache } from "./lib/idempotency.ts";
import { getLog, setupLogging } from "./lib/log.ts";
import { createMetrics, createQueueMetrics, type Metrics } from "./lib/metrics.ts";
import type { QueueMetrics } from "./lib/metrics.ts";
import { maskUrl, type QueueProducer } from "./lib/queue.ts";
import type { RedisQueue } from "./lib/redis_queue.ts";
import { serve, type Server } from "./lib/serve.ts";
import { openSqliteReader, openSqliteWriter, sqlitePath } from "./lib/sqlite_store.ts";
import { formatStatus, IngestStats } from "./lib/stats.ts";
import type { StoreReader } from "./lib/store.ts";
import type { PostgresStorage } from "./lib/postgres_store.ts";
import { bearerAuth } from "hono/bearer-auth";
import { errorBody, notFound, onError } from "./routes/_errors.ts";
import { createAdminRoutes } from "./routes/admin.ts";
import { createMonitorRoutes } from "./routes/monitor.ts";
import { History } from "./lib/history.ts";
import { CustomMetrics } from "./lib/custom_metrics.ts";
import { AlertBook } from "./lib/alerts.ts";
import { HistoryStore, MinuteFlusher } from "./lib/history_store.ts";
import { type AlertRuleSpec, builtinRules, rulesFromConfig } from "./actors/alert_rule.ts";
import { getHeapStatistics } from "node:v8";
import { accessLog, type AppEnv, httpMetrics, requestId } from "./routes/_middleware.ts";
import { createHealthRoutes } from "./routes/health.ts";
import { createIngestRoutes } from "./routes/ingest.ts";
import { createQueryRoutes } from "./routes/query.ts";
import { countActors, createStatusRoutes } from "./routes/status.ts";
import { runProcess } from "./lib/process_file.ts";
import { SilenceStore } from "./lib/silences.ts";
import { createConfigRoutes } from "./routes/config.ts";
import { createDashboardRoutes } from "./routes/dashboard.ts";
import { createSilenceRoutes } from "./routes/silences.ts";
import { createStreamRoutes, liveSource, StreamHub } from "./routes/stream.ts";

/** troupe's version, from `deno.json`. */
export const VERSION: string = denoJson.version;

/** Everything the HTTP app needs. */
export interface AppDeps {
  system: TroupeSystem;
  reader: StoreReader;
  metrics: Metrics;
  stats: IngestStats;
  config: Config;
  history: History;
  custom: CustomMetrics;
  book: AlertBook;
  rules: AlertRuleSpec[];
  store?: HistoryStore;
  /** Alert silences; without them the silence routes do not exist. */
  silences?: SilenceStore;
  /** The live streams of `GET /v1/stream`; one is made when absent. */
  streams?: StreamHub;
  /** Queue mode: ingest appends to Redis Streams. */
  queue?: { producer: QueueProducer; metrics: QueueMetrics };
}

/** Builds the Hono app: middleware, every route, the JSON error handlers. */
export function createApp(deps: AppDeps): Hono<AppEnv> {
  const { system, reader, metrics, stats, config, history, custom, book, rules, store, silences } =
    deps;
  const app = new Hono<AppEnv>();
  app.use(requestId());
  app.use(httpMetrics(metrics));
  app.use(accessLog(getLog("http")));
  const limits: BodyLimits = {
    maxBytes: config.limits.max_body_bytes,
    maxRecords: config.limits.max_records_per_request,
  };
  const token = config.auth.token;
  if (token !== null) {
    const auth = bearerAuth({
      token,
      noAuthenticationHeader: {
        message: errorBody("unauthorized", "Missing Authorization: Bearer <token>"),
      },
      invalidAuthenticationHeader: {
        message: errorBody(
          "unauthorized",
          "Malformed Authorization header: expected Bearer <token>",
        ),
      },
      invalidToken: { message: errorBody("unauthorized", "Invalid token") },
    });
    app.use("/v1/*", auth);
    if (config.auth.protect_metrics) app.use("/metrics", auth);
    app.route("/", createAdminRoutes({ faults: system.deps.faults, system }));
  }
  app.route("/", createHealthRoutes({ system, version: VERSION }));
  const idempotency = new IdempotencyCache({
    windowMs: config.idempotency.window_ms,
    maxKeys: config.idempotency.max_keys,
    maxBytes: config.idempotency.max_bytes,
  });
  app.route(
    "/",
    createIngestRoutes({
      system,
      limits,
      metrics,
      stats,
      maxWaitMs: config.ingest.max_wait_ms,
      maxConcurrent: config.ingest.max_concurrent_requests,
      maxPipelineRecords: config.ingest.max_pipeline_records,
      batchSize: config.pipeline.batch_size,
      idempotency,
      queue: deps.queue,
    }),
  );
  app.route("/", createQueryRoutes({ reader }));
  app.route("/", createStatusRoutes({ system, reader, metrics, stats, book }));
  app.route(
    "/",
    createMonitorRoutes({
      history,
      custom,
      book,
      rules: () => system.alertRules(rules),
      store,
      silences,
    }),
  );
  // The dashboard: its page (public), its live stream, silences and the config (under /v1).
  app.route("/", createDashboardRoutes({ tokenRequired: token !== null }));
  const streams = deps.streams ??
    new StreamHub({ source: liveSource({ system, history, book, silences, version: VERSION }) });
  app.route("/", createStreamRoutes({ hub: streams }));
  if (silences !== undefined) app.route("/", createSilenceRoutes({ silences }));
  app.route("/", createConfigRoutes({ config }));
  app.notFound(notFound);
  app.onError(onError(getLog("http")));
  return app;
}

/** A running service: the system, the server, and how to stop them. */
export interface Service {
  system: TroupeSystem;
  server: Server;
  reader: StoreReader;
  /** The open `GET /v1/stream` streams. */
  streams: StreamHub;
  /** Drains and stops everything; resolves with whether all accepted batches were committed. */
  stop(): Promise<boolean>;
}

/** Ingest figures for the collector: records/s by outcome since the last sample, latency. */
function ingestReadings(stats: IngestStats): () => Record<string, number> {
  let last = {
    at: performance.now(),
    accepted: 0,
    duplicates: 0,
    rejected: 0,
    processed: 0,
    requests: 0,
    failed: 0,
  };
  const ratio = (part: number, whole: number) => (whole > 0 ? part / whole : 0);
  return () => {
    const at = performance.now();
    const seconds = Math.max(0.001, (at - last.at) / 1000);
    const latency = stats.latency();
    const out = {
      records_accepted_per_second: (stats.accepted - last.accepted) / seconds,
      records_duplicate_per_second: (stats.duplicates - last.duplicates) / seconds,
      records_rejected_per_second: (stats.rejected - last.rejected) / seconds,
      ingest_requests_per_second: (stats.requests - last.requests) / seconds,
      ingest_errors_per_second: (stats.failedRequests - last.failed) / seconds,
      ingest_latency_mean_ms: latency.mean,
      ingest_latency_p50_ms: latency.p50,
      ingest_latency_p99_ms: latency.p99,
      // Prometheus-style names, so config rules can say `metric: troupe_records_total`.
      'troupe_records_total{outcome="accepted"}': stats.accepted,
      'troupe_records_total{outcome="duplicate"}': stats.duplicates,
      'troupe_records_total{outcome="rejected"}': stats.rejected,
      records_rejected_ratio: ratio(
        stats.rejected - last.rejected,
        stats.processed - last.processed,
      ),
    };
    last = {
      at,
      accepted: stats.accepted,
      duplicates: stats.duplicates,
      rejected: stats.rejected,
      processed: stats.processed,
      requests: stats.requests,
      failed: stats.failedRequests,
    };
    return out;
  };
}

/**
 * Opens PostgreSQL when `storage.url` is set, creating its schema first;
 * resolves `undefined` for the SQLite default, which `startService` opens
 * itself. (The client is loaded only then.)
 */
export async function openStorage(config: Config): Promise<PostgresStorage | undefined> {
  if (config.storage.url === null) return undefined;
  const { openPostgresStorage } = await import("./lib/postgres_store.ts");
  return await openPostgresStorage(config.storage.url);
}

/**
 * Opens the Redis queue when `queue.url` is set (queue mode); `undefined`
 * otherwise. The Redis client is loaded only then, so the single-process
 * path never loads it. Connects in the background: `/readyz` says 503
 * until Redis answers.
 */
export async function openQueue(config: Config): Promise<RedisQueue | undefined> {
  if (config.queue.url === null) return undefined;
  let loaded;
  try {
    loaded = await import("./lib/redis_queue.ts");
  } catch (error) {
    // ioredis's `debug` dependency lists the whole environment when it loads.
    if ((error as Error).name === "NotCapable" || /env access/.test((error as Error).message)) {
      throw new Error(
        "Queue mode loads the Redis client, which reads the whole environment: run deno with --allow-env (or -A)",
        { cause: error },
      );
    }
    throw error;
  }
  return new loaded.RedisQueue(loaded.queueSettings(config)!, getLog("queue"));
}

/**
 * Starts the HTTP service on the SQLite store in `config.data`, or on
 * `storage` opened by {@linkcode openStorage} when `storage.url` is set
 * (the monitor's history stays in SQLite in `config.data`).
 */
export function startService(
  config: Config,
  faults?: FaultInjector,
  storage?: PostgresStorage,
  /** Queue mode, opened by {@linkcode openQueue}. */
  queue?: RedisQueue,
): Service {
  const metrics = createMetrics();
  const queueMetrics = queue === undefined ? undefined : createQueueMetrics(metrics.registry);
  const path = sqlitePath(config.data);
  let reader: StoreReader;
  if (storage === undefined) {
    if (config.storage.url !== null) {
      throw new Error("storage.url is set: open it with openStorage(config) first");
    }
    // The first writer creates the file and its schema; the reader opens after it.
    openSqliteWriter(path, { synchronous: config.storage.synchronous }).close();
    reader = openSqliteReader(path);
  } else {
    reader = storage.reader;
  }
  const stats = new IngestStats();
  const history = new History();
  const custom = new CustomMetrics(metrics.registry, { history });
  const book = new AlertBook();
  const store = new HistoryStore(path);
  const silences = new SilenceStore(path);
  const rules = [
    ...builtinRules({
      heapLimitBytes: getHeapStatistics().heap_size_limit,
      memoryLeak: {
        windowMs: config.alerts.memory_leak.window,
        bucketMs: config.alerts.memory_leak.bucket,
        minGrowth: config.alerts.memory_leak.min_growth,
        forMs: config.alerts.memory_leak.for,
      },
    }),
    ...rulesFromConfig(config.alerts.rules),
  ];
  const system = startSystem({
    config,
    metrics,
    faults,
    openWriter: storage?.openWriter,
    queue: queue === undefined ? undefined : {
      backend: queue,
      producer: queue,
      metrics: queueMetrics!,
      // Records are counted when the consumers commit them, not when ingest queues them.
      onCommitted: (r) => {
        metrics.recordsTotal.inc({ outcome: "accepted" }, r.accepted);
        metrics.recordsTotal.inc({ outcome: "duplicate" }, r.duplicates);
        metrics.recordsTotal.inc({ outcome: "rejected" }, r.rejected);
        stats.accepted += r.accepted;
        stats.duplicates += r.duplicates;
        stats.rejected += r.rejected;
      },
    },
    monitor: config.monitor.enabled
      ? {
        history,
        intervalMs: config.monitor.interval_ms,
        read: ingestReadings(stats),
        rules,
        book,
        evaluationIntervalMs: config.alerts.evaluation_interval,
        notifier: config.alerts.alertmanager_url === null && config.alerts.webhook_url === null
          ? undefined
          : {
            alertmanagerUrl: config.alerts.alertmanager_url,
            webhookUrl: config.alerts.webhook_url,
            intervalMs: config.alerts.resend_interval,
            onAttempt: (target, outcome) =>
              metrics.alertNotificationsTotal.inc({ target, outcome }),
            silenced: (alert) => silences.isSilenced(alert),
          },
        flusher: new MinuteFlusher(store, config.monitor.retention_days * 86_400_000, Date.now()),
      }
      : undefined,
  });
  const streams = new StreamHub({
    source: liveSource({ system, history, book, silences, version: VERSION }),
    intervalMs: Math.min(500, config.monitor.interval_ms),
  });
  const app = createApp({
    system,
    reader,
    metrics,
    stats,
    config,
    history,
    custom,
    book,
    rules,
    store,
    silences,
    streams,
    queue: queue === undefined ? undefined : { producer: queue, metrics: queueMetrics! },
  });
  const server = serve(app.fetch, { hostname: config.server.host, port: config.server.port });
  const log = getLog("main");
  let statusTimer: ReturnType<typeof setInterval> | undefined;
  if (config.status || process.stdout.isTTY) {
    statusTimer = setInterval(() => {
      const latency = stats.latency();
      process.stdout.write(
        formatStatus({
          rate: stats.rate(),
          meanMs: latency.mean,
          errorRate: stats.errorRate,
          actors: countActors(system.tree()),
          rssBytes: process.memoryUsage().rss,
          load: system.load,
        }) + "\n",
      );
    }, 1000);
  }
  let stopping: Promise<boolean> | undefined;
  const stop = () => {
    stopping ??= (async () => {
      clearInterval(statusTimer);
      const timeout = config.server.shutdown_timeout_ms;
      const started = Date.now();
      // Readiness drops at once; requests already inside finish with their batches.
      const drained = system.drain(Math.max(0, timeout - 500));
      // Open event streams would hold the server's shutdown: end them first.
      streams.closeAll();
      const closed = server.shutdown();
      const ok = await drained;
      await Promise.race([
        closed,
        new Promise((r) => setTimeout(r, Math.max(0, timeout - (Date.now() - started)))),
      ]);
      system.stop();
      await queue?.close();
      // PostgreSQL: the reader, and every writer the stopped connections are closing.
      await (storage ?? reader).close();
      store.close();
      silences.close();
      const ms = Date.now() - started;
      log.info(
        `Stopped in ${ms} ms; ${ok ? "every accepted batch committed" : "drain timed out"}`,
        { ms, ok },
      );
      return ok;
    })();
    return stopping;
  };
  log.info(
    `troupe ${VERSION} listening on http://${config.server.host}:${server.port}, data in ${config.data}${
      storage === undefined ? "" : `, records in PostgreSQL "${storage.target}"`
    }`,
    {
      version: VERSION,
      host: config.server.host,
      port: server.port,
      data: config.data,
      ...(storage === undefined ? {} : { store: storage.target }),
    },
  );
  if (queue !== undefined) {
    const q = queue.settings;
    log.info(
      `Queue mode: ${q.partitions} streams "${q.stream_prefix}:*" on ${
        maskUrl(q.url)
      }, group "${q.group}", consumer "${q.consumer}"`,
      { queue: maskUrl(q.url), partitions: q.partitions, group: q.group, consumer: q.consumer },
    );
  }
  return { system, server, reader, streams, stop };
}

/**
 * Settings that come only from the environment, as raw config overrides:
 * `TROUPE_TOKEN`, `TROUPE_FAULTS` (JSON), `TROUPE_STORE` (`storage.url`) and
 * `TROUPE_QUEUE` (`queue.url`).
 * Validated with the rest.
 */
export function envOverrides(
  env: Record<string, string | undefined>,
): { ok: true; value: Record<string, unknown> } | { ok: false; error: string } {
  const out: Record<string, unknown> = {};
  if (env.TROUPE_TOKEN) out.auth = { token: env.TROUPE_TOKEN };
  if (env.TROUPE_STORE) out.storage = { url: env.TROUPE_STORE };
  if (env.TROUPE_QUEUE) out.queue = { url: env.TROUPE_QUEUE };
  if (env.TROUPE_FAULTS) {
    try {
      out.faults = JSON.parse(env.TROUPE_FAULTS);
    } catch (error) {
      return { ok: false, error: `TROUPE_FAULTS is not JSON: ${(error as Error).message}` };
    }
  }
  return { ok: true, value: out };
}

async function main(args: string[]): Promise<number> {
  const parsed = parseCommand(args, process.env, VERSION);
  if (!parsed.ok) {
    process.stderr.write(`troupe: ${parsed.error}\nRun "troupe --help" for usage.\n`);
    return 2;
  }
  const command = parsed.value;
  if (command.kind === "help" || command.kind === "version") {
    process.stdout.write(command.text + "\n");
    return 0;
  }
  const fromEnv = envOverrides(process.env);
  if (!fromEnv.ok) {
    process.stderr.write(`troupe: ${fromEnv.error}\n`);
    return 2;
  }
  const loaded = await loadConfig({
    file: command.configFile,
    overrides: { ...fromEnv.value, ...command.overrides },
  });
  if (!loaded.ok) {
    process.stderr.write(`troupe: ${formatConfigErrors(command.configFile, loaded.error)}\n`);
    return 2;
  }
  const config = loaded.value;
  await setupLogging({ level: config.log_level });
  const faults = new FaultInjector(config.faults);
  if (faults.active) getLog("main").warn("Fault injection is ON", { plan: faults.plan });

  if (command.kind === "process") {
    return await runProcess({ config, input: command.input, out: command.out, faults });
  }

  let service: Service;
  try {
    service = startService(config, faults, await openStorage(config), await openQueue(config));
  } catch (error) {
    process.stderr.write(`troupe: cannot start: ${(error as Error).message}\n`);
    return 1;
  }
  return await new Promise<number>((resolve) => {
    let signalled = false;
    const onSignal = (signal: string) => {
      if (signalled) return;
      signalled = true;
      getLog("main").info(`${signal} received: draining`, { signal });
      service.stop().then((ok) => resolve(ok ? 0 : 1), () => resolve(1));
    };
    process.on("SIGINT", () => onSignal("SIGINT"));
    process.on("SIGTERM", () => onSignal("SIGTERM"));
  });
}

if (import.meta.main) {
  main(process.argv.slice(2)).then(
    async (code) => {
      const { closeLogging } = await import("./lib/log.ts");
      await closeLogging().catch(() => {});
      process.exit(code);
    },
    (error) => {
      process.stderr.write(`troupe: ${error?.stack ?? error}\n`);
      process.exit(1);
    },
  );
}
