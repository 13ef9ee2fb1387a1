/**
 * @module
 * One alert rule as an actor, with Prometheus's states and timing:
 *
 * ```
 *             breach                  breach for `for`
 * inactive ──────────► pending ───────────────────────► firing
 *     ▲                   │ no breach                     │ clear for `keep_firing_for`
 *     └───────────────────┘                               ▼
 *                         pending ◄──── breach ──────── resolved
 * ```
 *
 * Every `evaluation_interval` the rule evaluates its condition over the
 * metric history and raises `eval.breach`, `eval.clear` or `eval.hold`
 * (between the threshold and the resolve threshold: hysteresis, so a
 * value at the edge does not flap). State changes are written to the
 * {@linkcode AlertBook}.
 *
 * Events: its own `eval.*`; none from outside.
 */
import { assign, enqueueActions, setup } from "xstate";
import {
  actorLeak,
  cpuSpike,
  type Evaluation,
  type Evaluator,
  gcPressure,
  memoryLeak,
  threshold,
} from "../lib/alert_rules.ts";
import type { AlertBook, Severity } from "../lib/alerts.ts";
import type { AlertRuleConfig } from "../lib/config.ts";
import type { History } from "../lib/history.ts";

/** What a rule is. */
export interface AlertRuleSpec {
  name: string;
  severity: Severity;
  summary: string;
  suggestedActions: string[];
  labels: Record<string, string>;
  /** How long the condition must hold before firing. */
  forMs: number;
  /** How long a fired alert keeps firing after the condition cleared. */
  keepFiringForMs: number;
  evaluate: Evaluator;
}

/** Input of an alert rule actor. */
export interface AlertRuleInput {
  spec: AlertRuleSpec;
  history: History;
  book: AlertBook;
  intervalMs: number;
  /** Wall clock, epoch ms. @default Date.now */
  now?: () => number;
}

type EvalEvent = {
  type: "eval.breach" | "eval.clear" | "eval.hold";
  at: number;
  result: Evaluation;
};

interface RuleContext extends AlertRuleInput {
  since: number;
  last: Evaluation | null;
}

/** The alert rule machine. */
export const alertRuleMachine = setup({
  types: { context: {} as RuleContext, input: {} as AlertRuleInput, events: {} as EvalEvent },
  delays: { interval: ({ context }) => context.intervalMs },
  guards: {
    heldFor: ({ context, event }) => event.at - context.since >= context.spec.forMs,
    clearFor: ({ context, event }) => event.at - context.since >= context.spec.keepFiringForMs,
    noWait: ({ context }) => context.spec.forMs === 0,
    noKeep: ({ context }) => context.spec.keepFiringForMs === 0,
  },
  actions: {
    evaluate: enqueueActions(({ context, enqueue }) => {
      const at = (context.now ?? Date.now)();
      const result = context.spec.evaluate(context.history, at);
      enqueue.assign({ last: result });
      const type = result.breach ? "eval.breach" : result.clear ? "eval.clear" : "eval.hold";
      enqueue.raise({ type, at, result });
    }),
    startClock: assign({ since: ({ event }) => event.at }),
    openAlert: ({ context, event }) => {
      const { spec } = context;
      context.book.open({
        name: spec.name,
        severity: spec.severity,
        summary: spec.summary,
        description: event.result.description,
        labels: { alertname: spec.name, severity: spec.severity, ...spec.labels },
        value: event.result.value,
        starts_at: new Date(event.at).toISOString(),
        suggested_actions: spec.suggestedActions,
      });
    },
    markFiring: ({ context, event }) =>
      context.book.update(context.spec.name, {
        state: "firing",
        value: event.result.value,
        description: event.result.description,
      }),
    refresh: ({ context, event }) =>
      context.book.update(context.spec.name, {
        value: event.result.value,
        description: event.result.description,
      }),
    dropAlert: ({ context }) => context.book.drop(context.spec.name),
    resolveAlert: ({ context, event }) =>
      context.book.resolve(context.spec.name, new Date(event.at).toISOString()),
  },
}).createMachine({
  id: "alert_rule",
  context: ({ input }) => ({ ...input, since: 0, last: null }),
  type: "parallel",
  states: {
    clock: {
      initial: "waiting",
      states: {
        waiting: {
          after: { interval: { target: "waiting", reenter: true, actions: "evaluate" } },
        },
      },
    },
    alert: {
      initial: "inactive",
      states: {
        inactive: {
          on: {
            "eval.breach": [
              {
                guard: "noWait",
                target: "firing",
                actions: ["startClock", "openAlert", "markFiring"],
              },
              { target: "pending", actions: ["startClock", "openAlert"] },
            ],
          },
        },
        pending: {
          on: {
            "eval.breach": [
              { guard: "heldFor", target: "firing", actions: "markFiring" },
              { actions: "refresh" },
            ],
            "eval.clear": { target: "inactive", actions: "dropAlert" },
            "eval.hold": { target: "inactive", actions: "dropAlert" },
          },
        },
        firing: {
          initial: "holding",
          states: {
            holding: {
              on: {
                "eval.breach": { actions: "refresh" },
                "eval.hold": { actions: "refresh" },
                "eval.clear": [
                  {
                    guard: "noKeep",
                    target: "#alert_rule.alert.resolved",
                    actions: "resolveAlert",
                  },
                  { target: "clearing", actions: ["startClock", "refresh"] },
                ],
              },
            },
            clearing: {
              on: {
                "eval.breach": { target: "holding", actions: "refresh" },
                "eval.hold": { target: "holding", actions: "refresh" },
                "eval.clear": [
                  {
                    guard: "clearFor",
                    target: "#alert_rule.alert.resolved",
                    actions: "resolveAlert",
                  },
                  { actions: "refresh" },
                ],
              },
            },
          },
        },
        resolved: {
          on: {
            "eval.breach": [
              {
                guard: "noWait",
                target: "firing",
                actions: ["startClock", "openAlert", "markFiring"],
              },
              { target: "pending", actions: ["startClock", "openAlert"] },
            ],
          },
        },
      },
    },
  },
});

