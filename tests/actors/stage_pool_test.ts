/**
 * @module
 * Tests of the stage pool supervisor. Two kinds:
 *
 * - the pool alone, driven by `@sinonjs/fake-timers`, with a stub worker
 *   that crashes or holds its batches on command: scaling steps, restart
 *   backoff and intensity, poison isolation by splitting;
 * - a whole {@linkcode TroupeSystem} over a real SQLite file in a temporary
 *   directory: the validate pool grows under a deep mailbox and shrinks
 *   back when idle, and a throwing stage is restarted with its records
 *   committed once.
 */
import assert from "node:assert/strict";
import FakeTimers from "@sinonjs/fake-timers";
import { type AnyActorRef, createActor, enqueueActions, setup } from "xstate";
import { startSystem, type TroupeSystem } from "../../actors/mod.ts";
import { stagePoolMachine, StageRuntime } from "../../actors/stage_pool.ts";
import { AnomalyTracker } from "../../actors/transform_stage.ts";
import type { StageDeps } from "../../actors/_stage_deps.ts";
import type { BatchDoneEvent, StageWorkerInput } from "../../actors/_stage_worker.ts";
import { Batch, Ticket, toBatches } from "../../lib/batch.ts";
import { FaultInjector } from "../../lib/faults.ts";
import { getLog } from "../../lib/log.ts";
import { createMetrics, type Metrics } from "../../lib/metrics.ts";
import { dataRecordSchema, STAGES } from "../../lib/schemas.ts";
import { openSqliteReader, openSqliteWriter, sqlitePath } from "../../lib/sqlite_store.ts";
import type { StoreReader } from "../../lib/store.ts";
import { makeRecords, quietLogs, testConfig, waitFor } from "../_helpers.ts";

// ---------------------------------------------------------------------------
// The pool alone, on fake time

/** What the stub worker does, shared by every incarnation of it. */
interface StubControl {
  /** Crash on the next this many batches, whatever they hold. */
  crashes: number;
  /** Crash on every batch holding one of these raw ids. */
  poison: Set<string>;
  /** Keep batches instead of reporting them done (the test sends `batch.done`). */
  hold: boolean;
  /** Every dispatch a worker finished, in order. */
  done: Array<{ workerId: string; batches: Batch[] }>;
  /** Every dispatch a worker received, in order. */
  received: Array<{ workerId: string; size: number }>;
}

function stubControl(overrides: Partial<StubControl> = {}): StubControl {
  return { crashes: 0, poison: new Set(), hold: false, done: [], received: [], ...overrides };
}

function rawIds(b: Batch): string[] {
  return b.raw.map((r) => (r as { id: string }).id);
}

/** A worker that does nothing to its batches but crash or hold on command. */
function stubWorker(control: StubControl) {
  return setup({
    types: {
      context: {} as { workerId: string },
      input: {} as StageWorkerInput,
      events: {} as { type: "batch.process"; batches: Batch[] },
    },
  }).createMachine({
    id: "stub_stage",
    context: ({ input }) => ({ workerId: input.workerId }),
    on: {
      "batch.process": {
        actions: enqueueActions(({ context, event, enqueue }) => {
          const size = event.batches.reduce((n, b) => n + b.size, 0);
          control.received.push({ workerId: context.workerId, size });
          if (control.crashes > 0) {
            control.crashes--;
            throw new Error("Stub crash");
          }
          for (const b of event.batches) {
            const bad = rawIds(b).find((id) => control.poison.has(id));
            if (bad !== undefined) throw new Error(`Poison ${bad}`);
          }
          if (control.hold) return;
          control.done.push({ workerId: context.workerId, batches: event.batches });
          enqueue.sendParent(
            {
              type: "batch.done",
              workerId: context.workerId,
              batches: event.batches,
            } satisfies BatchDoneEvent,
          );
        }),
      },
    },
  });
}

