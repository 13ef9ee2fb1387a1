/**
 * @module
 * Measures the hand-off of {@linkcode openWorkerWriter} and its commits
 * against the direct {@linkcode openSqliteWriter}, on a real file in a
 * temporary directory, with records like seed 000's (1000 a commit):
 *
 * - `hand-off`: what crossing the thread costs per commit of 1000 records:
 *   `toWire` (each record's positional JSON body, joined into one text:
 *   paid by the main thread), `fromWire` (split, keys read off the bodies:
 *   paid by the worker), against the earlier `JSON.stringify` of the record
 *   objects and `structuredClone` of them (what posting the objects would
 *   cost).
 * - `commit`: one commit of 1000 new records, waited for, direct and
 *   through the worker.
 * - `writers`: 4 writers committing 1000 new records each at once, through
 *   one shared worker and through a worker each.
 *
 * Run: `deno bench --allow-all bench/worker_store_bench.ts`
 */
import type { ProcessedRecord } from "../lib/schemas.ts";
import { fromWire, openSqliteWriter, sqlitePath, toWire } from "../lib/sqlite_store.ts";
import type { CommitUnit, StoreWriter } from "../lib/store.ts";
import { processedRecords } from "./_records.ts";
import { openWorkerWriter } from "../lib/worker_store.ts";
import { aggregateRecords } from "../lib/aggregate.ts";

const RECORDS = 1000;

const dir = Deno.makeTempDirSync({ prefix: "troupe_worker_store_bench_" });
globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));

let nextId = 0;

/** `count` records with ids never used before. */
function freshRecords(count: number): ProcessedRecord[] {
  const records = processedRecords(nextId, count);
  nextId += count;
  return records;
}

function freshUnits(): CommitUnit[] {
  const records = freshRecords(RECORDS);
  return [{ records, failed: [], deltas: aggregateRecords(records) }];
}

const sample = freshUnits();
const wire = sample.map(toWire);

Deno.bench("toWire of 1000 records: bodies and one text (main thread)", {
  group: "hand-off",
}, () => {
  sample.map(toWire);
});

Deno.bench("fromWire of 1000 records: split, keys (worker)", { group: "hand-off" }, () => {
  wire.map(fromWire);
});

Deno.bench("JSON.stringify of 1000 record objects (the earlier hand-off)", {
  group: "hand-off",
}, () => {
  JSON.stringify(sample.map((u) => ({ records: u.records, failed: u.failed })));
});

Deno.bench("structuredClone of 1000 records", { group: "hand-off", baseline: true }, () => {
  structuredClone(sample.map((u) => ({ records: u.records, failed: u.failed })));
});

let file = 0;
function freshPath(): string {
  return sqlitePath(`${dir}/db${file++}`);
}

const direct = openSqliteWriter(freshPath(), { synchronous: "normal" });
const worker = await openWorkerWriter(freshPath(), { synchronous: "normal" });

Deno.bench("direct, synchronous normal", { group: "commit", baseline: true }, async (b) => {
  const units = freshUnits();
  b.start();
  await direct.commit(units);
  b.end();
});

Deno.bench("worker, synchronous normal", { group: "commit" }, async (b) => {
  const units = freshUnits();
  b.start();
  await worker.commit(units);
  b.end();
});

async function writers(share: boolean): Promise<StoreWriter[]> {
  const path = freshPath();
  return await Promise.all(
    [1, 2, 3, 4].map(() => openWorkerWriter(path, { synchronous: "normal", share })),
  );
}

const sharedWriters = await writers(true);
const ownWriters = await writers(false);

Deno.bench("one shared worker", { group: "4 writers at once", baseline: true }, async (b) => {
  const units = sharedWriters.map(() => freshUnits());
  b.start();
  await Promise.all(sharedWriters.map((w, i) => w.commit(units[i])));
  b.end();
});

Deno.bench("a worker each", { group: "4 writers at once" }, async (b) => {
  const units = ownWriters.map(() => freshUnits());
  b.start();
  await Promise.all(ownWriters.map((w, i) => w.commit(units[i])));
  b.end();
});

globalThis.addEventListener("unload", () => {
  // Workers end with their last writer; close them all before the directory goes.
  for (const w of [direct, worker, ...sharedWriters, ...ownWriters]) void w.close();
});
