/**
 * @module
 * Tests of batches and tickets: cutting a request into batches, splitting
 * a batch at each stage with its request indices and its ticket's pending
 * count intact, failing one record, and a ticket answering once every
 * batch of it is settled.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { aggregateRecords } from "../../lib/aggregate.ts";
import { Batch, idOf, PipelineUnavailableError, Ticket, toBatches } from "../../lib/batch.ts";
import type { DataRecord, ProcessedRecord } from "../../lib/schemas.ts";

function raw(n: number, prefix = "r"): Record<string, unknown>[] {
  return Array.from({ length: n }, (_, i) => ({ id: `${prefix}-${i}`, value: i }));
}

function dataRecord(id: string | number): DataRecord {
  return { id, timestamp: "2025-01-15T10:00:00Z", user_id: "u1", event: "login", value: 1 };
}

function processed(id: string | number): ProcessedRecord {
  return {
    id,
    timestamp: "2025-01-15T10:00:00Z",
    timestamp_ms: Date.parse("2025-01-15T10:00:00Z"),
    user_id: "u1",
    event: "login",
    value: 1,
    metadata: {},
    received_at: "2025-01-15T10:00:01Z",
    anomaly_score: 0,
    is_anomaly: false,
  };
}

/** A batch moved on to `stage` carrying records at request positions `indices`. */
function batchAt(stage: "transform" | "aggregate" | "store", indices: number[]): Batch {
  const b = new Batch(new Ticket(), [], []);
  b.stage = stage;
  b.validIndex = [...indices];
  if (stage === "transform") b.valid = indices.map((i) => dataRecord(`r-${i}`));
  else {
    b.processed = indices.map((i) => processed(`r-${i}`));
    b.deltas = aggregateRecords(b.processed);
  }
  return b;
}

/** Whether `p` has settled after the pending microtasks ran. */
async function isSettled(p: Promise<unknown>): Promise<boolean> {
  let settled = false;
  p.then(() => (settled = true), () => (settled = true));
  for (let i = 0; i < 10; i++) await Promise.resolve();
  return settled;
}

Deno.test("toBatches cuts records into batches of at most size on one ticket", () => {
  const ticket = new Ticket();
  const records = raw(25);
  const batches = toBatches(ticket, records, 10);
  assert.deepEqual(batches.map((b) => b.size), [10, 10, 5]);
  assert.equal(ticket.pending, 3);
  assert.deepEqual(batches.flatMap((b) => b.raw), records);
  assert.deepEqual(batches.flatMap((b) => b.rawIndex), records.map((_, i) => i));
  for (const b of batches) {
    assert.equal(b.ticket, ticket);
    assert.equal(b.stage, "validate");
    assert.equal(b.attempts, 0);
    assert.equal(b.isolate, false);
    assert.equal(b.receivedAt, batches[0].receivedAt);
  }
  assert.ok(batches[0].seq < batches[1].seq && batches[1].seq < batches[2].seq);
  assert.deepEqual(toBatches(new Ticket(), [], 10), []);
});

Deno.test("Batch size counts the records of the stage it is in", () => {
  const b = new Batch(new Ticket(), raw(4), [0, 1, 2, 3]);
  assert.equal(b.size, 4);
  b.valid = [dataRecord(0), dataRecord(1)];
  b.raw = [];
  b.stage = "transform";
  assert.equal(b.size, 2);
  b.stage = "aggregate";
  assert.equal(b.size, 0);
  b.reject({ id: 9 }, 3, "validate", "bad");
  assert.equal(b.size, 0, "a batch with only failures takes no room: its stage reserved none");
  b.processed = [processed(0), processed(1), processed(2)];
  b.stage = "store";
  assert.equal(b.size, 3);
});

