import assert from "node:assert/strict";
import { createActor, setup } from "xstate";
import FakeTimers from "@sinonjs/fake-timers";
import { breakerAllows, circuitBreakerMachine } from "../../actors/circuit_breaker.ts";
import { FaultInjector } from "../../lib/faults.ts";
import { getJson, makeRecords, postRecords, startTestService, waitFor } from "../_helpers.ts";

function startBreaker(changes: string[]) {
  // A parent that receives the breaker's nudges.
  const nudges: string[] = [];
  const parent = setup({ actors: { breaker: circuitBreakerMachine } }).createMachine({
    invoke: {
      id: "breaker",
      src: "breaker",
      input: {
        threshold: 3,
        backoffInitialMs: 100,
        backoffMaxMs: 1000,
        onChange: (s: string) => changes.push(s),
      },
    },
    on: { "mailbox.put": { actions: () => nudges.push("put") } },
  });
  const actor = createActor(parent).start();
  const breaker = actor.getSnapshot().children.breaker!;
  return { actor, breaker, nudges };
}

Deno.test("circuitBreakerMachine opens after 3 failures in a row, half-opens after a backoff, closes on success", () => {
  const clock = FakeTimers.install({ toFake: ["setTimeout", "clearTimeout", "Date"] });
  try {
    const changes: string[] = [];
    const { actor, breaker } = startBreaker(changes);
    const state = () => breaker.getSnapshot().value;
    breaker.send({ type: "call.failure", reason: "x" });
    breaker.send({ type: "call.success" });
    breaker.send({ type: "call.failure", reason: "x" });
    breaker.send({ type: "call.failure", reason: "x" });
    assert.equal(state(), "closed", "a success in between resets the count");
    breaker.send({ type: "call.failure", reason: "disk gone" });
    assert.equal(state(), "open");
    assert.equal(breakerAllows(state()), "none");
    clock.tick(40);
    assert.equal(
      state(),
      "open",
      "still waiting (jitter keeps the delay at or above half the base)",
    );
    clock.tick(100);
    assert.equal(state(), "halfOpen");
    assert.equal(breakerAllows(state()), "one");
    breaker.send({ type: "call.failure", reason: "still gone" });
    assert.equal(state(), "open");
    clock.tick(250); // the second wait is longer: 200 ms base
    assert.equal(state(), "halfOpen");
    breaker.send({ type: "call.success" });
    assert.equal(state(), "closed");
    assert.deepEqual(changes, ["open", "halfOpen", "open", "halfOpen", "closed"]);
    actor.stop();
  } finally {
    clock.uninstall();
  }
});

Deno.test("a storage outage turns /readyz 503, fills the mailboxes to 503, and recovers with nothing lost", async () => {
  const faults = new FaultInjector();
  const svc = await startTestService({
    supervisor: { backoff_initial_ms: 20, backoff_max_ms: 200 },
    pipeline: {
      batch_size: 50,
      stages: {
        validate: { mailbox_capacity: 100 },
        transform: { mailbox_capacity: 100 },
        aggregate: { mailbox_capacity: 100 },
        store: { mailbox_capacity: 100 },
      },
    },
    ingest: { max_wait_ms: 50 },
  }, faults);
  try {
    assert.equal((await postRecords(svc.url, makeRecords(10, "before"))).status, 200);
    // A long outage, ended by the test once it has seen what it checks.
    faults.set({ storage_outage_ms: 120_000 });
    const pending = [postRecords(svc.url, makeRecords(50, "during-0"))];
    await waitFor(
      async () => (await getJson(svc.url, "/readyz")).status === 503,
      5000,
      "readyz 503",
    );
    const ready = await getJson(svc.url, "/readyz");
    assert.equal(ready.body.checks.find((c: { name: string }) => c.name === "storage").ok, false);
    // Keep posting until the mailboxes are full and ingest refuses.
    let refused: Awaited<ReturnType<typeof postRecords>> | undefined;
    for (let i = 1; i < 40 && refused === undefined; i++) {
      const p = postRecords(svc.url, makeRecords(50, `during-${i}`));
      const first = await Promise.race([
        p,
        new Promise<undefined>((r) => setTimeout(() => r(undefined), 100)),
      ]);
      if (first !== undefined && first.status === 503) refused = first;
      else pending.push(p);
    }
    assert.ok(refused, "ingest answered 503 once the mailboxes were full");
    assert.equal(
      refused.body.error && (refused.body.error as { code: string }).code,
      "unavailable",
    );
    assert.ok(Number(refused.headers.get("retry-after")) >= 1);
    // Storage comes back: every request that was let in is answered 200 once
    // its batch commits (one slow to be refused may still get its 503).
    faults.set({});
    const answers = await Promise.all(pending);
    for (const a of answers) assert.ok(a.status === 200 || a.status === 503, String(a.status));
    assert.equal(answers[0].status, 200, "the request from before the mailboxes filled");
    const accepted = answers.reduce(
      (n, a) => n + (a.status === 200 ? a.body.accepted as number : 0),
      0,
    );
    assert.equal(accepted, answers.filter((a) => a.status === 200).length * 50);
    await waitFor(
      async () => (await getJson(svc.url, "/readyz")).status === 200,
      5000,
      "readyz 200",
    );
    const stats = await getJson(svc.url, "/v1/stats");
    assert.equal(stats.body.stored_records, 10 + accepted);
    assert.equal(
      svc.system.runtimes.store.workerRestarts,
      0,
      "no connection crashed for an outage",
    );
  } finally {
    await svc.close();
  }
});

Deno.test("with no traffic at all, idle pings turn /readyz 503 when storage goes and 200 when it is back", async () => {
  const faults = new FaultInjector();
  const svc = await startTestService({
    supervisor: { backoff_initial_ms: 20, backoff_max_ms: 100 },
    storage: { idle_ping_ms: 50 },
  }, faults);
  try {
    assert.equal((await getJson(svc.url, "/readyz")).status, 200);
    faults.set({ storage_outage_ms: 120_000 });
    await waitFor(
      async () => (await getJson(svc.url, "/readyz")).status === 503,
      5000,
      "readyz 503 with no commit attempted",
    );
    const down = await getJson(svc.url, "/readyz");
    assert.equal(down.body.checks.find((c: { name: string }) => c.name === "storage").ok, false);
    faults.set({});
    await waitFor(
      async () => (await getJson(svc.url, "/readyz")).status === 200,
      5000,
      "readyz 200 again with no commit attempted",
    );
    assert.equal(svc.system.runtimes.store.workerRestarts, 0, "no connection crashed");
    // And the first record after it goes in.
    assert.equal((await postRecords(svc.url, makeRecords(5, "after-idle"))).status, 200);
  } finally {
    await svc.close();
  }
});
