/**
 * @module
 * Tests of the backoff value and the restart-intensity window: doubling up
 * to the cap, jitter bounds, reset, purity, and which restarts count.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { createBackoff, nextDelay, recordRestart, resetBackoff } from "../../lib/backoff.ts";
import type { Backoff } from "../../lib/backoff.ts";

function delays(b: Backoff, n: number, random: () => number = () => 0): number[] {
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const next = nextDelay(b, random);
    out.push(next.delayMs);
    b = next.backoff;
  }
  return out;
}

Deno.test("createBackoff starts at attempt 0 with the documented defaults", () => {
  assert.deepEqual(createBackoff(), { initialMs: 50, maxMs: 5000, jitter: 0.2, attempt: 0 });
  assert.deepEqual(createBackoff(5, 20, 0), { initialMs: 5, maxMs: 20, jitter: 0, attempt: 0 });
});

Deno.test("nextDelay doubles the delay up to the maximum", () => {
  assert.deepEqual(delays(createBackoff(100, 1000, 0), 7), [100, 200, 400, 800, 1000, 1000, 1000]);
  assert.deepEqual(
    delays(createBackoff(50, 5000), 4),
    [50, 100, 200, 400],
    "random 0 is no jitter",
  );
  assert.deepEqual(delays(createBackoff(0, 100, 0), 3), [0, 0, 0]);
});

Deno.test("nextDelay counts attempts and leaves its input untouched", () => {
  const b = Object.freeze(createBackoff(10, 100, 0.5));
  const { backoff } = nextDelay(b, () => 0.5);
  assert.equal(b.attempt, 0);
  assert.equal(backoff.attempt, 1);
  assert.deepEqual({ ...backoff, attempt: 0 }, b, "only the attempt changes");
  assert.equal(nextDelay(b, () => 0.5).delayMs, nextDelay(b, () => 0.5).delayMs);
});

Deno.test("nextDelay stays finite and capped after very many attempts", () => {
  const b: Backoff = { ...createBackoff(1, 60_000, 0), attempt: 5000 };
  assert.equal(nextDelay(b).delayMs, 60_000);
  const huge: Backoff = { ...createBackoff(1, Number.MAX_SAFE_INTEGER, 0), attempt: 5000 };
  assert.ok(Number.isFinite(nextDelay(huge).delayMs));
});

Deno.test("nextDelay keeps the jittered delay within [base × (1 − jitter), base]", () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 10_000 }),
      fc.integer({ min: 1, max: 100_000 }),
      fc.double({ min: 0, max: 1, noNaN: true }),
      fc.integer({ min: 0, max: 40 }),
      fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }),
      (initialMs, extra, jitter, attempt, r) => {
        const maxMs = initialMs + extra;
        const b: Backoff = { ...createBackoff(initialMs, maxMs, jitter), attempt };
        const base = Math.min(maxMs, initialMs * 2 ** Math.min(attempt, 30));
        const { delayMs } = nextDelay(b, () => r);
        assert.ok(Number.isInteger(delayMs), `delay ${delayMs} is a whole number of ms`);
        assert.ok(delayMs <= base, `delay ${delayMs} above base ${base}`);
        assert.ok(
          delayMs >= Math.floor(base * (1 - jitter)),
          `delay ${delayMs} below the jitter floor`,
        );
        assert.ok(delayMs <= maxMs);
      },
    ),
    { numRuns: 500 },
  );
});

Deno.test("nextDelay draws its jitter from Math.random by default", () => {
  const b = createBackoff(1000, 1000, 1);
  const seen = new Set(Array.from({ length: 50 }, () => nextDelay(b).delayMs));
  assert.ok(seen.size > 1, "full jitter gives different delays");
  for (const d of seen) assert.ok(d >= 0 && d <= 1000);
});

Deno.test("resetBackoff starts the doubling over", () => {
  let b = createBackoff(10, 1000, 0);
  for (let i = 0; i < 4; i++) b = nextDelay(b).backoff;
  assert.equal(nextDelay(b).delayMs, 160);
  const reset = resetBackoff(b);
  assert.equal(reset.attempt, 0);
  assert.equal(nextDelay(reset).delayMs, 10);
  assert.equal(b.attempt, 4, "the original is unchanged");
  const fresh = createBackoff();
  assert.equal(resetBackoff(fresh), fresh, "a fresh backoff is returned as is");
});

Deno.test("recordRestart counts only the restarts inside the window", async (t) => {
  await t.step("drops timestamps at least withinMs old", () => {
    const { history, exceeded } = recordRestart([0, 500, 1000], 1500, 5, 1000);
    assert.deepEqual(history, [1000, 1500], "0 and 500 are 1500 and 1000 ms old");
    assert.equal(exceeded, false);
  });

  await t.step("is exceeded by the restart after max_restarts", () => {
    let history: number[] = [];
    const outcomes: boolean[] = [];
    for (let now = 0; now < 4; now++) {
      const r = recordRestart(history, now, 2, 10_000);
      history = r.history;
      outcomes.push(r.exceeded);
    }
    assert.deepEqual(outcomes, [false, false, true, true]);
    assert.deepEqual(history, [0, 1, 2, 3]);
  });

  await t.step("is not exceeded when the restarts are spread out", () => {
    let history: number[] = [];
    for (let now = 0; now < 10_000; now += 1000) {
      const r = recordRestart(history, now, 1, 1000);
      assert.equal(r.exceeded, false, `restart at ${now}`);
      history = r.history;
    }
  });

  await t.step("max_restarts 0 gives up at the first crash", () => {
    assert.equal(recordRestart([], 0, 0, 1000).exceeded, true);
  });

  await t.step("leaves its input untouched", () => {
    const input = Object.freeze([1, 2, 3]);
    const { history } = recordRestart(input, 4, 5, 100);
    assert.deepEqual(input, [1, 2, 3]);
    assert.deepEqual(history, [1, 2, 3, 4]);
  });
});
