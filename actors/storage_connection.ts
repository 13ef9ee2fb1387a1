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
 *                   probing ◄─idle─┘ (ping; ready again on its answer, committing on a batch)
 * ```
 *
 * Idle for `storage.idle_ping_ms`, it pings storage (`probing`) and tells
 * the breaker how that went, so `/readyz` follows storage going away and
 * coming back with no traffic at all. A batch arriving meanwhile is
 * committed at once.
 *
 * After a failed commit the connection pings storage (`checking`):
 *
 * - the ping fails too: storage is unavailable. The batches go back to the
 *   store mailbox untouched (`batch.retry`) and the circuit breaker
 *   (`breaker.store`) hears of it; it opens after a few failures in a row
 *   and the pool waits, with backoff, until a trial commit goes through.
 * - the ping works: the batch itself is at fault, so the connection
 *   crashes; the pool restarts it and counts an attempt on the batch, which
 *   isolates a poison record after `max_attempts`.
 *
 * A failed open crashes the connection too. Batches are idempotent by
 * record id, so a retry never counts a record twice.
 *
 * Events in: `batch.process`; from its connection: `conn.open`,
 * `conn.failed`, `commit.done`, `commit.failed`, `ping.ok`, `ping.failed`.
 * To the parent: `worker.ready`, `batch.done`, `batch.retry`. To the
 * breaker: `call.success`, `call.failure`.
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
  | { type: "commit.failed"; error: unknown }
  | { type: "ping.ok"; probe: boolean }
  | { type: "ping.failed"; probe: boolean; error: unknown };

/** Sent to the pool when storage was unavailable: requeue the batches as they are. */
export type BatchRetryEvent = { type: "batch.retry"; workerId: string; reason: string };

/** `probe`: an idle check, not the check after a failed commit; the answer says which. */
type ConnectionCommand = { type: "commit"; batches: Batch[] } | { type: "ping"; probe: boolean };

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
    receive((command) => {
      if (command.type === "ping") {
        const { probe } = command;
        ping(writer, deps).then(
          () => !stopped && sendBack({ type: "ping.ok", probe }),
          (error) => !stopped && sendBack({ type: "ping.failed", probe, error }),
        );
        return;
      }
      commitBatches(writer, command.batches, deps).then(
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
  deps.faults.checkStorage();
  for (const b of batches) await deps.faults.check("store", () => b.processed.map((r) => r.id));
  return await writer.commit(
    batches.map((b) => ({ records: b.processed, failed: b.failed, deltas: b.deltas })),
  );
}

async function ping(writer: StoreWriter | undefined, deps: StageDeps): Promise<void> {
  if (writer === undefined) throw new Error("Storage connection is not open");
  deps.faults.checkStorage();
  await writer.ping();
}

function message(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

function crash(error: unknown): never {
  throw error instanceof Error ? error : new Error(String(error));
}

/** Worker machine of the store stage. */
export const storageConnectionMachine = setup({
  types: {
    context: {} as { workerId: string; deps: StageDeps; batches: Batch[]; error: unknown },
    events: {} as StorageConnectionEvent,
    input: {} as StageWorkerInput,
  },
  actors: { connection },
  delays: { idlePing: ({ context }) => context.deps.config.storage.idle_ping_ms },
}).createMachine({
  id: "storage_connection",
  context: ({ input }) => ({
    workerId: input.workerId,
    deps: input.deps,
    batches: [],
    error: null,
  }),
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
      after: { idlePing: "probing" },
      on: {
        "batch.process": {
          target: "committing",
          actions: assign({ batches: ({ event }) => event.batches }),
        },
      },
    },
    probing: {
      entry: sendTo("connection", { type: "ping", probe: true }),
      on: {
        "batch.process": {
          target: "committing",
          actions: assign({ batches: ({ event }) => event.batches }),
        },
        "ping.ok": {
          target: "ready",
          actions: ({ system }) => system.get("breaker.store")?.send({ type: "call.success" }),
        },
        "ping.failed": {
          target: "ready",
          actions: ({ event, system }) =>
            system.get("breaker.store")?.send({
              type: "call.failure",
              reason: message(event.error),
            }),
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
            ({ system }) => system.get("breaker.store")?.send({ type: "call.success" }),
            assign({ batches: [] }),
          ],
        },
        "commit.failed": {
          target: "checking",
          actions: assign({ error: ({ event }) => event.error }),
        },
      },
    },
    checking: {
      entry: sendTo("connection", { type: "ping", probe: false }),
      on: {
        // Storage answers: the batch itself is at fault. (An idle probe's late answer is not this one.)
        "ping.ok": {
          guard: ({ event }) => !event.probe,
          actions: ({ context }) => crash(context.error),
        },
        "ping.failed": {
          guard: ({ event }) => !event.probe,
          target: "ready",
          actions: [
            ({ context, system }) =>
              system.get("breaker.store")?.send({
                type: "call.failure",
                reason: message(context.error),
              }),
            sendParent(({ context }): BatchRetryEvent => ({
              type: "batch.retry",
              workerId: context.workerId,
              reason: message(context.error),
            })),
            assign({ batches: [], error: null }),
          ],
        },
      },
    },
  },
});
