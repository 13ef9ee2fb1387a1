/**
 * @module
 * The supervisor of one stage: owns the stage's worker actors, feeds them
 * from the stage's bounded mailbox, hands finished batches to the next
 * stage's mailbox, restarts crashed workers and scales the pool on mailbox
 * depth.
 *
 * ```
 * stage_pool (systemId "pool.<stage>")
 * ├── worker <stage>.1   (validate_stage | transform_stage | aggregate_stage | storage_connection)
 * ├── worker <stage>.2
 * └── ...                between min_workers and max_workers
 * ```
 *
 * Restart strategy: one for one. A crashed worker is replaced after an
 * exponential backoff; its batches go back to the head of the mailbox with
 * one more attempt. A batch that reaches `max_attempts` is split in two
 * until the record that crashes the stage is alone; that record fails with
 * its stage and reason and the rest go on. Intensity: more than
 * `max_restarts` within `within_ms` and the pool crashes itself, escalating
 * to the pipeline supervisor. A completed batch clears both the backoff and
 * the crash count: a stage that gets work done is not in a crash loop.
 *
 * Back-pressure: a batch leaves the mailbox only when an idle worker is
 * free and room for it is reserved in the next stage's mailbox. A pool that
 * takes batches out of its mailbox tells the previous stage's pool
 * (`mailbox.room`), which may be waiting for that room.
 *
 * Scaling: every `autoscale.interval_ms`, one worker more while the
 * mailbox is above `high_watermark` of its capacity, one fewer (an idle
 * one) once it has stayed below `low_watermark` for `cooldown_ms`.
 *
 * Events in: `mailbox.put`, `mailbox.room`, `batch.done`, `worker.ready`,
 * `worker.respawn`, and `xstate.error.actor.*` from its workers.
 */
import { assign, enqueueActions, setup } from "xstate";
import type { AnyActorRef, AnyStateMachine } from "xstate";
import { freshRestartMemory, planRestart, type RestartMemory } from "../lib/backoff.ts";
import type { Batch } from "../lib/batch.ts";
import { Mailbox } from "../lib/mailbox.ts";
import { type StageName, STAGES } from "../lib/schemas.ts";
import type { StageDeps } from "./_stage_deps.ts";
import type { BatchDoneEvent } from "./_stage_worker.ts";
import { breakerAllows, circuitBreakerMachine } from "./circuit_breaker.ts";
import type { BatchRetryEvent } from "./storage_connection.ts";

/** Batches handed to one worker and not finished yet. */
export interface Dispatch {
  batches: Batch[];
  /** Records reserved in the next stage's mailbox for them. */
  reserved: number;
  startedAt: number;
}

/**
 * The state of a stage that outlives its actors: the mailbox and what its
 * workers hold. A restarted pool takes the batches of the old one back.
 */
export class StageRuntime {
  readonly stage: StageName;
  readonly mailbox: Mailbox<Batch>;
  readonly inFlight = new Map<string, Dispatch>();
  /** Worker restarts since start. */
  workerRestarts = 0;
  /** Pool restarts since start. */
  poolRestarts = 0;
  /** Workers alive now. */
  workers = 0;

  constructor(stage: StageName, capacity: number) {
    this.stage = stage;
    this.mailbox = new Mailbox<Batch>(capacity);
  }

  /** Records in the mailbox and in the hands of workers. */
  get load(): number {
    let n = this.mailbox.queued;
    for (const d of this.inFlight.values()) for (const b of d.batches) n += b.size;
    return n;
  }

  /** Whether nothing is queued or being worked on. */
  get idle(): boolean {
    return this.mailbox.length === 0 && this.inFlight.size === 0;
  }

  /** Puts the batches of a lost dispatch back at the head of the mailbox. */
  recover(workerId: string, next: StageRuntime | null, countAttempt: boolean): Batch[] {
    const d = this.inFlight.get(workerId);
    if (d === undefined) return [];
    this.inFlight.delete(workerId);
    if (next !== null && d.reserved > 0) next.mailbox.release(d.reserved);
    for (let i = d.batches.length - 1; i >= 0; i--) {
      const b = d.batches[i];
      if (countAttempt) b.attempts++;
      this.mailbox.requeue(b);
    }
    return d.batches;
  }
}

/** Input of a stage pool. */
export interface StagePoolInput {
  runtime: StageRuntime;
  next: StageRuntime | null;
  worker: AnyStateMachine;
  deps: StageDeps;
  /** Most records handed to a worker in one dispatch (the store groups batches into one commit). */
  groupRecords: number;
}

