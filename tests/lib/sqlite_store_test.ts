/**
 * @module
 * Tests of the SQLite store against real files in a temporary directory:
 * seed 000's expected aggregate, idempotent commits, rollback on failure,
 * durability across reopening, paging, and a property test that the
 * aggregate tables always equal a recomputation from the stored records;
 * then the writer's cached aggregate rows (after a failed commit, under a
 * tiny bound, shared by two writers of one file) and its checkpoint timer
 * (the WAL stays bounded, the process still exits).
 */
import assert from "node:assert/strict";
import { DatabaseSync } from "node:sqlite";
import fc from "fast-check";
import { aggregateRecords, mergeEvent, mergeUser } from "../../lib/aggregate.ts";
import type { FailedRecord, ProcessedRecord, RecordId, StageName } from "../../lib/schemas.ts";
import { recordKey, toUtcIso } from "../../lib/schemas.ts";
import {
  decodeBody,
  encodeBody,
  encodeUnits,
  fromWire,
  keyOfBody,
  openSqliteReader,
  openSqliteWriter,
  SCHEMA_VERSION,
  type SqliteOptions,
  sqlitePath,
  toWire,
} from "../../lib/sqlite_store.ts";
import type { CommitUnit, StoreReader, StoreWriter } from "../../lib/store.ts";
import { processedRecord, SEED_PROCESSED, SEED_USER } from "../_helpers.ts";

function processed(
  r: { id: RecordId; timestamp: string; user_id: string; event: string; value: number },
  metadata: Record<string, unknown> = {},
): ProcessedRecord {
  return processedRecord(r, { metadata });
}

const SEED = SEED_PROCESSED;

function failure(stage: StageName, n: number, record_id: RecordId | null = n): FailedRecord {
  return {
    record_id,
    stage,
    reason: `reason ${n}`,
    raw: { id: record_id, n },
    failed_at: toUtcIso(Date.UTC(2025, 0, 15, 10, 0, n)),
  };
}

interface Store {
  dir: string;
  path: string;
  writer: StoreWriter;
  reader: StoreReader;
}

/** Opens a writer and a reader on a fresh file, runs `fn`, then closes both and cleans up. */
async function withStore(
  fn: (s: Store) => Promise<void>,
  options: SqliteOptions = { synchronous: "normal" },
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "troupe_sqlite_" });
  const path = sqlitePath(`${dir}/data`);
  const writer = openSqliteWriter(path, options);
  const reader = openSqliteReader(path);
  try {
    await fn({ dir, path, writer, reader });
  } finally {
    await reader.close();
    await writer.close();
    await Deno.remove(dir, { recursive: true });
  }
}

function unit(records: ProcessedRecord[], failed: FailedRecord[] = [], deltas = false): CommitUnit {
  return deltas ? { records, failed, deltas: aggregateRecords(records) } : { records, failed };
}

Deno.test("sqlitePath puts troupe.db in the data directory", () => {
  assert.equal(sqlitePath("data"), "data/troupe.db");
});

