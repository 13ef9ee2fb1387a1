import assert from "node:assert/strict";
import fc from "fast-check";
import { Registry } from "prom-client";
import { CustomMetrics } from "../../lib/custom_metrics.ts";
import { downsample, History, RingSeries, TooManySeriesError } from "../../lib/history.ts";

Deno.test("RingSeries keeps the newest samples in order once it wraps", () => {
  const r = new RingSeries(3);
  for (let i = 1; i <= 5; i++) r.push(i * 1000, i);
  assert.equal(r.size, 3);
  assert.deepEqual(r.range(0, Infinity), [[3000, 3], [4000, 4], [5000, 5]]);
  assert.deepEqual(r.range(4000, 4000), [[4000, 4]]);
  assert.deepEqual(r.last(), [5000, 5]);
});

Deno.test("RingSeries.range equals filtering the last `capacity` pushes", () => {
  fc.assert(fc.property(
    fc.integer({ min: 1, max: 20 }),
    fc.array(fc.integer({ min: -100, max: 100 }), { maxLength: 60 }),
    fc.integer({ min: 0, max: 70 }),
    fc.integer({ min: 0, max: 70 }),
    (capacity, values, a, b) => {
      const r = new RingSeries(capacity);
      values.forEach((v, i) => r.push(i, v));
      const kept = values.map((v, i) => [i, v] as [number, number]).slice(-capacity);
      const [from, to] = a <= b ? [a, b] : [b, a];
      assert.deepEqual(r.range(from, to), kept.filter(([t]) => t >= from && t <= to));
    },
  ));
});

Deno.test("downsample gives min, mean and max per step", () => {
  const points = downsample([[0, 1], [400, 3], [1000, 10], [1999, 20], [3000, 5]], 0, 1000);
  assert.deepEqual(points, [
    { t: 0, min: 1, mean: 2, max: 3, count: 2 },
    { t: 1000, min: 10, mean: 15, max: 20, count: 2 },
    { t: 3000, min: 5, mean: 5, max: 5, count: 1 },
  ]);
});

Deno.test("History refuses a series past its bound and keeps the others", () => {
  const h = new History(10, 2);
  h.record("a", 1, 1);
  h.record("b", 1, 2);
  assert.throws(() => h.record("c", 1, 3), TooManySeriesError);
  h.record("a", 2, 5);
  assert.deepEqual(h.names(), ["a", "b"]);
  assert.equal(h.latest("a"), 5);
  assert.deepEqual(h.query("a", 0, 10, 10), [{ t: 0, min: 1, mean: 3, max: 5, count: 2 }]);
});

Deno.test("CustomMetrics sets gauges, adds to counters and bounds the series", async () => {
  const registry = new Registry();
  const history = new History();
  const custom = new CustomMetrics(registry, { maxSeries: 2, history });
  assert.ok(custom.record({ name: "queue_len", value: 3, labels: { q: "a" }, type: "gauge" }).ok);
  assert.ok(custom.record({ name: "queue_len", value: 7, labels: { q: "a" }, type: "gauge" }).ok);
  assert.ok(custom.record({ name: "jobs_total", value: 2, labels: {}, type: "counter" }).ok);
  assert.ok(custom.record({ name: "jobs_total", value: 3, labels: {}, type: "counter" }).ok);
  const text = await registry.metrics();
  assert.match(text, /^queue_len\{q="a"\} 7$/m);
  assert.match(text, /^jobs_total 5$/m);
  const third = custom.record({ name: "queue_len", value: 1, labels: { q: "b" }, type: "gauge" });
  assert.deepEqual(third.ok ? null : third.error.code, "too_many_series");
  const conflict = custom.record({ name: "queue_len", value: 1, labels: {}, type: "gauge" });
  assert.equal(conflict.ok ? null : conflict.error.code, "metric_conflict");
  const kind = custom.record({ name: "jobs_total", value: 1, labels: {}, type: "gauge" });
  assert.equal(kind.ok ? null : kind.error.code, "metric_conflict");
  const down = custom.record({ name: "jobs_total", value: -1, labels: {}, type: "counter" });
  assert.equal(down.ok ? null : down.error.code, "metric_conflict");
  assert.equal(custom.seriesCount, 2);
  assert.equal(history.latest('custom:queue_len{q="a"}'), 7);
});