Deno.test("Batch split keeps request indices and the ticket's pending count right", async (t) => {
  await t.step("at validate", () => {
    const ticket = new Ticket();
    const b = new Batch(ticket, raw(5), [10, 11, 12, 13, 14], 1234);
    b.reject({ id: "x" }, 9, "validate", "earlier failure");
    b.attempts = 3;
    const other = b.split();
    assert.equal(ticket.pending, 2);
    assert.equal(other.ticket, ticket);
    assert.equal(other.stage, "validate");
    assert.equal(other.receivedAt, 1234);
    assert.deepEqual(b.rawIndex, [10, 11, 12]);
    assert.deepEqual(b.raw.map((r) => (r as { id: string }).id), ["r-0", "r-1", "r-2"]);
    assert.deepEqual(other.rawIndex, [13, 14]);
    assert.deepEqual(other.raw.map((r) => (r as { id: string }).id), ["r-3", "r-4"]);
    assert.equal(b.failed.length, 1, "earlier failures stay with the first half");
    assert.equal(other.failed.length, 0);
    assert.equal(other.attempts, 0);
  });

  await t.step("at transform", () => {
    const b = batchAt("transform", [2, 4, 6, 8]);
    const other = b.split();
    assert.deepEqual(b.validIndex, [2, 4]);
    assert.deepEqual(b.valid.map((r) => r.id), ["r-2", "r-4"]);
    assert.deepEqual(other.validIndex, [6, 8]);
    assert.deepEqual(other.valid.map((r) => r.id), ["r-6", "r-8"]);
    assert.equal(other.stage, "transform");
    assert.equal(b.ticket.pending, 2);
  });

  await t.step("at store, dropping the now stale deltas", () => {
    const b = batchAt("store", [0, 1, 2]);
    assert.ok(b.deltas !== undefined);
    const other = b.split();
    assert.deepEqual(b.validIndex, [0, 1]);
    assert.deepEqual(b.processed.map((r) => r.id), ["r-0", "r-1"]);
    assert.deepEqual(other.validIndex, [2]);
    assert.deepEqual(other.processed.map((r) => r.id), ["r-2"]);
    assert.equal(b.deltas, undefined);
    assert.equal(other.deltas, undefined);
    assert.equal(other.stage, "store");
  });

  await t.step("down to single records, every index exactly once", () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 64 }), (n) => {
        const ticket = new Ticket();
        const [first] = toBatches(ticket, raw(n), n);
        const all = [first];
        // Split every batch until each holds one record, as poison isolation does.
        for (let i = 0; i < all.length; i++) {
          while (all[i].inputLength > 1) all.push(all[i].split());
        }
        assert.equal(ticket.pending, n);
        assert.deepEqual(all.flatMap((b) => b.rawIndex).sort((a, b) => a - b), [
          ...Array(n).keys(),
        ]);
        for (const b of all) assert.equal((b.raw[0] as { id: string }).id, `r-${b.rawIndex[0]}`);
      }),
    );
  });
});

Deno.test("Batch failAt moves the record to the failed list with its request index", async (t) => {
  await t.step("at validate", () => {
    const b = new Batch(new Ticket(), raw(3), [5, 6, 7]);
    b.failAt(1, "validate", "bad record");
    assert.deepEqual(b.rawIndex, [5, 7]);
    assert.deepEqual(b.raw.map((r) => (r as { id: string }).id), ["r-0", "r-2"]);
    assert.equal(b.failed.length, 1);
    const [f] = b.failed;
    assert.equal(f.record_id, "r-1");
    assert.equal(f.stage, "validate");
    assert.equal(f.reason, "bad record");
    assert.deepEqual(f.raw, { id: "r-1", value: 1 });
    assert.ok(!Number.isNaN(Date.parse(f.failed_at)));
    assert.deepEqual(b.errors, [{ index: 6, id: "r-1", stage: "validate", message: "bad record" }]);
  });

  await t.step("at transform", () => {
    const b = batchAt("transform", [3, 9]);
    b.failAt(1, "transform", "poison");
    assert.deepEqual(b.validIndex, [3]);
    assert.deepEqual(b.errors, [{ index: 9, id: "r-9", stage: "transform", message: "poison" }]);
    assert.equal(b.failed[0].stage, "transform");
  });

  await t.step("at store, dropping the now stale deltas", () => {
    const b = batchAt("store", [4]);
    b.failAt(0, "store", "constraint");
    assert.deepEqual(b.processed, []);
    assert.deepEqual(b.validIndex, []);
    assert.equal(b.deltas, undefined);
    assert.deepEqual(b.errors, [{ index: 4, id: "r-4", stage: "store", message: "constraint" }]);
    assert.equal(b.failed[0].stage, "store");
    assert.equal(b.size, 0, "the failure travels on but takes no room");
    assert.equal(b.inputLength, 0);
  });
});

