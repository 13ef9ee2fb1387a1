/**
 * @module
 * What the stage workers and storage connections of a pipeline share:
 * configuration, the record schema, the anomaly statistics, fault injection,
 * metrics, logging and the way to open a storage connection. Built once in
 * `actors/pipeline.ts` and handed down as input, so a restarted actor picks
 * up the same shared state.
 */
import type { Logger } from "@logtape/logtape";
import type { Config } from "../lib/config.ts";
import type { FaultInjector } from "../lib/faults.ts";
import type { Metrics } from "../lib/metrics.ts";
import type { dataRecordSchema } from "../lib/schemas.ts";
import type { StoreWriter } from "../lib/store.ts";
import type { AnomalyTracker } from "./transform_stage.ts";

/** Shared dependencies of every actor in a pipeline. */
export interface StageDeps {
  config: Config;
  schema: ReturnType<typeof dataRecordSchema>;
  anomaly: AnomalyTracker;
  faults: FaultInjector;
  metrics: Metrics;
  log: Logger;
  /** Opens one storage connection (SQLite file, or another backend). */
  openWriter: () => Promise<StoreWriter>;
}
