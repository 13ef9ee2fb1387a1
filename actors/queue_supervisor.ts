/**
 * @module
 * The queue supervisor (queue mode only): one stream consumer per
 * partition, each on its own Redis connection, all in the one consumer
 * group every instance shares.
 *
 * ```
 * queue (systemId "queue")
 * ├── consumer.0   stream_consumer of <stream_prefix>:0
 * ├── consumer.1
 * ├── …
 * └── consumer.K-1
 * ```
 *
 * Restart strategy: one for one, exponential backoff, the `supervisor`
 * intensity. A consumer handles Redis faults itself (it backs off and
 * reconnects); a crash is a bug, and past the intensity the queue
 * supervisor crashes to the root supervisor, which restarts it after
 * `backoff_max_ms` like the monitor. Entries a crashed consumer held stay
 * pending and are taken over once idle, so a restart loses nothing.
 *
 * States: `running`; `draining` after `queue.drain` (each consumer finishes
 * the entries in hand, acknowledges them and stops; crashed ones are not
 * restarted); `drained` once every consumer has stopped.
 *
 * Events in: `queue.drain`, `child.respawn` (its own, delayed),
 * `xstate.error.actor.*` and `xstate.done.actor.*` from its consumers.
 */
import type { Logger } from "@logtape/logtape";
import { type AnyActorRef, assign, enqueueActions, setup } from "xstate";
import {
  freshRestartMemory,
  planRestart,
  type RestartMemory,
  type RestartPolicy,
} from "../lib/backoff.ts";
import type { IngestResult } from "../lib/batch.ts";
import type { QueueMetrics } from "../lib/metrics.ts";
import { type QueueBackend, type QueueSink, streamKey } from "../lib/queue.ts";
import { streamConsumerMachine } from "./stream_consumer.ts";

/** Input of the queue supervisor. */
export interface QueueSupervisorInput {
  backend: QueueBackend;
  sink: QueueSink;
  metrics: QueueMetrics;
  policy: RestartPolicy;
  log: Logger;
  /** Called with each committed entry's outcome. */
  onCommitted?: (result: IngestResult) => void;
  /** Refresh period of the stream figures, ms. @default 1000 */
  statsIntervalMs?: number;
}

/** Events the queue supervisor accepts. */
export type QueueSupervisorEvent =
  | { type: "queue.drain" }
  | { type: "child.respawn"; partition: number }
  | { type: "xstate.error.actor.*"; error: unknown }
  | { type: "xstate.done.actor.*" };

interface Ctx extends QueueSupervisorInput, RestartMemory {
  /** Consumers still running while draining. */
  remaining: string[];
  restarts: number;
}

function partitionOfId(id: string): number {
  return Number(id.slice("consumer.".length));
}

function liveConsumers(self: AnyActorRef): string[] {
  const children = (self.getSnapshot().children ?? {}) as Record<string, AnyActorRef | undefined>;
  return Object.entries(children)
    .filter(([id, ref]) => id.startsWith("consumer.") && ref?.getSnapshot().status === "active")
    .map(([id]) => id);
}

/** Supervisor of the stream consumers. */
export const queueSupervisorMachine = setup({
  types: {
    context: {} as Ctx,
    events: {} as QueueSupervisorEvent,
    input: {} as QueueSupervisorInput,
  },
  actors: { consumer: streamConsumerMachine },
  actions: {
    spawnConsumer: assign(({ context, spawn }, partition: number) => {
      const id = `consumer.${partition}`;
      spawn("consumer", {
        id,
        systemId: id,
        input: {
          partition,
          stream: streamKey(context.backend.settings.stream_prefix, partition),
          backend: context.backend,
          sink: context.sink,
          metrics: context.metrics,
          log: context.log,
          onCommitted: context.onCommitted,
          statsIntervalMs: context.statsIntervalMs,
        },
      });
      return {};
    }),
  },
  guards: {
    allStopped: ({ context }) => context.remaining.length === 0,
  },
}).createMachine({
  id: "queue_supervisor",
  context: ({ input }) => ({
    ...input,
    ...freshRestartMemory(input.policy),
    remaining: [],
    restarts: 0,
  }),
  entry: enqueueActions(({ context, enqueue }) => {
    for (let p = 0; p < context.backend.settings.partitions; p++) {
      enqueue({ type: "spawnConsumer", params: p });
    }
  }),
  initial: "running",
  states: {
    running: {
      on: {
        "queue.drain": "draining",
        "child.respawn": {
          actions: enqueueActions(({ event, enqueue }) =>
            enqueue({ type: "spawnConsumer", params: event.partition })
          ),
        },
        "xstate.error.actor.*": {
          actions: enqueueActions(({ context, event, enqueue }) => {
            const id = (event.type as string).slice("xstate.error.actor.".length);
            const reason = event.error instanceof Error ? event.error.message : String(event.error);
            enqueue.stopChild(id);
            const { exceeded, delayMs, memory } = planRestart(context, context.policy, Date.now());
            if (exceeded) {
              throw new Error(`Queue supervisor gave up: ${id} keeps crashing, last: ${reason}`, {
                cause: event.error,
              });
            }
            context.log.error("{id} crashed: {reason}; restarting in {delayMs} ms", {
              id,
              reason,
              delayMs,
            });
            enqueue.assign({ ...memory, restarts: context.restarts + 1 });
            enqueue.raise({ type: "child.respawn", partition: partitionOfId(id) }, {
              delay: delayMs,
            });
          }),
        },
      },
    },
    draining: {
      entry: enqueueActions(({ self, enqueue }) => {
        const live = liveConsumers(self);
        for (const id of live) enqueue.sendTo(id, { type: "queue.drain" });
        enqueue.assign({ remaining: live });
      }),
      always: { guard: "allStopped", target: "drained" },
      on: {
        "xstate.done.actor.*": {
          actions: assign(({ context, event }) => {
            const id = (event.type as string).slice("xstate.done.actor.".length);
            return { remaining: context.remaining.filter((r) => r !== id) };
          }),
        },
        "xstate.error.actor.*": {
          actions: enqueueActions(({ context, event, enqueue }) => {
            const id = (event.type as string).slice("xstate.error.actor.".length);
            enqueue.stopChild(id);
            enqueue.assign({ remaining: context.remaining.filter((r) => r !== id) });
          }),
        },
      },
    },
    drained: {},
  },
});