Deno.test("openSqliteWriter creates the directory and a versioned schema idempotently", async () => {
  const dir = await Deno.makeTempDir({ prefix: "troupe_sqlite_" });
  try {
    const path = sqlitePath(`${dir}/nested/data`);
    await openSqliteWriter(path).close();
    const writer = openSqliteWriter(path);
    await writer.ping();
    await writer.close();
    const db = new DatabaseSync(path, { readOnly: true });
    try {
      assert.deepEqual({ ...db.prepare("PRAGMA user_version").get() }, {
        user_version: SCHEMA_VERSION,
      });
      assert.deepEqual({ ...db.prepare("PRAGMA journal_mode").get() }, { journal_mode: "wal" });
    } finally {
      db.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("openSqliteWriter refuses a file with another schema version", async () => {
  const dir = await Deno.makeTempDir({ prefix: "troupe_sqlite_" });
  try {
    const path = sqlitePath(dir);
    const db = new DatabaseSync(path);
    db.exec("PRAGMA user_version = 99");
    db.close();
    assert.throws(() => openSqliteWriter(path), /schema version 99 is not 2/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("openSqliteWriter rejects invalid options", () => {
  assert.throws(() => openSqliteWriter(":memory:", { busyTimeoutMs: -1 }), RangeError);
  assert.throws(
    () => openSqliteWriter(":memory:", { synchronous: "off" as "full" }),
    /Invalid synchronous mode "off"/,
  );
});

Deno.test("openSqliteReader throws when the file does not exist", async () => {
  const dir = await Deno.makeTempDir({ prefix: "troupe_sqlite_" });
  try {
    assert.throws(() => openSqliteReader(sqlitePath(dir)), /the file does not exist/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("openSqliteReader reads a file without schema as empty until a writer creates it", async () => {
  const dir = await Deno.makeTempDir({ prefix: "troupe_sqlite_" });
  const path = sqlitePath(dir);
  new DatabaseSync(path).close();
  const reader = openSqliteReader(path);
  try {
    assert.equal(await reader.getUser("user_001"), undefined);
    assert.deepEqual(await reader.listUsers(10), { users: [], next_cursor: null });
    assert.deepEqual(await reader.listFailed(10), []);
    assert.deepEqual(await reader.counts(), {
      stored_records: 0,
      failed_records: 0,
      users: 0,
      events: 0,
    });
    const writer = openSqliteWriter(path);
    await writer.commit([unit(SEED)]);
    await writer.close();
    assert.deepEqual(await reader.getUser("user_001"), SEED_USER);
  } finally {
    await reader.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("StoreWriter.commit stores seed 000 and its user aggregate", async () => {
  await withStore(async ({ writer, reader }) => {
    const outcomes = await writer.commit([unit(SEED, [], true)]);

    assert.deepEqual(outcomes, [{ inserted: [true, true] }]);
    assert.deepEqual(await reader.getUser("user_001"), SEED_USER);
    assert.deepEqual(Object.keys((await reader.getUser("user_001"))!), Object.keys(SEED_USER));
    assert.deepEqual(await reader.getEvent("login"), {
      event: "login",
      count: 1,
      total_value: 1,
      min_value: 1,
      max_value: 1,
    });
    assert.deepEqual(await reader.getRecord(1), SEED[0]);
    assert.deepEqual(await reader.getRecord("2"), SEED[1]);
    assert.equal(await reader.getRecord(3), undefined);
    assert.equal(await reader.getUser("user_002"), undefined);
    assert.equal(await reader.getEvent("logout"), undefined);
  });
});

Deno.test("StoreWriter.commit of the same records again changes nothing", async () => {
  await withStore(async ({ writer, reader }) => {
    await writer.commit([unit(SEED, [], true)]);

    const outcomes = await writer.commit([unit(SEED, [], true)]);

    assert.deepEqual(outcomes, [{ inserted: [false, false] }]);
    assert.deepEqual(await reader.getUser("user_001"), SEED_USER);
    assert.equal((await reader.getEvent("page_view"))?.count, 1);
    assert.deepEqual(await reader.counts(), {
      stored_records: 2,
      failed_records: 0,
      users: 1,
      events: 2,
    });
  });
});

Deno.test("StoreWriter.commit treats a repeated id within one commit as a duplicate", async (t) => {
  await t.step("in one unit", async () => {
    await withStore(async ({ writer, reader }) => {
      const again = { ...SEED[1], id: 1, value: 100 };
      const outcomes = await writer.commit([unit([SEED[0], again], [], true)]);

      assert.deepEqual(outcomes, [{ inserted: [true, false] }]);
      assert.deepEqual(await reader.getRecord(1), SEED[0]);
      assert.deepEqual(await reader.getUser("user_001"), {
        user_id: "user_001",
        total_events: 1,
        total_value: 1,
        events: ["login"],
        last_activity: "2025-01-15T10:00:00Z",
      });
    });
  });
  await t.step('across units, with 1 and "1" as the same id', async () => {
    await withStore(async ({ writer, reader }) => {
      const outcomes = await writer.commit([
        unit([SEED[0]], [], true),
        unit([{ ...SEED[0], id: "1" }, SEED[1]], [], true),
      ]);

      assert.deepEqual(outcomes, [{ inserted: [true] }, { inserted: [false, true] }]);
      assert.deepEqual(await reader.getUser("user_001"), SEED_USER);
      assert.equal((await reader.counts()).stored_records, 2);
    });
  });
});

Deno.test("StoreWriter.commit tells new from stored records across chunks of both", async () => {
  await withStore(async ({ writer, reader }) => {
    const records = Array.from({ length: 250 }, (_, i) =>
      processed({
        id: i,
        timestamp: "2025-01-15T10:00:00Z",
        user_id: `user_${i % 4}`,
        event: "click",
        value: 1,
      }));
    const before = records.filter((_, i) => i % 3 === 0);
    await writer.commit([unit(before)]);

    const [outcome] = await writer.commit([unit(records, [], true)]);

    assert.deepEqual(outcome.inserted, records.map((_, i) => i % 3 !== 0));
    assert.equal((await reader.getEvent("click"))?.count, 250);
    assert.equal((await reader.counts()).stored_records, 250);
  });
});

Deno.test("StoreWriter.commit ignores supplied deltas of a unit holding a duplicate", async () => {
  await withStore(async ({ writer, reader }) => {
    await writer.commit([unit([SEED[0]])]);
    const third = processed({
      id: 3,
      timestamp: "2025-01-15T10:00:07Z",
      user_id: "user_002",
      event: "login",
      value: 2,
    });

    const outcomes = await writer.commit([unit([...SEED, third], [], true)]);

    assert.deepEqual(outcomes, [{ inserted: [false, true, true] }]);
    assert.deepEqual(await reader.getUser("user_001"), SEED_USER);
    assert.deepEqual(await reader.getEvent("login"), {
      event: "login",
      count: 2,
      total_value: 3,
      min_value: 1,
      max_value: 2,
    });
    assert.equal((await reader.counts()).stored_records, 3);
  });
});

Deno.test("StoreWriter.commit writes nothing when the transaction fails", async (t) => {
  const many = Array.from({ length: 250 }, (_, i) =>
    processed({
      id: 10 + i,
      timestamp: "2025-01-15T10:01:00Z",
      user_id: `user_${i % 7}`,
      event: "click",
      value: i,
    }));
  const bad = (id: number) =>
    processed({
      id,
      timestamp: "2025-01-15T10:02:00Z",
      user_id: "user_001",
      event: "login",
      value: 1,
    }, { big: 1n });

  async function assertUnchanged(reader: StoreReader): Promise<void> {
    assert.deepEqual(await reader.getUser("user_001"), SEED_USER);
    assert.equal(await reader.getUser("user_3"), undefined);
    assert.equal(await reader.getEvent("click"), undefined);
    assert.equal(await reader.getRecord(10), undefined);
    assert.deepEqual(await reader.listFailed(10), []);
    assert.deepEqual(await reader.counts(), {
      stored_records: 2,
      failed_records: 0,
      users: 1,
      events: 2,
    });
  }

  await t.step("on a record JSON cannot encode, after two chunks went in", async () => {
    await withStore(async ({ writer, reader }) => {
      await writer.commit([unit(SEED)]);

      await assert.rejects(
        writer.commit([unit(many, [failure("validate", 1)]), unit([bad(999)])]),
        TypeError,
      );

      await assertUnchanged(reader);
      assert.deepEqual(await writer.commit([unit([many[0]])]), [{ inserted: [true] }]);
    });
  });
  await t.step("on a failed record JSON cannot encode, after records and aggregates", async () => {
    await withStore(async ({ writer, reader }) => {
      await writer.commit([unit(SEED)]);
      const badFailure = { ...failure("transform", 2), raw: { big: 2n } };

      await assert.rejects(writer.commit([unit(many, [badFailure], true)]), TypeError);

      await assertUnchanged(reader);
    });
  });
  await t.step("on a closed connection", async () => {
    await withStore(async ({ path, writer, reader }) => {
      await writer.commit([unit(SEED)]);
      await writer.close();

      await assert.rejects(writer.commit([unit(many)]), /not open/);
      await assert.rejects(writer.ping(), /finalized|not open/);

      await assertUnchanged(reader);
      const again = openSqliteWriter(path);
      assert.deepEqual(await again.commit([unit(SEED)]), [{ inserted: [false, false] }]);
      await again.close();
    });
  });
});

Deno.test("StoreWriter.commit keeps data across closing and reopening", async () => {
  await withStore(async ({ path, writer, reader }) => {
    await writer.commit([unit(SEED, [failure("validate", 7, null)], true)]);
    await writer.close();
    await reader.close();

    const writer2 = openSqliteWriter(path, { synchronous: "full" });
    const reader2 = openSqliteReader(path);
    try {
      assert.deepEqual(await reader2.getUser("user_001"), SEED_USER);
      assert.deepEqual(await reader2.getRecord(2), SEED[1]);
      assert.deepEqual(await reader2.counts(), {
        stored_records: 2,
        failed_records: 1,
        users: 1,
        events: 2,
      });
      assert.deepEqual(await writer2.commit([unit(SEED, [], true)]), [{
        inserted: [false, false],
      }]);
      assert.equal((await reader2.listFailed(10))[0].record_id, null);
    } finally {
      await reader2.close();
      await writer2.close();
    }
  });
});

Deno.test("StoreReader.counts follows stored, failed, users and events", async () => {
  await withStore(async ({ writer, reader }) => {
    const records = Array.from({ length: 230 }, (_, i) =>
      processed({
        id: `r-${i}`,
        timestamp: "2025-01-15T10:00:00Z",
        user_id: `user_${String(i % 150).padStart(3, "0")}`,
        event: ["login", "click", "logout"][i % 3],
        value: 1,
      }));
    await writer.commit([
      unit(records.slice(0, 120), [failure("validate", 1), failure("transform", 2)]),
      unit(records.slice(100), [failure("store", 3)], true),
    ]);

    assert.deepEqual(await reader.counts(), {
      stored_records: 230,
      failed_records: 3,
      users: 150,
      events: 3,
    });
  });
});

Deno.test("StoreReader.listUsers pages through every user exactly once", async (t) => {
  await withStore(async ({ writer, reader }) => {
    const ids = Array.from({ length: 53 }, (_, i) => `user_${String(i).padStart(3, "0")}`);
    await writer.commit([unit(ids.map((user_id, i) =>
      processed({
        id: i,
        timestamp: "2025-01-15T10:00:00Z",
        user_id,
        event: "login",
        value: i,
      })
    ))]);

    for (const limit of [1, 10, 53, 100]) {
      await t.step(`with limit ${limit}`, async () => {
        const seen: string[] = [];
        let cursor: string | undefined;
        let pages = 0;
        do {
          const page = await reader.listUsers(limit, cursor);
          assert.ok(page.users.length <= limit);
          seen.push(...page.users.map((u) => u.user_id));
          cursor = page.next_cursor ?? undefined;
          pages++;
        } while (cursor !== undefined);
        assert.deepEqual(seen, ids);
        assert.equal(pages, Math.ceil(ids.length / limit));
      });
    }
    await t.step("rejects a limit below 1", async () => {
      await assert.rejects(reader.listUsers(0), RangeError);
    });
  });
});

Deno.test("StoreReader.listFailed lists newest first and filters by stage", async () => {
  await withStore(async ({ writer, reader }) => {
    await writer.commit([unit([], [failure("validate", 1), failure("transform", 2, "b")])]);
    await writer.commit([
      unit([], [failure("validate", 3, null)]),
      unit([], [{ ...failure("store", 4), raw: undefined }]),
    ]);

    const all = await reader.listFailed(10);
    assert.deepEqual(all.map((f) => f.reason), ["reason 4", "reason 3", "reason 2", "reason 1"]);
    assert.deepEqual(all.map((f) => f.seq), [4, 3, 2, 1]);
    assert.deepEqual(all[2], { seq: 2, ...failure("transform", 2, "b") });
    assert.deepEqual(all[3], { seq: 1, ...failure("validate", 1) });
    assert.equal(all[1].record_id, null);
    assert.equal(all[0].raw, null);
    assert.deepEqual((await reader.listFailed(2)).map((f) => f.seq), [4, 3]);
    assert.deepEqual((await reader.listFailed(10, "validate")).map((f) => f.seq), [3, 1]);
    assert.deepEqual(await reader.listFailed(10, "aggregate"), []);
    await assert.rejects(reader.listFailed(-1), RangeError);
  });
});

Deno.test("StoreWriter.commit of nothing succeeds without writing", async () => {
  await withStore(async ({ writer, reader }) => {
    assert.deepEqual(await writer.commit([]), []);
    assert.deepEqual(await writer.commit([unit([]), unit([])]), [{ inserted: [] }, {
      inserted: [],
    }]);
    assert.equal((await reader.counts()).stored_records, 0);
  });
});

/** Reads every stored record in insertion order, straight from the table. */
function storedRecords(path: string): ProcessedRecord[] {
  const db = new DatabaseSync(path, { readOnly: true });
  try {
    return (db.prepare("SELECT body FROM records ORDER BY seq").all() as { body: string }[])
      .map((row) => decodeBody(row.body));
  } finally {
    db.close();
  }
}

const recordArb = fc.record({
  // A small pool of ids, as numbers and as strings, so duplicates are common.
  id: fc.oneof(fc.integer({ min: 0, max: 14 }), fc.integer({ min: 0, max: 14 }).map(String)),
  ms: fc.integer({ min: Date.UTC(2025, 0, 1), max: Date.UTC(2025, 0, 2) }),
  user_id: fc.constantFrom("u1", "u2", "u3", "ü4"),
  event: fc.constantFrom("login", "click", "logout"),
  // Quarters add up exactly, so sums do not depend on the order of addition.
  value: fc.integer({ min: -400, max: 400 }).map((n) => n / 4),
}).map((r) =>
  processed({
    id: r.id,
    timestamp: new Date(r.ms).toISOString(),
    user_id: r.user_id,
    event: r.event,
    value: r.value,
  })
);

const unitArb = fc.record({
  records: fc.array(recordArb, { maxLength: 12 }),
  failures: fc.nat({ max: 2 }),
  deltas: fc.boolean(),
});

Deno.test("StoreWriter.commit keeps aggregates equal to a recomputation from stored records", async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.array(fc.array(unitArb, { minLength: 1, maxLength: 3 }), { minLength: 1, maxLength: 5 }),
      async (commits) => {
        await withStore(async ({ path, writer, reader }) => {
          const seen = new Set<string>();
          const expectedStored: ProcessedRecord[] = [];
          let failedTotal = 0;
          for (const commit of commits) {
            const units = commit.map((u) => {
              failedTotal += u.failures;
              const failed = Array.from({ length: u.failures }, (_, i) => failure("validate", i));
              return unit(u.records, failed, u.deltas);
            });
            const expected = commit.map((u) => ({
              inserted: u.records.map((r) => {
                const key = recordKey(r.id);
                if (seen.has(key)) return false;
                seen.add(key);
                expectedStored.push(r);
                return true;
              }),
            }));

            assert.deepEqual(await writer.commit(units), expected);
          }

          const stored = storedRecords(path);
          assert.deepEqual(stored, expectedStored);
          const deltas = aggregateRecords(stored);
          const users = [];
          let cursor: string | undefined;
          do {
            const page = await reader.listUsers(2, cursor);
            users.push(...page.users);
            cursor = page.next_cursor ?? undefined;
          } while (cursor !== undefined);
          assert.equal(users.length, deltas.users.size);
          for (const user of users) {
            const { last_ms: _, ...expected } = mergeUser(
              undefined,
              deltas.users.get(user.user_id)!,
            );
            assert.deepEqual(user, expected);
          }
          for (const delta of deltas.events.values()) {
            assert.deepEqual(await reader.getEvent(delta.event), mergeEvent(undefined, delta));
          }
          const counts = await reader.counts();
          assert.deepEqual(counts, {
            stored_records: stored.length,
            failed_records: failedTotal,
            users: deltas.users.size,
            events: deltas.events.size,
          });
          assert.equal(counts.stored_records, users.reduce((n, u) => n + u.total_events, 0));
        });
      },
    ),
    { numRuns: 60 },
  );
});

/** Asserts that users, events and counts equal a recomputation from the stored records. */
async function assertAggregatesMatchRecords(path: string, reader: StoreReader): Promise<void> {
  const stored = storedRecords(path);
  const deltas = aggregateRecords(stored);
  const { users } = await reader.listUsers(1000);
  assert.equal(users.length, deltas.users.size);
  for (const user of users) {
    const { last_ms: _, ...expected } = mergeUser(undefined, deltas.users.get(user.user_id)!);
    assert.deepEqual(user, expected);
  }
  for (const delta of deltas.events.values()) {
    assert.deepEqual(await reader.getEvent(delta.event), mergeEvent(undefined, delta));
  }
  const counts = await reader.counts();
  assert.equal(counts.stored_records, stored.length);
  assert.equal(counts.users, deltas.users.size);
  assert.equal(counts.events, deltas.events.size);
}

/** `count` records with ids from `firstId`, spread over `users` users and three events. */
function spread(firstId: number, count: number, users: number, pad = ""): ProcessedRecord[] {
  return Array.from({ length: count }, (_, i) =>
    processed({
      id: firstId + i,
      timestamp: toUtcIso(Date.UTC(2025, 0, 15, 10) + (firstId + i) * 1000),
      user_id: `user_${(firstId + i) % users}`,
      event: ["login", "click", "logout"][(firstId + i) % 3],
      value: ((firstId + i) % 9) / 4,
    }, pad === "" ? {} : { pad }));
}

Deno.test("openSqliteWriter rejects an invalid checkpoint interval or cache size", () => {
  assert.throws(
    () => openSqliteWriter(":memory:", { checkpointIntervalMs: 0 }),
    /Invalid checkpoint interval 0 ms: expected a positive integer/,
  );
  assert.throws(
    () => openSqliteWriter(":memory:", { cacheRows: 1.5 }),
    /Invalid cache size 1.5: expected a positive integer/,
  );
});

Deno.test("StoreWriter.commit keeps cached aggregates right after a commit that failed", async (t) => {
  await t.step("after the user and event upserts", async () => {
    await withStore(async ({ path, writer, reader }) => {
      await writer.commit([unit(spread(0, 40, 5), [], true)]);
      const badFailure = { ...failure("transform", 2), raw: { big: 2n } };

      // Fails in the last statement, once users and events of the same keys were merged.
      await assert.rejects(writer.commit([unit(spread(40, 40, 5), [badFailure], true)]), TypeError);
      await assertAggregatesMatchRecords(path, reader);

      await writer.commit([unit(spread(40, 40, 7), [], true)]);
      await assertAggregatesMatchRecords(path, reader);
      assert.deepEqual(await reader.counts(), {
        stored_records: 80,
        failed_records: 0,
        users: 7,
        events: 3,
      });
    });
  });
  await t.step("before them, in the second unit", async () => {
    await withStore(async ({ path, writer, reader }) => {
      await writer.commit([unit(spread(0, 30, 4))]);
      const bad = { ...spread(100, 1, 4)[0], metadata: { big: 1n } };

      await assert.rejects(writer.commit([unit(spread(30, 30, 4)), unit([bad])]), TypeError);
      await writer.commit([unit(spread(30, 30, 6)), unit(spread(0, 5, 6))]);

      await assertAggregatesMatchRecords(path, reader);
    });
  });
});

Deno.test("StoreWriter.commit re-reads aggregates the bounded cache let go", async () => {
  await withStore(async ({ path, writer, reader }) => {
    for (let i = 0; i < 6; i++) await writer.commit([unit(spread(i * 50, 50, 9), [], i % 2 === 0)]);

    await assertAggregatesMatchRecords(path, reader);
    assert.equal((await reader.counts()).users, 9);
  }, { synchronous: "normal", cacheRows: 2 });
});

Deno.test("StoreWriter.commit of two writers on one file interleaving keeps aggregates right", async () => {
  await withStore(async ({ path, writer, reader }) => {
    // Another spelling of the same file shares the same cached rows.
    const other = openSqliteWriter(path.replace("/data/", "/data/../data/"), {
      synchronous: "normal",
    });
    try {
      for (let i = 0; i < 8; i++) {
        const w = i % 2 === 0 ? writer : other;
        // Each commit overlaps the last one by 10 records, so duplicates cross writers too.
        const outcomes = await w.commit([unit(spread(i * 30, 40, 5), [], true)]);
        assert.equal(outcomes[0].inserted.filter((x) => !x).length, i === 0 ? 0 : 10);
        await assertAggregatesMatchRecords(path, reader);
      }
      await writer.close();
      await other.commit([unit(spread(500, 20, 6))]);
      await assertAggregatesMatchRecords(path, reader);
    } finally {
      await other.close();
    }
  });
});

Deno.test("StoreWriter.commit keeps the WAL file bounded over many commits", async () => {
  await withStore(async ({ path, writer }) => {
    const pad = "x".repeat(500);
    let written = 0;
    for (let i = 0; i < 200; i++) {
      const records = spread(i * 100, 100, 50, pad);
      written += records.reduce((n, r) => n + JSON.stringify(r).length, 0);
      await writer.commit([unit(records, [], true)]);
      // Turns of the event loop now and then, so the timer runs as well as the fallback.
      if (i % 25 === 0) await new Promise((resolve) => setTimeout(resolve, 10));
    }
    const wal = (await Deno.stat(`${path}-wal`)).size;
    assert.ok(written > 10 * 1024 * 1024, `only ${written} bytes written`);
    assert.ok(wal < 4 * 1024 * 1024, `WAL of ${wal} bytes after ${written} bytes written`);
  }, { synchronous: "normal", checkpointIntervalMs: 2 });
});

Deno.test("openSqliteWriter lets the process exit while its checkpoint timer is pending", async () => {
  const dir = await Deno.makeTempDir({ prefix: "troupe_sqlite_" });
  try {
    const script = `${dir}/open_and_exit.ts`;
    const moduleUrl = new URL("../../lib/sqlite_store.ts", import.meta.url).href;
    await Deno.writeTextFile(
      script,
      `import { openSqliteWriter } from ${JSON.stringify(moduleUrl)};
const writer = openSqliteWriter(${JSON.stringify(sqlitePath(`${dir}/data`))});
await writer.commit([{ records: [], failed: [${JSON.stringify(failure("validate", 1))}] }]);
console.log("committed, not closed");
`,
    );
    const { code, stdout } = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--allow-all",
        "--config",
        new URL("../../deno.json", import.meta.url).pathname,
        script,
      ],
      stdout: "piped",
      stderr: "inherit",
      signal: AbortSignal.timeout(30_000),
    }).output();

    assert.equal(new TextDecoder().decode(stdout).trim(), "committed, not closed");
    assert.equal(code, 0);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("StoreWriter.commit with synchronous full answers only after the WAL is synced", async (t) => {
  const syncs: Array<{ path: string; resolve: () => void; reject: (e: Error) => void }> = [];
  const syncWal = (path: string) =>
    new Promise<void>((resolve, reject) => syncs.push({ path, resolve, reject }));
  await withStore(async ({ path, writer, reader }) => {
    await t.step("the commit waits for the sync of its WAL", async () => {
      let answered = false;
      const commit = writer.commit([unit(SEED, [], true)]).then((o) => {
        answered = true;
        return o;
      });
      await new Promise((r) => setTimeout(r, 20));
      assert.equal(syncs.length, 1, "one sync was asked for");
      assert.equal(syncs[0].path, `${Deno.realPathSync(path)}-wal`);
      assert.equal(answered, false, "not answered before the WAL is on disk");
      assert.deepEqual(await reader.getRecord(1), SEED[0], "the rows are written already");
      syncs[0].resolve();
      assert.deepEqual(await commit, [{ inserted: [true, true] }]);
    });
    await t.step("a failed sync fails the commit", async () => {
      const commit = writer.commit([unit([processed({ ...SEED[0], id: 10 })])]);
      await new Promise((r) => setTimeout(r, 20));
      syncs[1].reject(new Error("EIO: injected"));
      await assert.rejects(commit, /EIO/);
    });
  }, { synchronous: "full", syncWal });
});

Deno.test("StoreWriter.commit with synchronous normal does not sync the WAL", async () => {
  let syncs = 0;
  await withStore(async ({ writer }) => {
    await writer.commit([unit(SEED, [], true)]);
  }, {
    synchronous: "normal",
    syncWal: () => {
      syncs++;
      return Promise.resolve();
    },
  });
  assert.equal(syncs, 0);
});

Deno.test("encodeBody writes the schema 2 array and decodeBody reads it and the schema 1 object", async (t) => {
  const record = processed({ ...SEED[0], id: 'a "quoted"\nid' }, { nested: { a: [1, "x"] } });
  await t.step("a round trip gives the record back", () => {
    const body = encodeBody(record);
    assert.ok(body.startsWith("["), body);
    assert.deepEqual(decodeBody(body), record);
    assert.deepEqual(JSON.parse(body).length, 10);
  });
  await t.step("an object body of schema 1 reads as it is", () => {
    assert.deepEqual(decodeBody(JSON.stringify(record)), record);
  });
  await t.step("any record survives the round trip", () => {
    fc.assert(
      fc.property(recordArb, fc.jsonValue(), (r, extra) => {
        const p = processed(r, { extra });
        assert.deepEqual(decodeBody(encodeBody(p)), JSON.parse(JSON.stringify(p)));
      }),
      { numRuns: 300 },
    );
  });
});

Deno.test("openSqliteWriter takes a schema 1 file to 2 and reads its old bodies", async () => {
  const dir = await Deno.makeTempDir({ prefix: "troupe_sqlite_v1_" });
  try {
    const path = sqlitePath(`${dir}/data`);
    const writer = openSqliteWriter(path, { synchronous: "normal" });
    await writer.commit([unit([SEED[0]], [], true)]);
    await writer.close();
    // Make it a schema 1 file: version 1, the record stored as an object.
    const db = new DatabaseSync(path);
    db.exec("PRAGMA user_version = 1");
    db.prepare("UPDATE records SET body = ? WHERE id = '1'").run(JSON.stringify(SEED[0]));
    db.close();
    const again = openSqliteWriter(path, { synchronous: "normal" });
    await again.commit([unit([SEED[1]], [], true)]);
    const reader = openSqliteReader(path);
    try {
      assert.deepEqual(await reader.getRecord(1), SEED[0], "the old object body");
      assert.deepEqual(await reader.getRecord(2), SEED[1], "a new array body");
      const check = new DatabaseSync(path, { readOnly: true });
      const version = check.prepare("PRAGMA user_version").get() as { user_version: number };
      check.close();
      assert.equal(version.user_version, SCHEMA_VERSION);
      assert.equal(SCHEMA_VERSION, 2);
    } finally {
      await reader.close();
      await again.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("keyOfBody reads the key of any id off its body, and the wire form round-trips", () => {
  const idArb = fc.oneof(
    fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }),
    fc.string({ minLength: 1, maxLength: 40 }),
    fc.string({ unit: "grapheme", minLength: 1, maxLength: 10 }),
  );
  fc.assert(
    fc.property(idArb, (id) => {
      const record = processed({ ...SEED[0], id });
      assert.equal(keyOfBody(encodeBody(record)), recordKey(id));
    }),
    { numRuns: 500 },
  );
  for (const id of ['a"b', "a\\b", "new\nline", "\u2028", 0, 9_007_199_254_740_991]) {
    assert.equal(keyOfBody(encodeBody(processed({ ...SEED[0], id }))), recordKey(id));
  }
  const units = [unit(SEED, [failure("validate", 1)], true), unit([])];
  assert.deepEqual(units.map(toWire).map(fromWire), encodeUnits(units));
});
