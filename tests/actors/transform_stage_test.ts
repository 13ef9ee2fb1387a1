/**
 * @module
 * Tests of the transform stage: the anomaly score (Welford's running mean
 * and deviation per event type, |z| > 3 only after 30 samples), the
 * normalisation of one record (its timestamp read without `Date.parse` as
 * `Date.parse` reads it), and the batch function leaving its batches
 * untouched when a fault is thrown.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import {
  ANOMALY_Z,
  AnomalyTracker,
  MIN_ANOMALY_SAMPLES,
  normaliseTimestamp,
  transformBatches,
  transformRecord,
} from "../../actors/transform_stage.ts";
import type { StageDeps } from "../../actors/_stage_deps.ts";
import { Batch, Ticket } from "../../lib/batch.ts";
import { defaultConfig } from "../../lib/config.ts";
import { FaultInjector } from "../../lib/faults.ts";
import { getLog } from "../../lib/log.ts";
import { createMetrics } from "../../lib/metrics.ts";
import { type DataRecord, dataRecordSchema, toUtcIso } from "../../lib/schemas.ts";

const RECEIVED_AT = "2025-01-15T10:00:06.000Z";

function record(overrides: Partial<DataRecord> = {}): DataRecord {
  return {
    id: 1,
    timestamp: "2025-01-15T10:00:00Z",
    user_id: "user_001",
    event: "login",
    value: 1,
    ...overrides,
  };
}

function deps(faults = new FaultInjector()): StageDeps {
  return {
    config: defaultConfig(),
    schema: dataRecordSchema(),
    anomaly: new AnomalyTracker(),
    faults,
    metrics: createMetrics({ defaultMetrics: false }),
    log: getLog("test"),
    openWriter: () => Promise.reject(new Error("no storage in this test")),
  };
}

/** Feeds `n` samples alternating `lo` and `hi` (mean (lo+hi)/2, spread about (hi-lo)/2). */
function feed(t: AnomalyTracker, event: string, n: number, lo = 9, hi = 11): void {
  for (let i = 0; i < n; i++) t.score(event, i % 2 === 0 ? lo : hi);
}

Deno.test("AnomalyTracker flags |z| > 3 only after 30 samples", async (t) => {
  assert.equal(MIN_ANOMALY_SAMPLES, 30);
  assert.equal(ANOMALY_Z, 3);

  await t.step("29 samples: a far outlier scores high but is not flagged", () => {
    const tracker = new AnomalyTracker();
    feed(tracker, "login", 29);
    const { z, anomaly } = tracker.score("login", 100);
    assert.ok(z > ANOMALY_Z, `z ${z}`);
    assert.equal(anomaly, false);
  });

  await t.step("30 samples: the same outlier is flagged", () => {
    const tracker = new AnomalyTracker();
    feed(tracker, "login", 30);
    assert.equal(tracker.samples("login"), 30);
    const { z, anomaly } = tracker.score("login", 100);
    assert.ok(z > ANOMALY_Z);
    assert.equal(anomaly, true);
    assert.equal(tracker.samples("login"), 31);
  });

  await t.step("a low outlier is flagged too (|z|)", () => {
    const tracker = new AnomalyTracker();
    feed(tracker, "login", 40);
    const { z, anomaly } = tracker.score("login", -100);
    assert.ok(z < -ANOMALY_Z);
    assert.equal(anomaly, true);
  });

  await t.step("a value inside three deviations is not flagged", () => {
    const tracker = new AnomalyTracker();
    feed(tracker, "login", 40);
    const { z, anomaly } = tracker.score("login", 12);
    assert.ok(Math.abs(z) <= ANOMALY_Z && z > 0, `z ${z}`);
    assert.equal(anomaly, false);
  });

  await t.step("event types are tracked apart", () => {
    const tracker = new AnomalyTracker();
    feed(tracker, "login", 40);
    assert.equal(tracker.samples("click"), 0);
    assert.deepEqual(tracker.score("click", 100), { z: 0, anomaly: false });
  });
});

Deno.test("AnomalyTracker scores a constant series 0", () => {
  const tracker = new AnomalyTracker();
  for (let i = 0; i < 50; i++) {
    assert.deepEqual(tracker.score("e", 0.1), { z: 0, anomaly: false }, `sample ${i}`);
  }
  // No spread to measure against: even a jump is not scored.
  assert.deepEqual(tracker.score("e", 1000), { z: 0, anomaly: false });
});