interface PoolOptions {
  minWorkers?: number;
  maxWorkers?: number;
  capacity?: number;
  maxAttempts?: number;
  maxRestarts?: number;
  withinMs?: number;
  backoffInitialMs?: number;
  backoffMaxMs?: number;
  groupRecords?: number;
}

function poolDeps(o: PoolOptions, metrics: Metrics): StageDeps {
  const config = testConfig("unused", {
    pipeline: {
      batch_size: 10,
      max_attempts: o.maxAttempts ?? 3,
      stages: {
        validate: {
          min_workers: o.minWorkers ?? 1,
          max_workers: o.maxWorkers ?? 3,
          mailbox_capacity: o.capacity ?? 100,
        },
      },
    },
    autoscale: { interval_ms: 20, cooldown_ms: 200, high_watermark: 0.5, low_watermark: 0.1 },
    supervisor: {
      max_restarts: o.maxRestarts ?? 100,
      within_ms: o.withinMs ?? 10_000,
      backoff_initial_ms: o.backoffInitialMs ?? 100,
      backoff_max_ms: o.backoffMaxMs ?? 1000,
    },
  });
  return {
    config,
    schema: dataRecordSchema(),
    anomaly: new AnomalyTracker(),
    faults: new FaultInjector(),
    metrics,
    log: getLog("test"),
    openWriter: () => Promise.reject(new Error("no storage in this test")),
  };
}

interface PoolHarness {
  pool: AnyActorRef;
  runtime: StageRuntime;
  metrics: Metrics;
  clock: ReturnType<typeof FakeTimers.install>;
  errors: unknown[];
  /** Ids of the worker children alive now. */
  workerIds(): string[];
  /** The value of a metric sample, 0 when absent. */
  metric(name: string, labels: Record<string, string>): Promise<number>;
  close(): void;
}

/** Starts a validate pool with stub workers on fake time; batches may be queued first. */
function startPool(control: StubControl, o: PoolOptions, queued: Batch[] = []): PoolHarness {
  const clock = FakeTimers.withGlobal(globalThis).install({
    toFake: ["setTimeout", "clearTimeout", "setInterval", "clearInterval", "Date"],
  });
  const metrics = createMetrics({ defaultMetrics: false });
  const deps = poolDeps(o, metrics);
  const runtime = new StageRuntime(
    "validate",
    deps.config.pipeline.stages.validate.mailbox_capacity,
  );
  for (const b of queued) runtime.mailbox.put(b);
  const errors: unknown[] = [];
  const pool = createActor(stagePoolMachine, {
    input: {
      runtime,
      next: null,
      worker: stubWorker(control),
      deps,
      groupRecords: o.groupRecords ?? 10,
    },
  }) as unknown as AnyActorRef;
  pool.subscribe({ error: (e) => errors.push(e) });
  pool.start();
  return {
    pool,
    runtime,
    metrics,
    clock,
    errors,
    workerIds: () => Object.keys(pool.getSnapshot().children ?? {}).sort(),
    metric: async (name, labels) => {
      const m = metrics.registry.getSingleMetric(name);
      if (m === undefined) return 0;
      const { values } = await m.get();
      const hit = values.find((v) => Object.entries(labels).every(([k, x]) => v.labels[k] === x));
      return hit?.value ?? 0;
    },
    close: () => {
      pool.stop();
      clock.uninstall();
    },
  };
}

function batchesOf(n: number, size = 10, prefix = "r"): Batch[] {
  return toBatches(new Ticket(), makeRecords(n * size, prefix), size);
}

