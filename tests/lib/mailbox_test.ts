/**
 * @module
 * Tests of the bounded mailbox: FIFO order, capacity counted in records,
 * reservations, requeue at the head, the oversized-batch rule, waiters
 * (first come, first served, timeouts, cancellation), and a property test
 * of random operation sequences against a plain reference model.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import FakeTimers from "@sinonjs/fake-timers";
import { Mailbox } from "../../lib/mailbox.ts";

interface Item {
  readonly id: number;
  readonly size: number;
}

let nextId = 1;
function item(size: number): Item {
  return { id: nextId++, size };
}

function takeAll(m: Mailbox<Item>): Item[] {
  const out: Item[] = [];
  for (let x = m.take(); x !== undefined; x = m.take()) out.push(x);
  return out;
}

/** Resolves to whether `p` settled within the current macrotask. */
async function settledNow<T>(p: Promise<T>): Promise<{ settled: boolean; value?: T }> {
  let out: { settled: boolean; value?: T } = { settled: false };
  p.then((value) => (out = { settled: true, value }));
  // Enough turns of the microtask queue for chained resolutions.
  for (let i = 0; i < 10; i++) await Promise.resolve();
  return out;
}

Deno.test("Mailbox rejects a capacity below 1", () => {
  assert.throws(() => new Mailbox(0), {
    name: "RangeError",
    message: "Mailbox capacity must be at least 1, got 0",
  });
  assert.throws(() => new Mailbox(Number.NaN), RangeError);
  assert.equal(new Mailbox(1).capacity, 1);
});

Deno.test("Mailbox hands items out first in, first out", () => {
  const m = new Mailbox<Item>(100);
  const items = [item(1), item(2), item(3), item(4)];
  for (const x of items) assert.equal(m.offer(x), true);
  assert.equal(m.length, 4);
  assert.equal(m.peek(), items[0]);
  assert.deepEqual(takeAll(m), items);
  assert.equal(m.take(), undefined);
  assert.equal(m.peek(), undefined);
  assert.equal(m.length, 0);
  assert.equal(m.queued, 0);
});

Deno.test("Mailbox counts its capacity in records, not items", () => {
  const m = new Mailbox<Item>(10);
  assert.equal(m.offer(item(6)), true);
  assert.equal(m.hasRoom(5), false);
  assert.equal(m.offer(item(5)), false, "6 + 5 records do not fit in 10");
  assert.equal(m.offer(item(4)), true, "6 + 4 records fit exactly");
  assert.equal(m.queued, 10);
  assert.equal(m.depth, 10);
  assert.equal(m.length, 2);
  assert.equal(m.fill, 1);
  assert.equal(m.offer(item(1)), false);
  m.take();
  assert.equal(m.queued, 4);
  assert.equal(m.fill, 0.4);
});

Deno.test("Mailbox reservations count in the depth until put or released", async (t) => {
  await t.step("tryReserve takes room that offer then cannot use", () => {
    const m = new Mailbox<Item>(10);
    assert.equal(m.tryReserve(7), true);
    assert.equal(m.depth, 7);
    assert.equal(m.queued, 0);
    assert.equal(m.offer(item(4)), false);
    assert.equal(m.tryReserve(4), false);
    assert.equal(m.depth, 7, "a refused reservation takes nothing");
  });

  await t.step("put turns reserved records into queued ones", () => {
    const m = new Mailbox<Item>(10);
    m.tryReserve(7);
    m.put(item(7), 7);
    assert.equal(m.depth, 7);
    assert.equal(m.queued, 7);
    assert.equal(m.offer(item(3)), true, "no reservation is left behind");
  });

  await t.step("put of fewer records than reserved keeps the rest reserved", () => {
    const m = new Mailbox<Item>(10);
    m.tryReserve(8);
    m.put(item(3), 3);
    assert.equal(m.queued, 3);
    assert.equal(m.depth, 8);
    m.release(5);
    assert.equal(m.depth, 3);
  });

  await t.step("release and put never drive the reservation below zero", () => {
    const m = new Mailbox<Item>(10);
    m.tryReserve(2);
    m.release(5);
    assert.equal(m.depth, 0);
    m.put(item(3), 9);
    assert.equal(m.depth, 3);
    assert.equal(m.queued, 3);
  });

  await t.step("put ignores the capacity (the room was reserved or is given back)", () => {
    const m = new Mailbox<Item>(4);
    m.offer(item(4));
    m.put(item(3));
    assert.equal(m.depth, 7);
    assert.equal(m.fill, 7 / 4);
  });
});

