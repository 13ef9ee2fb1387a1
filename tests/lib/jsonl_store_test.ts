/**
 * @module
 * Tests of the JSON Lines store against real files in a temporary
 * directory: seed 000's expected aggregate in the summary, idempotent
 * commits (also across handles, between `1` and `"1"`, and on both sides of
 * the dedup bitmap's range), failed records, a write that fails and is cut
 * back, shared stores appending to the same files, and a property test that the files
 * and the summary always equal a recomputation from the first record of
 * each id.
 */
import assert from "node:assert/strict";
import { existsSync, readFileSync, symlinkSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import { aggregateRecords, mergeEvent, mergeUser, type StoredUser } from "../../lib/aggregate.ts";
import {
  dedupKey,
  FAILED_FILE,
  openJsonlWriter,
  PROCESSED_FILE,
  SUMMARY_FILE,
} from "../../lib/jsonl_store.ts";
import type { EventAggregate, FailedRecord, ProcessedRecord, RecordId } from "../../lib/schemas.ts";
import { recordKey } from "../../lib/schemas.ts";
import { processedRecord } from "../_helpers.ts";
import type { CommitUnit } from "../../lib/store.ts";

function processed(
  r: { id: RecordId; timestamp: string; user_id: string; event: string; value: number },
  extra: Partial<ProcessedRecord> = {},
): ProcessedRecord {
  return processedRecord(r, extra);
}

const SEED_000 = [
  processed({
    id: 1,
    timestamp: "2025-01-15T10:00:00Z",
    user_id: "user_001",
    event: "login",
    value: 1.0,
  }, { metadata: { ip: "192.168.1.1" } }),
  processed({
    id: 2,
    timestamp: "2025-01-15T10:00:05Z",
    user_id: "user_001",
    event: "page_view",
    value: 0.5,
  }, { metadata: { page: "/home" } }),
];

function failed(raw: unknown, reason = "user_id: is required"): FailedRecord {
  return {
    record_id: null,
    stage: "validate",
    reason,
    raw,
    failed_at: "2025-01-15T10:00:07Z",
  };
}

function unit(records: ProcessedRecord[], failures: FailedRecord[] = []): CommitUnit {
  return { records, failed: failures, deltas: aggregateRecords(records) };
}

function readLines(path: string): unknown[] {
  return readFileSync(path, "utf8").split("\n").filter((l) => l !== "").map((l) => JSON.parse(l));
}

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), "troupe_jsonl_test_"));
  try {
    await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

Deno.test("openJsonlWriter creates the directory and empty files, replacing old ones", async () => {
  await withDir(async (dir) => {
    const out = join(dir, "a", "b");
    const first = openJsonlWriter(out);
    await first.commit([unit(SEED_000)]);
    await first.close();

    const store = openJsonlWriter(out);
    await store.close();

    assert.equal(readFileSync(join(out, PROCESSED_FILE), "utf8"), "");
    assert.equal(readFileSync(join(out, FAILED_FILE), "utf8"), "");
    assert.equal(existsSync(join(out, SUMMARY_FILE)), false);
  });
});

Deno.test("JsonlStore.writeSummary gives seed 000's expected user aggregate", async () => {
  await withDir(async (dir) => {
    const store = openJsonlWriter(dir);
    await store.commit([unit(SEED_000)]);
    const summary = store.writeSummary({ elapsedMs: 500, records: 2 });
    await store.close();

    const written = JSON.parse(readFileSync(join(dir, SUMMARY_FILE), "utf8"));
    assert.deepEqual(written, summary);
    assert.deepEqual(Object.keys(written), [
      "processed",
      "failed",
      "duplicates",
      "anomalies",
      "total_value",
      "users",
      "events",
      "elapsed_ms",
      "records_per_second",
    ]);
    assert.deepEqual(written.users, {
      user_001: {
        total_events: 2,
        total_value: 1.5,
        events: ["login", "page_view"],
        last_activity: "2025-01-15T10:00:05Z",
      },
    });
    assert.deepEqual(written.events, {
      login: { count: 1, total_value: 1, min_value: 1, max_value: 1 },
      page_view: { count: 1, total_value: 0.5, min_value: 0.5, max_value: 0.5 },
    });
    assert.equal(written.processed, 2);
    assert.equal(written.total_value, 1.5);
    assert.equal(written.elapsed_ms, 500);
    assert.equal(written.records_per_second, 4);
    assert.deepEqual(readLines(join(dir, PROCESSED_FILE)), SEED_000);
  });
});

Deno.test("JsonlStore.commit writes each id once and reports later ones as duplicates", async (t) => {
  await withDir(async (dir) => {
    const store = openJsonlWriter(dir);
    const [login, pageView] = SEED_000;

    await t.step("within one commit, the first record of an id wins", async () => {
      const again = { ...login, event: "logout", value: 100 };
      const outcomes = await store.commit([unit([login, again]), unit([{ ...login, value: 7 }])]);
      assert.deepEqual(outcomes, [{ inserted: [true, false] }, { inserted: [false] }]);
    });

    await t.step('across commits, and 1 and "1" are the same id', async () => {
      const outcomes = await store.commit([unit([{ ...login, id: "1" }, pageView])]);
      assert.deepEqual(outcomes, [{ inserted: [false, true] }]);
    });

    await t.step("across handles of the same store", async () => {
      const a = store.handle();
      const b = store.handle();
      assert.deepEqual(await a.commit([unit([processed({ ...pageView, id: "x" })])]), [
        { inserted: [true] },
      ]);
      assert.deepEqual(await b.commit([unit([processed({ ...pageView, id: "x" })])]), [
        { inserted: [false] },
      ]);
      await a.close();
      await assert.rejects(a.commit([unit([])]), /closed/);
      await assert.rejects(a.ping(), /closed/);
      await b.ping();
      assert.deepEqual(await b.commit([unit([processed({ ...pageView, id: "y" })])]), [
        { inserted: [true] },
      ]);
    });

    const counts = store.counts;
    await store.close();
    const lines = readLines(join(dir, PROCESSED_FILE)) as ProcessedRecord[];
    assert.deepEqual(lines.map((r) => r.id), [1, 2, "x", "y"]);
    assert.equal(lines[0].value, 1);
    assert.equal(counts.processed, 4);
    assert.equal(counts.duplicates, 4);
    const summary = store.summary({ elapsedMs: 0, records: 8 });
    assert.equal(summary.users.user_001.total_events, 4);
    assert.equal(summary.records_per_second, 0);
  });
});

Deno.test("JsonlStore writes failed records from commits and from addFailed", async () => {
  await withDir(async (dir) => {
    const store = openJsonlWriter(dir);
    const bad = failed({ id: 3, event: "login" });
    await store.commit([unit([SEED_000[0]], [bad])]);
    const notJson = failed("{oops", 'line 4 is not valid JSON: Unexpected token "o"');
    store.addFailed([notJson]);
    store.addFailed([]);
    const counts = store.counts;
    await store.close();

    assert.deepEqual(readLines(join(dir, FAILED_FILE)), [bad, notJson]);
    assert.equal(counts.failed, 2);
    assert.equal(counts.processed, 1);
  });
});

Deno.test("JsonlStore counts anomalies and total value over stored records only", async () => {
  await withDir(async (dir) => {
    const store = openJsonlWriter(dir);
    const odd = processed({
      id: 9,
      timestamp: "2025-01-15T10:00:09Z",
      user_id: "user_002",
      event: "purchase",
      value: 500,
    }, { is_anomaly: true, anomaly_score: 4.2 });
    await store.commit([unit([odd, ...SEED_000])]);
    await store.commit([unit([{ ...odd, value: 1000 }])]);
    const summary = store.summary({ elapsedMs: 1000, records: 4 });
    await store.close();

    assert.equal(summary.anomalies, 1);
    assert.equal(summary.total_value, 501.5);
    assert.equal(summary.duplicates, 1);
    assert.deepEqual(Object.keys(summary.users), ["user_001", "user_002"]);
    assert.deepEqual(Object.keys(summary.events), ["login", "page_view", "purchase"]);
  });
});

Deno.test("JsonlStore.commit writes nothing and keeps the error when a write fails", {
  ignore: !existsSync("/dev/full"),
}, async () => {
  await withDir(async (dir) => {
    // Every write to /dev/full fails with ENOSPC: the failed file is the one that breaks.
    symlinkSync("/dev/full", join(dir, FAILED_FILE));
    const store = openJsonlWriter(dir);
    await store.commit([unit([SEED_000[0]])]);
    const before = readFileSync(join(dir, PROCESSED_FILE), "utf8");

    await assert.rejects(
      store.commit([unit([SEED_000[1]], [failed({ id: 3 })])]),
      (error: Error) => error.message.startsWith(`Cannot write to "${dir}": `),
    );
    assert.equal(readFileSync(join(dir, PROCESSED_FILE), "utf8"), before);
    assert.match(store.error?.message ?? "", /Cannot write/);
    assert.deepEqual(store.counts, {
      processed: 1,
      failed: 0,
      duplicates: 0,
      anomalies: 0,
      total_value: 1,
    });
    assert.throws(() => store.addFailed([failed("x")]), /Cannot write/);

    // The id the failed commit claimed is free again.
    assert.deepEqual(await store.commit([unit([SEED_000[1]])]), [{ inserted: [true] }]);
    await store.close();
    assert.deepEqual(readLines(join(dir, PROCESSED_FILE)), SEED_000);
  });
});

Deno.test("JsonlStore dedups ids on both sides of its bitmap's range", async () => {
  await withDir(async (dir) => {
    const store = openJsonlWriter(dir);
    // 0, small ids, ids that grow the bitmap to its limit, ids past it (kept in a Set), strings.
    const ids: RecordId[] = [0, 1, 70_000, 2 ** 26 - 1, 2 ** 26, 2 ** 40, "x", "2"];
    const records = ids.map((id) => processed({ ...SEED_000[0], id }));
    assert.deepEqual(await store.commit([unit(records)]), [{ inserted: ids.map(() => true) }]);
    // The same ids again, numbers as strings and strings as numbers where they spell one.
    const again = [-0, "1", "70000", String(2 ** 26 - 1), String(2 ** 26), 2 ** 40, "x", 2];
    assert.deepEqual(
      await store.commit([unit(again.map((id) => processed({ ...SEED_000[0], id })))]),
      [{ inserted: again.map(() => false) }],
    );
    // Neighbours of each are new.
    const near = [4, 69_999, 70_001, 2 ** 26 - 2, 2 ** 26 + 1, "5"];
    assert.deepEqual(
      await store.commit([unit(near.map((id) => processed({ ...SEED_000[0], id })))]),
      [{ inserted: near.map(() => true) }],
    );
    assert.equal(store.counts.duplicates, again.length);
    await store.close();
  });
});

Deno.test("openJsonlWriter shared appends to the files of other stores without truncating", async () => {
  await withDir(async (dir) => {
    const first = openJsonlWriter(dir);
    await first.commit([unit([SEED_000[0]], [failed("a")])]);
    const a = openJsonlWriter(dir, { shared: true });
    const b = openJsonlWriter(dir, { shared: true });
    await b.commit([unit([SEED_000[1]])]);
    await a.commit([unit([processed({ ...SEED_000[0], id: 3 })], [failed("b")])]);
    b.addFailed([failed("c")]);
    await first.close();
    await a.close();
    await b.close();

    assert.deepEqual(readLines(join(dir, PROCESSED_FILE)).map((r) => (r as ProcessedRecord).id), [
      1,
      2,
      3,
    ]);
    assert.deepEqual(readLines(join(dir, FAILED_FILE)).map((f) => (f as FailedRecord).raw), [
      "a",
      "b",
      "c",
    ]);
  });
});

Deno.test("JsonlStore.close is idempotent and later commits reject", async () => {
  await withDir(async (dir) => {
    const store = openJsonlWriter(dir);
    await store.close();
    await store.close();
    assert.equal(store.closed, true);
    await assert.rejects(store.commit([unit(SEED_000)]), /is closed/);
    await assert.rejects(store.ping(), /is closed/);
  });
});

Deno.test("dedupKey gives two ids the same key exactly when recordKey does", () => {
  const id = fc.oneof(
    fc.nat({ max: 20 }),
    fc.maxSafeNat(),
    fc.double(),
    fc.constantFrom("0", "1", "01", "-0", "-1", "1.0", "1e3", " 1", "9007199254740993", ""),
    fc.nat({ max: 20 }).map(String),
    fc.string(),
  );
  fc.assert(
    fc.property(id, id, (a, b) => {
      assert.equal(dedupKey(a) === dedupKey(b), recordKey(a) === recordKey(b));
    }),
    { numRuns: 2000 },
  );
});

Deno.test("JsonlStore files and summary equal a recomputation from the first record of each id", async () => {
  const record = fc.record({
    id: fc.oneof(fc.nat({ max: 8 }), fc.nat({ max: 8 }).map(String), fc.constantFrom("a", "08")),
    user: fc.constantFrom("user_001", "user_002", "user_003"),
    event: fc.constantFrom("login", "click", "purchase"),
    value: fc.integer({ min: -1000, max: 1000 }).map((n) => n / 4),
    second: fc.nat({ max: 59 }),
    anomaly: fc.boolean(),
  }).map((r) =>
    processed({
      id: r.id,
      timestamp: `2025-01-15T10:00:${String(r.second).padStart(2, "0")}Z`,
      user_id: r.user,
      event: r.event,
      value: r.value,
    }, { is_anomaly: r.anomaly })
  );
  const commits = fc.array(fc.array(fc.array(record, { maxLength: 6 }), { maxLength: 3 }), {
    maxLength: 6,
  });
  await withDir(async (root) => {
    let run = 0;
    await fc.assert(
      fc.asyncProperty(commits, async (plan) => {
        const dir = join(root, String(run++));
        const store = openJsonlWriter(dir);
        const firsts = new Map<string, ProcessedRecord>();
        let duplicates = 0;
        for (const units of plan) {
          const outcomes = await store.commit(units.map((records) => unit(records)));
          units.forEach((records, u) =>
            records.forEach((r, i) => {
              const key = recordKey(r.id);
              const fresh = !firsts.has(key);
              if (fresh) firsts.set(key, r);
              else duplicates++;
              assert.equal(outcomes[u].inserted[i], fresh);
            })
          );
        }
        const summary = store.summary({ elapsedMs: 1, records: 0 });
        await store.close();

        const stored = [...firsts.values()];
        assert.deepEqual(readLines(join(dir, PROCESSED_FILE)), stored);
        const deltas = aggregateRecords(stored);
        const users: Record<string, unknown> = {};
        for (const [key, d] of [...deltas.users].sort(([a], [b]) => a.localeCompare(b))) {
          const { user_id: _, last_ms: __, ...rest } = mergeUser(undefined, d) as StoredUser;
          users[key] = rest;
        }
        const events: Record<string, unknown> = {};
        for (const [key, d] of [...deltas.events].sort(([a], [b]) => a.localeCompare(b))) {
          const { event: _, ...rest } = mergeEvent(undefined, d) as EventAggregate;
          events[key] = rest;
        }
        assert.deepEqual(summary.users, users);
        assert.deepEqual(summary.events, events);
        assert.equal(summary.processed, stored.length);
        assert.equal(summary.duplicates, duplicates);
        assert.equal(summary.anomalies, stored.filter((r) => r.is_anomaly).length);
        assert.equal(summary.total_value, stored.reduce((n, r) => n + r.value, 0));
      }),
      { numRuns: 100 },
    );
  });
});