Deno.test("stagePoolMachine scales up one worker per tick while the mailbox is above the high watermark, up to max_workers", async () => {
  const control = stubControl({ hold: true });
  const h = startPool(control, { maxWorkers: 3, capacity: 100 }, batchesOf(10));
  try {
    // One worker at start holds one batch: 90 of 100 records queued.
    assert.equal(h.runtime.workers, 1);
    assert.equal(h.runtime.mailbox.queued, 90);
    h.clock.tick(20);
    assert.equal(h.runtime.workers, 2);
    assert.equal(h.runtime.mailbox.queued, 80, "the new worker got a batch at once");
    h.clock.tick(20);
    assert.equal(h.runtime.workers, 3);
    h.clock.tick(1000);
    assert.equal(h.runtime.workers, 3, "never above max_workers");
    assert.deepEqual(h.workerIds(), ["validate.1", "validate.2", "validate.3"]);
    assert.equal(
      await h.metric("troupe_scale_decisions_total", { stage: "validate", direction: "up" }),
      2,
    );
    assert.equal(await h.metric("troupe_stage_workers", { stage: "validate" }), 3);
    assert.equal(h.errors.length, 0);
  } finally {
    h.close();
  }
});

Deno.test("stagePoolMachine does not scale between the watermarks", async () => {
  const control = stubControl({ hold: true });
  // 40 of 100 queued after the first dispatch: between 0.1 and 0.5.
  const h = startPool(control, { maxWorkers: 3, capacity: 100 }, batchesOf(5));
  try {
    h.clock.tick(2000);
    assert.equal(h.runtime.workers, 1);
    assert.equal(
      await h.metric("troupe_scale_decisions_total", { stage: "validate", direction: "up" }),
      0,
    );
    assert.equal(
      await h.metric("troupe_scale_decisions_total", { stage: "validate", direction: "down" }),
      0,
    );
  } finally {
    h.close();
  }
});

Deno.test("stagePoolMachine shrinks by one idle worker per cooldown once the mailbox is low, down to min_workers", async () => {
  const control = stubControl({ hold: true });
  const h = startPool(control, { maxWorkers: 3, capacity: 100 }, batchesOf(10));
  const down = () =>
    h.metric("troupe_scale_decisions_total", { stage: "validate", direction: "down" });
  try {
    h.clock.tick(40);
    assert.equal(h.runtime.workers, 3);
    // The queue empties while every worker still holds a batch.
    const queued = h.runtime.mailbox.drain();
    h.clock.tick(1000);
    assert.equal(h.runtime.workers, 3, "a busy worker is never stopped");
    assert.equal(await down(), 0);

    // validate.2 finishes: it is the only idle one, and the cooldown has long passed.
    const held = h.runtime.inFlight.get("validate.2")!;
    h.pool.send({ type: "batch.done", workerId: "validate.2", batches: held.batches });
    h.clock.tick(20);
    assert.equal(h.runtime.workers, 2);
    assert.deepEqual(
      h.workerIds(),
      ["validate.1", "validate.3"],
      "the idle worker was the one stopped",
    );
    assert.equal(await down(), 1);
    assert.equal(await h.metric("troupe_stage_workers", { stage: "validate" }), 2);

    for (const id of ["validate.1", "validate.3"]) {
      h.pool.send({
        type: "batch.done",
        workerId: id,
        batches: h.runtime.inFlight.get(id)!.batches,
      });
    }
    h.clock.tick(180);
    assert.equal(h.runtime.workers, 2, "one step per cooldown");
    h.clock.tick(20);
    assert.equal(h.runtime.workers, 1);
    h.clock.tick(5000);
    assert.equal(h.runtime.workers, 1, "never below min_workers");
    assert.equal(await down(), 2);
    assert.equal(
      await h.metric("troupe_scale_decisions_total", { stage: "validate", direction: "up" }),
      2,
    );
    assert.equal(queued.length, 7);
  } finally {
    h.close();
  }
});

