/**
 * @module
 * Tests of `lib/worker_store.ts`: the worker writer gives the same outcomes
 * and the same stored rows as the direct SQLite writer (seed 000,
 * duplicates, aggregates, failed records), shares one worker per path,
 * passes errors back, rejects pending calls when its worker dies, and ends
 * the worker on close.
 */
import assert from "node:assert/strict";
import { DatabaseSync } from "node:sqlite";
import { aggregateRecords } from "../../lib/aggregate.ts";
import type { FailedRecord, ProcessedRecord, RecordId } from "../../lib/schemas.ts";
import { toUtcIso } from "../../lib/schemas.ts";
import { openSqliteReader, openSqliteWriter, sqlitePath } from "../../lib/sqlite_store.ts";
import type { CommitUnit, StoreReader, StoreWriter } from "../../lib/store.ts";
import { processedRecord, SEED_PROCESSED, SEED_USER } from "../_helpers.ts";
import { openWorkerWriter } from "../../lib/worker_store.ts";

function processed(
  r: { id: RecordId; timestamp: string; user_id: string; event: string; value: number },
  metadata: Record<string, unknown> = {},
): ProcessedRecord {
  return processedRecord(r, { metadata });
}

const SEED = SEED_PROCESSED;

function failure(n: number, record_id: RecordId | null = n): FailedRecord {
  return {
    record_id,
    stage: "validate",
    reason: `reason ${n}`,
    raw: { id: record_id, n, nested: { list: [1, "two", null] } },
    failed_at: toUtcIso(Date.UTC(2025, 0, 15, 10, 0, n)),
  };
}

function unit(records: ProcessedRecord[], failed: FailedRecord[] = []): CommitUnit {
  return { records, failed, deltas: aggregateRecords(records) };
}