Deno.test("Ticket answers once every batch of it is settled", async () => {
  const ticket = new Ticket();
  const [a, b, c] = toBatches(ticket, raw(6), 2);
  a.failAt(0, "validate", "bad a");
  c.failAt(1, "validate", "bad c");
  b.reject({ id: 99 }, 2, "validate", "bad b");
  ticket.settle(c, [true]);
  ticket.settle(a, [false]);
  assert.equal(ticket.pending, 1);
  assert.equal(await isSettled(ticket.promise), false);
  assert.equal(ticket.done, false);
  ticket.settle(b, [true, false]);
  assert.equal(ticket.done, true);
  assert.equal(ticket.pending, 0);
  const result = await ticket.promise;
  assert.equal(result.accepted, 2);
  assert.equal(result.duplicates, 2);
  assert.equal(result.rejected, 3);
  assert.deepEqual(result.errors.map((e) => e.index), [0, 2, 5], "errors in request order");
  // A late settle (a retried batch) changes nothing.
  ticket.settle(b, [true, true]);
  assert.equal(result.accepted, 2);
});

Deno.test("Ticket keeps only the committed records when asked to", async () => {
  const ticket = new Ticket(true);
  const b = batchAt("store", [0, 1, 2]);
  const mine = new Batch(ticket, [], []);
  mine.stage = "store";
  mine.processed = b.processed;
  mine.validIndex = [0, 1, 2];
  ticket.settle(mine, [true, false, true]);
  await ticket.promise;
  assert.deepEqual(ticket.committed.map((rs) => rs.map((r) => r.id)), [["r-0", "r-2"]]);
  const plain = new Ticket();
  const other = new Batch(plain, [], []);
  other.stage = "store";
  other.processed = b.processed;
  plain.settle(other, [true, true, true]);
  assert.deepEqual(plain.committed, []);
});

Deno.test("Ticket settleEmpty answers an empty request", async () => {
  const ticket = new Ticket();
  ticket.open();
  ticket.settleEmpty();
  assert.deepEqual(await ticket.promise, { accepted: 0, duplicates: 0, rejected: 0, errors: [] });
});

Deno.test("Ticket fail rejects the request once and ignores later settles", async () => {
  const ticket = new Ticket();
  const [b] = toBatches(ticket, raw(2), 10);
  ticket.fail(new PipelineUnavailableError("Not committed: test"));
  ticket.fail(new Error("second"));
  ticket.settle(b, [true, true]);
  await assert.rejects(ticket.promise, {
    name: "PipelineUnavailableError",
    message: "Not committed: test",
  });
  assert.equal(ticket.result.accepted, 0);
});

Deno.test("idOf accepts only ids the schema would", () => {
  assert.equal(idOf({ id: "a" }), "a");
  assert.equal(idOf({ id: 0 }), 0);
  assert.equal(idOf({ id: 42 }), 42);
  assert.equal(idOf({ id: "" }), null);
  assert.equal(idOf({ id: "x".repeat(257) }), null);
  assert.equal(idOf({ id: -1 }), null);
  assert.equal(idOf({ id: 1.5 }), null);
  assert.equal(idOf({ id: true }), null);
  assert.equal(idOf({}), null);
  assert.equal(idOf(null), null);
  assert.equal(idOf("id"), null);
});