Deno.test("Mailbox requeue puts an item back at the head", async (t) => {
  await t.step("before anything was taken", () => {
    const m = new Mailbox<Item>(100);
    const [a, b, c] = [item(1), item(2), item(3)];
    m.offer(a);
    m.offer(b);
    m.requeue(c);
    assert.equal(m.queued, 6);
    assert.deepEqual(takeAll(m), [c, a, b]);
  });

  await t.step("after items were taken, in reverse order of requeueing", () => {
    const m = new Mailbox<Item>(100);
    const [a, b, c, d] = [item(1), item(1), item(1), item(1)];
    for (const x of [a, b, c, d]) m.offer(x);
    const x1 = m.take()!;
    const x2 = m.take()!;
    m.requeue(x2);
    m.requeue(x1);
    assert.deepEqual(takeAll(m), [a, b, c, d]);
  });

  await t.step("ignores the capacity", () => {
    const m = new Mailbox<Item>(2);
    m.offer(item(2));
    m.requeue(item(5));
    assert.equal(m.queued, 7);
    assert.equal(m.length, 2);
  });

  await t.step("after the internal array was compacted", () => {
    const m = new Mailbox<Item>(10_000);
    const items = Array.from({ length: 3000 }, () => item(1));
    for (const x of items) m.offer(x);
    const taken: Item[] = [];
    for (let i = 0; i < 2000; i++) taken.push(m.take()!);
    assert.equal(m.length, 1000);
    assert.equal(m.queued, 1000);
    for (let i = taken.length - 1; i >= 1990; i--) m.requeue(taken[i]);
    assert.equal(m.length, 1010);
    assert.deepEqual(takeAll(m), items.slice(1990));
  });
});

Deno.test("Mailbox admits an oversized batch only when it is empty", () => {
  const m = new Mailbox<Item>(5);
  const big = item(12);
  assert.equal(m.hasRoom(12), true);
  assert.equal(m.offer(big), true);
  assert.equal(m.depth, 12);
  assert.ok(m.fill > 1);
  assert.equal(m.offer(item(1)), false, "nothing fits behind an oversized batch");
  assert.equal(m.offer(item(12)), false, "nor another oversized one");
  m.take();
  assert.equal(m.offer(item(3)), true);
  assert.equal(m.offer(item(12)), false, "an oversized batch waits until the mailbox is empty");
  assert.equal(m.tryReserve(9), false);
  m.take();
  assert.equal(m.tryReserve(9), true, "a reservation may be oversized too when empty");
  assert.equal(m.tryReserve(1), false);
});

Deno.test("Mailbox drain empties the queue and keeps reservations", () => {
  const m = new Mailbox<Item>(10);
  const items = [item(2), item(3)];
  for (const x of items) m.offer(x);
  m.tryReserve(4);
  assert.deepEqual(m.drain(), items);
  assert.equal(m.length, 0);
  assert.equal(m.queued, 0);
  assert.equal(m.depth, 4);
  assert.deepEqual(m.drain(), []);
});

Deno.test("Mailbox waitForRoom resolves at once when there is room and nobody waits", async () => {
  const m = new Mailbox<Item>(10);
  m.offer(item(5));
  assert.deepEqual(await settledNow(m.waitForRoom(5, 1000)), { settled: true, value: true });
  // The empty-mailbox rule applies to waiters too.
  const empty = new Mailbox<Item>(3);
  assert.deepEqual(await settledNow(empty.waitForRoom(50, 0)), { settled: true, value: true });
});

Deno.test("Mailbox waitForRoom with no time to wait answers false at once", async () => {
  const m = new Mailbox<Item>(10);
  m.offer(item(10));
  assert.deepEqual(await settledNow(m.waitForRoom(1, 0)), { settled: true, value: false });
  assert.deepEqual(await settledNow(m.waitForRoom(1, -5)), { settled: true, value: false });
});

Deno.test("Mailbox waitForRoom resolves true when room appears", async (t) => {
  await t.step("by take", async () => {
    const m = new Mailbox<Item>(10);
    m.offer(item(6));
    m.offer(item(4));
    const wait = m.waitForRoom(5, 60_000);
    assert.equal((await settledNow(wait)).settled, false);
    m.take();
    // A resolved waiter's timer is cleared, or the test's sanitizer would fail.
    assert.deepEqual(await settledNow(wait), { settled: true, value: true });
  });

  await t.step("by release", async () => {
    const m = new Mailbox<Item>(10);
    m.tryReserve(10);
    const wait = m.waitForRoom(3, 60_000);
    m.release(2);
    assert.equal((await settledNow(wait)).settled, false, "2 free records are not enough");
    m.release(1);
    assert.deepEqual(await settledNow(wait), { settled: true, value: true });
  });

  await t.step("by drain", async () => {
    const m = new Mailbox<Item>(10);
    m.offer(item(10));
    const wait = m.waitForRoom(10, 60_000);
    m.drain();
    assert.deepEqual(await settledNow(wait), { settled: true, value: true });
  });

  await t.step("an oversized waiter once the mailbox is empty", async () => {
    const m = new Mailbox<Item>(10);
    m.offer(item(1));
    const wait = m.waitForRoom(25, 60_000);
    assert.equal((await settledNow(wait)).settled, false);
    m.take();
    assert.deepEqual(await settledNow(wait), { settled: true, value: true });
  });
});

