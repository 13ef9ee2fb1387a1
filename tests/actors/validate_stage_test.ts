/**
 * @module
 * Tests of the validate stage: the messages a client reads for each kind of
 * invalid record, the batch function (valid records on, invalid ones
 * refused with their request index, nothing changed when a fault is
 * thrown), and the worker machine under a parent that plays its pool.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { assign, createActor, setup } from "xstate";
import * as v from "valibot";
import { AnomalyTracker } from "../../actors/transform_stage.ts";
import type { StageDeps } from "../../actors/_stage_deps.ts";
import type { BatchDoneEvent } from "../../actors/_stage_worker.ts";
import {
  describeIssues,
  validateBatches,
  validateStageMachine,
} from "../../actors/validate_stage.ts";
import { Batch, Ticket, toBatches } from "../../lib/batch.ts";
import { defaultConfig } from "../../lib/config.ts";
import { FaultInjector } from "../../lib/faults.ts";
import { getLog } from "../../lib/log.ts";
import { createMetrics } from "../../lib/metrics.ts";
import { dataRecordSchema, type RecordLimits } from "../../lib/schemas.ts";

const GOOD = {
  id: 1,
  timestamp: "2025-01-15T10:00:00Z",
  user_id: "user_001",
  event: "login",
  value: 1.0,
  metadata: { ip: "192.168.1.1" },
};

const SMALL: RecordLimits = { maxStringLength: 16, maxDepth: 4 };

function deps(faults = new FaultInjector(), limits: RecordLimits = SMALL): StageDeps {
  return {
    config: defaultConfig(),
    schema: dataRecordSchema(limits),
    anomaly: new AnomalyTracker(),
    faults,
    metrics: createMetrics({ defaultMetrics: false }),
    log: getLog("test"),
    openWriter: () => Promise.reject(new Error("no storage in this test")),
  };
}

/** The message a client gets for `raw`, or `null` when it is valid. */
function messageFor(raw: unknown, limits: RecordLimits = SMALL): string | null {
  const r = v.safeParse(dataRecordSchema(limits), raw);
  return r.success ? null : describeIssues(r.issues);
}

function nested(depth: number): Record<string, unknown> {
  let node: Record<string, unknown> = { leaf: 1 };
  for (let i = 1; i < depth; i++) node = { child: node };
  return node;
}

Deno.test("describeIssues names the field and what is wrong with it", async (t) => {
  await t.step("a valid record has no message", () => {
    assert.equal(messageFor(GOOD), null);
  });

  await t.step("a missing field is required", () => {
    const { timestamp: _, ...noTimestamp } = GOOD;
    assert.equal(messageFor(noTimestamp), "timestamp: is required");
    const { user_id: __, ...noUser } = GOOD;
    assert.equal(messageFor(noUser), "user_id: is required");
    const { value: ___, ...noValue } = GOOD;
    assert.equal(messageFor(noValue), "value: is required");
  });

  await t.step("a field of the wrong type", () => {
    assert.equal(messageFor({ ...GOOD, value: "1" }), 'value: must be a number (got "1")');
    assert.equal(messageFor({ ...GOOD, value: null }), "value: must be a number");
    assert.equal(
      messageFor({ ...GOOD, timestamp: 1736935200 }),
      "timestamp: must be an ISO 8601 string (got 1736935200)",
    );
    assert.equal(messageFor({ ...GOOD, user_id: 7 }), "user_id: must be a string (got 7)");
    assert.equal(messageFor({ ...GOOD, event: ["login"] }), "event: must be a string");
    assert.equal(messageFor({ ...GOOD, metadata: "x" }), 'metadata: must be an object (got "x")');
    assert.equal(
      messageFor({ ...GOOD, id: true }),
      "id: must be a non-negative integer or a non-empty string (got true)",
    );
  });

  await t.step("values JSON cannot carry never get this far, but are refused", () => {
    assert.equal(messageFor({ ...GOOD, value: Number.NaN }), "value: must be a number (got NaN)");
    assert.equal(messageFor({ ...GOOD, value: Infinity }), "value: must be finite (got Infinity)");
  });

  await t.step("a negative or fractional id", () => {
    assert.match(messageFor({ ...GOOD, id: -1 })!, /^id: .*-1/);
    assert.match(messageFor({ ...GOOD, id: 1.5 })!, /^id: .*1\.5/);
    assert.match(messageFor({ ...GOOD, id: 2 ** 53 })!, /^id: /);
    assert.equal(messageFor({ ...GOOD, id: "" }), 'id: must not be empty (got "")');
    assert.equal(messageFor({ ...GOOD, id: 0 }), null);
    assert.equal(messageFor({ ...GOOD, id: "abc" }), null);
  });

  await t.step("a timestamp that is not ISO 8601", () => {
    assert.equal(
      messageFor({ ...GOOD, timestamp: "yesterday" }),
      'timestamp: must be ISO 8601 with a zone, for example 2025-01-15T10:00:00Z (got "yesterday")',
    );
  });

  await t.step("strings that are blank or too long", () => {
    assert.equal(messageFor({ ...GOOD, user_id: "   " }), 'user_id: must not be empty (got "")');
    assert.equal(
      messageFor({ ...GOOD, event: "x".repeat(17) }),
      `event: is longer than 16 characters (got "${"x".repeat(17)}")`,
    );
    assert.match(
      messageFor({ ...GOOD, metadata: { note: "x".repeat(17) } })!,
      /^metadata: .*17 characters/,
    );
  });

  await t.step("metadata nested too deep", () => {
    const msg = messageFor({ ...GOOD, metadata: nested(SMALL.maxDepth + 2) });
    assert.equal(
      messageFor({ ...GOOD, metadata: nested(SMALL.maxDepth + 1) }),
      null,
      "exactly the limit is fine",
    );
    assert.match(msg!, /^metadata: .*nesting exceeds the limit/);
    assert.equal(messageFor({ ...GOOD, metadata: nested(1) }), null, "one level is fine");
    // Hostile depth is refused without overflowing the stack.
    assert.match(messageFor({ ...GOOD, metadata: nested(100_000) })!, /nesting exceeds/);
  });

  await t.step("a record that is not an object has no field to name", () => {
    for (const raw of [5, "record", null, [GOOD]]) {
      const msg = messageFor(raw);
      assert.ok(
        msg !== null && msg.length > 0 && !msg.startsWith(":"),
        `${JSON.stringify(raw)}: ${msg}`,
      );
    }
  });
});

