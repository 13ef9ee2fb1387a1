/**
 * @module
 * The circuit breaker in front of storage. Storage connections report each
 * commit that failed because storage was unavailable (`call.failure`) and
 * each commit that went through (`call.success`); the store pool asks
 * {@linkcode breakerAllows} before handing out batches.
 *
 * ```
 *            threshold failures in a row
 *  closed ───────────────────────────────► open ──(backoff with jitter)──► halfOpen
 *    ▲                                      ▲                                 │
 *    └────────────── call.success ──────────┼─────────────────────────────────┤
 *                                           └────────── call.failure ─────────┘
 * ```
 *
 * While open, nothing is sent to storage and `/readyz` answers 503; the
 * batches wait in the store mailbox (ingest answers 503 once the mailboxes
 * are full). Each reopening doubles the wait, up to `backoff_max_ms`; a
 * success resets it. On entering `halfOpen` and `closed` the breaker
 * nudges its parent pool (`mailbox.put`) so it dispatches again.
 *
 * Events in: `call.success`, `call.failure`.
 */
import { assign, sendParent, setup } from "xstate";
import { type Backoff, createBackoff, nextDelay, resetBackoff } from "../lib/backoff.ts";

/** Events the breaker accepts. */
export type CircuitBreakerEvent =
  | { type: "call.success" }
  | { type: "call.failure"; reason: string };

/** Input of the breaker. */
export interface CircuitBreakerInput {
  /** Consecutive failures that open the circuit. @default 3 */
  threshold: number;
  backoffInitialMs: number;
  backoffMaxMs: number;
  /** Called on every state change, for logs and metrics. */
  onChange?: (
    state: "closed" | "open" | "halfOpen",
    detail: { reason?: string; delayMs?: number },
  ) => void;
}

interface BreakerContext {
  threshold: number;
  failures: number;
  backoff: Backoff;
  delayMs: number;
  lastReason: string | null;
  onChange: CircuitBreakerInput["onChange"];
}

/** The circuit breaker machine. */
export const circuitBreakerMachine = setup({
  types: {
    context: {} as BreakerContext,
    events: {} as CircuitBreakerEvent,
    input: {} as CircuitBreakerInput,
  },
  delays: {
    openDelay: ({ context }) => context.delayMs,
  },
  actions: {
    nudgeParent: sendParent({ type: "mailbox.put" }),
    scheduleOpen: assign(({ context }) => {
      const { delayMs, backoff } = nextDelay(context.backoff);
      return { delayMs, backoff };
    }),
  },
}).createMachine({
  id: "circuit_breaker",
  context: ({ input }) => ({
    threshold: input.threshold,
    failures: 0,
    backoff: createBackoff(input.backoffInitialMs, input.backoffMaxMs, 0.5),
    delayMs: 0,
    lastReason: null,
    onChange: input.onChange,
  }),
  initial: "closed",
  states: {
    closed: {
      entry: [
        "nudgeParent",
        assign({ failures: 0, backoff: ({ context }) => resetBackoff(context.backoff) }),
      ],
      on: {
        "call.success": { actions: assign({ failures: 0 }) },
        "call.failure": [
          {
            guard: ({ context }) => context.failures + 1 >= context.threshold,
            target: "open",
            actions: assign({ lastReason: ({ event }) => event.reason }),
          },
          {
            actions: assign({
              failures: ({ context }) => context.failures + 1,
              lastReason: ({ event }) => event.reason,
            }),
          },
        ],
      },
    },
    open: {
      entry: [
        "scheduleOpen",
        ({ context }) =>
          context.onChange?.("open", {
            reason: context.lastReason ?? undefined,
            delayMs: context.delayMs,
          }),
      ],
      after: { openDelay: "halfOpen" },
      on: {
        // Commits that were already under way report late; they change nothing now.
        "call.failure": {},
        "call.success": {},
      },
    },
    halfOpen: {
      entry: ["nudgeParent", ({ context }) => context.onChange?.("halfOpen", {})],
      on: {
        "call.success": {
          target: "closed",
          actions: ({ context }) => context.onChange?.("closed", {}),
        },
        "call.failure": {
          target: "open",
          actions: assign({ lastReason: ({ event }) => event.reason }),
        },
      },
    },
  },
});

/** What the breaker allows now: `all`, one trial call (`one`), or `none`. */
export function breakerAllows(state: unknown): "all" | "one" | "none" {
  if (state === "open") return "none";
  if (state === "halfOpen") return "one";
  return "all";
}
