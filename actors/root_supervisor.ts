/**
 * @module
 * The root supervisor: the top of the tree. It starts the pipeline
 * supervisor and restarts it when it crashes; when it gives up it stays up
 * in `failed`, so `/healthz` still answers while `/readyz` says 503.
 *
 * ```
 * root_supervisor (systemId "root")
 * ├── pipeline (systemId "pipeline")
 * │   ├── pool.validate  ── validate_stage ×1..10
 * │   ├── pool.transform ── transform_stage ×1..n
 * │   ├── pool.aggregate ── aggregate_stage ×1..n
 * │   └── pool.store     ── storage_connection ×1..5, circuit_breaker
 * ├── monitor (systemId "monitor") ── collector ── lag_probe
 * └── queue (systemId "queue")     ── stream_consumer ×partitions   queue mode only
 * ```
 *
 * Restart strategy: one for one, exponential backoff. Intensity: more than
 * `max_restarts` pipeline crashes within `within_ms` and the root gives up
 * (state `failed`). A crashed monitor is restarted after
 * `backoff_max_ms` whatever the state: watching must never stop the work.
 * So is a crashed queue supervisor: the entries its consumers held stay
 * pending in Redis and are taken over once idle.
 *
 * States: `running`, `stopping` (after `shutdown`: readiness drops, the
 * pipeline drains), `failed`. Events in: `shutdown`, `pipeline.respawn`
 * (its own, delayed), `xstate.error.actor.pipeline`, `monitor.respawn`,
 * `xstate.error.actor.monitor`, `queue.respawn`, `xstate.error.actor.queue`,
 * and `monitor.pause` / `monitor.resume` (an operator turning the monitor
 * off and on at run time, through `PUT /v1/admin/monitor`; the pipeline
 * does not notice).
 */
import { type AnyActorRef, assign, enqueueActions, setup } from "xstate";
import { freshRestartMemory, planRestart, type RestartMemory } from "../lib/backoff.ts";
import type { StageDeps } from "./_stage_deps.ts";
import { type MonitorInput, monitorMachine } from "./monitor.ts";
import { type QueueSupervisorInput, queueSupervisorMachine } from "./queue_supervisor.ts";
import { abandonAll, pipelineMachine, type StageRuntimes } from "./pipeline.ts";

/** Input of the root supervisor. */
export interface RootInput {
  runtimes: StageRuntimes;
  deps: StageDeps;
  /** Starts the monitor supervisor when given. */
  monitor?: MonitorInput;
  /** Starts the queue supervisor (queue mode) when given. */
  queue?: QueueSupervisorInput;
}

/** Events the root supervisor accepts. */
export type RootEvent =
  | { type: "shutdown" }
  | { type: "pipeline.respawn" }
  | { type: "xstate.error.actor.pipeline"; error: unknown }
  | { type: "monitor.respawn" }
  | { type: "monitor.pause" }
  | { type: "monitor.resume" }
  | { type: "xstate.error.actor.monitor"; error: unknown }
  | { type: "queue.respawn" }
  | { type: "xstate.error.actor.queue"; error: unknown };

interface RootContext extends RootInput, RestartMemory {
  restarts: number;
  lastError: string | null;
  /** The monitor was stopped by `monitor.pause`: no respawn until `monitor.resume`. */
  monitorPaused: boolean;
  monitorRef?: AnyActorRef;
}