Deno.test("validateBatches passes valid records on and refuses the rest with their index", async () => {
  const d = deps();
  const ticket = new Ticket();
  const records = [
    GOOD,
    { ...GOOD, id: 2, value: "1" },
    { ...GOOD, id: 3, user_id: "  padded  " },
    { ...GOOD, id: 4, timestamp: undefined },
    { ...GOOD, id: 5, extra: "dropped" },
  ];
  const [a, b] = toBatches(ticket, records, 3);
  await validateBatches([a, b], d);
  assert.deepEqual(a.valid.map((r) => r.id), [1, 3]);
  assert.deepEqual(a.validIndex, [0, 2]);
  assert.equal(a.valid[1].user_id, "padded", "the schema trims");
  assert.deepEqual(a.raw, [], "raw records are released once validated");
  assert.deepEqual(a.rawIndex, []);
  assert.deepEqual(a.errors, [{
    index: 1,
    id: 2,
    stage: "validate",
    message: 'value: must be a number (got "1")',
  }]);
  assert.deepEqual(a.failed[0].raw, records[1], "the failed store keeps the record as received");
  assert.deepEqual(b.valid.map((r) => r.id), [5]);
  assert.equal("extra" in b.valid[0], false, "unknown keys are dropped");
  assert.deepEqual(b.errors, [{
    index: 3,
    id: 4,
    stage: "validate",
    message: "timestamp: is required",
  }]);
  // Changing stage is the pool's job, and the sizes it counts follow it.
  b.stage = "transform";
  assert.equal(b.size, 1);
});

/** Field values to mix into records: valid ones, broken ones, and edge cases of the limits. */
const FIELD_VALUES: Record<string, unknown[]> = {
  id: [1, 0, -0, "abc", " ", "", -1, 1.5, 2 ** 53, "x".repeat(257), null, true],
  timestamp: [
    "2025-01-15T10:00:00Z",
    "2024-02-29T23:59:59.999+05:30",
    "2025-01-15 10:00:00Z",
    "2025-02-30T00:00:00Z",
    "2025-01-15T10:00:00+05",
    "yesterday",
    1736935200,
  ],
  user_id: ["user_001", "  padded  ", "x".repeat(16), "x".repeat(17), "   ", 7, ["u"]],
  event: ["login", "\tclick\n", "", null],
  value: [1, -0, 1e308, 0.5, Number.NaN, Infinity, "1", null],
  metadata: [
    { ip: "192.168.1.1" },
    null,
    undefined,
    {},
    nested(SMALL.maxDepth + 1),
    nested(SMALL.maxDepth + 2),
    { note: "x".repeat(17) },
    [1, 2],
    "x",
  ],
};

/** Records built from {@linkcode FIELD_VALUES}, each field kept, replaced or removed. */
const mixedRecord = fc.record(
  Object.fromEntries(
    Object.entries(FIELD_VALUES).map((
      [field, values],
    ) => [field, fc.option(fc.constantFrom(...values), { freq: 3 })]),
  ),
).chain((changes) =>
  fc.constantFrom("keep", "remove").map((missing) => {
    const record: Record<string, unknown> = { ...GOOD, extra: "dropped" };
    for (const [field, value] of Object.entries(changes)) {
      if (value !== null) record[field] = value;
      else if (missing === "remove") delete record[field];
    }
    return record;
  })
);

