/**
 * @module
 * The handle the outside world holds on the actor system: start it, submit
 * records, ask whether it is ready, draw its tree, drain and stop it. The
 * HTTP routes and the `process` command use only this.
 */
import { type AnyActorRef, createActor } from "xstate";
import { Batch, type IngestResult, Ticket, toBatches } from "../lib/batch.ts";
import { STAGES } from "../lib/schemas.ts";
import type { StageDeps } from "./_stage_deps.ts";
import type { Config } from "../lib/config.ts";
import type { History } from "../lib/history.ts";
import type { MinuteFlusher } from "../lib/history_store.ts";
import type { AlertBook } from "../lib/alerts.ts";
import type { AlertRuleSpec } from "./alert_rule.ts";
import type { MonitorInput } from "./monitor.ts";
import { FaultInjector } from "../lib/faults.ts";
import { getLog } from "../lib/log.ts";
import type { Metrics } from "../lib/metrics.ts";
import { dataRecordSchema } from "../lib/schemas.ts";
import { openSqliteWriter, sqlitePath } from "../lib/sqlite_store.ts";
import type { StoreWriter } from "../lib/store.ts";
import { openWorkerWriter } from "../lib/worker_store.ts";
import { createStageRuntimes, type StageRuntimes } from "./pipeline.ts";
import { AnomalyTracker } from "./transform_stage.ts";
import { rootSupervisorMachine } from "./root_supervisor.ts";
import type { QueueBackend, QueueProducer, QueueSink } from "../lib/queue.ts";
import type { QueueMetrics } from "../lib/metrics.ts";
import type { FailedRecord } from "../lib/schemas.ts";

/** The outcome of offering records to the pipeline. */
export type SubmitOutcome =
  | { ok: true; ticket: Ticket }
  | { ok: false; status: 429 | 503; retryAfterSeconds: number; message: string };

/** One check behind `/readyz`. */
export interface ReadinessCheck {
  name: string;
  ok: boolean;
  message?: string;
}

/** One node of `GET /v1/actors`. */
export interface ActorNode {
  id: string;
  type: string;
  state: string;
  mailbox: { depth: number; capacity: number } | null;
  restarts: number;
  children: ActorNode[];
}

/** Options of {@linkcode SubmitOptions}. */
export interface SubmitOptions {
  /** How long to wait for mailbox room before answering 429. */
  maxWaitMs: number;
  /** Keep committed records on the ticket (file mode). @default false */
  keepRecords?: boolean;
  /**
   * Accept while a drain is under way: the queue consumers finishing the
   * entries they hold. @default false
   */
  whileDraining?: boolean;
}

/** Turns on queue mode: the queue supervisor and its stream consumers. */
export interface QueueOptions {
  /** Opens the consumers' connections. */
  backend: QueueBackend;
  /** The ingest side's connection, checked by `/readyz`. */
  producer?: QueueProducer;
  metrics: QueueMetrics;
  /** Called with each committed entry's outcome. */
  onCommitted?: (result: IngestResult) => void;
  /** Refresh period of the stream figures, ms. @default 1000 */
  statsIntervalMs?: number;
}

/** Turns on the monitor supervisor and its collector. */
export interface MonitorOptions {
  history: History;
  /** Sampling period, ms. */
  intervalMs: number;
  /** Extra figures to record at each sample (HTTP, records/s…). */
  read?: () => Record<string, number>;
  /** Writes complete minutes of the history to SQLite. */
  flusher?: MinuteFlusher;
  /** Alert rules, each run by its own actor under the monitor. */
  rules?: AlertRuleSpec[];
  /** Where the rules write their alerts. */
  book?: AlertBook;
  /** Evaluation period of the rules, ms. @default 1000 */
  evaluationIntervalMs?: number;
  /** Where the alerts are sent (Alertmanager, webhook); nowhere when absent. */
  notifier?: MonitorInput["notifier"];
}

