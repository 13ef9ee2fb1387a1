/**
 * @module
 * Tests for `lib/idempotency.ts`: key syntax, the claim protocol (replay,
 * reuse, waiting on a request in flight), expiry under a fake clock, the
 * bounds on keys and bytes, and hashing a body while it is read.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import FakeTimers from "@sinonjs/fake-timers";
import { gzipSync } from "node:zlib";
import { readRecords } from "../../lib/body.ts";
import {
  hashRequestBody,
  IdempotencyCache,
  type IdempotencyClaim,
  type IdempotencyLease,
  parseIdempotencyKey,
} from "../../lib/idempotency.ts";

const OK = { status: 200, body: '{"accepted":2,"duplicates":0,"rejected":0,"errors":[]}' };

function ownerOf(claim: IdempotencyClaim): IdempotencyLease {
  assert.equal(claim.kind, "owner");
  return (claim as { lease: IdempotencyLease }).lease;
}

/** Whether `promise` has settled after the pending microtasks ran. */
async function settled(promise: Promise<unknown>): Promise<boolean> {
  let done = false;
  promise.then(() => (done = true), () => (done = true));
  for (let i = 0; i < 10; i++) await Promise.resolve();
  return done;
}

function post(body: BodyInit, headers: Record<string, string>): Request {
  return new Request("http://troupe.test/v1/records", { method: "POST", headers, body });
}

async function sha256Hex(...parts: Array<string | Uint8Array>): Promise<string> {
  const bytes = parts.map((p) => (typeof p === "string" ? new TextEncoder().encode(p) : p));
  const all = new Uint8Array(bytes.reduce((n, b) => n + b.byteLength, 0));
  let offset = 0;
  for (const b of bytes) {
    all.set(b, offset);
    offset += b.byteLength;
  }
  const digest = await crypto.subtle.digest("SHA-256", all);
  return Array.from(new Uint8Array(digest), (x) => x.toString(16).padStart(2, "0")).join("");
}