Deno.test("validateBatches gives the schema's outcome for every record, fast path or not", async () => {
  const d = deps();
  await fc.assert(
    fc.asyncProperty(
      fc.array(fc.oneof(mixedRecord, fc.jsonValue({ maxDepth: 2 })), { maxLength: 20 }),
      fc.integer({ min: 1, max: 8 }),
      async (records, size) => {
        const batches = toBatches(new Ticket(), records, size);
        await validateBatches(batches, d);
        const valid = batches.flatMap((b) => b.valid);
        const validIndex = batches.flatMap((b) => b.validIndex);
        const errors = batches.flatMap((b) => b.errors.map((e) => [e.index, e.message]));
        const expected = records.map((raw) => v.safeParse(d.schema, raw));
        assert.deepStrictEqual(
          valid,
          expected.flatMap((r) => r.success ? [r.output] : []),
        );
        assert.equal(
          JSON.stringify(valid),
          JSON.stringify(expected.flatMap((r) => r.success ? [r.output] : [])),
        );
        assert.deepEqual(validIndex, expected.flatMap((r, i) => r.success ? [i] : []));
        assert.deepEqual(
          errors,
          expected.flatMap((r, i) => r.success ? [] : [[i, describeIssues(r.issues)]]),
        );
      },
    ),
    { numRuns: 300 },
  );
});

Deno.test("validateBatches applies the limits its schema was built with", async () => {
  const d = deps(); // schema with SMALL limits, configuration with the defaults
  const records = [
    { ...GOOD, event: "x".repeat(16) },
    { ...GOOD, id: 2, event: "x".repeat(17) },
    { ...GOOD, id: 3, metadata: nested(SMALL.maxDepth + 2) },
  ];
  const [batch] = toBatches(new Ticket(), records, 3);
  await validateBatches([batch], d);
  assert.deepEqual(batch.validIndex, [0]);
  assert.deepEqual(batch.errors.map((e) => e.message), [
    `event: is longer than 16 characters (got "${"x".repeat(17)}")`,
    messageFor(records[2]),
  ]);
});

Deno.test("validateBatches leaves every batch untouched when a fault is thrown", async () => {
  const d = deps(new FaultInjector({ poison_ids: [13], poison_stages: ["validate"] }));
  const ticket = new Ticket();
  const [first, second] = toBatches(ticket, [GOOD, { ...GOOD, id: 2 }, { ...GOOD, id: 13 }], 2);
  await assert.rejects(validateBatches([first, second], d), {
    name: "InjectedFault",
    message: 'Poison record 13 in stage "validate"',
  });
  assert.equal(first.raw.length, 2, "the first batch is not half validated");
  assert.deepEqual(first.valid, []);
  assert.deepEqual(second.rawIndex, [2]);
});

interface HarnessContext {
  deps: StageDeps;
  done: BatchDoneEvent[];
  errors: unknown[];
}

/** A parent playing the pool: invokes one worker and records what it reports. */
const harness = setup({
  types: { context: {} as HarnessContext, input: {} as { deps: StageDeps } },
  actors: { worker: validateStageMachine },
}).createMachine({
  context: ({ input }) => ({ deps: input.deps, done: [], errors: [] }),
  invoke: {
    id: "worker",
    src: "worker",
    input: ({ context }) => ({ workerId: "validate.1", deps: context.deps }),
    onError: {
      actions: assign({ errors: ({ context, event }) => [...context.errors, event.error] }),
    },
  },
  on: {
    "batch.done": {
      actions: assign({ done: ({ context, event }) => [...context.done, event as BatchDoneEvent] }),
    },
  },
});

async function until(check: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 5000;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`Timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 1));
  }
}

Deno.test("validateStageMachine reports batch.done with its worker id and goes idle", async () => {
  const actor = createActor(harness, { input: { deps: deps() } }).start();
  try {
    const worker = actor.getSnapshot().children.worker!;
    assert.equal(worker.getSnapshot().value, "idle");
    const batch = new Batch(new Ticket(), [GOOD, { id: 2 }], [0, 1]);
    worker.send({ type: "batch.process", batches: [batch] });
    assert.equal(worker.getSnapshot().value, "working");
    await until(() => actor.getSnapshot().context.done.length === 1, "batch.done");
    const [done] = actor.getSnapshot().context.done;
    assert.equal(done.workerId, "validate.1");
    assert.deepEqual(done.batches, [batch]);
    assert.equal(batch.valid.length, 1);
    assert.equal(batch.errors[0].index, 1);
    assert.equal(worker.getSnapshot().value, "idle");
    assert.deepEqual(worker.getSnapshot().context.batches, [], "the worker lets go of the batch");
  } finally {
    actor.stop();
  }
});

Deno.test("validateStageMachine crashes to its parent when the stage throws", async () => {
  const faults = new FaultInjector({ stages: { validate: { throw_count: 1 } } });
  const actor = createActor(harness, { input: { deps: deps(faults) } }).start();
  try {
    const worker = actor.getSnapshot().children.worker!;
    worker.send({ type: "batch.process", batches: [new Batch(new Ticket(), [GOOD], [0])] });
    await until(() => actor.getSnapshot().context.errors.length === 1, "the worker's error");
    const [error] = actor.getSnapshot().context.errors;
    assert.equal((error as Error).name, "InjectedFault");
    assert.equal(actor.getSnapshot().context.done.length, 0);
    assert.equal(worker.getSnapshot().status, "error");
  } finally {
    actor.stop();
  }
});
