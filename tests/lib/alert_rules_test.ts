import assert from "node:assert/strict";
import fc from "fast-check";
import {
  actorLeak,
  cpuSpike,
  gcPressure,
  linearFit,
  memoryLeak,
  threshold,
} from "../../lib/alert_rules.ts";
import { History } from "../../lib/history.ts";

const MiB = 1048576;
const LEAK = {
  windowMs: 600_000,
  bucketMs: 30_000,
  minR2: 0.8,
  minGrowth: 0.1,
  minBuckets: 6,
  heapLimitBytes: 4096 * MiB,
};

/** A seeded noise source in [0, 1). */
function noise(seed: number): () => number {
  let s = seed;
  return () => ((s = (s * 16807) % 2147483647) / 2147483647);
}

/** Heap used every second for 10 min: a sawtooth of garbage over a floor. */
function heapSeries(floorAt: (t: number) => number, seed = 7): History {
  const h = new History(1000);
  const rnd = noise(seed);
  for (let s = 0; s < 600; s++) {
    const garbage = (s % 20) * 2 * MiB + rnd() * 5 * MiB; // collected every 20 s
    h.record("heap_used_bytes", s * 1000, floorAt(s) + garbage);
  }
  return h;
}

Deno.test("linearFit finds the slope and R² of a line", () => {
  const fit = linearFit([[0, 1], [1, 3], [2, 5], [3, 7]]);
  assert.equal(fit.slope, 2);
  assert.equal(fit.intercept, 1);
  assert.equal(fit.r2, 1);
});

Deno.test("memoryLeak fires on a rising heap floor and states slope and time to the limit", () => {
  const e = memoryLeak(LEAK)(heapSeries((s) => 100 * MiB + s * 0.1 * MiB), 599_000);
  assert.equal(e.breach, true, e.description);
  assert.match(e.description, /MiB\/min/);
  assert.match(e.description, /heap limit in about \d+ min/);
});

Deno.test("memoryLeak stays quiet on a noisy but flat heap", () => {
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 1_000_000 }), (seed) => {
      const e = memoryLeak(LEAK)(heapSeries(() => 100 * MiB, seed), 599_000);
      assert.equal(e.breach, false, e.description);
    }),
    { numRuns: 30 },
  );
});

Deno.test("memoryLeak stays quiet on growth under 10% over the window", () => {
  const e = memoryLeak(LEAK)(heapSeries((s) => 200 * MiB + s * 0.02 * MiB), 599_000);
  assert.equal(e.breach, false, e.description);
});

function cpuSeries(values: number[]): History {
  const h = new History(1000);
  values.forEach((v, i) => {
    h.record("process_cpu_user", i * 1000, v * 0.8);
    h.record("process_cpu_system", i * 1000, v * 0.2);
  });
  return h;
}

const CPU = { alpha: 0.1, sigmas: 3, samples: 3, floor: 0.8, baseline: 120 };

Deno.test("cpuSpike fires on a sustained jump above the band and the floor", () => {
  const rnd = noise(3);
  const base = Array.from({ length: 100 }, () => 0.2 + rnd() * 0.1);
  const e = cpuSpike(CPU)(cpuSeries([...base, 0.95, 0.97, 0.96]), 103_000);
  assert.equal(e.breach, true, e.description);
});

Deno.test("cpuSpike stays quiet on a single spike, on noise, and on a busy but steady process", () => {
  const rnd = noise(5);
  const base = Array.from({ length: 100 }, () => 0.2 + rnd() * 0.1);
  assert.equal(cpuSpike(CPU)(cpuSeries([...base, 0.95, 0.25, 0.22]), 103_000).breach, false);
  const noisy = Array.from({ length: 103 }, () => 0.1 + rnd() * 0.6);
  assert.equal(cpuSpike(CPU)(cpuSeries(noisy), 103_000).breach, false);
  const steadyBusy = Array.from({ length: 103 }, () => 0.9 + rnd() * 0.05);
  assert.equal(cpuSpike(CPU)(cpuSeries(steadyBusy), 103_000).breach, false, "high but not a spike");
});

Deno.test("actorLeak fires on actors that keep growing and not on a plateau", () => {
  const leak = new History(1000);
  const plateau = new History(1000);
  for (let s = 0; s < 300; s++) {
    leak.record("actors_storage_connection", s * 1000, 5 + Math.floor(s / 10));
    plateau.record("actors_storage_connection", s * 1000, Math.min(5 + Math.floor(s / 10), 15));
  }
  const opts = { windowMs: 300_000, minGrowth: 0.5, minSamples: 30 };
  assert.equal(actorLeak(opts)(leak, 299_000).breach, true);
  assert.equal(actorLeak(opts)(plateau, 299_000).breach, false);
});

Deno.test("threshold computes value, rate and increase over the window", () => {
  const h = new History();
  for (let s = 0; s <= 60; s++) h.record("troupe_records_total", s * 1000, s * 100);
  const at = 60_000;
  const base = { metric: "troupe_records_total", windowMs: 60_000, op: "<" as const, threshold: 1 };
  assert.equal(threshold({ ...base, fn: "value" })(h, at).value, 6000);
  assert.equal(threshold({ ...base, fn: "rate" })(h, at).value, 100);
  assert.equal(threshold({ ...base, fn: "increase" })(h, at).value, 6000);
  assert.equal(threshold({ ...base, fn: "rate" })(h, at).breach, false);
  assert.equal(threshold({ ...base, metric: "missing", fn: "rate" })(h, at).value, null);
});

Deno.test("gcPressure fires near the heap limit while the floor rises, not when the heap is high but flat", () => {
  const limit = 100 * MiB;
  const rising = new History(1000);
  const flat = new History(1000);
  const low = new History(1000);
  for (let s = 0; s < 60; s++) {
    rising.record("heap_used_bytes", s * 1000, 86 * MiB + s * 0.1 * MiB + (s % 5) * MiB);
    flat.record("heap_used_bytes", s * 1000, 90 * MiB + (s % 5) * MiB);
    low.record("heap_used_bytes", s * 1000, 20 * MiB + s * 0.5 * MiB);
  }
  const rule = gcPressure({ windowMs: 60_000, nearLimit: 0.85, heapLimitBytes: limit });
  assert.equal(rule(rising, 59_000).breach, true);
  assert.equal(rule(flat, 59_000).breach, false);
  assert.equal(rule(low, 59_000).breach, false);
});
