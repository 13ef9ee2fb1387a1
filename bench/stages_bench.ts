/**
 * @module
 * Measures the parts of the pipeline between ingest and the store that
 * `bench/validate_bench.ts` and the store benches do not: the bounded
 * mailbox (a batch in and out, and reserving room downstream as the pools
 * do), the transform stage and the aggregate stage, each on batches of
 * 1000 records as the load generator sends them (`bench/_records.ts`).
 *
 * Records per second = 1000 / time per iteration (the mailbox bench: 1000
 * batches of 1000 records per iteration, so batches/s = 1000 × iter/s).
 *
 * Run: `deno bench --allow-all bench/stages_bench.ts`
 */
import { aggregateBatches } from "../actors/aggregate_stage.ts";
import type { StageDeps } from "../actors/_stage_deps.ts";
import { AnomalyTracker, transformBatches } from "../actors/transform_stage.ts";
import { validateBatches } from "../actors/validate_stage.ts";
import { type Batch, Ticket, toBatches } from "../lib/batch.ts";
import { defaultConfig } from "../lib/config.ts";
import { FaultInjector } from "../lib/faults.ts";
import { getLog } from "../lib/log.ts";
import { Mailbox } from "../lib/mailbox.ts";
import { createMetrics } from "../lib/metrics.ts";
import { dataRecordSchema } from "../lib/schemas.ts";
import { BodyMaker } from "./_records.ts";

const RECORDS = 1000;

const deps: StageDeps = {
  config: defaultConfig(),
  schema: dataRecordSchema(),
  anomaly: new AnomalyTracker(),
  faults: new FaultInjector(),
  metrics: createMetrics({ defaultMetrics: false }),
  log: getLog("bench"),
  openWriter: () => Promise.reject(new Error("no storage in this bench")),
};

const bodies = new BodyMaker({ batch: RECORDS });
const decoder = new TextDecoder();

/** One request's records, parsed as ingest parses them. */
function rawRecords(): unknown[] {
  return decoder.decode(bodies.next()).split("\n").filter((l) => l.length > 0).map((l) =>
    JSON.parse(l)
  );
}

/** A batch made ready for `stage` by running the stages before it. */
async function batchFor(stage: "transform" | "aggregate"): Promise<Batch> {
  const [b] = toBatches(new Ticket(), rawRecords(), RECORDS);
  await validateBatches([b], deps);
  b.stage = "transform";
  if (stage === "transform") return b;
  await transformBatches([b], deps);
  b.stage = "aggregate";
  return b;
}

Deno.bench({
  name: "transform 1000 records (normalise, anomaly score)",
  group: "stages",
  async fn(t) {
    const b = await batchFor("transform");
    t.start();
    await transformBatches([b], deps);
    t.end();
  },
});

Deno.bench({
  name: "aggregate 1000 records (per-user and per-event deltas)",
  group: "stages",
  async fn(t) {
    const b = await batchFor("aggregate");
    t.start();
    await aggregateBatches([b], deps);
    t.end();
  },
});

const sized = Array.from({ length: 1000 }, () => ({ size: RECORDS }));

Deno.bench({
  name: "mailbox: 1000 batches put and taken",
  group: "mailbox",
  baseline: true,
  fn() {
    const box = new Mailbox<{ size: number }>(RECORDS * 1000);
    for (const item of sized) box.put(item);
    while (box.take() !== undefined) { /* drain */ }
  },
});

Deno.bench({
  name: "mailbox: 1000 batches reserved downstream, put, taken",
  group: "mailbox",
  fn() {
    const box = new Mailbox<{ size: number }>(RECORDS * 4);
    for (const item of sized) {
      if (!box.tryReserve(item.size)) throw new Error("no room");
      box.put(item, item.size);
      box.take();
    }
  },
});