Deno.test("stagePoolMachine restarts a crashed worker after a doubling backoff and retries its batch", async () => {
  const control = stubControl({ crashes: 2 });
  const [batch] = batchesOf(1);
  const h = startPool(control, { backoffInitialMs: 100, backoffMaxMs: 1000 }, [batch]);
  try {
    // First crash at once: the retry comes after 80 to 100 ms (20 % jitter).
    assert.equal(h.runtime.workerRestarts, 1);
    assert.equal(h.runtime.workers, 0);
    assert.equal(batch.attempts, 1);
    assert.equal(h.runtime.mailbox.peek(), batch, "the batch is back at the head of the mailbox");
    h.clock.tick(79);
    assert.equal(h.runtime.workers, 0);
    h.clock.tick(21);
    // The second worker came at t1 in [80, 100] and crashed on the batch too;
    // the next one comes 160 to 200 ms later: in [240, 300].
    assert.equal(h.runtime.workerRestarts, 2);
    assert.equal(batch.attempts, 2);
    h.clock.tick(139);
    assert.equal(h.runtime.workers, 0, "the delay doubled");
    h.clock.tick(61);
    assert.equal(h.runtime.workers, 1);
    assert.deepEqual(h.workerIds(), ["validate.3"]);
    assert.equal(control.done.length, 1, "the third worker finished the batch");
    assert.equal(control.done[0].batches[0], batch);
    assert.equal(h.runtime.inFlight.size, 0);
    assert.equal(await h.metric("troupe_actor_restarts_total", { actor: "worker.validate" }), 2);
    assert.equal(h.errors.length, 0);
  } finally {
    h.close();
  }
});

Deno.test("stagePoolMachine gives up after max_restarts crashes within within_ms", () => {
  const control = stubControl({ poison: new Set(["r-0"]) });
  const [batch] = batchesOf(1);
  const h = startPool(
    control,
    { maxRestarts: 2, withinMs: 10_000, backoffInitialMs: 10, maxAttempts: 100 },
    [batch],
  );
  try {
    h.clock.tick(1000);
    assert.equal(h.runtime.workerRestarts, 3);
    assert.equal(h.errors.length, 1);
    assert.match(
      (h.errors[0] as Error).message,
      /^Stage pool "validate" gave up: 3 worker crashes within 10000 ms, last: Poison r-0$/,
    );
    assert.equal(h.pool.getSnapshot().status, "error");
    // Nothing is lost: the batch waits in the mailbox for the next pool.
    assert.equal(h.runtime.mailbox.peek(), batch);
    assert.equal(batch.attempts, 3);
    assert.equal(h.runtime.inFlight.size, 0);
  } finally {
    h.close();
  }
});

Deno.test("stagePoolMachine forgets crashes older than within_ms and resets the backoff", () => {
  const control = stubControl();
  const h = startPool(control, { maxRestarts: 1, withinMs: 500, backoffInitialMs: 100 });
  const crashOnce = () => {
    control.crashes = 1;
    h.runtime.mailbox.put(batchesOf(1)[0]);
    h.pool.send({ type: "mailbox.put" });
  };
  try {
    for (let round = 1; round <= 3; round++) {
      crashOnce();
      assert.equal(h.runtime.workerRestarts, round);
      h.clock.tick(79);
      assert.equal(h.runtime.workers, 0, `round ${round}: still backing off`);
      h.clock.tick(21);
      assert.equal(h.runtime.workers, 1, `round ${round}: the backoff started over at 100 ms`);
      h.clock.tick(600);
    }
    assert.equal(h.errors.length, 0, "one crash per 500 ms never exceeds max_restarts 1");
    assert.equal(control.done.length, 3);
  } finally {
    h.close();
  }
});

