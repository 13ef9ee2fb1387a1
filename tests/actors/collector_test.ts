import assert from "node:assert/strict";
import FakeTimers from "@sinonjs/fake-timers";
import { createActor } from "xstate";
import { collectorMachine, lagProbe, LagWindow } from "../../actors/collector.ts";
import { History } from "../../lib/history.ts";

Deno.test("collectorMachine samples the process and the pipeline every interval", () => {
  const clock = FakeTimers.install({
    toFake: ["setTimeout", "clearTimeout", "setInterval", "clearInterval", "Date"],
  });
  try {
    const history = new History();
    let depth = 0;
    const actor = createActor(collectorMachine, {
      input: { history, intervalMs: 2000, read: () => ({ mailbox_depth_validate: depth += 10 }) },
    }).start();
    clock.tick(1999);
    assert.equal(history.names().length, 0, "nothing before the first interval");
    clock.tick(1);
    for (
      const name of [
        "process_cpu_user",
        "process_cpu_system",
        "rss_bytes",
        "heap_used_bytes",
        "heap_total_bytes",
        "external_bytes",
        "eventloop_lag_p99_seconds",
        "cpu_core_0",
      ]
    ) {
      assert.ok(history.has(name), name);
    }
    assert.ok(history.latest("rss_bytes")! > 0);
    clock.tick(4000);
    assert.deepEqual(history.samples("mailbox_depth_validate", 0, Infinity).map(([, v]) => v), [
      10,
      20,
      30,
    ]);
    actor.stop();
  } finally {
    clock.uninstall();
  }
});

Deno.test("lagProbe measures a stalled event loop as timer drift", async () => {
  const window = new LagWindow();
  const probe = createActor(lagProbe, { input: window }).start();
  try {
    await new Promise((r) => setTimeout(r, 50));
    window.take();
    const until = performance.now() + 150;
    while (performance.now() < until) { /* a 150 ms stall */ }
    await new Promise((r) => setTimeout(r, 30));
    const { max, count } = window.take();
    assert.ok(count > 0);
    assert.ok(max >= 100, `a 150 ms stall shows as lag, got max ${max} ms`);
  } finally {
    probe.stop();
  }
});