Deno.test("Mailbox waitForRoom serves waiters first come, first served", async (t) => {
  await t.step("a small waiter does not overtake a big one", async () => {
    const m = new Mailbox<Item>(10);
    m.offer(item(5));
    m.offer(item(5));
    const big = m.waitForRoom(8, 60_000);
    const small = m.waitForRoom(1, 60_000);
    m.take(); // 5 free: enough for small, not for big
    assert.equal((await settledNow(big)).settled, false);
    assert.equal((await settledNow(small)).settled, false, "small waits behind big");
    m.take();
    assert.deepEqual(await settledNow(big), { settled: true, value: true });
    assert.deepEqual(await settledNow(small), { settled: true, value: true });
  });

  await t.step("a newcomer queues behind waiters even when there is room", async () => {
    const m = new Mailbox<Item>(10);
    m.offer(item(6));
    m.offer(item(4));
    const first = m.waitForRoom(9, 60_000);
    m.take(); // 6 free: not enough for first
    const late = m.waitForRoom(1, 60_000);
    assert.equal((await settledNow(late)).settled, false, "late waits behind first");
    m.take();
    assert.deepEqual(await settledNow(first), { settled: true, value: true });
    assert.deepEqual(await settledNow(late), { settled: true, value: true });
  });

  await t.step("one wake-up promises each free record once", async () => {
    const m = new Mailbox<Item>(10);
    m.offer(item(10));
    const waits = [m.waitForRoom(3, 60_000), m.waitForRoom(3, 60_000), m.waitForRoom(3, 60_000)];
    m.take(); // 10 free: room for all three
    const all = await Promise.all(waits.map(settledNow));
    assert.deepEqual(all.map((s) => s.value), [true, true, true]);

    const n = new Mailbox<Item>(10);
    n.offer(item(3));
    n.offer(item(7));
    const w = [n.waitForRoom(3, 60_000), n.waitForRoom(3, 60_000), n.waitForRoom(3, 60_000)];
    n.take(); // 3 free records: room for exactly one waiter
    const states = await Promise.all(w.map(settledNow));
    assert.deepEqual(states.map((s) => s.settled), [true, false, false]);
    n.cancelWaiters();
  });
});

Deno.test("Mailbox waitForRoom times out with false", async (t) => {
  const clock = FakeTimers.withGlobal(globalThis).install({
    toFake: ["setTimeout", "clearTimeout"],
  });
  try {
    await t.step("not before timeoutMs", async () => {
      const m = new Mailbox<Item>(10);
      m.offer(item(10));
      const wait = m.waitForRoom(1, 100);
      clock.tick(99);
      assert.equal((await settledNow(wait)).settled, false);
      clock.tick(1);
      assert.deepEqual(await settledNow(wait), { settled: true, value: false });
      assert.equal(clock.countTimers(), 0);
    });

    await t.step("and a timed-out head waiter lets the next one in", async () => {
      const m = new Mailbox<Item>(10);
      m.offer(item(6));
      m.offer(item(4));
      const big = m.waitForRoom(9, 50);
      const small = m.waitForRoom(4, 1000);
      m.take(); // 6 free: small fits, but waits behind big
      assert.equal((await settledNow(small)).settled, false);
      clock.tick(50);
      assert.deepEqual(await settledNow(big), { settled: true, value: false });
      assert.deepEqual(await settledNow(small), { settled: true, value: true });
      assert.equal(clock.countTimers(), 0, "the resolved waiter's timer was cleared");
    });
  } finally {
    clock.uninstall();
  }
});