Deno.test("AnomalyTracker z is the standard score against the samples seen before", () => {
  fc.assert(
    fc.property(
      fc.array(fc.double({ min: -1e6, max: 1e6, noNaN: true }), { minLength: 2, maxLength: 60 }),
      fc.double({ min: -1e6, max: 1e6, noNaN: true }),
      (xs, x) => {
        const tracker = new AnomalyTracker();
        for (const s of xs) tracker.score("e", s);
        const mean = xs.reduce((a, b) => a + b, 0) / xs.length;
        const sd = Math.sqrt(xs.reduce((a, b) => a + (b - mean) ** 2, 0) / (xs.length - 1));
        const { z, anomaly } = tracker.score("e", x);
        // Tiny spreads lose all precision to rounding; only compare real ones.
        if (sd > 1e-3 * (Math.abs(mean) + 1)) {
          const expected = (x - mean) / sd;
          assert.ok(
            Math.abs(z - expected) <= 1e-6 * (Math.abs(expected) + 1),
            `z ${z} vs ${expected}`,
          );
        }
        assert.equal(anomaly, xs.length >= MIN_ANOMALY_SAMPLES && Math.abs(z) > ANOMALY_Z);
      },
    ),
    { numRuns: 300 },
  );
});

Deno.test("transformRecord normalises the record", async (t) => {
  await t.step("trims user_id, trims and lower-cases event", () => {
    const out = transformRecord(
      record({ user_id: "  u9 ", event: " LogIn\t" }),
      RECEIVED_AT,
      new AnomalyTracker(),
    );
    assert.equal(out.user_id, "u9");
    assert.equal(out.event, "login");
  });

  await t.step("writes the timestamp in UTC with Z", () => {
    const out = transformRecord(record(), RECEIVED_AT, new AnomalyTracker());
    assert.equal(out.timestamp, "2025-01-15T10:00:00Z");
    assert.equal(out.timestamp_ms, Date.UTC(2025, 0, 15, 10, 0, 0));
  });

  await t.step("converts an offset to UTC", () => {
    const plus = transformRecord(
      record({ timestamp: "2025-01-15T12:00:00+02:00" }),
      RECEIVED_AT,
      new AnomalyTracker(),
    );
    assert.equal(plus.timestamp, "2025-01-15T10:00:00Z");
    const minus = transformRecord(
      record({ timestamp: "2025-01-14T23:30:00-05:00" }),
      RECEIVED_AT,
      new AnomalyTracker(),
    );
    assert.equal(minus.timestamp, "2025-01-15T04:30:00Z", "across midnight");
  });

  await t.step("keeps milliseconds only when not zero", () => {
    const a = new AnomalyTracker();
    assert.equal(
      transformRecord(record({ timestamp: "2025-01-15T10:00:00.250Z" }), RECEIVED_AT, a).timestamp,
      "2025-01-15T10:00:00.250Z",
    );
    assert.equal(
      transformRecord(record({ timestamp: "2025-01-15T10:00:00.000Z" }), RECEIVED_AT, a).timestamp,
      "2025-01-15T10:00:00Z",
    );
    const ms = transformRecord(
      record({ timestamp: "2025-01-15T12:00:00.007+02:00" }),
      RECEIVED_AT,
      a,
    );
    assert.equal(ms.timestamp, "2025-01-15T10:00:00.007Z");
    assert.equal(ms.timestamp_ms % 1000, 7);
  });

  await t.step("keeps id, value and metadata, defaults metadata to {}, stamps received_at", () => {
    const a = new AnomalyTracker();
    const out = transformRecord(
      record({ id: "x-1", value: 2.5, metadata: { ip: "1.2.3.4" } }),
      RECEIVED_AT,
      a,
    );
    assert.equal(out.id, "x-1");
    assert.equal(out.value, 2.5);
    assert.deepEqual(out.metadata, { ip: "1.2.3.4" });
    assert.equal(out.received_at, RECEIVED_AT);
    assert.deepEqual(transformRecord(record({ metadata: null }), RECEIVED_AT, a).metadata, {});
    assert.deepEqual(transformRecord(record({ metadata: undefined }), RECEIVED_AT, a).metadata, {});
  });

  await t.step("scores the normalised event and rounds the score to 6 decimals", () => {
    const a = new AnomalyTracker();
    for (let i = 0; i < 40; i++) {
      transformRecord(
        record({ event: i % 2 ? " LOGIN" : "login ", value: i % 2 ? 1 : 2 }),
        RECEIVED_AT,
        a,
      );
    }
    assert.equal(a.samples("login"), 40, "spellings of one event share their statistics");
    const out = transformRecord(record({ event: "Login", value: 100 }), RECEIVED_AT, a);
    assert.equal(out.is_anomaly, true);
    assert.ok(out.anomaly_score > ANOMALY_Z);
    assert.equal(out.anomaly_score, Math.round(out.anomaly_score * 1e6) / 1e6);
    const calm = transformRecord(record({ value: 1.5 }), RECEIVED_AT, new AnomalyTracker());
    assert.equal(calm.anomaly_score, 0);
    assert.equal(calm.is_anomaly, false);
  });
});