Deno.test("parseIdempotencyKey accepts 1 to 255 printable ASCII characters", async (t) => {
  await t.step("good keys", () => {
    for (const key of ["a", "order-42", "x".repeat(255), " !~", "550e8400-e29b-41d4-a716"]) {
      assert.deepEqual(parseIdempotencyKey(key), { ok: true, value: key });
    }
  });
  await t.step("bad keys, quoted in the message", () => {
    for (const key of ["", "x".repeat(256), "tab\there", "nul\0", "é", "line\nbreak", "\x7f"]) {
      const result = parseIdempotencyKey(key);
      assert.equal(result.ok, false, JSON.stringify(key));
      if (!result.ok) {
        assert.match(result.error, /^Invalid Idempotency-Key ".*: must be 1 to 255 printable/s);
        assert.ok(!result.error.endsWith("."));
      }
    }
  });
  await t.step("a long key is cut in the message", () => {
    const result = parseIdempotencyKey("k".repeat(10_000));
    assert.equal(result.ok, false);
    if (!result.ok) {
      assert.ok(result.error.length < 200);
      assert.match(result.error, /\(10000 characters\)/);
    }
  });
  await t.step("any string: accepted exactly when it is 1 to 255 of \\x20-\\x7e", () => {
    fc.assert(
      fc.property(
        fc.string({
          // Mostly ASCII, control characters included, with some beyond it.
          unit: fc.oneof(
            { weight: 20, arbitrary: fc.integer({ min: 0, max: 0x7f }).map(String.fromCharCode) },
            { weight: 1, arbitrary: fc.constantFrom("\x80", "é", "\u2028", "\uffff", "😀") },
          ),
          maxLength: 300,
        }),
        (key) => {
          const expected = key.length >= 1 && key.length <= 255 &&
            [...key].every((ch) => ch >= " " && ch <= "~");
          assert.equal(parseIdempotencyKey(key).ok, expected);
        },
      ),
      { numRuns: 300 },
    );
  });
});

Deno.test("IdempotencyCache replays a remembered answer and refuses another body", async () => {
  const cache = new IdempotencyCache();
  ownerOf(await cache.claim("k1", "hash-a")).remember(OK);
  assert.deepEqual(await cache.claim("k1", "hash-a"), { kind: "replay", answer: OK });
  assert.deepEqual(await cache.claim("k1", "hash-b"), { kind: "reused" });
  // Another key is another request.
  assert.equal((await cache.claim("k2", "hash-a")).kind, "owner");
  assert.equal(cache.size, 2);
});

Deno.test("IdempotencyCache forgets a released key so a retry is processed for real", async () => {
  const cache = new IdempotencyCache();
  const lease = ownerOf(await cache.claim("k", "h"));
  lease.release();
  assert.equal(cache.size, 0);
  const again = ownerOf(await cache.claim("k", "h"));
  // Calls after the first do nothing: a late release cannot drop the new owner's key.
  lease.release();
  lease.remember(OK);
  assert.equal(cache.size, 1);
  again.remember({ status: 422, body: "{}" });
  // The first call counts.
  again.release();
  assert.deepEqual(await cache.claim("k", "h"), {
    kind: "replay",
    answer: { status: 422, body: "{}" },
  });
});

Deno.test("IdempotencyCache makes a request wait for the same key in flight", async (t) => {
  await t.step("the waiter gets the first answer", async () => {
    const cache = new IdempotencyCache();
    const lease = ownerOf(await cache.claim("k", "h"));
    const waiting = cache.claim("k", "h");
    assert.equal(await settled(waiting), false, "waits while the first is in flight");
    // Another body does not wait: it is refused at once.
    assert.deepEqual(await cache.claim("k", "other"), { kind: "reused" });
    lease.remember(OK);
    assert.deepEqual(await waiting, { kind: "replay", answer: OK });
  });

  await t.step("after a release exactly one waiter becomes the owner", async () => {
    const cache = new IdempotencyCache();
    const lease = ownerOf(await cache.claim("k", "h"));
    const waiters = [cache.claim("k", "h"), cache.claim("k", "h"), cache.claim("k", "h")];
    lease.release();
    await Promise.resolve();
    const first = await Promise.race(waiters.map((w, i) => w.then((claim) => ({ claim, i }))));
    const next = ownerOf(first.claim);
    const others = waiters.filter((_, i) => i !== first.i);
    for (const other of others) assert.equal(await settled(other), false);
    next.remember(OK);
    for (const other of others) assert.deepEqual(await other, { kind: "replay", answer: OK });
  });

  await t.step("a key evicted while in flight still answers its waiters", async () => {
    const cache = new IdempotencyCache({ maxKeys: 1 });
    const lease = ownerOf(await cache.claim("k", "h"));
    const waiting = cache.claim("k", "h");
    ownerOf(await cache.claim("other", "h")); // evicts "k"
    lease.remember(OK);
    assert.deepEqual(await waiting, { kind: "replay", answer: OK });
    assert.equal(cache.size, 1, "the evicted key is not put back");
    assert.equal((await cache.claim("k", "h")).kind, "owner");
  });
});

Deno.test("IdempotencyCache forgets a key windowMs after it was first seen", async () => {
  const clock = FakeTimers.withGlobal(globalThis).install({ toFake: ["Date"], now: 1_000_000 });
  try {
    const cache = new IdempotencyCache({ windowMs: 60_000 });
    ownerOf(await cache.claim("a", "h")).remember(OK);
    clock.tick(30_000);
    ownerOf(await cache.claim("b", "h")).remember(OK);
    clock.tick(29_999);
    assert.equal((await cache.claim("a", "h")).kind, "replay", "still inside its window");
    clock.tick(1);
    assert.equal(cache.size, 2);
    // "a" expired; another body is welcome now.
    ownerOf(await cache.claim("a", "other")).remember(OK);
    assert.equal((await cache.claim("b", "h")).kind, "replay");
    clock.tick(30_000);
    assert.equal((await cache.claim("b", "other")).kind, "owner", "b expired too");
    assert.equal(cache.size, 2, "a (renewed) and b (new)");
  } finally {
    clock.uninstall();
  }
});

Deno.test("IdempotencyCache forgets the oldest key past maxKeys", async () => {
  const cache = new IdempotencyCache({ maxKeys: 3 });
  for (const key of ["a", "b", "c", "d", "e"]) ownerOf(await cache.claim(key, "h")).remember(OK);
  assert.equal(cache.size, 3);
  for (const key of ["c", "d", "e"]) assert.equal((await cache.claim(key, "h")).kind, "replay");
  assert.equal((await cache.claim("a", "h")).kind, "owner");
});

Deno.test("IdempotencyCache stays within maxBytes", async (t) => {
  await t.step("an answer larger than the budget is answered but not kept", async () => {
    const cache = new IdempotencyCache({ maxBytes: 1000 });
    const big = { status: 200, body: "x".repeat(2000) };
    const lease = ownerOf(await cache.claim("k", "h"));
    const waiting = cache.claim("k", "h");
    lease.remember(big);
    assert.deepEqual(await waiting, { kind: "replay", answer: big });
    assert.equal(cache.size, 0);
    assert.equal(cache.bytes, 0);
  });

  await t.step("older answers make room for a new one", async () => {
    const cache = new IdempotencyCache({ maxBytes: 2000 });
    const answer = { status: 200, body: "x".repeat(500) };
    for (let i = 0; i < 10; i++) ownerOf(await cache.claim(`k${i}`, "h")).remember(answer);
    assert.ok(cache.bytes <= 2000, `${cache.bytes} bytes`);
    assert.ok(cache.size >= 2 && cache.size < 10, `${cache.size} keys`);
    assert.equal((await cache.claim("k9", "h")).kind, "replay", "the newest is kept");
    assert.equal((await cache.claim("k0", "h")).kind, "owner", "the oldest is gone");
  });

  await t.step("any sequence of claims keeps both bounds", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(
          fc.record({
            key: fc.integer({ min: 0, max: 20 }),
            hash: fc.constantFrom("h1", "h2"),
            action: fc.constantFrom("remember", "release", "hold"),
            size: fc.integer({ min: 0, max: 600 }),
          }),
          { maxLength: 60 },
        ),
        async (steps) => {
          const cache = new IdempotencyCache({ maxKeys: 5, maxBytes: 2000 });
          const held: IdempotencyLease[] = [];
          for (const step of steps) {
            const claim = await Promise.race([
              cache.claim(`k${step.key}`, step.hash),
              // A claim waiting on a held lease is left waiting.
              settled(Promise.resolve()).then(() => null),
            ]);
            if (claim?.kind === "owner") {
              if (step.action === "remember") {
                claim.lease.remember({ status: 200, body: "x".repeat(step.size) });
              } else if (step.action === "release") claim.lease.release();
              else held.push(claim.lease);
            }
            assert.ok(cache.size <= 5, `${cache.size} keys`);
            assert.ok(cache.bytes <= 2000, `${cache.bytes} bytes`);
          }
          for (const lease of held) lease.release();
        },
      ),
      { numRuns: 100 },
    );
  });
});