Deno.test("Mailbox cancelWaiters answers every waiter false and clears their timers", async () => {
  const clock = FakeTimers.withGlobal(globalThis).install({
    toFake: ["setTimeout", "clearTimeout"],
  });
  try {
    const m = new Mailbox<Item>(10);
    m.offer(item(10));
    const waits = [m.waitForRoom(1, 1000), m.waitForRoom(2, 2000)];
    assert.equal(clock.countTimers(), 2);
    m.cancelWaiters();
    assert.equal(clock.countTimers(), 0);
    const states = await Promise.all(waits.map(settledNow));
    assert.deepEqual(states, [{ settled: true, value: false }, { settled: true, value: false }]);
    // Room appearing later wakes nobody and breaks nothing.
    m.take();
    assert.deepEqual(await settledNow(m.waitForRoom(1, 1000)), { settled: true, value: true });
  } finally {
    clock.uninstall();
  }
});

type Op =
  | { op: "offer"; size: number }
  | { op: "tryReserve"; n: number }
  | { op: "release"; n: number }
  | { op: "put"; size: number; reserved: number }
  | { op: "requeueTaken" }
  | { op: "take" }
  | { op: "drain" };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  fc.record({ op: fc.constant("offer" as const), size: fc.integer({ min: 0, max: 30 }) }),
  fc.record({ op: fc.constant("tryReserve" as const), n: fc.integer({ min: 0, max: 30 }) }),
  fc.record({ op: fc.constant("release" as const), n: fc.integer({ min: 0, max: 30 }) }),
  fc.record({
    op: fc.constant("put" as const),
    size: fc.integer({ min: 0, max: 30 }),
    reserved: fc.integer({ min: 0, max: 30 }),
  }),
  fc.record({ op: fc.constant("requeueTaken" as const) }),
  fc.record({ op: fc.constant("take" as const) }),
  fc.record({ op: fc.constant("drain" as const) }),
);

Deno.test("Mailbox agrees with a reference model on random operation sequences", () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 40 }),
      fc.array(opArb, { maxLength: 200 }),
      (cap, ops) => {
        const m = new Mailbox<Item>(cap);
        // The reference: a plain array and a reservation count.
        let queue: Item[] = [];
        let reserved = 0;
        const taken: Item[] = [];
        const sum = (xs: Item[]) => xs.reduce((n, x) => n + x.size, 0);
        const fits = (n: number) => sum(queue) + reserved + n <= cap || sum(queue) + reserved === 0;
        for (const o of ops) {
          switch (o.op) {
            case "offer": {
              const x = item(o.size);
              const expected = fits(o.size);
              assert.equal(m.offer(x), expected);
              if (expected) queue.push(x);
              break;
            }
            case "tryReserve": {
              const expected = fits(o.n);
              assert.equal(m.tryReserve(o.n), expected);
              if (expected) reserved += o.n;
              break;
            }
            case "release":
              m.release(o.n);
              reserved = Math.max(0, reserved - o.n);
              break;
            case "put": {
              const x = item(o.size);
              m.put(x, o.reserved);
              reserved = Math.max(0, reserved - o.reserved);
              queue.push(x);
              break;
            }
            case "requeueTaken": {
              const x = taken.pop();
              if (x === undefined) break;
              m.requeue(x);
              queue.unshift(x);
              break;
            }
            case "take": {
              const x = m.take();
              assert.equal(x, queue.shift());
              if (x !== undefined) taken.push(x);
              break;
            }
            case "drain":
              assert.deepEqual(m.drain(), queue);
              queue = [];
              break;
          }
          assert.equal(m.queued, sum(queue));
          assert.equal(m.depth, sum(queue) + reserved);
          assert.ok(m.depth >= 0 && m.queued >= 0);
          assert.equal(m.length, queue.length);
          assert.equal(m.peek(), queue[0]);
          assert.equal(m.fill, m.depth / cap);
        }
      },
    ),
    { numRuns: 300 },
  );
});

Deno.test("Mailbox never exceeds its capacity when every entry goes through offer or a reservation", () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 40 }),
      fc.array(
        fc.oneof(
          fc.record({ op: fc.constant("offer" as const), size: fc.integer({ min: 1, max: 50 }) }),
          fc.record({
            op: fc.constant("reserveThenPut" as const),
            size: fc.integer({ min: 1, max: 50 }),
          }),
          fc.record({ op: fc.constant("take" as const) }),
        ),
        { maxLength: 200 },
      ),
      (cap, ops) => {
        const m = new Mailbox<Item>(cap);
        for (const o of ops) {
          if (o.op === "offer") m.offer(item(o.size));
          else if (o.op === "take") m.take();
          else if (m.tryReserve(o.size)) m.put(item(o.size), o.size);
          // Over the capacity only with one oversized item alone in the mailbox.
          assert.ok(m.depth <= cap || m.length === 1, `depth ${m.depth} over capacity ${cap}`);
        }
      },
    ),
    { numRuns: 300 },
  );
});
