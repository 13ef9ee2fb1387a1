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
 * └── pipeline
 *     ├── pool.validate  ── validate_stage ×1..10
 *     ├── pool.transform ── transform_stage ×1..n
 *     ├── pool.aggregate ── aggregate_stage ×1..n
 *     └── pool.store     ── storage_connection ×1..5
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
import * as v from "valibot";
import { TroupeSystem } from "./actors/mod.ts";
import { AnomalyTracker } from "./actors/transform_stage.ts";
import denoJson from "./deno.json" with { type: "json" };
import type { BodyLimits } from "./lib/body.ts";
import { parseCommand } from "./lib/cli.ts";
import { type Config, formatConfigErrors, loadConfig } from "./lib/config.ts";
import { FaultInjector, FaultPlan } from "./lib/faults.ts";
import { getLog, setupLogging } from "./lib/log.ts";
import { createMetrics, type Metrics } from "./lib/metrics.ts";
import { dataRecordSchema } from "./lib/schemas.ts";
import { serve, type Server } from "./lib/serve.ts";
import { openSqliteReader, openSqliteWriter, sqlitePath } from "./lib/sqlite_store.ts";
import { formatStatus, IngestStats } from "./lib/stats.ts";
import type { StoreReader, StoreWriter } from "./lib/store.ts";
import { notFound, onError } from "./routes/_errors.ts";
import { accessLog, type AppEnv, httpMetrics, requestId } from "./routes/_middleware.ts";
import { createHealthRoutes } from "./routes/health.ts";
import { createIngestRoutes } from "./routes/ingest.ts";
import { createQueryRoutes } from "./routes/query.ts";
import { countActors, createStatusRoutes } from "./routes/status.ts";
// PROCESS_IMPORT

/** troupe's version, from `deno.json`. */
export const VERSION: string = denoJson.version;

/** Everything the HTTP app needs. */
export interface AppDeps {
  system: TroupeSystem;
  reader: StoreReader;
  metrics: Metrics;
  stats: IngestStats;
  config: Config;
}

/** Builds the Hono app: middleware, every route, the JSON error handlers. */
export function createApp(deps: AppDeps): Hono<AppEnv> {
  const { system, reader, metrics, stats, config } = deps;
  const app = new Hono<AppEnv>();
  app.use(requestId());
  app.use(httpMetrics(metrics));
  app.use(accessLog(getLog("http")));
  const limits: BodyLimits = {
    maxBytes: config.limits.max_body_bytes,
    maxRecords: config.limits.max_records_per_request,
  };
  app.route("/", createHealthRoutes({ system, version: VERSION }));
  app.route("/", createIngestRoutes({ system, limits, metrics, stats, maxWaitMs: config.ingest.max_wait_ms }));
  app.route("/", createQueryRoutes({ reader }));
  app.route("/", createStatusRoutes({ system, reader, metrics, stats }));
  app.notFound(notFound);
  app.onError(onError(getLog("http")));
  return app;
}

/** Options of {@linkcode startSystem}. */
export interface SystemOptions {
  config: Config;
  metrics: Metrics;
  /** Opens one storage connection; defaults to the SQLite file in `config.data`. */
  openWriter?: () => Promise<StoreWriter>;
  faults?: FaultInjector;
}

/** Builds and starts the actor system over SQLite (or the given writer). */
export function startSystem(options: SystemOptions): TroupeSystem {
  const { config, metrics } = options;
  const path = sqlitePath(config.data);
  const openWriter = options.openWriter ??
    (() => Promise.resolve(openSqliteWriter(path, { synchronous: config.storage.synchronous })));
  return new TroupeSystem({
    config,
    schema: dataRecordSchema({
      maxStringLength: config.limits.max_string_length,
      maxDepth: config.limits.max_depth,
    }),
    anomaly: new AnomalyTracker(),
    faults: options.faults ?? new FaultInjector(),
    metrics,
    log: getLog("pipeline"),
    openWriter,
  }).start();
}

/** A running service: the system, the server, and how to stop them. */
export interface Service {
  system: TroupeSystem;
  server: Server;
  reader: StoreReader;
  /** Drains and stops everything; resolves with whether all accepted batches were committed. */
  stop(): Promise<boolean>;
}

/** Starts the HTTP service on the SQLite store in `config.data`. */
export async function startService(config: Config, faults?: FaultInjector): Promise<Service> {
  const metrics = createMetrics();
  const path = sqlitePath(config.data);
  // The first writer creates the file and its schema; the reader opens after it.
  openSqliteWriter(path, { synchronous: config.storage.synchronous }).close();
  const reader = openSqliteReader(path);
  const system = startSystem({ config, metrics, faults });
  const stats = new IngestStats();
  const app = createApp({ system, reader, metrics, stats, config });
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
      const closed = server.shutdown();
      const ok = await drained;
      await Promise.race([closed, new Promise((r) => setTimeout(r, Math.max(0, timeout - (Date.now() - started))))]);
      system.stop();
      await reader.close();
      log.info("Stopped in {ms} ms; drained: {ok}", { ms: Date.now() - started, ok });
      return ok;
    })();
    return stopping;
  };
  log.info("troupe {version} listening on http://{host}:{port}, data in {data}", {
    version: VERSION,
    host: config.server.host,
    port: server.port,
    data: config.data,
  });
  return { system, server, reader, stop };
}

function faultsFromEnv(raw: string | undefined): FaultInjector | undefined {
  if (raw === undefined || raw === "") return undefined;
  let json: unknown;
  try {
    json = JSON.parse(raw);
  } catch (error) {
    throw new Error(`TROUPE_FAULTS is not JSON: ${(error as Error).message}`);
  }
  const plan = v.safeParse(FaultPlan, json);
  if (!plan.success) {
    throw new Error(`TROUPE_FAULTS is invalid: ${plan.issues.map((i) => `${v.getDotPath(i) ?? ""} ${i.message}`).join("; ")}`);
  }
  return new FaultInjector(plan.output);
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
  const loaded = await loadConfig({ file: command.configFile, overrides: command.overrides });
  if (!loaded.ok) {
    process.stderr.write(`troupe: ${formatConfigErrors(command.configFile, loaded.error)}\n`);
    return 2;
  }
  const config = loaded.value;
  await setupLogging({ level: config.log_level });
  let faults: FaultInjector | undefined;
  try {
    faults = faultsFromEnv(process.env.TROUPE_FAULTS);
  } catch (error) {
    process.stderr.write(`troupe: ${(error as Error).message}\n`);
    return 2;
  }
  if (faults?.active) getLog("main").warn("Fault injection is ON: {plan}", { plan: faults.plan });

  if (command.kind === "process") {
    return 3; // PROCESS
  }

  let service: Service;
  try {
    service = await startService(config, faults);
  } catch (error) {
    process.stderr.write(`troupe: cannot start: ${(error as Error).message}\n`);
    return 1;
  }
  return await new Promise<number>((resolve) => {
    let signalled = false;
    const onSignal = (signal: string) => {
      if (signalled) return;
      signalled = true;
      getLog("main").info("{signal} received: draining", { signal });
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
