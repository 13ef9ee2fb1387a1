/**
 * @module
 * The monitor supervisor: watches the process so the pipeline does not have
 * to. Today it runs the collector; alert checkers join it here.
 *
 * ```
 * monitor (systemId "monitor")
 * └── collector (systemId "collector") ── lag_probe
 * ```
 *
 * Restart strategy: one for one, exponential backoff, the `supervisor`
 * intensity. Past it the monitor crashes and the root supervisor restarts
 * it; the pipeline is never touched by a monitoring failure.
 *
 * Events in: `collector.respawn` (its own, delayed) and
 * `xstate.error.actor.collector`.
 */
import { assign, enqueueActions, setup } from "xstate";
import type { Logger } from "@logtape/logtape";
import {
  freshRestartMemory,
  planRestart,
  type RestartMemory,
  type RestartPolicy,
} from "../lib/backoff.ts";
import { type CollectorInput, collectorMachine } from "./collector.ts";

/** Input of the monitor supervisor. */
export interface MonitorInput {
  collector: CollectorInput;
  policy: RestartPolicy;
  log: Logger;
}

/** Events the monitor accepts. */
export type MonitorEvent =
  | { type: "collector.respawn" }
  | { type: "xstate.error.actor.collector"; error: unknown };

/** Supervisor of the collector (and, later, the alert checkers). */
export const monitorMachine = setup({
  types: {
    context: {} as MonitorInput & RestartMemory,
    events: {} as MonitorEvent,
    input: {} as MonitorInput,
  },
  actors: { collector: collectorMachine },
  actions: {
    spawnCollector: assign(({ context, spawn }) => {
      spawn("collector", { id: "collector", systemId: "collector", input: context.collector });
      return {};
    }),
  },
}).createMachine({
  id: "monitor",
  context: ({ input }) => ({ ...input, ...freshRestartMemory(input.policy) }),
  entry: "spawnCollector",
  on: {
    "collector.respawn": { actions: "spawnCollector" },
    "xstate.error.actor.collector": {
      actions: enqueueActions(({ context, event, enqueue }) => {
        const reason = event.error instanceof Error ? event.error.message : String(event.error);
        enqueue.stopChild("collector");
        const { exceeded, delayMs, memory } = planRestart(context, context.policy, Date.now());
        if (exceeded) {
          throw new Error(`Monitor gave up: the collector keeps crashing, last: ${reason}`, {
            cause: event.error,
          });
        }
        context.log.warn("Collector crashed: {reason}; restarting in {delayMs} ms", {
          reason,
          delayMs,
        });
        enqueue.assign(memory);
        enqueue.raise({ type: "collector.respawn" }, { delay: delayMs });
      }),
    },
  },
});