/** One rule as `GET /v1/alerts/rules` shows it. */
export interface RuleStatus {
  name: string;
  state: string;
  severity: string;
  summary: string;
  for_ms: number;
  keep_firing_for_ms: number;
  value: number | null;
  description: string | null;
}

/** A running actor system: the root supervisor and the state that outlives its actors. */
export class TroupeSystem {
  readonly deps: StageDeps;
  readonly runtimes: StageRuntimes;
  readonly root: ReturnType<typeof createActor<typeof rootSupervisorMachine>>;
  #draining = false;
  #fatal: string | null = null;
  readonly #queue: QueueOptions | undefined;

  constructor(deps: StageDeps, monitor?: MonitorOptions, queue?: QueueOptions) {
    this.deps = deps;
    this.#queue = queue;
    this.runtimes = createStageRuntimes(deps);
    const sink: QueueSink = {
      submit: (records) =>
        this.submit(records, { maxWaitMs: deps.config.ingest.max_wait_ms, whileDraining: true }),
      alive: () => this.#down(true) === null,
      fail: (failed) => this.storeFailed(failed),
      maxSubmit: Math.max(1, Math.floor(deps.config.pipeline.stages.validate.mailbox_capacity / 2)),
    };
    this.root = createActor(rootSupervisorMachine, {
      input: {
        runtimes: this.runtimes,
        deps,
        monitor: monitor === undefined ? undefined : {
          collector: {
            history: monitor.history,
            intervalMs: monitor.intervalMs,
            read: () => ({ ...this.readings(), ...(monitor.read?.() ?? {}) }),
            flusher: monitor.flusher,
          },
          policy: deps.config.supervisor,
          log: deps.log,
          rules: monitor.rules,
          book: monitor.book,
          evaluationIntervalMs: monitor.evaluationIntervalMs,
          notifier: monitor.notifier,
        },
        queue: queue === undefined ? undefined : {
          backend: queue.backend,
          sink,
          metrics: queue.metrics,
          policy: deps.config.supervisor,
          log: getLog("queue"),
          onCommitted: queue.onCommitted,
          statsIntervalMs: queue.statsIntervalMs,
        },
      },
      systemId: "root",
    });
    // The root handles its children's errors; anything reaching here is a bug.
    this.root.subscribe({
      error: (error) => {
        this.#fatal = error instanceof Error ? error.message : String(error);
        deps.log.fatal("Root supervisor crashed: {error}", { error: this.#fatal });
      },
    });
  }

  /**
   * Pipeline figures for the collector: mailbox depth and workers per
   * stage, records in flight, and actors alive per type.
   */
  readings(): Record<string, number> {
    const out: Record<string, number> = { in_flight_records: this.load };
    let fill = 0;
    let restarts = 0;
    for (const s of STAGES) {
      const rt = this.runtimes[s];
      out[`mailbox_depth_${s}`] = rt.mailbox.depth;
      out[`workers_${s}`] = rt.workers;
      fill = Math.max(fill, rt.mailbox.fill);
      restarts += rt.workerRestarts + rt.poolRestarts;
    }
    out.mailbox_fill_max = fill;
    out.actor_restarts_total = restarts;
    const count = (n: ActorNode) => {
      out[`actors_${n.type}`] = (out[`actors_${n.type}`] ?? 0) + 1;
      n.children.forEach(count);
    };
    count(this.tree());
    return out;
  }

  /** The alert rules run by the monitor, with their state and last evaluation. */
  alertRules(rules: readonly AlertRuleSpec[]): RuleStatus[] {
    return rules.map((spec) => {
      const snapshot = this.root.system.get(`alert.${spec.name}`)?.getSnapshot();
      const alert = (snapshot?.value as { alert?: string | Record<string, unknown> } | undefined)
        ?.alert;
      const last =
        (snapshot?.context as { last?: { value: number | null; description: string } } | undefined)
          ?.last;
      return {
        name: spec.name,
        state: alert === undefined
          ? "stopped"
          : typeof alert === "string"
          ? alert
          : Object.keys(alert)[0],
        severity: spec.severity,
        summary: spec.summary,
        for_ms: spec.forMs,
        keep_firing_for_ms: spec.keepFiringForMs,
        value: last?.value ?? null,
        description: last?.description ?? null,
      };
    });
  }

  /** Whether the monitor (collector, alert rules, notifier) is running; `null` when none was configured. */
  get monitorEnabled(): boolean | null {
    const context = this.root.getSnapshot().context;
    if (context.monitor === undefined) return null;
    return !context.monitorPaused;
  }

  /**
   * Stops or restarts the monitor at run time. Alerts in the book stay as
   * they are; the rules start again from `inactive` on resume.
   */
  setMonitor(enabled: boolean): void {
    this.root.send({ type: enabled ? "monitor.resume" : "monitor.pause" });
  }

  /** Starts the supervision tree. */
  start(): this {
    this.root.start();
    return this;
  }

  /** Whether a drain has begun. */
  get draining(): boolean {
    return this.#draining;
  }

  /** Records queued or being worked on, over all stages. */
  get load(): number {
    return STAGES.reduce((n, s) => n + this.runtimes[s].load, 0);
  }

  /**
   * Offers `records` to the pipeline as one ticket. Waits up to
   * `maxWaitMs` for room in the validate mailbox; answers 429 when none
   * came, 503 when the system is not ready.
   */
  async submit(records: unknown[], options: SubmitOptions): Promise<SubmitOutcome> {
    // Storage being down is no reason to refuse yet: batches wait in the
    // mailboxes until it is back, and ingest says 503 once they are full.
    const whileDraining = options.whileDraining ?? false;
    const down = this.#down(whileDraining);
    if (down !== null) return { ok: false, status: 503, retryAfterSeconds: 5, message: down };
    const ticket = new Ticket(options.keepRecords ?? false);
    if (records.length === 0) {
      ticket.open();
      queueMicrotask(() => ticket.settleEmpty());
      return { ok: true, ticket };
    }
    const mailbox = this.runtimes.validate.mailbox;
    const deadline = Date.now() + options.maxWaitMs;
    let room = await mailbox.waitForRoom(records.length, options.maxWaitMs);
    // The room is not held for us: a request told "room" at the same moment
    // may have filled it before this one resumed. Look again, and put below
    // with nothing awaited in between.
    while (room && !mailbox.hasRoom(records.length)) {
      room = await mailbox.waitForRoom(records.length, Math.max(0, deadline - Date.now()));
    }
    if (!room) {
      return {
        ok: false,
        status: this.#unavailable() === null ? 429 : 503,
        retryAfterSeconds: this.retryAfterSeconds(),
        message: `The pipeline is full: ${mailbox.depth} of ${mailbox.capacity} records queued`,
      };
    }
    const after = this.#down(whileDraining);
    if (after !== null) return { ok: false, status: 503, retryAfterSeconds: 5, message: after };
    for (const b of toBatches(ticket, records, this.deps.config.pipeline.batch_size)) {
      mailbox.put(b);
    }
    this.root.system.get("pool.validate")?.send({ type: "mailbox.put" });
    return { ok: true, ticket };
  }

  /** Seconds a client should wait before retrying, from how full the mailboxes are (1 to 30). */
  retryAfterSeconds(): number {
    const fill = Math.max(...STAGES.map((s) => this.runtimes[s].mailbox.fill));
    return Math.min(30, Math.max(1, Math.ceil(fill * 5)));
  }

  /** What `/readyz` reports. */
  readiness(): { ready: boolean; checks: ReadinessCheck[] } {
    const snapshot = this.root.getSnapshot();
    const checks: ReadinessCheck[] = [];
    checks.push({
      name: "supervisors",
      ok: snapshot.status === "active" && !snapshot.matches("failed") && this.#fatal === null &&
        STAGES.every((s) => this.root.system.get(`pool.${s}`) !== undefined),
      message: this.#fatal ??
        (snapshot.matches("failed")
          ? `Root supervisor gave up: ${snapshot.context.lastError}`
          : undefined),
    });
    const connections = this.#storeConnections();
    const breaker = this.root.system.get("breaker.store")?.getSnapshot().value;
    checks.push({
      name: "storage",
      // Half open is still probing: not ready until a trial commit went through.
      ok: connections.open > 0 && (breaker === undefined || breaker === "closed"),
      message: breaker === "open" || breaker === "halfOpen"
        ? `Storage unavailable: circuit breaker ${breaker === "open" ? "open" : "half open"}`
        : connections.open > 0
        ? undefined
        : `No open storage connection (${connections.total} starting)`,
    });
    if (this.#queue !== undefined) {
      const producer = this.#queue.producer;
      const supervisor = this.root.system.get("queue")?.getSnapshot();
      const running = supervisor?.status === "active" && supervisor.value === "running";
      checks.push({
        name: "queue",
        ok: (producer?.ready ?? true) && running,
        message: producer !== undefined && !producer.ready
          ? `Queue unavailable: ${producer.status}`
          : running
          ? undefined
          : "The queue consumers are not running",
      });
    }
    checks.push({
      name: "shutdown",
      ok: !this.#draining,
      message: this.#draining ? "Shutting down" : undefined,
    });
    for (const c of checks) if (c.ok) delete c.message;
    return { ready: checks.every((c) => c.ok), checks };
  }

  /** The supervision tree, for `GET /v1/actors`. */
  tree(): ActorNode {
    return { ...describe(this.root as unknown as AnyActorRef, this.runtimes), id: "root" };
  }

  /**
   * Stops taking records and waits until every accepted batch is committed,
   * or `timeoutMs` passes. Resolves `true` when everything drained.
   */
  async drain(timeoutMs: number): Promise<boolean> {
    this.#draining = true;
    const deadline = Date.now() + timeoutMs;
    // Queue mode: the consumers stop reading and commit what they hold first.
    const queue = this.root.system.get("queue");
    if (queue !== undefined) {
      queue.send({ type: "queue.drain" });
      while (queue.getSnapshot().status === "active" && queue.getSnapshot().value !== "drained") {
        if (Date.now() >= deadline) break;
        await new Promise((r) => setTimeout(r, 10));
      }
    }
    this.root.send({ type: "shutdown" });
    this.runtimes.validate.mailbox.cancelWaiters();
    while (!STAGES.every((s) => this.runtimes[s].idle)) {
      if (Date.now() >= deadline) return false;
      await new Promise((r) => setTimeout(r, 10));
    }
    return true;
  }

  /** Stops every actor; storage connections close as they stop. */
  stop(): void {
    this.#draining = true;
    this.root.stop();
  }

  /**
   * Stores failed records (a queue entry given up on) through the store
   * stage, in the usual commit; resolves once they are committed.
   */
  async storeFailed(failed: FailedRecord[]): Promise<void> {
    if (failed.length === 0) return;
    const ticket = new Ticket();
    const batch = new Batch(ticket, [], []);
    batch.stage = "store";
    batch.failed = failed;
    this.runtimes.store.mailbox.put(batch);
    this.root.system.get("pool.store")?.send({ type: "mailbox.put" });
    await ticket.promise;
  }

  /**
   * Why nothing can be accepted at all (shutting down, supervisors gone), or
   * `null`. Neither storage nor the queue being down is a reason.
   */
  #down(whileDraining = false): string | null {
    if (this.#draining && !whileDraining) return "The service is shutting down";
    const r = this.readiness();
    const failing = r.checks.filter((c) =>
      !c.ok && c.name !== "storage" && c.name !== "queue" &&
      !(whileDraining && c.name === "shutdown")
    );
    return failing.length === 0 ? null : failing.map((c) => c.message ?? c.name).join("; ");
  }

  #unavailable(): string | null {
    if (this.#draining) return "The service is shutting down";
    const r = this.readiness();
    if (r.ready) return null;
    return r.checks.filter((c) => !c.ok).map((c) => c.message ?? c.name).join("; ");
  }

  #storeConnections(): { open: number; total: number } {
    const pool = this.root.system.get("pool.store");
    if (pool === undefined) return { open: 0, total: 0 };
    const children = Object.values(pool.getSnapshot().children ?? {}) as AnyActorRef[];
    let open = 0;
    for (const c of children) {
      if (c.id === "breaker") continue;
      const s = c.getSnapshot();
      if (s.status === "active" && s.value !== "connecting") open++;
    }
    return { open, total: children.filter((c) => c.id !== "breaker").length };
  }
}

function describe(ref: AnyActorRef, runtimes: StageRuntimes): ActorNode {
  const snapshot = ref.getSnapshot();
  const logic = (ref as unknown as { logic: { config?: { id?: string } } }).logic;
  const type = logic.config?.id ?? (typeof ref.src === "string" ? ref.src : "actor");
  const ctx = snapshot.context as Record<string, unknown> | undefined;
  let mailbox: ActorNode["mailbox"] = null;
  let restarts = 0;
  if (type === "stage_pool" && ctx) {
    const rt = ctx.runtime as StageRuntimes["validate"];
    mailbox = { depth: rt.mailbox.depth, capacity: rt.mailbox.capacity };
    restarts = rt.poolRestarts;
  } else if (type === "root_supervisor" && ctx) {
    restarts = ctx.restarts as number;
  } else if (type === "pipeline") {
    restarts = 0;
  } else if (ctx && typeof ctx.workerId === "string") {
    const stage = (ctx.workerId as string).split(".")[0] as keyof StageRuntimes;
    const held = runtimes[stage]?.inFlight.get(ctx.workerId as string);
    mailbox = {
      depth: held ? held.batches.reduce((n, b) => n + b.size, 0) : 0,
      capacity: runtimes[stage]?.mailbox.capacity ?? 0,
    };
    restarts = runtimes[stage]?.workerRestarts ?? 0;
  }
  const children = Object.values(snapshot.children ?? {})
    .filter((c): c is AnyActorRef => c !== undefined)
    .map((c) => describe(c, runtimes));
  return {
    id: ref.id,
    type,
    state: typeof snapshot.value === "string"
      ? snapshot.value
      : snapshot.value && Object.keys(snapshot.value).length > 0
      ? JSON.stringify(snapshot.value)
      : snapshot.status === "active"
      ? "running"
      : snapshot.status,
    mailbox,
    restarts,
    children,
  };
}

/** Options of {@linkcode startSystem}. */
export interface SystemOptions {
  config: Config;
  metrics: Metrics;
  /** Opens one storage connection; defaults to the SQLite file in `config.data`. */
  openWriter?: () => Promise<StoreWriter>;
  faults?: FaultInjector;
  /** Starts the monitor supervisor and its collector. */
  monitor?: MonitorOptions;
  /** Queue mode: starts the queue supervisor and its stream consumers. */
  queue?: QueueOptions;
}

/** Builds and starts the actor system over SQLite (or the given writer). */
export function startSystem(options: SystemOptions): TroupeSystem {
  const { config, metrics } = options;
  const path = sqlitePath(config.data);
  const { synchronous, worker } = config.storage;
  const openWriter = options.openWriter ??
    (worker
      ? () => openWorkerWriter(path, { synchronous })
      : () => Promise.resolve(openSqliteWriter(path, { synchronous })));
  return new TroupeSystem(
    {
      config,
      schema: dataRecordSchema({
        maxStringLength: config.limits.max_string_length,
        maxDepth: config.limits.max_depth,
      }),
      anomaly: new AnomalyTracker(),
      faults: options.faults ?? new FaultInjector(config.faults),
      metrics,
      log: getLog("pipeline"),
      openWriter,
    },
    options.monitor,
    options.queue,
  ).start();
}