Deno.test("transformBatches fills processed from valid and stamps the batch's arrival", async () => {
  const d = deps();
  const b = new Batch(new Ticket(), [], [], Date.UTC(2025, 0, 15, 10, 0, 6, 500));
  b.stage = "transform";
  b.valid = [record({ id: 1, event: "A" }), record({ id: 2, event: "b" })];
  b.validIndex = [0, 3];
  await transformBatches([b], d);
  assert.deepEqual(b.valid, []);
  assert.deepEqual(b.validIndex, [0, 3], "indices still match the records");
  assert.deepEqual(b.processed.map((r) => [r.id, r.event]), [[1, "a"], [2, "b"]]);
  assert.equal(b.processed[0].received_at, "2025-01-15T10:00:06.500Z");
  assert.equal(d.anomaly.samples("a"), 1);
});

Deno.test("transformBatches leaves every batch untouched when a fault is thrown", async () => {
  const d = deps(new FaultInjector({ poison_ids: ["bad"], poison_stages: ["transform"] }));
  const good = new Batch(new Ticket(), [], []);
  good.stage = "transform";
  good.valid = [record({ id: "ok-1" })];
  good.validIndex = [0];
  const poisoned = new Batch(new Ticket(), [], []);
  poisoned.stage = "transform";
  poisoned.valid = [record({ id: "ok-2" }), record({ id: "bad" })];
  poisoned.validIndex = [0, 1];
  await assert.rejects(transformBatches([good, poisoned], d), {
    name: "InjectedFault",
    message: 'Poison record "bad" in stage "transform"',
  });
  assert.deepEqual(
    good.valid.map((r) => r.id),
    ["ok-1"],
    "the first batch is not half transformed",
  );
  assert.deepEqual(good.processed, []);
  assert.equal(d.anomaly.samples("login"), 0, "no sample learnt twice on the retry");
});

Deno.test("normaliseTimestamp reads UTC strings as Date.parse does, in range or not", () => {
  // What normaliseTimestamp did before its fast path: Date.parse, then format unless canonical.
  const canonical = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.(?!000Z)\d{3})?Z$/;
  const reference = (ts: string) => {
    const ms = Date.parse(ts);
    return { iso: canonical.test(ts) ? ts : toUtcIso(ms), ms };
  };
  const two = (max: number) => fc.integer({ min: 0, max }).map((n) => String(n).padStart(2, "0"));
  const timestamp = fc.record({
    year: fc.oneof(fc.integer({ min: 0, max: 9999 }), fc.integer({ min: 1999, max: 2101 })),
    month: two(14),
    day: two(32),
    hour: two(25),
    minute: two(61),
    second: two(61),
    fraction: fc.oneof(
      fc.constant(""),
      fc.constant(".000"),
      fc.integer({ min: 0, max: 999 }).map((n) => `.${String(n).padStart(3, "0")}`),
    ),
    zone: fc.constantFrom("Z", "Z", "Z", "+02:00", "z", ""),
  }).map((t) =>
    `${
      String(t.year).padStart(4, "0")
    }-${t.month}-${t.day}T${t.hour}:${t.minute}:${t.second}${t.fraction}${t.zone}`
  );
  const mangled = fc.tuple(timestamp, fc.nat(), fc.constantFrom("x", "-", " ", "")).map(
    ([ts, at, ch]) => ts.slice(0, at % ts.length) + ch + ts.slice((at % ts.length) + 1),
  );
  fc.assert(
    fc.property(fc.oneof(timestamp, mangled), (ts) => {
      // A string Date.parse cannot read throws (formatting NaN) both ways.
      const outcome = (f: (ts: string) => { iso: string; ms: number }) => {
        try {
          return f(ts);
        } catch (error) {
          return { error: (error as Error).name };
        }
      };
      const got = outcome(normaliseTimestamp);
      const want = outcome(reference);
      assert.deepEqual(got, want, ts);
      if ("ms" in got && "ms" in want) assert.ok(Object.is(got.ms, want.ms), ts);
    }),
    { numRuns: 20_000 },
  );
  for (
    const ts of ["2025-01-15T10:00:00.000Z", "2024-02-29T23:59:59.999Z", "0099-12-31T23:59:59Z"]
  ) {
    assert.deepEqual(normaliseTimestamp(ts), reference(ts), ts);
  }
});
