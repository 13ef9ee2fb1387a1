/**
 * @module
 * A storage connection: one worker of the store stage, owning one
 * {@linkcode StoreWriter} (one SQLite connection by default). It opens the
 * connection when it starts and closes it when it stops, commits the
 * batches its pool hands over in one transaction, settles each batch on its
 * ticket (the request is answered only now, after the commit), and reports
 * `batch.done`.
 *
 * ```
 * connecting ──conn.open──► ready ◄──commit.done── committing
 *                             └────batch.process────►┘
 * ```
 *
 * A failed open or commit crashes the connection; the store pool restarts
 * it with backoff and retries the batches, which are idempotent by record
 * id, so a retry never counts a record twice.
 *
 * Events in: `batch.process`; from its connection: `conn.open`,
 * `conn.failed`, `commit.done`, `commit.failed`. To the parent:
 * `worker.ready`, `batch.done`.
 */
import { assign, fromCallback, sendParent, sendTo, setup } from "xstate";
import type { Batch } from "../lib/batch.ts";
import type { CommitOutcome, StoreWriter } from "../lib/store.ts";
import type { StageDeps } from "./_stage_deps.ts";
import type { BatchDoneEvent, StageWorkerInput } from "./_stage_worker.ts";

/** Events a storage connection accepts. */
export type StorageConnectionEvent =
  | { type: "batch.process"; batches: Batch[] }
  | { type: "conn.open" }
  | { type: "conn.failed"; error: unknown }
  | { type: "commit.done"; outcomes: CommitOutcome[] }
  | { type: "commit.failed"; error: unknown };

type ConnectionCommand = { type: "commit"; batches: Batch[] };

/** Owns the writer: opened on start, closed on stop, whatever the state. */
const connection = fromCallback<ConnectionCommand, StageDeps>(
  ({ input: deps, sendBack, receive }) => {
    let writer: StoreWriter | undefined;
    let stopped = false;
    deps.openWriter().then(
      (w) => {
        if (stopped) return void w.close().catch(() => {});
        writer = w;
        sendBack({ type: "conn.open" });
      },
      (error) => sendBack({ type: "conn.failed", error }),
    );
    receive(({ batches }) => {
      commitBatches(writer, batches, deps).then(
        (outcomes) => !stopped && sendBack({ type: "commit.done", outcomes }),
        (error) => !stopped && sendBack({ type: "commit.failed", error }),
      );
    });
    return () => {
      stopped = true;
      writer?.close().catch((error) =>
        deps.log.warn("Closing a storage connection failed: {error}", { error })
      );
    };
  },
);

async function commitBatches(
  writer: StoreWriter | undefined,
  batches: Batch[],
  deps: StageDeps,
): Promise<CommitOutcome[]> {
  if (writer === undefined) throw new Error("Storage connection is not open");
  for (const b of batches) await deps.faults.check("store", () => b.processed.map((r) => r.id));
  return await writer.commit(
    batches.map((b) => ({ records: b.processed, failed: b.failed, deltas: b.deltas })),
  );
}

function crash(error: unknown): never {
  throw error instanceof Error ? error : new Error(String(error));
}

/** Worker machine of the store stage. */
export const storageConnectionMachine = setup({
  types: {
    context: {} as { workerId: string; deps: StageDeps; batches: Batch[] },
    events: {} as StorageConnectionEvent,
    input: {} as StageWorkerInput,
  },
  actors: { connection },
}).createMachine({
  id: "storage_connection",
  context: ({ input }) => ({ workerId: input.workerId, deps: input.deps, batches: [] }),
  invoke: { id: "connection", src: "connection", input: ({ context }) => context.deps },
  initial: "connecting",
  states: {
    connecting: {
      on: {
        "conn.open": {
          target: "ready",
          actions: sendParent(({ context }) => ({
            type: "worker.ready",
            workerId: context.workerId,
          })),
        },
        "conn.failed": { actions: ({ event }) => crash(event.error) },
      },
    },
    ready: {
      on: {
        "batch.process": {
          target: "committing",
          actions: assign({ batches: ({ event }) => event.batches }),
        },
      },
    },
    committing: {
      entry: sendTo("connection", ({ context }): ConnectionCommand => ({
        type: "commit",
        batches: context.batches,
      })),
      on: {
        "commit.done": {
          target: "ready",
          actions: [
            ({ context, event }) => {
              context.batches.forEach((b, i) => b.ticket.settle(b, event.outcomes[i].inserted));
            },
            sendParent(({ context }): BatchDoneEvent => ({
              type: "batch.done",
              workerId: context.workerId,
              batches: context.batches,
            })),
            assign({ batches: [] }),
          ],
        },
        "commit.failed": { actions: ({ event }) => crash(event.error) },
      },
    },
  },
});