interface Slot {
  ref: AnyActorRef;
  ready: boolean;
}

/** Events a stage pool accepts. */
export type StagePoolEvent =
  | { type: "mailbox.put" }
  | { type: "mailbox.room" }
  | BatchDoneEvent
  | { type: "worker.ready"; workerId: string }
  | { type: "worker.respawn" }
  | BatchRetryEvent
  | { type: "xstate.error.actor.*"; error: unknown };

interface PoolContext extends StagePoolInput, RestartMemory {
  workers: Map<string, Slot>;
  nextWorker: number;
  respawning: number;
  lowSince: number | null;
  /** The storage circuit breaker (store pool only). */
  breaker: AnyActorRef | null;
}

const BREAKER_GAUGE = { closed: 0, halfOpen: 1, open: 2 } as const;

/** Supervisor machine of one stage's workers. */
export const stagePoolMachine = setup({
  types: {
    context: {} as PoolContext,
    events: {} as StagePoolEvent,
    input: {} as StagePoolInput,
  },
  actors: { breaker: circuitBreakerMachine },
  delays: {
    autoscaleInterval: ({ context }) => context.deps.config.autoscale.interval_ms,
  },
  actions: {
    spawnWorker: assign(({ context, spawn }) => {
      const n = context.nextWorker;
      const workerId = `${context.runtime.stage}.${n}`;
      // The worker logic differs per stage, so it is spawned by value.
      const spawnLogic = spawn as unknown as (
        logic: AnyStateMachine,
        options: { id: string; systemId: string; input: unknown },
      ) => AnyActorRef;
      const ref = spawnLogic(context.worker, {
        id: workerId,
        systemId: `worker.${workerId}`,
        input: { workerId, deps: context.deps },
      });
      // Stage workers are ready at once; a storage connection says when it is.
      const ready = context.runtime.stage !== "store";
      context.workers.set(workerId, { ref, ready });
      context.runtime.workers = context.workers.size;
      context.deps.metrics.stageWorkers.set({ stage: context.runtime.stage }, context.workers.size);
      return { nextWorker: n + 1 };
    }),
    dispatch: ({ context, system }) => dispatch(context, system),
    spawnBreaker: assign(({ context, spawn }) => {
      const { deps } = context;
      const log = deps.log;
      return {
        breaker: spawn("breaker", {
          id: "breaker",
          systemId: "breaker.store",
          input: {
            threshold: 3,
            backoffInitialMs: deps.config.supervisor.backoff_initial_ms,
            backoffMaxMs: deps.config.supervisor.backoff_max_ms,
            onChange: (state, detail) => {
              deps.metrics.breakerState.set({ name: "store" }, BREAKER_GAUGE[state]);
              if (state === "open") {
                log.error("Storage unavailable, circuit open for {delayMs} ms: {reason}", detail);
              } else {
                log.info(
                  `Storage circuit ${
                    state === "closed" ? "closed: storage is back" : "half open: trying one commit"
                  }`,
                );
              }
            },
          },
        }) as AnyActorRef,
      };
    }),
  },
}).createMachine({
  id: "stage_pool",
  context: ({ input }) => ({
    ...input,
    workers: new Map(),
    nextWorker: 1,
    ...freshRestartMemory(input.deps.config.supervisor),
    respawning: 0,
    lowSince: null,
    breaker: null,
  }),
  entry: enqueueActions(({ context, enqueue }) => {
    if (context.runtime.stage === "store") enqueue("spawnBreaker");
    // Batches held by the workers of a pool that crashed come back first.
    for (const workerId of [...context.runtime.inFlight.keys()]) {
      context.runtime.recover(workerId, context.next, true);
    }
    const { min_workers } = context.deps.config.pipeline.stages[context.runtime.stage];
    for (let i = 0; i < min_workers; i++) enqueue("spawnWorker");
    enqueue("dispatch");
  }),
  initial: "running",
  states: {
    running: {
      after: {
        autoscaleInterval: {
          target: "running",
          reenter: true,
          actions: enqueueActions(({ context, enqueue }) => {
            const decision = autoscale(context, Date.now());
            if (decision === "up") enqueue("spawnWorker");
            else if (decision !== null) enqueue.stopChild(decision);
            enqueue("dispatch");
          }),
        },
      },
    },
  },
  on: {
    "mailbox.put": { actions: "dispatch" },
    "mailbox.room": { actions: "dispatch" },
    "batch.retry": {
      actions: [
        ({ context, event }) => {
          // Storage was unavailable: the batches go back as they were, no attempt counted.
          context.runtime.recover(event.workerId, context.next, false);
        },
        "dispatch",
      ],
    },
    "worker.ready": {
      actions: [
        ({ context, event }) => {
          const slot = context.workers.get(event.workerId);
          if (slot) slot.ready = true;
        },
        "dispatch",
      ],
    },
    "batch.done": {
      actions: [
        ({ context, event, system }) => finish(context, event, system),
        // Work that gets done means the stage is not in a crash loop: the
        // next crash restarts at the first backoff step and counts afresh.
        assign(({ context }) =>
          context.restartHistory.length === 0
            ? {}
            : freshRestartMemory(context.deps.config.supervisor)
        ),
        "dispatch",
      ],
    },
    "worker.respawn": {
      actions: [
        assign({ respawning: ({ context }) => Math.max(0, context.respawning - 1) }),
        "spawnWorker",
        "dispatch",
      ],
    },
    "xstate.error.actor.*": {
      actions: enqueueActions(({ context, event, enqueue }) => {
        const workerId = (event.type as string).slice("xstate.error.actor.".length);
        const { stage } = context.runtime;
        const sup = context.deps.config.supervisor;
        context.workers.delete(workerId);
        enqueue.stopChild(workerId);
        context.runtime.workers = context.workers.size;
        context.runtime.workerRestarts++;
        context.deps.metrics.actorRestartsTotal.inc({ actor: `worker.${stage}` });
        context.deps.metrics.stageWorkers.set({ stage }, context.workers.size);
        const reason = errorMessage(event.error);
        isolatePoison(context, workerId, reason);
        const { exceeded, delayMs, memory } = planRestart(context, sup, Date.now());
        if (exceeded) {
          throw new Error(
            `Stage pool "${stage}" gave up: ${memory.restartHistory.length} worker crashes within ${sup.within_ms} ms, last: ${reason}`,
            { cause: event.error },
          );
        }
        context.deps.log.warn("Worker {workerId} crashed: {reason}; restarting in {delayMs} ms", {
          workerId,
          stage,
          reason,
          delayMs,
        });
        enqueue.assign({
          ...memory,
          respawning: context.respawning + 1,
        });
        enqueue.raise({ type: "worker.respawn" }, { delay: delayMs });
        enqueue("dispatch");
      }),
    },
  },
});

