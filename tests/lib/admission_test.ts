import assert from "node:assert/strict";
import FakeTimers from "@sinonjs/fake-timers";
import { Admission } from "../../lib/admission.ts";

/** Lets the promise callbacks that are ready run. */
const flush = () => new Promise<void>((resolve) => queueMicrotask(resolve));

Deno.test("Admission lets requests in while the load plus the estimate of the unsubmitted stays below the limit", async () => {
  let load = 0;
  const gate = new Admission(() => load, 3000, 1000);
  const [a, b, c] = await Promise.all([gate.enter(1000), gate.enter(1000), gate.enter(1000)]);
  assert.equal(gate.inside, 3, "0, 1000 and 2000 estimated are below 3000");
  const fourth = gate.enter(1000);
  assert.equal(gate.waiting, 1, "3000 estimated is not below the limit");
  // Their records reach the pipeline: the load counts them instead of the estimates.
  load = 2500;
  a!.submitted();
  b!.submitted();
  assert.equal(gate.waiting, 1, "2500 in the pipeline plus 1000 estimated is not below 3000");
  c!.submitted();
  assert.equal(gate.waiting, 0, "2500 plus nothing estimated is");
  const d = await fourth;
  assert.notEqual(d, null);
  for (const pass of [a, b, c, d]) pass!.leave();
  assert.equal(gate.inside, 0);
});

Deno.test("Admission keeps waiters in arrival order and lets them in as the load falls", async () => {
  let load = 5000;
  const gate = new Admission(() => load, 4000, 1000);
  const order: number[] = [];
  const waits = [1, 2, 3].map((n) =>
    gate.enter(10_000).then((pass) => {
      order.push(n);
      return pass;
    })
  );
  assert.equal(gate.waiting, 3);
  load = 3500; // room for one request (3500 < 4000), not for its estimate and one more
  gate.pump();
  await flush();
  assert.deepEqual(order, [1]);
  load = 0;
  gate.pump();
  await flush();
  assert.deepEqual(order, [1, 2, 3], "first come, first served");
  for (const pass of await Promise.all(waits)) pass!.leave();
});

Deno.test("Admission answers null after the timeout and forgets the waiter", async () => {
  const clock = FakeTimers.withGlobal(globalThis).install({
    toFake: ["setTimeout", "clearTimeout", "setInterval", "clearInterval"],
  });
  try {
    const gate = new Admission(() => 10_000, 4000, 1000);
    const waiting = gate.enter(1000);
    assert.equal(gate.waiting, 1);
    clock.tick(999);
    assert.equal(gate.waiting, 1);
    clock.tick(1);
    assert.equal(await waiting, null);
    assert.equal(gate.waiting, 0);
    assert.equal(gate.inside, 0);
  } finally {
    clock.uninstall();
  }
});

Deno.test("Admission looks at the load again on its own while requests wait", async () => {
  const clock = FakeTimers.withGlobal(globalThis).install({
    toFake: ["setTimeout", "clearTimeout", "setInterval", "clearInterval"],
  });
  try {
    let load = 10_000;
    const gate = new Admission(() => load, 4000, 1000);
    const waiting = gate.enter(5000);
    load = 0; // fell without anyone calling pump (records committed by another source)
    clock.tick(20);
    const pass = await waiting;
    assert.notEqual(pass, null);
    pass!.leave();
    assert.equal(clock.countTimers(), 0, "no poll or timeout timer left once nobody waits");
  } finally {
    clock.uninstall();
  }
});

Deno.test("Admission always lets a request into an empty pipeline, however large", async () => {
  const gate = new Admission(() => 0, 1, 50_000);
  const first = await gate.enter(0);
  assert.notEqual(first, null, "the limit is below one estimate, but nothing is in flight");
  const second = gate.enter(0);
  assert.equal(gate.waiting, 1, "the first one's estimate now counts");
  first!.leave();
  assert.notEqual(await second, null);
});

Deno.test("Admission passes: leave implies submitted, and both count once", async () => {
  let load = 0;
  const gate = new Admission(() => load, 2000, 1000);
  const a = (await gate.enter(0))!;
  const b = (await gate.enter(0))!;
  const c = gate.enter(0);
  assert.equal(gate.waiting, 1);
  a.leave();
  a.leave();
  a.submitted();
  assert.notEqual(await c, null, "a's estimate went away once");
  assert.equal(gate.inside, 2);
  load = 1500;
  b.submitted();
  b.submitted();
  const d = gate.enter(0);
  assert.equal(gate.waiting, 1, "1500 + c's 1000 estimated is not below 2000: b counted once");
  b.leave();
  load = 0;
  (await c)!.leave();
  assert.notEqual(await d, null);
});

Deno.test("Admission refuses a limit below 1", () => {
  assert.throws(() => new Admission(() => 0, 0, 1000), RangeError);
});