Deno.test("stagePoolMachine splits a batch that keeps crashing until the poison record fails alone", () => {
  const control = stubControl({ poison: new Set(["r-5"]) });
  const ticket = new Ticket();
  const [batch] = toBatches(ticket, makeRecords(8, "r"), 8);
  const h = startPool(control, { maxAttempts: 2, backoffInitialMs: 1, backoffMaxMs: 1 }, [batch]);
  try {
    h.clock.tick(1000);
    assert.equal(h.errors.length, 0);
    assert.equal(h.runtime.idle, true);
    // 8 → 4 → 2 → 1 records, two crashes each, then two more alone.
    assert.equal(h.runtime.workerRestarts, 8);
    const finished = control.done.flatMap((d) => d.batches);
    const ids = finished.flatMap(rawIds).sort();
    assert.deepEqual(
      ids,
      ["r-0", "r-1", "r-2", "r-3", "r-4", "r-6", "r-7"],
      "each other record once",
    );
    const failed = finished.filter((b) => b.failed.length > 0);
    assert.equal(failed.length, 1);
    assert.deepEqual(failed[0].raw, []);
    assert.equal(failed[0].failed[0].record_id, "r-5");
    assert.equal(failed[0].failed[0].stage, "validate");
    assert.equal(failed[0].failed[0].reason, "Poison r-5 (after 2 attempts)");
    assert.deepEqual(failed[0].errors.map((e) => e.index), [5]);
    assert.equal(ticket.pending, finished.length, "every half is counted on the ticket");
    for (const b of finished) assert.ok(b.rawIndex.every((i, k) => rawIds(b)[k] === `r-${i}`));
  } finally {
    h.close();
  }
});

Deno.test("stagePoolMachine does not fail a record for crashing only beside a poison one", () => {
  // Two one-record requests dispatched together; with max_attempts 1 the
  // first crash must not count against the innocent one.
  const control = stubControl({ poison: new Set(["bad-0"]) });
  const [good] = toBatches(new Ticket(), makeRecords(1, "good"), 10);
  const [bad] = toBatches(new Ticket(), makeRecords(1, "bad"), 10);
  const h = startPool(control, { maxAttempts: 1, backoffInitialMs: 1, backoffMaxMs: 1 }, [
    good,
    bad,
  ]);
  try {
    assert.equal(control.received[0].size, 2, "both went to one worker");
    h.clock.tick(1000);
    assert.equal(h.runtime.idle, true);
    assert.deepEqual(good.failed, [], "the innocent record is not failed");
    assert.deepEqual(control.done.flatMap((d) => d.batches.flatMap(rawIds)), ["good-0"]);
    assert.equal(bad.failed.length, 1);
    assert.equal(bad.failed[0].record_id, "bad-0");
  } finally {
    h.close();
  }
});

// ---------------------------------------------------------------------------
// A whole system over SQLite, on real time

interface RunningSystem {
  system: TroupeSystem;
  metrics: Metrics;
  reader: StoreReader;
  close(): Promise<void>;
}

async function startTestSystem(
  overrides: Record<string, unknown>,
  faults = new FaultInjector(),
): Promise<RunningSystem> {
  await quietLogs();
  const dir = await Deno.makeTempDir({ prefix: "troupe_pool_" });
  const config = testConfig(dir, overrides);
  const path = sqlitePath(dir);
  openSqliteWriter(path).close();
  const reader = openSqliteReader(path);
  const metrics = createMetrics({ defaultMetrics: false });
  const system = startSystem({ config, metrics, faults });
  await waitFor(() => system.readiness().ready, 5000, "the system to be ready");
  return {
    system,
    metrics,
    reader,
    close: async () => {
      await system.drain(10_000);
      system.stop();
      await reader.close();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    },
  };
}

async function metricText(metrics: Metrics): Promise<string> {
  return await metrics.registry.metrics();
}

function sample(text: string, series: string): number {
  const line = text.split("\n").find((l) => l.startsWith(`${series} `));
  return line === undefined ? 0 : Number(line.slice(series.length + 1));
}

