/**
 * @module
 * The pipeline supervisor: starts one stage pool per stage, in order, and
 * restarts a pool that crashes (Broadway's topology).
 *
 * ```
 * pipeline (systemId "pipeline")
 * ├── pool.validate   ── validate_stage workers (≤ 10)
 * ├── pool.transform  ── transform_stage workers
 * ├── pool.aggregate  ── aggregate_stage workers
 * └── pool.store      ── storage_connection workers (≤ 5)
 * ```
 *
 * Restart strategy: one for one. A crashed pool is started again after an
 * exponential backoff; its mailbox and the batches its workers held live in
 * its {@linkcode StageRuntime}, so the new pool takes them back. Intensity:
 * more than `max_restarts` pool crashes within `within_ms` and the
 * pipeline crashes itself, escalating to the root supervisor.
 *
 * Events in: `pool.respawn` (its own, delayed) and `xstate.error.actor.*`
 * from its pools.
 */
import { assign, enqueueActions, setup } from "xstate";
import type { AnyStateMachine } from "xstate";
import { freshRestartMemory, planRestart, type RestartMemory } from "../lib/backoff.ts";
import { PipelineUnavailableError } from "../lib/batch.ts";
import { type StageName, STAGES } from "../lib/schemas.ts";
import type { StageDeps } from "./_stage_deps.ts";
import { aggregateStageMachine } from "./aggregate_stage.ts";
import { stagePoolMachine, StageRuntime } from "./stage_pool.ts";
import { storageConnectionMachine } from "./storage_connection.ts";
import { transformStageMachine } from "./transform_stage.ts";
import { validateStageMachine } from "./validate_stage.ts";

/** The worker machine of each stage. */
export const STAGE_WORKERS: Record<StageName, AnyStateMachine> = {
  validate: validateStageMachine,
  transform: transformStageMachine,
  aggregate: aggregateStageMachine,
  store: storageConnectionMachine,
};

/** The state of every stage that outlives the actors. */
export type StageRuntimes = Record<StageName, StageRuntime>;

/** Creates the mailboxes of every stage, sized from the config. */
export function createStageRuntimes(deps: StageDeps): StageRuntimes {
  const stages = deps.config.pipeline.stages;
  return {
    validate: new StageRuntime("validate", stages.validate.mailbox_capacity),
    transform: new StageRuntime("transform", stages.transform.mailbox_capacity),
    aggregate: new StageRuntime("aggregate", stages.aggregate.mailbox_capacity),
    store: new StageRuntime("store", stages.store.mailbox_capacity),
  };
}

/**
 * Fails the ticket of every batch still queued or held in any stage: the
 * requests get a 503 and nothing of them is acknowledged. Used when the
 * root supervisor gives up.
 */
export function abandonAll(runtimes: StageRuntimes, reason: string): number {
  let n = 0;
  for (const stage of STAGES) {
    const rt = runtimes[stage];
    const batches = rt.mailbox.drain();
    for (const d of rt.inFlight.values()) batches.push(...d.batches);
    rt.inFlight.clear();
    rt.mailbox.cancelWaiters();
    for (const b of batches) {
      b.ticket.fail(new PipelineUnavailableError(`Not committed: ${reason}`));
      n++;
    }
  }
  return n;
}

/** Input of the pipeline supervisor. */
export interface PipelineInput {
  runtimes: StageRuntimes;
  deps: StageDeps;
}

/** Events the pipeline supervisor accepts. */
export type PipelineEvent =
  | { type: "pool.respawn"; stage: StageName }
  | { type: "xstate.error.actor.*"; error: unknown };

interface PipelineContext extends PipelineInput, RestartMemory {}

function poolInput(stage: StageName, { runtimes, deps }: PipelineInput) {
  const i = STAGES.indexOf(stage);
  const batch = deps.config.pipeline.batch_size;
  return {
    runtime: runtimes[stage],
    next: i + 1 < STAGES.length ? runtimes[STAGES[i + 1]] : null,
    worker: STAGE_WORKERS[stage],
    deps,
    // The store groups several batches into one transaction.
    groupRecords: stage === "store" ? batch * 4 : batch,
  };
}

/** Supervisor machine of the four stage pools. */
export const pipelineMachine = setup({
  types: {
    context: {} as PipelineContext,
    events: {} as PipelineEvent,
    input: {} as PipelineInput,
  },
  actors: { pool: stagePoolMachine },
  actions: {
    spawnPool: assign(({ context, spawn }, stage: StageName) => {
      spawn("pool", {
        id: `pool.${stage}`,
        systemId: `pool.${stage}`,
        input: poolInput(stage, context),
      });
      return {};
    }),
  },
}).createMachine({
  id: "pipeline",
  context: ({ input }) => ({
    ...input,
    ...freshRestartMemory(input.deps.config.supervisor),
  }),
  entry: enqueueActions(({ enqueue }) => {
    // Downstream first, so every pool finds its next pool when it starts.
    for (const stage of [...STAGES].reverse()) enqueue({ type: "spawnPool", params: stage });
  }),
  on: {
    "pool.respawn": {
      actions: enqueueActions(({ event, enqueue }) => {
        enqueue({ type: "spawnPool", params: event.stage });
      }),
    },
    "xstate.error.actor.*": {
      actions: enqueueActions(({ context, event, enqueue }) => {
        const id = (event.type as string).slice("xstate.error.actor.".length);
        const stage = id.slice("pool.".length) as StageName;
        const sup = context.deps.config.supervisor;
        const reason = event.error instanceof Error ? event.error.message : String(event.error);
        context.runtimes[stage].poolRestarts++;
        context.deps.metrics.actorRestartsTotal.inc({ actor: id });
        enqueue.stopChild(id);
        const { exceeded, delayMs, memory } = planRestart(context, sup, Date.now());
        if (exceeded) {
          throw new Error(
            `Pipeline gave up: ${memory.restartHistory.length} pool crashes within ${sup.within_ms} ms, last: ${reason}`,
            { cause: event.error },
          );
        }
        context.deps.log.error("Pool {pool} crashed: {reason}; restarting in {delayMs} ms", {
          pool: id,
          reason,
          delayMs,
        });
        enqueue.assign(memory);
        enqueue.raise({ type: "pool.respawn", stage }, { delay: delayMs });
      }),
    },
  },
});
