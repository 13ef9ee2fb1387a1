import assert from "node:assert/strict";
import fc from "fast-check";
import {
  chunk,
  decodeEntry,
  encodeEntry,
  fnv1a,
  groupByPartition,
  maskUrl,
  partitionOf,
  partitionOfRecord,
  toEntries,
} from "../../lib/queue.ts";
import { compareIds } from "../../lib/redis_queue.ts";

Deno.test("fnv1a matches the published FNV-1a 32-bit test vectors", () => {
  assert.equal(fnv1a(""), 0x811c9dc5);
  assert.equal(fnv1a("a"), 0xe40c292c);
  assert.equal(fnv1a("foobar"), 0xbf9cf968);
});

Deno.test("partitionOf puts one user in one partition, whatever the whitespace transform trims", () => {
  fc.assert(
    fc.property(
      fc.string({ minLength: 1 }),
      fc.string().filter((s) => s.trim() === ""),
      fc.integer({ min: 1, max: 1024 }),
      (id, pad, k) => {
        const p = partitionOf(id, k);
        assert.ok(Number.isInteger(p) && p >= 0 && p < k);
        assert.equal(partitionOf(`${pad}${id}${pad}`, k), p);
        assert.equal(partitionOfRecord({ user_id: id, id: 1 }, k), p);
      },
    ),
  );
});

Deno.test("partitionOf sends records without a usable user_id to partition 0", () => {
  for (const r of [null, 1, "x", [], {}, { user_id: 5 }, { user_id: "   " }, { user_id: null }]) {
    assert.equal(partitionOfRecord(r, 8), 0);
  }
});

Deno.test("partitionOf spreads many users over every partition", () => {
  const counts = new Array(8).fill(0);
  for (let i = 0; i < 8000; i++) counts[partitionOf(`user_${i}`, 8)]++;
  for (const c of counts) assert.ok(c > 700 && c < 1300, `uneven spread: ${counts}`);
});

Deno.test("groupByPartition keeps every record once, in order within its partition", () => {
  const record = fc.record({ id: fc.nat(), user_id: fc.oneof(fc.string(), fc.constant(42)) });
  fc.assert(
    fc.property(
      fc.array(fc.oneof(record, fc.anything())),
      fc.integer({ min: 1, max: 16 }),
      (rs, k) => {
        const groups = groupByPartition(rs, k);
        assert.deepEqual([...groups.keys()], [...groups.keys()].sort((a, b) => a - b));
        let n = 0;
        for (const [p, g] of groups) {
          n += g.length;
          for (const r of g) assert.equal(partitionOfRecord(r, k), p);
          // Order inside a partition is the order of the request.
          const positions = g.map((r) => rs.indexOf(r));
          const expected = rs.filter((r) => partitionOfRecord(r, k) === p);
          assert.deepEqual(g, expected, `positions ${positions}`);
        }
        assert.equal(n, rs.length);
      },
    ),
  );
});

Deno.test("encodeEntry and decodeEntry round-trip any JSON records", () => {
  fc.assert(
    fc.property(fc.array(fc.jsonValue()), fc.string(), (records, request) => {
      const flat = encodeEntry(records, request);
      const [entry] = toEntries([["1-0", flat]]);
      const decoded = decodeEntry(entry);
      assert.ok(decoded.ok);
      // JSON drops -0 (it becomes 0): compare through JSON as the stream does.
      assert.deepEqual(decoded.records, JSON.parse(JSON.stringify(records)));
      assert.equal(decoded.request, request);
    }),
  );
});

Deno.test("decodeEntry refuses foreign entries with a reason and never throws", () => {
  fc.assert(
    fc.property(fc.dictionary(fc.string(), fc.string()), (fields) => {
      const decoded = decodeEntry({ id: "7-1", fields });
      if (!decoded.ok) assert.match(decoded.error, /^Stream entry 7-1 /);
    }),
  );
  const missing = decodeEntry({ id: "1-0", fields: { other: "x" } });
  assert.ok(!missing.ok && missing.error.includes('no "records" field'));
  const notJson = decodeEntry({ id: "1-0", fields: { records: "{oops" } });
  assert.ok(!notJson.ok && notJson.error.includes("no JSON"));
  const notArray = decodeEntry({ id: "1-0", fields: { records: '{"id":1}' } });
  assert.ok(!notArray.ok && notArray.error.includes("no JSON array"));
});

Deno.test("toEntries reads XREADGROUP and XAUTOCLAIM replies and skips junk", () => {
  assert.deepEqual(toEntries(null), []);
  assert.deepEqual(
    toEntries([["1-0", ["records", "[]", "request", "r"]], ["2-0", null], [3, []], "x"]),
    [{ id: "1-0", fields: { records: "[]", request: "r" } }, { id: "2-0", fields: {} }],
  );
});

Deno.test("maskUrl hides the password and nothing else", () => {
  assert.equal(maskUrl("redis://:s3cret@127.0.0.1:6379/0"), "redis://:***@127.0.0.1:6379/0");
  assert.equal(maskUrl("redis://user:p%40ss@host:1"), "redis://user:***@host:1");
  assert.equal(maskUrl("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
  assert.ok(!maskUrl("redis://:abc def@@x").includes("abc"));
  fc.assert(
    fc.property(fc.stringMatching(/^[A-Za-z0-9]{6,20}$/), (password) => {
      assert.ok(!maskUrl(`redis://:${password}@127.0.0.1:6379`).includes(password));
    }),
  );
});

Deno.test("chunk cuts into runs of at most size and loses nothing", () => {
  fc.assert(
    fc.property(fc.array(fc.nat()), fc.integer({ min: 1, max: 50 }), (xs, n) => {
      const parts = chunk(xs, n);
      assert.deepEqual(parts.flat(), xs);
      for (const p of parts) assert.ok(p.length <= n);
    }),
  );
});

Deno.test("compareIds orders stream ids numerically", () => {
  assert.equal(compareIds("10-0", "9-5"), 1);
  assert.equal(compareIds("9-10", "9-9"), 1);
  assert.equal(compareIds("9-9", "9-9"), 0);
  assert.equal(compareIds("1795455086098-0", "1795455086098-1"), -1);
});
