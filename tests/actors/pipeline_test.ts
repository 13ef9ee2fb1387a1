/**
 * @module
 * Tests of the pipeline as a whole, through {@linkcode TroupeSystem} over
 * a real SQLite file in a temporary directory: back-pressure (no mailbox
 * ever holds more than its capacity, 429 when the first one stays full, an
 * oversized request only into an empty mailbox), progress when room frees
 * downstream, poison isolation in the store stage, and escalation from a
 * stage pool to the pipeline supervisor and on to the root.
 *
 * Storage is slowed down either with injected latency or with a gate the
 * test opens, never by asserting how long anything takes.
 */
import assert from "node:assert/strict";
import { startSystem, type SubmitOutcome, type TroupeSystem } from "../../actors/mod.ts";
import type { IngestResult, Ticket } from "../../lib/batch.ts";
import { FaultInjector } from "../../lib/faults.ts";
import { createMetrics, type Metrics } from "../../lib/metrics.ts";
import { STAGES } from "../../lib/schemas.ts";
import { openSqliteReader, openSqliteWriter, sqlitePath } from "../../lib/sqlite_store.ts";
import type { StoreReader, StoreWriter } from "../../lib/store.ts";
import { makeRecords, quietLogs, testConfig, waitFor } from "../_helpers.ts";

interface RunningSystem {
  system: TroupeSystem;
  metrics: Metrics;
  reader: StoreReader;
  close(): Promise<void>;
}

interface SystemOptions {
  faults?: FaultInjector;
  /** Wraps each storage connection opened on the test's SQLite file. */
  wrapWriter?: (w: StoreWriter) => StoreWriter;
}

