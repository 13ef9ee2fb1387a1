/**
 * @module
 * The monitor supervisor: watches the process so the pipeline does not have
 * to. It runs the collector and one alert rule actor per rule (the alerts
 * supervisor of seed 001's alert manager).
 *
 * ```
 * monitor (systemId "monitor")
 * ├── collector (systemId "collector") ── lag_probe
 * ├── alert.MemoryLeak   (systemId "alert.MemoryLeak")
 * ├── alert.CpuSpike
 * ├── …                  one per built-in or configured rule
 * └── notifier (systemId "notifier") ── deliver   when a target is configured
 * ```
 *
 * Restart strategy: one for one, exponential backoff, the `supervisor`
 * intensity. Past it the monitor crashes and the root supervisor restarts
 * it; the pipeline is never touched by a monitoring failure.
 *
 * Events in: `child.respawn` (its own, delayed) and
 * `xstate.error.actor.*` from its children.
 */
import { assign, enqueueActions, setup } from "xstate";
import type { Logger } from "@logtape/logtape";
import {
  freshRestartMemory,
  planRestart,
  type RestartMemory,
  type RestartPolicy,
} from "../lib/backoff.ts";
import type { AlertBook } from "../lib/alerts.ts";
import { alertRuleMachine, type AlertRuleSpec } from "./alert_rule.ts";
import { type CollectorInput, collectorMachine } from "./collector.ts";
import { type NotifierInput, notifierMachine } from "./notifier.ts";

/** Input of the monitor supervisor. */
export interface MonitorInput {
  collector: CollectorInput;
  policy: RestartPolicy;
  log: Logger;
  /** Alert rules, each run by its own actor. */
  rules?: AlertRuleSpec[];
  book?: AlertBook;
  /** Evaluation period of the rules, ms. */
  evaluationIntervalMs?: number;
  /** Sends the book's alerts to Alertmanager and a webhook; off when absent. */
  notifier?: Omit<NotifierInput, "book" | "log">;
}

/** Events the monitor accepts. */
export type MonitorEvent =
  | { type: "child.respawn"; id: string }
  | { type: "xstate.error.actor.*"; error: unknown };

/** Supervisor of the collector and the alert rules. */
export const monitorMachine = setup({
  types: {
    context: {} as MonitorInput & RestartMemory,
    events: {} as MonitorEvent,
    input: {} as MonitorInput,
  },
  actors: { collector: collectorMachine, rule: alertRuleMachine, notifier: notifierMachine },
  actions: {
    spawnChild: assign(({ context, spawn }, id: string) => {
      if (id === "collector") {
        spawn("collector", { id, systemId: id, input: context.collector });
        return {};
      }
      if (id === "notifier") {
        if (context.notifier !== undefined && context.book !== undefined) {
          spawn("notifier", {
            id,
            systemId: id,
            input: { ...context.notifier, book: context.book, log: context.log },
          });
        }
        return {};
      }
      const spec = context.rules?.find((r) => `alert.${r.name}` === id);
      if (spec !== undefined && context.book !== undefined) {
        spawn("rule", {
          id,
          systemId: id,
          input: {
            spec,
            history: context.collector.history,
            book: context.book,
            intervalMs: context.evaluationIntervalMs ?? 1000,
            now: context.collector.now,
          },
        });
      }
      return {};
    }),
  },
}).createMachine({
  id: "monitor",
  context: ({ input }) => ({ ...input, ...freshRestartMemory(input.policy) }),
  entry: enqueueActions(({ context, enqueue }) => {
    enqueue({ type: "spawnChild", params: "collector" });
    for (const r of context.rules ?? []) enqueue({ type: "spawnChild", params: `alert.${r.name}` });
    if (context.notifier !== undefined) enqueue({ type: "spawnChild", params: "notifier" });
  }),
  on: {
    "child.respawn": {
      actions: enqueueActions(({ event, enqueue }) =>
        enqueue({ type: "spawnChild", params: event.id })
      ),
    },
    "xstate.error.actor.*": {
      actions: enqueueActions(({ context, event, enqueue }) => {
        const id = (event.type as string).slice("xstate.error.actor.".length);
        const reason = event.error instanceof Error ? event.error.message : String(event.error);
        enqueue.stopChild(id);
        const { exceeded, delayMs, memory } = planRestart(context, context.policy, Date.now());
        if (exceeded) {
          throw new Error(`Monitor gave up: ${id} keeps crashing, last: ${reason}`, {
            cause: event.error,
          });
        }
        context.log.warn("{id} crashed: {reason}; restarting in {delayMs} ms", {
          id,
          reason,
          delayMs,
        });
        enqueue.assign(memory);
        enqueue.raise({ type: "child.respawn", id }, { delay: delayMs });
      }),
    },
  },
});