Deno.test("stagePoolMachine grows the pool under a deep mailbox and shrinks when idle", async () => {
  const faults = new FaultInjector({ stages: { validate: { latency_ms: 20 } } });
  const s = await startTestSystem({
    autoscale: { interval_ms: 20, cooldown_ms: 200, high_watermark: 0.5, low_watermark: 0.1 },
    pipeline: { batch_size: 10, stages: { validate: { mailbox_capacity: 500 } } },
  }, faults);
  const validate = s.system.runtimes.validate;
  const { min_workers, max_workers } = s.system.deps.config.pipeline.stages.validate;
  assert.equal(min_workers, 1);
  assert.equal(max_workers, 10);
  let peak = 0;
  let deepest = 0;
  const violations: string[] = [];
  const sampler = setInterval(() => {
    peak = Math.max(peak, validate.workers);
    deepest = Math.max(deepest, validate.mailbox.depth);
    if (validate.workers > max_workers) violations.push(`${validate.workers} workers`);
  }, 2);
  try {
    // 3000 records in requests of 100: the mailbox stays full for a while.
    const tickets = [];
    const records = makeRecords(3000, "scale");
    for (let i = 0; i < records.length; i += 100) {
      const outcome = await s.system.submit(records.slice(i, i + 100), { maxWaitMs: 30_000 });
      assert.equal(outcome.ok, true);
      if (outcome.ok) tickets.push(outcome.ticket.promise);
    }
    const results = await Promise.all(tickets);
    assert.equal(results.reduce((n, r) => n + r.accepted, 0), 3000);
    assert.ok(peak > min_workers, `the pool grew (peak ${peak})`);
    assert.ok(deepest > 250, `the mailbox was deep (${deepest} of 500)`);

    await waitFor(() => validate.workers === min_workers, 20_000, "the pool to shrink back");
    peak = Math.max(peak, validate.workers);
    assert.deepEqual(violations, []);
    assert.ok(peak <= max_workers);
    const text = await metricText(s.metrics);
    const up = sample(text, 'troupe_scale_decisions_total{stage="validate",direction="up"}');
    const down = sample(text, 'troupe_scale_decisions_total{stage="validate",direction="down"}');
    assert.ok(up >= peak - min_workers, `${up} scale-ups for a peak of ${peak}`);
    assert.equal(down, up, "every worker added was removed again, each counted");
    assert.equal(sample(text, 'troupe_stage_workers{stage="validate"}'), min_workers);
    assert.equal(validate.workerRestarts, 0);
    assert.equal((await s.reader.counts()).stored_records, 3000);
  } finally {
    clearInterval(sampler);
    await s.close();
  }
});

Deno.test("stagePoolMachine restarts a throwing stage with backoff and commits its records once", async () => {
  const faults = new FaultInjector();
  const s = await startTestSystem({
    supervisor: { backoff_initial_ms: 5, backoff_max_ms: 20, max_restarts: 5, within_ms: 60_000 },
    pipeline: { batch_size: 10, max_attempts: 10 },
  }, faults);
  try {
    faults.set({ stages: { aggregate: { throw_count: 3 } } });
    const outcome = await s.system.submit(makeRecords(25, "once"), { maxWaitMs: 1000 });
    assert.ok(outcome.ok);
    const result = await outcome.ticket.promise;
    assert.deepEqual(result, { accepted: 25, duplicates: 0, rejected: 0, errors: [] });
    const rt = s.system.runtimes.aggregate;
    assert.equal(rt.workerRestarts, 3);
    assert.equal(rt.poolRestarts, 0);
    for (const stage of STAGES) {
      if (stage !== "aggregate") assert.equal(s.system.runtimes[stage].workerRestarts, 0, stage);
    }
    const counts = await s.reader.counts();
    assert.equal(counts.stored_records, 25);
    const users = await s.reader.listUsers(100);
    assert.equal(
      users.users.reduce((n, u) => n + u.total_events, 0),
      25,
      "no record counted twice",
    );
    const text = await metricText(s.metrics);
    assert.equal(sample(text, 'troupe_actor_restarts_total{actor="worker.aggregate"}'), 3);
    await waitFor(() => rt.workers === 1, 5000, "the worker to be back");
  } finally {
    await s.close();
  }
});