async function startTestSystem(
  overrides: Record<string, unknown>,
  options: SystemOptions = {},
): Promise<RunningSystem> {
  await quietLogs();
  const dir = await Deno.makeTempDir({ prefix: "troupe_pipeline_" });
  const config = testConfig(dir, overrides);
  const path = sqlitePath(dir);
  openSqliteWriter(path).close();
  const reader = openSqliteReader(path);
  const metrics = createMetrics({ defaultMetrics: false });
  const wrap = options.wrapWriter ?? ((w) => w);
  const system = startSystem({
    config,
    metrics,
    faults: options.faults,
    openWriter: () => Promise.resolve(wrap(openSqliteWriter(path, { synchronous: "normal" }))),
  });
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

/** A gate every commit waits at until the test opens it. */
function commitGate() {
  let open!: () => void;
  const opened = new Promise<void>((resolve) => (open = resolve));
  return {
    open,
    wrap: (w: StoreWriter): StoreWriter => ({
      commit: async (units) => {
        await opened;
        return await w.commit(units);
      },
      ping: () => w.ping(),
      close: () => w.close(),
    }),
  };
}

/** Samples every mailbox every few ms and records the deepest each got. */
function watchMailboxes(system: TroupeSystem) {
  const deepest = Object.fromEntries(STAGES.map((s) => [s, 0])) as Record<string, number>;
  const check = () => {
    for (const s of STAGES) {
      deepest[s] = Math.max(deepest[s], system.runtimes[s].mailbox.depth);
    }
  };
  const timer = setInterval(check, 1);
  return {
    deepest,
    check,
    stop: () => {
      clearInterval(timer);
      check();
    },
  };
}

function capacities(system: TroupeSystem): Record<string, number> {
  return Object.fromEntries(STAGES.map((s) => [s, system.runtimes[s].mailbox.capacity]));
}

function ticketOf(outcome: SubmitOutcome): Ticket {
  assert.ok(outcome.ok, outcome.ok ? "" : `submit refused: ${outcome.status} ${outcome.message}`);
  return outcome.ticket;
}

async function metricText(metrics: Metrics): Promise<string> {
  return await metrics.registry.metrics();
}

function sample(text: string, series: string): number {
  const line = text.split("\n").find((l) => l.startsWith(`${series} `));
  return line === undefined ? 0 : Number(line.slice(series.length + 1));
}

function total(results: IngestResult[], key: "accepted" | "duplicates" | "rejected"): number {
  return results.reduce((n, r) => n + r[key], 0);
}

const SMALL_MAILBOXES = {
  batch_size: 10,
  stages: {
    validate: { mailbox_capacity: 100 },
    transform: { mailbox_capacity: 50 },
    aggregate: { mailbox_capacity: 50 },
    store: { mailbox_capacity: 50, min_workers: 1, max_workers: 1 },
  },
};

const FAST_TICKS = { interval_ms: 20, cooldown_ms: 200, high_watermark: 0.5, low_watermark: 0.1 };

Deno.test("TroupeSystem keeps every mailbox within its capacity while a slow store is the bottleneck", async () => {
  const faults = new FaultInjector({ stages: { store: { latency_ms: 5 } } });
  const s = await startTestSystem({ pipeline: SMALL_MAILBOXES, autoscale: FAST_TICKS }, { faults });
  const watch = watchMailboxes(s.system);
  try {
    // Four clients, each sending its next request once the last is answered.
    const results: IngestResult[] = [];
    const client = async (c: number) => {
      for (let i = 0; i < 15; i++) {
        const outcome = await s.system.submit(makeRecords(20, `c${c}-${i}`), { maxWaitMs: 30_000 });
        results.push(await ticketOf(outcome).promise);
      }
    };
    await Promise.all([0, 1, 2, 3].map(client));
    watch.stop();
    assert.equal(total(results, "accepted"), 4 * 15 * 20);
    const caps = capacities(s.system);
    for (const stage of STAGES) {
      assert.ok(
        watch.deepest[stage] <= caps[stage],
        `${stage} held ${watch.deepest[stage]} records, capacity ${caps[stage]}`,
      );
    }
    assert.ok(watch.deepest.store > 0, "the store mailbox was used");
    assert.equal((await s.reader.counts()).stored_records, 1200);
  } finally {
    watch.stop();
    await s.close();
  }
});

Deno.test("TroupeSystem submit answers 429 while the validate mailbox stays full and admits the waiting request once room appears", async () => {
  const gate = commitGate();
  const s = await startTestSystem({ pipeline: SMALL_MAILBOXES, autoscale: FAST_TICKS }, {
    wrapWriter: gate.wrap,
  });
  const validate = s.system.runtimes.validate.mailbox;
  const watch = watchMailboxes(s.system);
  try {
    // A client that keeps sending 10 records at a time, waiting as long as it takes.
    let sent = 0;
    const tickets: Promise<IngestResult>[] = [];
    const client = (async () => {
      for (let i = 0; i < 50; i++) {
        const outcome = await s.system.submit(makeRecords(10, `w${i}`), { maxWaitMs: 30_000 });
        tickets.push(ticketOf(outcome).promise);
        sent++;
      }
    })();
    // With storage stuck, everything fills up and the client ends up waiting:
    // wait until nothing has moved for a while.
    let last = "";
    let since = Date.now();
    await waitFor(
      () => {
        const state = `${sent} ${
          STAGES.map((st) => s.system.runtimes[st].mailbox.depth).join(" ")
        }`;
        if (state !== last) [last, since] = [state, Date.now()];
        return !validate.hasRoom(10) && Date.now() - since > 100;
      },
      10_000,
      "the pipeline to fill up and stop",
    );
    const stuckAt = sent;
    assert.ok(stuckAt < 50);

    const refused = await s.system.submit(makeRecords(10, "late"), { maxWaitMs: 20 });
    assert.equal(refused.ok, false);
    if (!refused.ok) {
      assert.equal(refused.status, 429);
      assert.ok(refused.retryAfterSeconds >= 1 && refused.retryAfterSeconds <= 30);
      assert.match(refused.message, /^The pipeline is full: \d+ of 100 records queued$/);
    }
    assert.equal(sent, stuckAt, "the waiting client was not let in meanwhile");

    gate.open();
    await client;
    const results = await Promise.all(tickets);
    watch.stop();
    assert.equal(total(results, "accepted"), 500);
    assert.equal((await s.reader.counts()).stored_records, 500);
    const caps = capacities(s.system);
    for (const stage of STAGES) assert.ok(watch.deepest[stage] <= caps[stage], stage);
    assert.equal(watch.deepest.validate, 100, "the validate mailbox was full");
  } finally {
    gate.open();
    watch.stop();
    await s.close();
  }
});

Deno.test("TroupeSystem submit admits an oversized request only into an empty mailbox", async () => {
  const gate = commitGate();
  const s = await startTestSystem({ pipeline: SMALL_MAILBOXES, autoscale: FAST_TICKS }, {
    wrapWriter: gate.wrap,
  });
  const validate = s.system.runtimes.validate.mailbox;
  // What each request found in the mailbox when its first batch went in.
  const depthOnEntry = new Map<Ticket, number>();
  const put = validate.put.bind(validate);
  validate.put = (b, reserved) => {
    if (!depthOnEntry.has(b.ticket)) depthOnEntry.set(b.ticket, validate.depth);
    put(b, reserved);
  };
  const watch = watchMailboxes(s.system);
  try {
    const first = ticketOf(await s.system.submit(makeRecords(400, "big1"), { maxWaitMs: 0 }));
    assert.ok(validate.depth > validate.capacity, "the whole request went in");
    const second = s.system.submit(makeRecords(400, "big2"), { maxWaitMs: 30_000 });
    const small = await s.system.submit(makeRecords(1, "small"), { maxWaitMs: 20 });
    assert.equal(small.ok, false);
    assert.equal(small.ok ? 0 : small.status, 429);
    assert.equal(depthOnEntry.size, 1, "only the first request is in");

    gate.open();
    const secondTicket = ticketOf(await second);
    const results = [await first.promise, await secondTicket.promise];
    watch.stop();
    assert.equal(total(results, "accepted"), 800);
    assert.equal(depthOnEntry.get(first), 0);
    assert.equal(depthOnEntry.get(secondTicket), 0, "the second waited for an empty mailbox");
    assert.ok(watch.deepest.validate <= 400);
    for (const stage of ["transform", "aggregate", "store"]) {
      assert.ok(watch.deepest[stage] <= capacities(s.system)[stage], stage);
    }
  } finally {
    gate.open();
    watch.stop();
    await s.close();
  }
});

Deno.test("TroupeSystem submit does not overfill the validate mailbox with concurrent requests", async () => {
  const gate = commitGate();
  const s = await startTestSystem({ pipeline: SMALL_MAILBOXES, autoscale: FAST_TICKS }, {
    wrapWriter: gate.wrap,
  });
  const validate = s.system.runtimes.validate.mailbox;
  try {
    let deepest = 0;
    const outcomes = await Promise.all(
      Array.from(
        { length: 60 },
        (_, i) =>
          s.system.submit(makeRecords(10, `burst${i}`), { maxWaitMs: 0 }).then((o) => {
            deepest = Math.max(deepest, validate.depth);
            return o;
          }),
      ),
    );
    assert.ok(deepest <= validate.capacity, `validate held ${deepest} of ${validate.capacity}`);
    const accepted = outcomes.filter((o) => o.ok);
    const refused = outcomes.filter((o) => !o.ok);
    assert.ok(accepted.length > 0 && refused.length > 0);
    for (const o of refused) assert.equal(o.ok ? 0 : o.status, 429);
    gate.open();
    const results = await Promise.all(accepted.map((o) => ticketOf(o).promise));
    assert.equal(total(results, "accepted"), accepted.length * 10);
  } finally {
    gate.open();
    await s.close();
  }
});

Deno.test("TroupeSystem keeps records moving when room frees downstream, without waiting for a scaling tick", async () => {
  // Scaling ticks once a minute: only room freed downstream can wake a stage.
  const s = await startTestSystem({
    autoscale: { interval_ms: 60_000, cooldown_ms: 60_000 },
    pipeline: {
      batch_size: 10,
      stages: {
        transform: { mailbox_capacity: 20 },
        aggregate: { mailbox_capacity: 20 },
        store: { mailbox_capacity: 20 },
      },
    },
  }, { faults: new FaultInjector({ stages: { store: { latency_ms: 2 } } }) });
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    const ticket = ticketOf(await s.system.submit(makeRecords(300, "flow"), { maxWaitMs: 0 }));
    const stalled = new Promise<"stalled">((
      resolve,
    ) => (timer = setTimeout(() => resolve("stalled"), 15_000)));
    const result = await Promise.race([ticket.promise, stalled]);
    assert.notEqual(result, "stalled", `stalled with ${s.system.load} records in the pipeline`);
    assert.equal((result as IngestResult).accepted, 300);
  } finally {
    clearTimeout(timer);
    await s.close();
  }
});

