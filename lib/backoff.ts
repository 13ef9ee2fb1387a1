/**
 * @module
 * Exponential backoff as a pure value (db_connection's style): call
 * {@linkcode nextDelay} for the next wait and the advanced state,
 * {@linkcode resetBackoff} to start over. Machines schedule the delay
 * through a named xstate delay.
 */

/** Backoff state. */
export interface Backoff {
  /** First delay. @default 50 */
  readonly initialMs: number;
  /** Largest delay. @default 5000 */
  readonly maxMs: number;
  /** Fraction of the delay drawn at random (0 = none, 1 = full jitter). @default 0.2 */
  readonly jitter: number;
  /** Delays handed out since the last reset. */
  readonly attempt: number;
}

/** Creates a backoff at attempt 0. */
export function createBackoff(initialMs = 50, maxMs = 5000, jitter = 0.2): Backoff {
  return { initialMs, maxMs, jitter, attempt: 0 };
}

/**
 * The next delay and the advanced backoff. `random` returns a number in
 * [0, 1); pass a fixed one in tests.
 *
 * @example
 * ```ts
 * const { delayMs, backoff } = nextDelay(createBackoff(100, 1000, 0));
 * // delayMs === 100, backoff.attempt === 1
 * ```
 */
export function nextDelay(
  b: Backoff,
  random: () => number = Math.random,
): { delayMs: number; backoff: Backoff } {
  const base = Math.min(b.maxMs, b.initialMs * 2 ** Math.min(b.attempt, 30));
  const delayMs = Math.round(base * (1 - b.jitter * random()));
  return { delayMs, backoff: { ...b, attempt: b.attempt + 1 } };
}

/** The same backoff back at attempt 0. */
export function resetBackoff(b: Backoff): Backoff {
  return b.attempt === 0 ? b : { ...b, attempt: 0 };
}

/**
 * Restart intensity (Erlang's `max_restarts` within `max_seconds`): records
 * a restart at `now` and tells whether the limit is passed.
 * Returns the timestamps still inside the window.
 */
export function recordRestart(
  history: readonly number[],
  now: number,
  maxRestarts: number,
  withinMs: number,
): { history: number[]; exceeded: boolean } {
  const kept = history.filter((t) => now - t < withinMs);
  kept.push(now);
  return { history: kept, exceeded: kept.length > maxRestarts };
}

/** A supervisor's restart settings (the `supervisor` config section). */
export interface RestartPolicy {
  max_restarts: number;
  within_ms: number;
  backoff_initial_ms: number;
  backoff_max_ms: number;
}

/** What a supervisor remembers between restarts of its children. */
export interface RestartMemory {
  restartHistory: number[];
  backoff: Backoff;
}

/** A supervisor's memory before its first restart. */
export function freshRestartMemory(policy: RestartPolicy): RestartMemory {
  return {
    restartHistory: [],
    backoff: createBackoff(policy.backoff_initial_ms, policy.backoff_max_ms),
  };
}

/**
 * Decides about one more crash at `now`: whether the restart intensity is
 * passed (give up and escalate), else how long to wait before the restart.
 * The backoff starts over when the previous crashes have left the window.
 */
export function planRestart(
  memory: RestartMemory,
  policy: RestartPolicy,
  now: number,
): { exceeded: boolean; delayMs: number; memory: RestartMemory } {
  const { history, exceeded } = recordRestart(
    memory.restartHistory,
    now,
    policy.max_restarts,
    policy.within_ms,
  );
  const { delayMs, backoff } = nextDelay(
    history.length === 1 ? resetBackoff(memory.backoff) : memory.backoff,
  );
  return { exceeded, delayMs, memory: { restartHistory: history, backoff } };
}