/**
 * Hands queued batches to idle, ready workers while the next mailbox has
 * room, then wakes the previous stage's pool if room was made here.
 */
function dispatch(
  context: PoolContext,
  system: { get(id: string): AnyActorRef | undefined },
): void {
  const { runtime, next, groupRecords } = context;
  const mailbox = runtime.mailbox;
  const allows = context.breaker === null
    ? "all"
    : breakerAllows(context.breaker.getSnapshot().value);
  if (allows === "none" || (allows === "one" && runtime.inFlight.size > 0)) return;
  let took = false;
  for (const [workerId, slot] of context.workers) {
    if (mailbox.length === 0) break;
    if (!slot.ready || runtime.inFlight.has(workerId)) continue;
    const batches: Batch[] = [];
    let records = 0;
    let reserved = 0;
    for (let head = mailbox.peek(); head !== undefined; head = mailbox.peek()) {
      const alone = head.attempts > 0 || head.isolate;
      if (batches.length > 0 && (alone || records + head.size > groupRecords)) break;
      if (next !== null) {
        if (!next.mailbox.tryReserve(head.size)) break;
        reserved += head.size;
      }
      mailbox.take();
      batches.push(head);
      records += head.size;
      if (alone) break;
    }
    if (batches.length === 0) break; // the next stage is full: wait for its room
    took = true;
    runtime.inFlight.set(workerId, { batches, reserved, startedAt: performance.now() });
    slot.ref.send({ type: "batch.process", batches });
    if (allows === "one") break; // a half-open breaker lets one trial through
  }
  context.deps.metrics.mailboxDepth.set({ stage: runtime.stage }, mailbox.depth);
  // The previous pool may have stopped dispatching for want of this room;
  // nothing else would wake it before its next scaling tick.
  const previous = STAGES[STAGES.indexOf(runtime.stage) - 1];
  if (took && previous !== undefined) {
    system.get(`pool.${previous}`)?.send({ type: "mailbox.room" });
  }
}

