/**
 * @module
 * Measures {@linkcode openSqliteWriter}'s `commit` on a real file in a
 * temporary directory: 1000 new records in one unit and in 10 units of 100,
 * with `synchronous` full and normal, plus 100 new records in one unit (where
 * the fsync of `full` weighs most), a commit of 1000 duplicates, and a
 * sustained run: 20 commits of 1000 followed by a WAL checkpoint, all timed,
 * so that the checkpoint work the writer moves off the commit path (to a
 * timer, once a second) is still paid for in the figure — more often than
 * the service pays it.
 * Records look like seed 000's (100 users, 5 event types, small metadata);
 * the deltas are supplied as the aggregate stage would. Only the commit is
 * timed. Records per second = records / time per iteration.
 *
 * Run: `deno bench --allow-all bench/sqlite_store_bench.ts`
 */
import { DatabaseSync } from "node:sqlite";
import { aggregateRecords } from "../lib/aggregate.ts";
import type { ProcessedRecord } from "../lib/schemas.ts";
import {
  encodeBody,
  openSqliteWriter,
  type SqliteOptions,
  sqlitePath,
} from "../lib/sqlite_store.ts";
import type { CommitUnit, StoreWriter } from "../lib/store.ts";
import { processedRecords } from "./_records.ts";

const RECORDS = 1000;

const dir = Deno.makeTempDirSync({ prefix: "troupe_sqlite_bench_" });
globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));

const sqliteVersion = (() => {
  const db = new DatabaseSync(":memory:");
  const row = db.prepare("SELECT sqlite_version() AS v").get() as { v: string };
  db.close();
  return row.v;
})();
console.log(
  `sqlite_store bench: SQLite ${sqliteVersion}, ${navigator.hardwareConcurrency} cores, ` +
    `temp dir ${dir}; records/s = records per commit / time per iteration`,
);

let nextId = 0;

/** `count` records with ids never used before. */
function freshRecords(count: number): ProcessedRecord[] {
  const records = processedRecords(nextId, count);
  nextId += count;
  return records;
}

function units(unitCount: number, withDeltas = true): CommitUnit[] {
  return Array.from({ length: unitCount }, () => {
    const records = freshRecords(RECORDS / unitCount);
    return withDeltas
      ? { records, failed: [], deltas: aggregateRecords(records) }
      : { records, failed: [] };
  });
}

const writers = new Map<string, StoreWriter>();

/** One writer (and file) per bench, opened on first use. */
function writer(name: string, options: SqliteOptions): StoreWriter {
  let w = writers.get(name);
  if (w === undefined) {
    w = openSqliteWriter(sqlitePath(`${dir}/${name}`), options);
    writers.set(name, w);
  }
  return w;
}

for (const synchronous of ["normal", "full"] as const) {
  Deno.bench({
    name: `commit 1000 new records in 1 unit, synchronous=${synchronous}`,
    group: "1 unit of 1000",
    baseline: synchronous === "normal",
    async fn(b) {
      const w = writer(`one_${synchronous}`, { synchronous });
      const batch = units(1);
      b.start();
      await w.commit(batch);
      b.end();
    },
  });
  Deno.bench({
    name: `commit 1000 new records in 10 units of 100, synchronous=${synchronous}`,
    group: "10 units of 100",
    baseline: synchronous === "normal",
    async fn(b) {
      const w = writer(`ten_${synchronous}`, { synchronous });
      const batch = units(10);
      b.start();
      await w.commit(batch);
      b.end();
    },
  });
}

for (const synchronous of ["normal", "full"] as const) {
  Deno.bench({
    name: `commit 100 new records in 1 unit, synchronous=${synchronous}`,
    group: "1 unit of 100",
    baseline: synchronous === "normal",
    async fn(b) {
      const w = writer(`small_${synchronous}`, { synchronous });
      const records = freshRecords(100);
      const batch = [{ records, failed: [], deltas: aggregateRecords(records) }];
      b.start();
      await w.commit(batch);
      b.end();
    },
  });
}

Deno.bench({
  name: "commit 1000 new records in 1 unit without deltas, synchronous=normal",
  group: "1 unit of 1000",
  async fn(b) {
    const w = writer("nodeltas_normal", { synchronous: "normal" });
    const batch = units(1, false);
    b.start();
    await w.commit(batch);
    b.end();
  },
});

Deno.bench({
  name: "commit 1000 duplicate records in 1 unit, synchronous=normal",
  group: "duplicates",
  async fn(b) {
    const w = writer("dups_normal", { synchronous: "normal" });
    const batch = units(1);
    await w.commit(batch);
    b.start();
    await w.commit(batch);
    b.end();
  },
});

/** One connection per file that only checkpoints, for the sustained benches. */
const checkpointers = new Map<string, DatabaseSync>();

for (const synchronous of ["normal", "full"] as const) {
  Deno.bench({
    name:
      `sustained: 20 commits of 1000 new records, then a checkpoint, synchronous=${synchronous}`,
    group: "sustained",
    baseline: synchronous === "normal",
    async fn(b) {
      const name = `sustained_${synchronous}`;
      const w = writer(name, { synchronous });
      let db = checkpointers.get(name);
      if (db === undefined) {
        db = new DatabaseSync(sqlitePath(`${dir}/${name}`));
        checkpointers.set(name, db);
      }
      const batches = Array.from({ length: 20 }, () => units(1));
      b.start();
      for (const batch of batches) await w.commit(batch);
      db.exec("PRAGMA wal_checkpoint(PASSIVE)");
      b.end();
    },
  });
}

// The stored body: the positional array of schema 2 against the object of schema 1.
const bodyRecords = processedRecords(1_000_000, RECORDS);
Deno.bench({
  name: "encode 1000 bodies: encodeBody (schema 2 array)",
  group: "body encoding",
  baseline: true,
  fn() {
    for (const r of bodyRecords) encodeBody(r);
  },
});
Deno.bench({
  name: "encode 1000 bodies: JSON.stringify of the object (schema 1)",
  group: "body encoding",
  fn() {
    for (const r of bodyRecords) JSON.stringify(r);
  },
});