/** Built-in rule settings that config can change. */
export interface BuiltinRuleOptions {
  /** V8's heap limit, bytes, for the memory leak projection. */
  heapLimitBytes: number;
  /** The memory leak rule's window, bucket, growth and `for` (the `alerts.memory_leak` config). */
  memoryLeak?: { windowMs: number; bucketMs: number; minGrowth: number; forMs: number };
}

/** The built-in rules (seed 001's checkers, for this runtime). */
export function builtinRules(o: BuiltinRuleOptions): AlertRuleSpec[] {
  return [
    {
      name: "MemoryLeak",
      severity: "warning",
      summary: "The heap floor keeps rising",
      suggestedActions: [
        "Compare GET /v1/actors over time for a growing actor type",
        "Take a heap snapshot (deno run --inspect, or bun --inspect) and look for retained batches",
        "Lower pipeline.stages.*.mailbox_capacity if memory is simply too tight",
      ],
      labels: { kind: "memory" },
      forMs: o.memoryLeak?.forMs ?? 60_000,
      keepFiringForMs: 300_000,
      evaluate: memoryLeak({
        windowMs: o.memoryLeak?.windowMs ?? 600_000,
        bucketMs: o.memoryLeak?.bucketMs ?? 30_000,
        minR2: 0.8,
        minGrowth: o.memoryLeak?.minGrowth ?? 0.1,
        minBuckets: 6,
        heapLimitBytes: o.heapLimitBytes,
      }),
    },
    {
      name: "CpuSpike",
      severity: "warning",
      summary: "Process CPU jumped above its usual band",
      suggestedActions: [
        "Check records/s: a load spike is expected to cost CPU",
        "Take a CPU profile (deno task bench:profile) to see what grew",
      ],
      labels: { kind: "cpu" },
      forMs: 0,
      keepFiringForMs: 30_000,
      evaluate: cpuSpike({ alpha: 0.1, sigmas: 3, samples: 3, floor: 0.8, baseline: 120 }),
    },
    {
      name: "ActorLeak",
      severity: "warning",
      summary: "Actors of one type keep growing",
      suggestedActions: [
        "GET /v1/actors: find the type that grows and its parent",
        "Check the autoscale settings: pools should shrink back when idle",
      ],
      labels: { kind: "actors" },
      forMs: 60_000,
      keepFiringForMs: 120_000,
      evaluate: actorLeak({ windowMs: 300_000, minGrowth: 0.5, minSamples: 30 }),
    },
    {
      name: "EventLoopLag",
      severity: "warning",
      summary: "The event loop is late: requests and timers wait",
      suggestedActions: [
        "Lower pipeline.batch_size: long synchronous batches block the loop",
        "Look for GC pressure: a heap near its limit collects often",
      ],
      labels: { kind: "eventloop" },
      forMs: 30_000,
      keepFiringForMs: 30_000,
      evaluate: threshold({
        metric: "eventloop_lag_p99_seconds",
        fn: "mean",
        windowMs: 30_000,
        op: ">",
        threshold: 0.2,
        resolveThreshold: 0.1,
      }),
    },
    {
      name: "GcPressure",
      severity: "critical",
      summary: "The heap is near its limit and still growing: collections free little",
      suggestedActions: [
        "Lower pipeline.stages.*.mailbox_capacity and ingest.max_concurrent_requests",
        "Raise the heap limit (--v8-flags=--max-old-space-size=N) if the machine has room",
        "Look for a leak: see the MemoryLeak rule and GET /v1/actors",
      ],
      labels: { kind: "memory" },
      forMs: 30_000,
      keepFiringForMs: 60_000,
      evaluate: gcPressure({ windowMs: 60_000, nearLimit: 0.85, heapLimitBytes: o.heapLimitBytes }),
    },
    {
      name: "MailboxSaturated",
      severity: "warning",
      summary: "A stage's mailbox is nearly full: ingest will answer 429/503",
      suggestedActions: [
        "Find the slow stage in GET /v1/actors (the full mailbox is in front of it)",
        "Raise that stage's max_workers, or check storage (GET /readyz)",
      ],
      labels: { kind: "pipeline" },
      forMs: 30_000,
      keepFiringForMs: 30_000,
      evaluate: threshold({
        metric: "mailbox_fill_max",
        fn: "mean",
        windowMs: 30_000,
        op: ">",
        threshold: 0.9,
        resolveThreshold: 0.5,
      }),
    },
    {
      name: "HighRejectRate",
      severity: "warning",
      summary: "Most records are being rejected",
      suggestedActions: ["GET /v1/failed shows the reasons", "Check the clients' record format"],
      labels: { kind: "pipeline" },
      forMs: 60_000,
      keepFiringForMs: 60_000,
      evaluate: threshold({
        metric: "records_rejected_ratio",
        fn: "mean",
        windowMs: 60_000,
        op: ">",
        threshold: 0.5,
        resolveThreshold: 0.2,
      }),
    },
    {
      name: "ActorRestarts",
      severity: "critical",
      summary: "Actors keep crashing and restarting",
      suggestedActions: [
        "Read the error logs for the crash reason",
        "Check fault injection is off (GET /v1/admin/faults with a token)",
      ],
      labels: { kind: "supervision" },
      forMs: 0,
      keepFiringForMs: 60_000,
      evaluate: threshold({
        metric: "actor_restarts_total",
        fn: "increase",
        windowMs: 60_000,
        op: ">",
        threshold: 10,
        resolveThreshold: 2,
      }),
    },
  ];
}

/** The history series of `metric` with `labels`: `name{a="x",b="y"}`, labels sorted. */
export function seriesKey(metric: string, labels: Record<string, string>): string {
  const keys = Object.keys(labels).sort();
  return keys.length === 0
    ? metric
    : `${metric}{${keys.map((k) => `${k}=${JSON.stringify(labels[k])}`).join(",")}}`;
}

/** Threshold rules from the `alerts.rules` config section. */
export function rulesFromConfig(rules: readonly AlertRuleConfig[]): AlertRuleSpec[] {
  return rules.map((r) => ({
    name: r.name,
    severity: r.severity,
    summary: r.summary,
    suggestedActions: r.suggested_actions,
    labels: { ...r.labels },
    forMs: r.for,
    keepFiringForMs: r.keep_firing_for,
    evaluate: threshold({
      metric: seriesKey(r.metric, r.labels),
      fn: r.function,
      windowMs: r.window,
      op: r.op,
      threshold: r.threshold,
      resolveThreshold: r.resolve_threshold ?? undefined,
    }),
  }));
}