Deno.test("TroupeSystem isolates a poison record in the store stage and commits the rest once", async () => {
  const faults = new FaultInjector();
  const s = await startTestSystem({
    supervisor: { backoff_initial_ms: 1, backoff_max_ms: 5, max_restarts: 100, within_ms: 10_000 },
    pipeline: { batch_size: 10, max_attempts: 2 },
    autoscale: FAST_TICKS,
  }, { faults });
  try {
    faults.set({ poison_ids: ["s-13"], poison_stages: ["store"] });
    const result = await ticketOf(await s.system.submit(makeRecords(40, "s"), { maxWaitMs: 1000 }))
      .promise;
    assert.equal(result.accepted, 39);
    assert.equal(result.rejected, 1);
    assert.equal(result.duplicates, 0);
    assert.equal(result.errors.length, 1);
    const [err] = result.errors;
    assert.equal(err.index, 13);
    assert.equal(err.id, "s-13");
    assert.equal(err.stage, "store");
    assert.match(err.message, /^Poison record "s-13" in stage "store" \(after 2 attempts\)$/);

    const failed = await s.reader.listFailed(10, "store");
    assert.equal(failed.length, 1);
    assert.equal(failed[0].record_id, "s-13");
    assert.equal(failed[0].stage, "store");
    assert.equal((failed[0].raw as { id: string }).id, "s-13");
    const counts = await s.reader.counts();
    assert.equal(counts.stored_records, 39);
    assert.equal(counts.failed_records, 1);
    assert.equal(await s.reader.getRecord("s-13"), undefined);
    const users = await s.reader.listUsers(100);
    assert.equal(
      users.users.reduce((n, u) => n + u.total_events, 0),
      39,
      "no record counted twice",
    );
    assert.ok(s.system.runtimes.store.workerRestarts >= 2);
    assert.equal(s.system.runtimes.store.poolRestarts, 0);
    assert.equal(s.system.readiness().ready, true);
  } finally {
    await s.close();
  }
});