/** Moves the batches of a finished dispatch on to the next stage. */
function finish(
  context: PoolContext,
  event: BatchDoneEvent,
  system: { get(id: string): AnyActorRef | undefined },
): void {
  const { runtime, next, deps } = context;
  const d = runtime.inFlight.get(event.workerId);
  if (d === undefined) return; // a dispatch already recovered after a crash
  runtime.inFlight.delete(event.workerId);
  const seconds = (performance.now() - d.startedAt) / 1000;
  deps.metrics.stageDuration.observe({ stage: runtime.stage }, seconds);
  deps.metrics.stageBatchesTotal.inc({ stage: runtime.stage, outcome: "ok" }, d.batches.length);
  if (next === null) return; // the store settles its batches on their tickets
  let reserved = d.reserved;
  for (const b of d.batches) {
    const held = b.size;
    b.stage = next.stage;
    b.attempts = 0;
    b.isolate = false;
    const take = Math.min(held, reserved);
    next.mailbox.put(b, take);
    reserved -= take;
  }
  if (reserved > 0) next.mailbox.release(reserved);
  system.get(`pool.${next.stage}`)?.send({ type: "mailbox.put" });
}

/**
 * Puts the batches of a crashed worker back, splitting a batch that has
 * reached `max_attempts` and failing a lone record that keeps crashing.
 */
function isolatePoison(context: PoolContext, workerId: string, reason: string): void {
  const { runtime, next, deps } = context;
  const batches = runtime.recover(workerId, next, true);
  // Batches that crashed together do not tell which of them is at fault:
  // each goes again alone (attempts > 0) before any is split or failed.
  if (batches.length > 1) return;
  const maxAttempts = deps.config.pipeline.max_attempts;
  for (const b of batches) {
    if (b.attempts < maxAttempts) continue;
    if (b.inputLength > 1) {
      removeFromMailbox(runtime.mailbox, b);
      const other = b.split();
      b.attempts = 0;
      b.isolate = true;
      other.isolate = true;
      runtime.mailbox.requeue(other);
      runtime.mailbox.requeue(b);
      deps.log.info("Split a batch that crashed stage {stage} {attempts} times", {
        stage: runtime.stage,
        attempts: maxAttempts,
        sizes: [b.inputLength, other.inputLength],
      });
    } else if (b.inputLength === 1) {
      // Take it out of the mailbox so its size is recounted once it changes.
      removeFromMailbox(runtime.mailbox, b);
      b.failAt(0, runtime.stage, `${reason} (after ${b.attempts} attempts)`);
      b.attempts = 0;
      b.isolate = false;
      runtime.mailbox.requeue(b);
    }
  }
}

function removeFromMailbox(mailbox: Mailbox<Batch>, b: Batch): void {
  const rest: Batch[] = [];
  for (let x = mailbox.take(); x !== undefined; x = mailbox.take()) {
    if (x === b) break;
    rest.push(x);
  }
  for (let i = rest.length - 1; i >= 0; i--) mailbox.requeue(rest[i]);
}

/**
 * The scaling decision for this tick: `"up"`, the id of an idle worker to
 * stop, or `null`.
 */
function autoscale(context: PoolContext, now: number): "up" | string | null {
  const { runtime, deps } = context;
  const { stage } = runtime;
  const { min_workers, max_workers } = deps.config.pipeline.stages[stage];
  const { high_watermark, low_watermark, cooldown_ms } = deps.config.autoscale;
  const fill = runtime.mailbox.fill;
  const size = context.workers.size + context.respawning;
  if (fill > high_watermark) {
    context.lowSince = null;
    if (size >= max_workers) return null;
    deps.metrics.scaleDecisionsTotal.inc({ stage, direction: "up" });
    deps.log.info("Scaling {stage} up to {workers} workers: mailbox at {fill}", {
      stage,
      workers: size + 1,
      fill: Math.round(fill * 100) / 100,
    });
    return "up";
  }
  if (fill >= low_watermark) {
    context.lowSince = null;
    return null;
  }
  context.lowSince ??= now;
  if (now - context.lowSince < cooldown_ms || size <= min_workers) return null;
  let idle: string | undefined;
  for (const [id, slot] of context.workers) {
    if (!runtime.inFlight.has(id) && slot.ready) idle = id;
  }
  if (idle === undefined) return null;
  context.workers.delete(idle);
  runtime.workers = context.workers.size;
  context.lowSince = now;
  deps.metrics.scaleDecisionsTotal.inc({ stage, direction: "down" });
  deps.metrics.stageWorkers.set({ stage }, context.workers.size);
  deps.log.info("Scaling {stage} down to {workers} workers: mailbox idle for {cooldownMs} ms", {
    stage,
    workers: context.workers.size,
    cooldownMs: cooldown_ms,
  });
  return idle;
}

function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
