/**
 * @module
 * The shape shared by the worker machines of the CPU stages (validate,
 * transform, aggregate): idle until the pool hands over batches, run the
 * stage over them, report `batch.done`, idle again.
 *
 * A worker does not catch the errors of its stage function: a throw is a
 * broken invariant (or an injected fault), so the worker crashes and its
 * pool supervisor decides (restart with backoff, retry the batches, split a
 * batch that keeps crashing). Per-record problems never throw: the stage
 * function marks the record failed and goes on.
 *
 * Events in: `batch.process`. Events to the parent: `batch.done`.
 */
import { assign, fromPromise, sendParent, setup } from "xstate";
import type { Batch } from "../lib/batch.ts";
import type { StageDeps } from "./_stage_deps.ts";

/** Events a stage worker accepts. */
export type StageWorkerEvent = { type: "batch.process"; batches: Batch[] };

/** Event a stage worker sends its pool when its batches are done. */
export type BatchDoneEvent = { type: "batch.done"; workerId: string; batches: Batch[] };

/** Input of a stage worker. */
export interface StageWorkerInput {
  workerId: string;
  deps: StageDeps;
}

/** The stage function: transforms `batches` in place; throws only on a broken invariant. */
export type StageFn = (batches: Batch[], deps: StageDeps) => void | Promise<void>;

/** Builds the worker machine of one stage; `id` is the stage file's stem. */
export function createStageWorkerMachine(id: string, run: StageFn) {
  return setup({
    types: {
      context: {} as { workerId: string; deps: StageDeps; batches: Batch[] },
      events: {} as StageWorkerEvent,
      input: {} as StageWorkerInput,
    },
    actors: {
      run: fromPromise<void, { batches: Batch[]; deps: StageDeps }>(
        async ({ input }) => await run(input.batches, input.deps),
      ),
    },
  }).createMachine({
    id,
    context: ({ input }) => ({ workerId: input.workerId, deps: input.deps, batches: [] }),
    initial: "idle",
    states: {
      idle: {
        on: {
          "batch.process": {
            target: "working",
            actions: assign({ batches: ({ event }) => event.batches }),
          },
        },
      },
      working: {
        invoke: {
          src: "run",
          input: ({ context }) => ({ batches: context.batches, deps: context.deps }),
          // No onError: a throw crashes this worker and the pool handles it.
          onDone: {
            target: "idle",
            actions: [
              sendParent(({ context }): BatchDoneEvent => ({
                type: "batch.done",
                workerId: context.workerId,
                batches: context.batches,
              })),
              assign({ batches: [] }),
            ],
          },
        },
      },
    },
  });
}
