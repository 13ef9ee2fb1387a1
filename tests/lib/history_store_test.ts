import assert from "node:assert/strict";
import { join } from "node:path";
import { History } from "../../lib/history.ts";
import { HistoryStore, mergeSteps, MinuteFlusher } from "../../lib/history_store.ts";

async function withStore(fn: (path: string) => void | Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "troupe_hist_" });
  try {
    await fn(join(dir, "troupe.db"));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("MinuteFlusher writes each complete minute once, with min, mean and max, and it survives reopening", () =>
  withStore((path) => {
    const history = new History();
    const store = new HistoryStore(path);
    const t0 = 60_000 * 1000; // a minute boundary
    const flusher = new MinuteFlusher(store, 7 * 86_400_000, t0);
    // Minute 0: 1..60; minute 1: 100 flat; minute 2 still running.
    for (let s = 0; s < 60; s++) history.record("x", t0 + s * 1000, s + 1);
    for (let s = 0; s < 60; s++) history.record("x", t0 + 60_000 + s * 1000, 100);
    history.record("x", t0 + 120_000, 7);
    assert.equal(flusher.flush(history, t0 + 59_000), 0, "the first minute is not over");
    assert.equal(flusher.flush(history, t0 + 121_000), 2);
    assert.equal(flusher.flush(history, t0 + 121_500), 0, "nothing twice");
    store.close();
    const again = new HistoryStore(path);
    assert.deepEqual(again.query("x", 0, Infinity), [
      { t: t0, min: 1, mean: 30.5, max: 60, count: 60 },
      { t: t0 + 60_000, min: 100, mean: 100, max: 100, count: 60 },
    ]);
    assert.deepEqual(again.names(), ["x"]);
    assert.equal(again.prune(t0 + 60_000), 1);
    assert.equal(again.query("x", 0, Infinity).length, 1);
    again.close();
  }));

Deno.test("mergeSteps weights each minute's mean by its samples", () => {
  const merged = mergeSteps(
    [
      { t: 0, min: 1, mean: 2, max: 3, count: 10 },
      { t: 60_000, min: 0, mean: 5, max: 9, count: 30 },
      { t: 300_000, min: 4, mean: 4, max: 4, count: 1 },
    ],
    0,
    300_000,
  );
  assert.deepEqual(merged, [
    { t: 0, min: 0, mean: (2 * 10 + 5 * 30) / 40, max: 9, count: 40 },
    { t: 300_000, min: 4, mean: 4, max: 4, count: 1 },
  ]);
});