/** Makes a temporary data directory, runs `fn` on the SQLite path inside, then removes it. */
async function withDir(fn: (path: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "troupe_worker_store_" });
  try {
    await fn(sqlitePath(`${dir}/data`));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Everything a reader can tell about a store. */
async function snapshot(reader: StoreReader, ids: RecordId[]) {
  return {
    counts: await reader.counts(),
    users: await reader.listUsers(1000),
    events: await Promise.all(["login", "page_view", "click"].map((e) => reader.getEvent(e))),
    records: await Promise.all(ids.map((id) => reader.getRecord(id))),
    failed: await reader.listFailed(1000),
  };
}

/** A mixed workload: seed 000, repeats within and across commits, chunks of 100, failed records. */
function workload(): CommitUnit[][] {
  const many = Array.from({ length: 250 }, (_, i) =>
    processed({
      id: i + 10,
      timestamp: `2025-01-15T10:${String(i % 60).padStart(2, "0")}:00Z`,
      user_id: `user_${i % 7}`,
      event: i % 2 ? "click" : "page_view",
      value: i / 4 - 20,
    }, { i, tags: ["a", i] }));
  return [
    [unit(SEED)],
    [unit(SEED)],
    [unit([{ ...SEED[0], id: "1" }, { ...SEED[1], id: 3, value: 100 }], [failure(4)])],
    [unit(many.filter((_, i) => i % 3 === 0)), unit([], [failure(5, null), failure(6, "x")])],
    [unit(many, [failure(7)]), unit([many[1], { ...many[2], id: 999 }, { ...many[2], id: 999 }])],
  ];
}

Deno.test("openWorkerWriter stores seed 000 and its user aggregate", async () => {
  await withDir(async (path) => {
    const writer = await openWorkerWriter(path, { synchronous: "normal" });
    const reader = openSqliteReader(path);
    try {
      assert.deepEqual(await writer.commit([unit(SEED)]), [{ inserted: [true, true] }]);
      assert.deepEqual(await writer.commit([unit(SEED)]), [{ inserted: [false, false] }]);
      assert.deepEqual(await reader.getUser("user_001"), SEED_USER);
      assert.deepEqual(await reader.getRecord(1), SEED[0]);
      assert.deepEqual(await reader.getRecord("2"), SEED[1]);
    } finally {
      await reader.close();
      await writer.close();
    }
  });
});

Deno.test("openWorkerWriter gives the direct writer's outcomes and rows", async () => {
  const ids: RecordId[] = [1, 2, 3, 10, 11, 259, 999, 1000];
  const results: { outcomes: unknown[]; store: Awaited<ReturnType<typeof snapshot>> }[] = [];
  for (
    const open of [
      (path: string) => Promise.resolve(openSqliteWriter(path, { synchronous: "normal" })),
      (path: string) => openWorkerWriter(path, { synchronous: "normal" }),
    ]
  ) {
    await withDir(async (path) => {
      const writer: StoreWriter = await open(path);
      const reader = openSqliteReader(path);
      try {
        const outcomes = [];
        for (const units of workload()) outcomes.push(await writer.commit(units));
        results.push({ outcomes, store: await snapshot(reader, ids) });
      } finally {
        await reader.close();
        await writer.close();
      }
    });
  }
  const [direct, worker] = results;
  assert.equal(direct.store.counts.stored_records, 254);
  assert.deepEqual(worker, direct);
});

Deno.test("openWorkerWriter shares one worker between writers of a path", async () => {
  await withDir(async (path) => {
    const writers = await Promise.all([1, 2, 3].map(() => openWorkerWriter(path)));
    const reader = openSqliteReader(path);
    try {
      const outcomes = await Promise.all(writers.map((w, n) =>
        w.commit([
          unit([{ ...SEED[0], id: n }, { ...SEED[1], id: `shared` }]),
        ])
      ));
      assert.deepEqual(outcomes.map(([o]) => o.inserted[0]), [true, true, true]);
      assert.equal(outcomes.filter(([o]) => o.inserted[1]).length, 1);
      await writers[0].close();
      await writers[1].ping();
      assert.equal((await reader.counts()).stored_records, 4);
      await assert.rejects(writers[0].commit([unit(SEED)]), /closed/);
    } finally {
      await reader.close();
      for (const w of writers) await w.close();
    }
  });
});

Deno.test("openWorkerWriter rejects a file with another schema version", async () => {
  await withDir(async (path) => {
    await (await openWorkerWriter(path)).close();
    const db = new DatabaseSync(path);
    db.exec("PRAGMA user_version = 99");
    db.close();

    await assert.rejects(openWorkerWriter(path), /schema version 99 is not 2/);
  });
});

Deno.test("StoreWriter.commit through the worker rejects with the store's error and keeps the connection", async () => {
  await withDir(async (path) => {
    const writer = await openWorkerWriter(path);
    try {
      const db = new DatabaseSync(path);
      db.exec("DROP TABLE events");
      db.close();

      await assert.rejects(writer.commit([unit(SEED)]), /no such table: events/);
      await writer.ping();
      const circular: Record<string, unknown> = {};
      circular.self = circular;
      await assert.rejects(writer.commit([unit([processed(SEED[0], circular)])]), TypeError);
    } finally {
      await writer.close();
    }
  });
});

Deno.test("StoreWriter.commit rejects pending and later calls when the worker dies", async () => {
  const dir = await Deno.makeTempDir({ prefix: "troupe_worker_store_" });
  // Opens fine, then dies of an uncaught error on the first commit, as a crashed worker would.
  const workerUrl = new URL(`file://${dir}/dying_worker.js`);
  await Deno.writeTextFile(
    workerUrl,
    `self.onmessage = (event) => {
      const { id, op } = event.data;
      if (op === "commit") setTimeout(() => { throw new Error("boom"); }, 10);
      else self.postMessage({ id, ok: true });
    };`,
  );
  try {
    const writer = await openWorkerWriter(":memory:", { workerUrl });
    const pending = [writer.commit([unit(SEED)]), writer.commit([unit(SEED)])];

    for (const p of pending) await assert.rejects(p, /SQLite worker for ":memory:" died: .*boom/);
    await assert.rejects(writer.ping(), /died/);
    await writer.close();

    const again = await openWorkerWriter(":memory:", { workerUrl });
    await again.ping();
    await again.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("StoreWriter.close ends the worker and later calls reject", async () => {
  await withDir(async (path) => {
    const writer = await openWorkerWriter(path, { share: false });
    await writer.commit([unit(SEED)]);

    await writer.close();
    await writer.close();

    await assert.rejects(writer.ping(), /closed/);
    const reader = openSqliteReader(path);
    assert.equal((await reader.counts()).stored_records, 2);
    await reader.close();
  });
});