/** The root of the supervision tree. */
export const rootSupervisorMachine = setup({
  types: {
    context: {} as RootContext,
    events: {} as RootEvent,
    input: {} as RootInput,
  },
  actors: { pipeline: pipelineMachine, monitor: monitorMachine, queue: queueSupervisorMachine },
  actions: {
    // The monitor and the queue supervisor come back after backoff_max_ms, whatever happens:
    // watching and queue reading must never stop the pipeline.
    respawnLater: enqueueActions(
      ({ context, event, enqueue }, child: "monitor" | "queue") => {
        const error = (event as { error?: unknown }).error;
        const reason = error instanceof Error ? error.message : String(error);
        const delay = context.deps.config.supervisor.backoff_max_ms;
        const what = child === "monitor" ? "Monitor" : "Queue supervisor";
        context.deps.log.error(`${what} crashed: {reason}; restarting in {delay} ms`, {
          reason,
          delay,
        });
        context.deps.metrics.actorRestartsTotal.inc({ actor: child });
        enqueue.stopChild(child);
        enqueue.raise({ type: `${child}.respawn` }, { delay });
      },
    ),
    spawnQueue: assign(({ context, spawn }) => {
      if (context.queue !== undefined) {
        spawn("queue", { id: "queue", systemId: "queue", input: context.queue });
      }
      return {};
    }),
    spawnMonitor: assign(({ context, spawn }) => {
      // A resume and a crash's delayed respawn may both ask: one monitor only.
      const running = context.monitorRef?.getSnapshot().status === "active";
      if (context.monitor === undefined || context.monitorPaused || running) return {};
      return {
        monitorRef: spawn("monitor", {
          id: "monitor",
          systemId: "monitor",
          input: context.monitor,
        }),
      };
    }),
    spawnPipeline: assign(({ context, spawn }) => {
      spawn("pipeline", {
        id: "pipeline",
        systemId: "pipeline",
        input: { runtimes: context.runtimes, deps: context.deps },
      });
      return {};
    }),
  },
}).createMachine({
  id: "root_supervisor",
  context: ({ input }) => ({
    ...input,
    ...freshRestartMemory(input.deps.config.supervisor),
    restarts: 0,
    lastError: null,
    monitorPaused: false,
  }),
  entry: ["spawnPipeline", "spawnMonitor", "spawnQueue"],
  on: {
    "xstate.error.actor.queue": { actions: { type: "respawnLater", params: "queue" } },
    "monitor.respawn": { actions: "spawnMonitor" },
    "monitor.pause": {
      guard: ({ context }) => !context.monitorPaused,
      actions: enqueueActions(({ enqueue }) => {
        enqueue.stopChild("monitor");
        enqueue.assign({ monitorPaused: true });
      }),
    },
    "monitor.resume": {
      guard: ({ context }) => context.monitorPaused,
      actions: [assign({ monitorPaused: false }), "spawnMonitor"],
    },
    "xstate.error.actor.monitor": { actions: { type: "respawnLater", params: "monitor" } },
  },
  initial: "running",
  states: {
    running: {
      on: {
        shutdown: "stopping",
        // Only here: while stopping the consumers were drained on purpose.
        "queue.respawn": { actions: "spawnQueue" },
        "pipeline.respawn": { actions: "spawnPipeline" },
        "xstate.error.actor.pipeline": [
          {
            guard: ({ context }) => {
              const sup = context.deps.config.supervisor;
              return planRestart(context, sup, Date.now()).exceeded;
            },
            target: "failed",
            actions: enqueueActions(({ context, event, enqueue }) => {
              const reason = event.error instanceof Error
                ? event.error.message
                : String(event.error);
              context.deps.log.fatal("Root supervisor gave up: {reason}", { reason });
              abandonAll(context.runtimes, `the root supervisor gave up (${reason})`);
              context.deps.metrics.actorRestartsTotal.inc({ actor: "pipeline" });
              enqueue.stopChild("pipeline");
              enqueue.assign({ lastError: reason });
            }),
          },
          {
            actions: enqueueActions(({ context, event, enqueue }) => {
              const sup = context.deps.config.supervisor;
              const reason = event.error instanceof Error
                ? event.error.message
                : String(event.error);
              const { delayMs, memory } = planRestart(context, sup, Date.now());
              context.deps.log.error("Pipeline crashed: {reason}; restarting in {delayMs} ms", {
                reason,
                delayMs,
              });
              context.deps.metrics.actorRestartsTotal.inc({ actor: "pipeline" });
              enqueue.stopChild("pipeline");
              enqueue.assign({
                ...memory,
                restarts: context.restarts + 1,
                lastError: reason,
              });
              enqueue.raise({ type: "pipeline.respawn" }, { delay: delayMs });
            }),
          },
        ],
      },
    },
    stopping: {
      on: {
        // Keep the pipeline up while it drains, whatever happens.
        "pipeline.respawn": { actions: "spawnPipeline" },
        "xstate.error.actor.pipeline": {
          actions: enqueueActions(({ enqueue }) => {
            enqueue.stopChild("pipeline");
            enqueue.raise({ type: "pipeline.respawn" }, { delay: 50 });
          }),
        },
      },
    },
    failed: {},
  },
});