Deno.test("IdempotencyCache refuses options that are not positive integers", () => {
  assert.throws(() => new IdempotencyCache({ maxKeys: 0 }), RangeError);
  assert.throws(() => new IdempotencyCache({ windowMs: Number.NaN }), RangeError);
  assert.throws(() => new IdempotencyCache({ maxBytes: 1.5 }), RangeError);
});

Deno.test("hashRequestBody hashes the body as readRecords reads it", async (t) => {
  const text = '[{"id":1},{"id":2}]';
  const json = { "content-type": "application/json" };

  await t.step("SHA-256 of the headers' prefix and the raw bytes, body left intact", async () => {
    const hashed = hashRequestBody(post(text, json));
    const body = await readRecords(hashed.request);
    assert.deepEqual(body, { ok: true, value: [{ id: 1 }, { id: 2 }] });
    assert.equal(hashed.digest(), await sha256Hex("16:application/json\n0:\n", text));
  });

  await t.step("gzip is hashed as sent, before inflating", async () => {
    const zipped = new Uint8Array(gzipSync(new TextEncoder().encode(text)));
    const headers = { ...json, "content-encoding": "gzip" };
    const hashed = hashRequestBody(post(zipped, headers));
    assert.equal((await readRecords(hashed.request)).ok, true);
    assert.equal(
      hashed.digest(),
      await sha256Hex("16:application/json\n4:gzip\n", zipped),
    );
  });

  await t.step("same bytes, same hash; another type or another byte, another hash", async () => {
    const digestOf = async (body: string, headers: Record<string, string>) => {
      const hashed = hashRequestBody(post(body, headers));
      await hashed.request.arrayBuffer();
      return hashed.digest();
    };
    const first = await digestOf(text, json);
    assert.equal(await digestOf(text, json), first);
    assert.notEqual(await digestOf(text, { "content-type": "application/x-ndjson" }), first);
    assert.notEqual(await digestOf(text.replace("2", "3"), json), first);
  });

  await t.step("a request without a body keeps its headers and hashes them alone", async () => {
    const req = new Request("http://troupe.test/v1/records", { method: "POST", headers: json });
    const hashed = hashRequestBody(req);
    assert.equal(hashed.request, req);
    assert.equal(hashed.digest(), await sha256Hex("16:application/json\n0:\n"));
  });
});
