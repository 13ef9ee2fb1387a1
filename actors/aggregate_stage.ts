/**
 * @module
 * The aggregate stage worker: sums each batch into per-user and per-event
 * deltas (one entry per key), so the store applies one upsert per key per
 * batch instead of one per record.
 *
 * Events: see `actors/_stage_worker.ts`.
 */
import { aggregateRecords } from "../lib/aggregate.ts";
import type { Batch } from "../lib/batch.ts";
import type { StageDeps } from "./_stage_deps.ts";
import { createStageWorkerMachine } from "./_stage_worker.ts";

/** Computes the deltas of each batch. */
export async function aggregateBatches(batches: Batch[], deps: StageDeps): Promise<void> {
  for (const b of batches) {
    await deps.faults.check("aggregate", () => b.processed.map((r) => r.id));
  }
  for (const b of batches) b.deltas = aggregateRecords(b.processed);
}

/** Worker machine of the aggregate stage. */
export const aggregateStageMachine = createStageWorkerMachine("aggregate_stage", aggregateBatches);
