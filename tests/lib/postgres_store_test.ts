/**
 * @module
 * Tests of the PostgreSQL store against a real PostgreSQL 15 started on
 * loopback for this file (`tests/_postgres_server.ts`); each case works in
 * a fresh PostgreSQL schema. The storage contract as the SQLite store keeps
 * it (seed 000's aggregate, idempotent commits, duplicates within a commit,
 * rollback, failed records, counts, paging, a property test that the
 * aggregates equal a recomputation from the stored records), then what only
 * a shared server brings: concurrent schema creation, writers committing
 * overlapping batches at once without counting twice or deadlocking,
 * connection errors that name the server but never the password, and a
 * stopped server making ping and commit fail until it is back.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import postgres from "postgres";
import { aggregateRecords, mergeEvent, mergeUser } from "../../lib/aggregate.ts";
import type { FailedRecord, ProcessedRecord, RecordId, StageName } from "../../lib/schemas.ts";
import { recordKey, toUtcIso } from "../../lib/schemas.ts";
import {
  createPostgresSchema,
  openPostgresReader,
  openPostgresStorage,
  openPostgresWriter,
  PG_SCHEMA_VERSION,
  PostgresStoreError,
  postgresTarget,
} from "../../lib/postgres_store.ts";
import type { CommitUnit, StoreReader, StoreWriter } from "../../lib/store.ts";
import { processedRecord, SEED_PROCESSED, SEED_USER } from "../_helpers.ts";
import { type PostgresServer, startPostgres } from "../_postgres_server.ts";

const SEED = SEED_PROCESSED;

function processed(
  r: { id: RecordId; timestamp: string; user_id: string; event: string; value: number },
  metadata: Record<string, unknown> = {},
): ProcessedRecord {
  return processedRecord(r, { metadata });
}

function failure(stage: StageName, n: number, record_id: RecordId | null = n): FailedRecord {
  return {
    record_id,
    stage,
    reason: `reason ${n}`,
    raw: { id: record_id, n },
    failed_at: toUtcIso(Date.UTC(2025, 0, 15, 10, 0, n)),
  };
}

function unit(records: ProcessedRecord[], failed: FailedRecord[] = [], deltas = false): CommitUnit {
  return deltas ? { records, failed, deltas: aggregateRecords(records) } : { records, failed };
}

interface Store {
  schema: string;
  writer: StoreWriter;
  reader: StoreReader;
}

/** The server, an admin connection to it, and fresh schemas for each case. */
class Fixture {
  readonly pg: PostgresServer;
  readonly admin: postgres.Sql;
  #schemas = 0;

  constructor(pg: PostgresServer) {
    this.pg = pg;
    this.admin = postgres(pg.url, { max: 1, onnotice: () => {} });
  }

  nextSchema(): string {
    return `t${++this.#schemas}`;
  }

  /** Creates a fresh schema, opens a writer and a reader on it, runs `fn`, closes and drops. */
  async withStore(fn: (s: Store) => Promise<void>): Promise<void> {
    const schema = this.nextSchema();
    await createPostgresSchema(this.pg.url, { schema });
    const writer = await openPostgresWriter(this.pg.url, { schema });
    const reader = await openPostgresReader(this.pg.url, { schema });
    try {
      await fn({ schema, writer, reader });
    } finally {
      await reader.close();
      await writer.close();
      await this.admin.unsafe(`DROP SCHEMA ${schema} CASCADE`);
    }
  }

  /** Every stored record, straight from the table, in key order. */
  async storedRecords(schema: string): Promise<ProcessedRecord[]> {
    const rows = await this.admin.unsafe(`SELECT body FROM ${schema}.records ORDER BY id`);
    return rows.map((row) => JSON.parse(row.body));
  }

  /** Deadlocks PostgreSQL detected in this database so far. */
  async deadlocks(): Promise<number> {
    await this.admin`SELECT pg_stat_force_next_flush()`;
    await this.admin`SELECT pg_stat_clear_snapshot()`;
    const [row] = await this.admin`
      SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()`;
    return Number(row.deadlocks);
  }
}

/** Asserts that users, events and counts equal a recomputation from `stored`, in commit order. */
async function assertAggregatesMatch(
  reader: StoreReader,
  stored: readonly ProcessedRecord[],
  failedTotal?: number,
): Promise<void> {
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
  if (failedTotal !== undefined) assert.equal(counts.failed_records, failedTotal);
}