Deno.test("pipelineMachine restarts a stage pool that exceeds its restart intensity, and the records commit once", async () => {
  const faults = new FaultInjector();
  const s = await startTestSystem({
    supervisor: { backoff_initial_ms: 2, backoff_max_ms: 10, max_restarts: 2, within_ms: 60_000 },
    pipeline: { batch_size: 10, max_attempts: 10 },
    autoscale: FAST_TICKS,
  }, { faults });
  try {
    // Three crashes in a row: one more than the pool tolerates.
    faults.set({ stages: { transform: { throw_count: 3 } } });
    const result = await ticketOf(
      await s.system.submit(makeRecords(25, "esc"), { maxWaitMs: 1000 }),
    )
      .promise;
    assert.deepEqual(result, { accepted: 25, duplicates: 0, rejected: 0, errors: [] });
    const rt = s.system.runtimes.transform;
    assert.equal(rt.workerRestarts, 3);
    assert.equal(rt.poolRestarts, 1);
    assert.equal((await s.reader.counts()).stored_records, 25);
    const users = await s.reader.listUsers(100);
    assert.equal(
      users.users.reduce((n, u) => n + u.total_events, 0),
      25,
      "no record counted twice",
    );
    const text = await metricText(s.metrics);
    assert.equal(sample(text, 'troupe_actor_restarts_total{actor="worker.transform"}'), 3);
    assert.equal(sample(text, 'troupe_actor_restarts_total{actor="pool.transform"}'), 1);
    assert.equal(sample(text, 'troupe_actor_restarts_total{actor="pipeline"}'), 0);
    await waitFor(() => s.system.readiness().ready, 5000, "the system to be ready again");
    assert.equal(rt.workers, 1);
    assert.equal(
      s.system.tree().children[0].children.length,
      STAGES.length,
      "all four pools are up",
    );
  } finally {
    await s.close();
  }
});

Deno.test("rootSupervisorMachine gives up once every level exceeded its intensity, failing the request", async () => {
  const faults = new FaultInjector();
  const s = await startTestSystem({
    supervisor: { backoff_initial_ms: 1, backoff_max_ms: 2, max_restarts: 2, within_ms: 60_000 },
    pipeline: { batch_size: 10, max_attempts: 100 },
    autoscale: FAST_TICKS,
  }, { faults });
  try {
    faults.set({ stages: { validate: { throw_rate: 1 } } });
    const ticket = ticketOf(await s.system.submit(makeRecords(5, "doomed"), { maxWaitMs: 1000 }));
    await assert.rejects(ticket.promise, {
      name: "PipelineUnavailableError",
      message: /^Not committed: the root supervisor gave up/,
    });
    // 3 worker crashes per pool, 3 pool crashes per pipeline, 3 pipelines.
    const rt = s.system.runtimes.validate;
    assert.equal(rt.workerRestarts, 27);
    assert.equal(rt.poolRestarts, 9);
    const text = await metricText(s.metrics);
    assert.equal(sample(text, 'troupe_actor_restarts_total{actor="worker.validate"}'), 27);
    assert.equal(sample(text, 'troupe_actor_restarts_total{actor="pool.validate"}'), 9);
    assert.equal(sample(text, 'troupe_actor_restarts_total{actor="pipeline"}'), 3);
    assert.ok(s.system.root.getSnapshot().matches("failed"));
    const readiness = s.system.readiness();
    assert.equal(readiness.ready, false);
    assert.match(readiness.checks.find((c) => c.name === "supervisors")!.message!, /gave up/);
    const late = await s.system.submit(makeRecords(1, "late"), { maxWaitMs: 0 });
    assert.equal(late.ok ? 200 : late.status, 503);
    for (const stage of STAGES) assert.equal(s.system.runtimes[stage].idle, true, stage);
  } finally {
    await s.close();
  }
});