const recordArb = fc.record({
  // A small pool of ids, as numbers and as strings, so duplicates are common.
  id: fc.oneof(fc.integer({ min: 0, max: 14 }), fc.integer({ min: 0, max: 14 }).map(String)),
  ms: fc.integer({ min: Date.UTC(2025, 0, 1), max: Date.UTC(2025, 0, 2) }),
  // "Z" sorts before "a" and "ü4" after both, in binary order as in SQLite.
  user_id: fc.constantFrom("u1", "u2", "Z3", "ü4"),
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

Deno.test("the PostgreSQL store keeps the storage contract on a real server", async (t) => {
  const pg = await startPostgres();
  const f = new Fixture(pg);
  try {
    await t.step("createPostgresSchema is idempotent, also run by three at once", async () => {
      const schema = f.nextSchema();
      await Promise.all([1, 2, 3].map(() => createPostgresSchema(pg.url, { schema })));
      await createPostgresSchema(pg.url, { schema });

      const tables = await f.admin`
        SELECT table_name FROM information_schema.tables WHERE table_schema = ${schema}
        ORDER BY table_name`;
      assert.deepEqual(tables.map((r) => r.table_name), [
        "events",
        "failed",
        "meta",
        "records",
        "totals",
        "users",
      ]);
      const [meta] = await f.admin.unsafe(`SELECT value FROM ${schema}.meta`);
      assert.equal(meta.value, String(PG_SCHEMA_VERSION));
      await f.admin.unsafe(`DROP SCHEMA ${schema} CASCADE`);
    });

    await t.step("a schema of another version or none at all is refused", async () => {
      const schema = f.nextSchema();
      await assert.rejects(
        openPostgresWriter(pg.url, { schema }),
        new RegExp(`schema "${schema}" does not exist`),
      );
      await createPostgresSchema(pg.url, { schema });
      await f.admin.unsafe(`UPDATE ${schema}.meta SET value = '99'`);

      await assert.rejects(createPostgresSchema(pg.url, { schema }), /version 99, not 1/);
      await assert.rejects(openPostgresWriter(pg.url, { schema }), /version 99, not 1/);
      await assert.rejects(openPostgresReader(pg.url, { schema }), /version 99, not 1/);
      await f.admin.unsafe(`DROP SCHEMA ${schema} CASCADE`);
    });

    await t.step("commit stores seed 000 and its user aggregate", async () => {
      await f.withStore(async ({ writer, reader }) => {
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

    await t.step(
      "commit of the same records again reports duplicates, counts nothing",
      async () => {
        await f.withStore(async ({ writer, reader }) => {
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
      },
    );

    await t.step("commit treats a repeated id within one commit as a duplicate", async () => {
      await f.withStore(async ({ writer, reader }) => {
        const again = { ...SEED[1], id: 1, value: 100 };
        assert.deepEqual(await writer.commit([unit([SEED[0], again], [], true)]), [{
          inserted: [true, false],
        }]);
        assert.deepEqual(await reader.getRecord(1), SEED[0]);
        assert.deepEqual(await reader.getUser("user_001"), {
          user_id: "user_001",
          total_events: 1,
          total_value: 1,
          events: ["login"],
          last_activity: "2025-01-15T10:00:00Z",
        });
      });
      await f.withStore(async ({ writer, reader }) => {
        // 1 and "1" are the same id; the first record of the commit claims it.
        const outcomes = await writer.commit([
          unit([{ ...SEED[1], id: "1" }], [], true),
          unit([SEED[0], SEED[1]], [], true),
        ]);
        assert.deepEqual(outcomes, [{ inserted: [true] }, { inserted: [false, true] }]);
        assert.equal((await reader.getRecord(1))?.event, "page_view");
        assert.equal((await reader.getUser("user_001"))?.total_events, 2);
        assert.equal(await reader.getEvent("login"), undefined);
      });
    });

    await t.step("commit tells new from stored records and ignores stale deltas", async () => {
      await f.withStore(async ({ writer, reader }) => {
        const records = Array.from({ length: 2500 }, (_, i) =>
          processed({
            id: i,
            timestamp: "2025-01-15T10:00:00Z",
            user_id: `user_${i % 40}`,
            event: "click",
            value: 1,
          }));
        await writer.commit([unit(records.filter((_, i) => i % 3 === 0))]);

        const [outcome] = await writer.commit([unit(records, [], true)]);

        assert.deepEqual(outcome.inserted, records.map((_, i) => i % 3 !== 0));
        assert.equal((await reader.getEvent("click"))?.count, 2500);
        assert.equal((await reader.getUser("user_0"))?.total_events, 63);
        assert.equal((await reader.counts()).stored_records, 2500);
      });
    });

    await t.step("commit writes nothing when the transaction fails", async () => {
      await f.withStore(async ({ writer, reader }) => {
        await writer.commit([unit(SEED)]);
        const many = Array.from({ length: 250 }, (_, i) =>
          processed({
            id: 10 + i,
            timestamp: "2025-01-15T10:01:00Z",
            user_id: `user_${i % 7}`,
            event: "click",
            value: i,
          }));
        const unchanged = async () => {
          assert.deepEqual(await reader.getUser("user_001"), SEED_USER);
          assert.equal(await reader.getEvent("click"), undefined);
          assert.equal(await reader.getRecord(10), undefined);
          assert.deepEqual(await reader.listFailed(10), []);
          assert.deepEqual(await reader.counts(), {
            stored_records: 2,
            failed_records: 0,
            users: 1,
            events: 2,
          });
        };

        // JSON cannot encode it: refused before anything is sent.
        const big = processed({ ...SEED[0], id: 999 }, { big: 1n });
        await assert.rejects(writer.commit([unit(many), unit([big])]), TypeError);
        await unchanged();

        // PostgreSQL text cannot hold NUL: the server refuses the users upsert, after the records.
        const nul = processed({ ...SEED[0], id: 998, user_id: "a\u0000b" });
        await assert.rejects(
          writer.commit([unit(many, [failure("validate", 1)]), unit([nul])]),
          (error: PostgresStoreError) => {
            assert.equal(error.name, "PostgresStoreError");
            assert.equal(error.connection, false);
            assert.match(
              error.message,
              /^Cannot commit to PostgreSQL "troupe@127\.0\.0\.1:\d+\/troupe": /,
            );
            return true;
          },
        );
        await unchanged();
        await writer.ping();
        assert.deepEqual(await writer.commit([unit([many[0]])]), [{ inserted: [true] }]);
      });
    });

    await t.step("any text goes in and comes back exactly, keys and bodies alike", async () => {
      const schema = f.nextSchema();
      await createPostgresSchema(pg.url, { schema });
      const writer = await openPostgresWriter(pg.url, { schema });
      const reader = await openPostgresReader(pg.url, { schema });
      // PostgreSQL text holds any character but NUL; bodies are JSON, where NUL is escaped.
      const text = fc.string({ unit: "binary", minLength: 1, maxLength: 12 })
        .filter((x) => !x.includes("\u0000"));
      const tricky = fc.constantFrom("NULL", "null", '"', "\\", "{a,b}", " ", ",", "\n", "ü", "😀");
      const key = fc.oneof(text, tricky);
      let n = 0;
      try {
        await fc.assert(
          fc.asyncProperty(
            fc.array(
              fc.record({ id: key, user_id: key, event: key, meta: fc.string({ unit: "binary" }) }),
              { minLength: 1, maxLength: 8 },
            ),
            key,
            async (rows, raw) => {
              const records = rows.map((r) =>
                processed({
                  id: `${n++}:${r.id}`,
                  timestamp: "2025-01-15T10:00:00Z",
                  user_id: r.user_id,
                  event: r.event,
                  value: 1,
                }, { text: r.meta, nested: { [r.meta]: [r.id] } })
              );
              const failed = { ...failure("validate", 1, raw), raw: { raw, meta: rows[0].meta } };
              await writer.commit([unit(records, [failed])]);
              for (const r of records) {
                assert.deepEqual(await reader.getRecord(r.id), r);
                const user = await reader.getUser(r.user_id);
                assert.ok(user?.events.includes(r.event), JSON.stringify(r.user_id));
                assert.ok((await reader.getEvent(r.event))!.count >= 1);
              }
              const [stored] = await reader.listFailed(1);
              assert.deepEqual(stored.raw, failed.raw);
              assert.equal(stored.record_id, raw);
            },
          ),
          { numRuns: 40 },
        );
      } finally {
        await reader.close();
        await writer.close();
        await f.admin.unsafe(`DROP SCHEMA ${schema} CASCADE`);
      }
    });

    await t.step("failed records are stored and listed newest first, by stage", async () => {
      await f.withStore(async ({ writer, reader }) => {
        await writer.commit([unit([], [failure("validate", 1), failure("transform", 2, "b")])]);
        await writer.commit([
          unit([], [failure("validate", 3, null)]),
          unit([], [{ ...failure("store", 4), raw: undefined }]),
        ]);

        const all = await reader.listFailed(10);
        assert.deepEqual(all.map((x) => x.reason), [
          "reason 4",
          "reason 3",
          "reason 2",
          "reason 1",
        ]);
        assert.deepEqual(all.map((x) => x.seq), [4, 3, 2, 1]);
        assert.deepEqual(all[2], { seq: 2, ...failure("transform", 2, "b") });
        assert.deepEqual(all[3], { seq: 1, ...failure("validate", 1) });
        assert.equal(all[1].record_id, null);
        assert.equal(all[0].raw, null);
        assert.deepEqual((await reader.listFailed(2)).map((x) => x.seq), [4, 3]);
        assert.deepEqual((await reader.listFailed(10, "validate")).map((x) => x.seq), [3, 1]);
        assert.deepEqual(await reader.listFailed(10, "aggregate"), []);
        await assert.rejects(reader.listFailed(-1), RangeError);
        assert.equal((await reader.counts()).failed_records, 4);
      });
    });

    await t.step("counts follow stored, failed, users and events", async () => {
      await f.withStore(async ({ writer, reader }) => {
        assert.deepEqual(await reader.counts(), {
          stored_records: 0,
          failed_records: 0,
          users: 0,
          events: 0,
        });
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
        assert.deepEqual(await writer.commit([]), []);
        assert.deepEqual(await writer.commit([unit([]), unit([])]), [{ inserted: [] }, {
          inserted: [],
        }]);
        assert.equal((await reader.counts()).stored_records, 230);
      });
    });

    await t.step("listUsers pages through every user exactly once, in binary order", async () => {
      await f.withStore(async ({ writer, reader }) => {
        const ids = [
          ...Array.from({ length: 50 }, (_, i) => `user_${String(i).padStart(3, "0")}`),
          "User_X",
          "user_ä",
          "user_z",
        ];
        await writer.commit([unit(ids.map((user_id, i) =>
          processed({
            id: i,
            timestamp: "2025-01-15T10:00:00Z",
            user_id,
            event: "login",
            value: i,
          })
        ))]);
        // Binary order, as SQLite pages: "User_X" < "user_000" < "user_z" < "user_ä".
        const expected = [...ids].sort();

        for (const limit of [1, 10, 53, 100]) {
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
          assert.deepEqual(seen, expected, `limit ${limit}`);
          assert.equal(pages, Math.ceil(ids.length / limit));
        }
        await assert.rejects(reader.listUsers(0), RangeError);
      });
    });

    await t.step(
      "commit keeps aggregates equal to a recomputation from stored records",
      async () => {
        const schema = f.nextSchema();
        await createPostgresSchema(pg.url, { schema });
        const writer = await openPostgresWriter(pg.url, { schema });
        const reader = await openPostgresReader(pg.url, { schema });
        try {
          await fc.assert(
            fc.asyncProperty(
              fc.array(fc.array(unitArb, { minLength: 1, maxLength: 3 }), {
                minLength: 1,
                maxLength: 5,
              }),
              async (commits) => {
                await f.admin.unsafe(
                  `TRUNCATE ${schema}.records, ${schema}.users, ${schema}.events, ${schema}.failed,
                   ${schema}.totals RESTART IDENTITY`,
                );
                const seen = new Set<string>();
                const expectedStored: ProcessedRecord[] = [];
                let failedTotal = 0;
                for (const commit of commits) {
                  const units = commit.map((u) => {
                    failedTotal += u.failures;
                    const failed = Array.from(
                      { length: u.failures },
                      (_, i) => failure("validate", i),
                    );
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

                const byKey = (a: ProcessedRecord, b: ProcessedRecord) =>
                  recordKey(a.id) < recordKey(b.id) ? -1 : 1;
                assert.deepEqual(
                  await f.storedRecords(schema),
                  [...expectedStored].sort(byKey),
                );
                await assertAggregatesMatch(reader, expectedStored, failedTotal);
                const counts = await reader.counts();
                const { users } = await reader.listUsers(100);
                assert.equal(counts.stored_records, users.reduce((n, u) => n + u.total_events, 0));
              },
            ),
            { numRuns: 40 },
          );
        } finally {
          await reader.close();
          await writer.close();
          await f.admin.unsafe(`DROP SCHEMA ${schema} CASCADE`);
        }
      },
    );

    await t.step(
      "writers committing overlapping batches at once never count twice nor deadlock",
      async () => {
        const schema = f.nextSchema();
        await createPostgresSchema(pg.url, { schema });
        // Three writers, as three troupe instances would each have one or more.
        const writers = await Promise.all(
          [1, 2, 3].map(() => openPostgresWriter(pg.url, { schema })),
        );
        const reader = await openPostgresReader(pg.url, { schema });
        const deadlocksBefore = await f.deadlocks();
        let rounds = 0;
        try {
          await fc.assert(
            fc.asyncProperty(
              fc.array(
                fc.record({
                  // Each writer's share of a pool of 400 ids: the shares overlap at random.
                  picks: fc.array(fc.array(fc.boolean(), { minLength: 400, maxLength: 400 }), {
                    minLength: 3,
                    maxLength: 3,
                  }),
                  shuffle: fc.integer(),
                  units: fc.integer({ min: 1, max: 3 }),
                }),
                { minLength: 2, maxLength: 4 },
              ),
              async (commits) => {
                await f.admin.unsafe(
                  `TRUNCATE ${schema}.records, ${schema}.users, ${schema}.events,
                     ${schema}.failed, ${schema}.totals`,
                );
                const owners = new Map<string, number>();
                const firstSeen: ProcessedRecord[] = [];
                const byId = new Map<string, ProcessedRecord>();
                for (const [round, c] of commits.entries()) {
                  rounds++;
                  const pool = Array.from({ length: 400 }, (_, i) =>
                    processed({
                      id: `${round}-${i % 300}`, // ids repeat across rounds' pools too
                      timestamp: toUtcIso(Date.UTC(2025, 0, 15) + i * 1000),
                      // Many users and events so that transactions share and lock many rows.
                      user_id: `user_${(i * 7 + round) % 60}`,
                      event: `event_${i % 9}`,
                      value: (i % 13) / 4,
                    }));
                  const batches = c.picks.map((pick, w) => {
                    const mine = pool.filter((_, i) => pick[i]);
                    // Each writer sends its share in its own order.
                    const order = mine.map((r, i) => ({ r, k: hash(c.shuffle + w, i) }));
                    order.sort((a, b) => a.k - b.k);
                    const records = order.map((x) => x.r);
                    const size = Math.ceil(records.length / c.units);
                    const units: CommitUnit[] = [];
                    for (let at = 0; at < records.length; at += size) {
                      units.push(unit(records.slice(at, at + size), [], w % 2 === 0));
                    }
                    return units;
                  });

                  const outcomes = await Promise.all(
                    batches.map((units, w) => writers[w].commit(units)),
                  );

                  for (const [w, units] of batches.entries()) {
                    units.forEach((u, ui) =>
                      u.records.forEach((r, ri) => {
                        if (!outcomes[w][ui].inserted[ri]) return;
                        const key = recordKey(r.id);
                        assert.equal(owners.get(key), undefined, `${key} stored twice`);
                        owners.set(key, w);
                        byId.set(key, r);
                      })
                    );
                  }
                  // Every record offered is stored, by exactly one writer.
                  for (const units of batches) {
                    for (const u of units) {
                      for (const r of u.records) assert.ok(owners.has(recordKey(r.id)));
                    }
                  }
                }
                firstSeen.push(...byId.values());
                const stored = await f.storedRecords(schema);
                assert.equal(stored.length, owners.size);
                for (const r of stored) assert.deepEqual(r, byId.get(recordKey(r.id)));
                // The events list of a user depends on which commit went first: compare as sets.
                const deltas = aggregateRecords(firstSeen);
                const { users } = await reader.listUsers(1000);
                assert.equal(users.length, deltas.users.size);
                for (const user of users) {
                  const { last_ms: _, ...expected } = mergeUser(
                    undefined,
                    deltas.users.get(user.user_id)!,
                  );
                  assert.deepEqual(
                    { ...user, events: [...user.events].sort() },
                    { ...expected, events: [...expected.events].sort() },
                  );
                }
                for (const delta of deltas.events.values()) {
                  assert.deepEqual(
                    await reader.getEvent(delta.event),
                    mergeEvent(undefined, delta),
                  );
                }
                assert.deepEqual(await reader.counts(), {
                  stored_records: owners.size,
                  failed_records: 0,
                  users: deltas.users.size,
                  events: deltas.events.size,
                });
              },
            ),
            { numRuns: 8 },
          );
          assert.ok(rounds >= 16);
          assert.equal(await f.deadlocks() - deadlocksBefore, 0, "deadlocks detected");
        } finally {
          await reader.close();
          await Promise.all(writers.map((w) => w.close()));
          await f.admin.unsafe(`DROP SCHEMA ${schema} CASCADE`);
        }
      },
    );

    await t.step("openPostgresStorage hands out writers and closes them all", async () => {
      const schema = f.nextSchema();
      const storage = await openPostgresStorage(pg.url, { schema });
      const a = await storage.openWriter();
      const b = await storage.openWriter();
      assert.deepEqual(await a.commit([unit(SEED)]), [{ inserted: [true, true] }]);
      assert.deepEqual(await b.commit([unit(SEED)]), [{ inserted: [false, false] }]);
      assert.deepEqual(await storage.reader.getUser("user_001"), SEED_USER);
      assert.equal(storage.target, `troupe@127.0.0.1:${pg.port}/troupe`);
      await a.close();

      await storage.close();

      await assert.rejects(b.ping(), /not open/);
      await assert.rejects(storage.reader.counts(), /not open/);
      await f.admin.unsafe(`DROP SCHEMA ${schema} CASCADE`);
    });

    await t.step("connection errors name the server, never the password", async () => {
      const wrong = pg.url.replace(encodeURIComponent(pg.password), "not-the-password");
      const check = (code: string, reason: RegExp) => (error: PostgresStoreError) => {
        assert.equal(error.name, "PostgresStoreError");
        assert.equal(error.code, code);
        assert.equal(error.connection, true);
        assert.match(error.message, reason);
        assert.ok(!error.message.includes("not-the-password"), error.message);
        assert.ok(!error.message.includes(pg.password), error.message);
        return true;
      };
      await assert.rejects(
        openPostgresWriter(wrong),
        check(
          "28P01",
          new RegExp(
            `^Cannot connect to PostgreSQL "troupe@127\\.0\\.0\\.1:${pg.port}/troupe": password authentication failed`,
          ),
        ),
      );
      await assert.rejects(
        createPostgresSchema(wrong),
        check("28P01", /^Cannot connect to PostgreSQL "troupe@127\.0\.0\.1:\d+\/troupe"/),
      );
      const closedPort = pg.url.replace(`:${pg.port}/`, ":1/");
      await assert.rejects(
        openPostgresReader(closedPort),
        check(
          "ECONNREFUSED",
          /^Cannot connect to PostgreSQL "troupe@127\.0\.0\.1:1\/troupe": connection refused \(ECONNREFUSED\)$/,
        ),
      );
      await assert.rejects(
        openPostgresWriter(pg.urlOf("nowhere")),
        check("3D000", /"troupe@127\.0\.0\.1:\d+\/nowhere": database "nowhere" does not exist/),
      );
      await assert.rejects(openPostgresWriter("mysql://u:secret@h/db"), (e: Error) => {
        assert.ok(e instanceof RangeError);
        assert.match(
          e.message,
          /"mysql:\/\/u:\*\*\*@h\/db": expected postgres:\/\/ or postgresql:\/\//,
        );
        return true;
      });
      assert.equal(
        postgresTarget("postgresql://u:p%40ss@db.example:6432/x"),
        "u@db.example:6432/x",
      );
    });

    await t.step("a stopped server makes ping and commit fail until it is back", async () => {
      await f.withStore(async ({ writer, reader }) => {
        await writer.commit([unit([SEED[0]])]);
        await pg.halt();
        try {
          const down = (error: PostgresStoreError) => {
            assert.equal(error.name, "PostgresStoreError");
            assert.equal(error.connection, true);
            assert.match(error.message, /PostgreSQL "troupe@127\.0\.0\.1:\d+\/troupe"/);
            assert.ok(!error.message.includes(pg.password));
            return true;
          };
          await assert.rejects(writer.ping(), down);
          await assert.rejects(writer.commit([unit([SEED[1]])]), down);
          await assert.rejects(reader.counts(), down);
        } finally {
          await pg.resume();
        }

        // The client connects again on its own once the server answers.
        await writer.ping();
        assert.deepEqual(await writer.commit([unit(SEED)]), [{ inserted: [false, true] }]);
        assert.deepEqual(await reader.getUser("user_001"), SEED_USER);
      });
    });
  } finally {
    await f.admin.end({ timeout: 1 }).catch(() => {});
    await pg.stop();
  }
});

/** A cheap deterministic mix of two integers, for shuffling. */
function hash(seed: number, i: number): number {
  let h = (seed ^ Math.imul(i + 1, 0x9e3779b1)) >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b) >>> 0;
  return (h ^ (h >>> 13)) >>> 0;
}
