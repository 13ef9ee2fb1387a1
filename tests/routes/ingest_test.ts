/**
 * @module
 * Tests of `POST /v1/records` against a real listening service over a real
 * SQLite file: every kind of bad input gets a 4xx with a JSON body, leaves
 * the service ready and changes nothing already stored (the table printed
 * here is the one in `docs/RELIABILITY.md`); random bytes and random JSON
 * never get a 5xx; and `Idempotency-Key` replays the first answer.
 */
import assert from "node:assert/strict";
import { gzipSync } from "node:zlib";
import fc from "fast-check";
import { FaultInjector } from "../../lib/faults.ts";
import {
  getJson,
  makeRecords,
  SEED_RECORDS,
  SEED_USER,
  startTestService,
  type TestService,
} from "../_helpers.ts";

/** Small limits, so that the cases over them are small and fast. */
const LIMITS = { max_body_bytes: 16_384, max_records_per_request: 100, max_string_length: 1000 };

const JSON_TYPE = { "content-type": "application/json" };
const NDJSON_TYPE = { "content-type": "application/x-ndjson" };

/** A valid record; `fields` replace or add fields. */
function record(fields: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    id: "ok-1",
    timestamp: "2025-01-15T10:00:00Z",
    user_id: "user_bad_input",
    event: "login",
    value: 1,
    ...fields,
  };
}

/** `metadata` holding `levels` objects one inside the other. */
function nested(levels: number): Record<string, unknown> {
  let inner: Record<string, unknown> = {};
  for (let i = 0; i < levels; i++) inner = { a: inner };
  return inner;
}

function bytes(text: string): Uint8Array<ArrayBuffer> {
  return new TextEncoder().encode(text);
}

function gzip(data: Uint8Array): Uint8Array<ArrayBuffer> {
  return new Uint8Array(gzipSync(data));
}

/** A body sent in chunks without `Content-Length`. */
function chunked(total: number, chunk = 1024): ReadableStream<Uint8Array> {
  let sent = 0;
  return new ReadableStream({
    pull(controller) {
      if (sent >= total) return controller.close();
      controller.enqueue(new Uint8Array(Math.min(chunk, total - sent)).fill(0x20));
      sent += chunk;
    },
  });
}

interface Answer {
  status: number;
  contentType: string | null;
  headers: Headers;
  text: string;
  // deno-lint-ignore no-explicit-any
  body: any;
}

/** POSTs a raw body to `/v1/records`; `headers` are all the headers sent. */
async function post(
  url: string,
  body: BodyInit | null,
  headers: Record<string, string>,
): Promise<Answer> {
  const init = { method: "POST", headers, body, duplex: "half" };
  const res = await fetch(`${url}/v1/records`, init as RequestInit);
  const text = await res.text();
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    parsed = undefined;
  }
  return {
    status: res.status,
    contentType: res.headers.get("content-type"),
    headers: res.headers,
    text,
    body: parsed,
  };
}

/** What must not change: the count of stored records and a known user's aggregate. */
async function snapshot(url: string) {
  const stats = await getJson(url, "/v1/stats");
  const user = await getJson(url, "/v1/users/user_001");
  const first = await getJson(url, "/v1/records/1");
  return {
    stored_records: stats.body.stored_records as number,
    user: user.body,
    record: first.body,
  };
}

async function assertReady(url: string): Promise<void> {
  const res = await fetch(`${url}/readyz`);
  await res.body?.cancel();
  assert.equal(res.status, 200, "/readyz after the request");
}

/** One line of the bad-input table. */
interface BadInputCase {
  name: string;
  body: () => BodyInit | null;
  headers: Record<string, string>;
  status: number;
  /** The `error.code`, or for an ingest answer what it reports. */
  code: string;
  /** For a 4xx error: a pattern its message matches. */
  message?: RegExp;
  /** For an ingest answer (422 or 200): its expected counts and first error. */
  ingest?: { accepted: number; duplicates: number; rejected: number; error?: RegExp };
  /** Records the case adds to storage. @default 0 */
  stores?: number;
}

function rejected(error: RegExp): BadInputCase["ingest"] {
  return { accepted: 0, duplicates: 0, rejected: 1, error };
}

const CASES: BadInputCase[] = [
  {
    name: "body not JSON",
    body: () => "this is not json",
    headers: JSON_TYPE,
    status: 400,
    code: "invalid_json",
  },
  {
    name: "JSON that is not an object or array (`42`)",
    body: () => "42",
    headers: JSON_TYPE,
    status: 400,
    code: "invalid_json",
  },
  {
    name: "NDJSON with one bad line (line 3)",
    body: () => `${JSON.stringify(record({ id: "n1" }))}\n${JSON.stringify(record())}\n{"id":\n`,
    headers: NDJSON_TYPE,
    status: 400,
    code: "invalid_ndjson",
    message: /line 3/,
  },
  { name: "empty body", body: () => "", headers: JSON_TYPE, status: 400, code: "empty_body" },
  {
    name: "whitespace-only body",
    body: () => " \r\n\t ",
    headers: JSON_TYPE,
    status: 400,
    code: "empty_body",
  },
  {
    name: "wrong content type (`text/plain`)",
    body: () => JSON.stringify(record()),
    headers: { "content-type": "text/plain" },
    status: 415,
    code: "unsupported_media_type",
  },
  {
    name: "missing content type",
    body: () => bytes(JSON.stringify(record())),
    headers: {},
    status: 415,
    code: "unsupported_media_type",
    message: /Missing content type/,
  },
  {
    name: "unknown content encoding (`br`)",
    body: () => bytes(JSON.stringify(record())),
    headers: { ...JSON_TYPE, "content-encoding": "br" },
    status: 415,
    code: "unsupported_encoding",
  },
  {
    name: "body over the limit (`Content-Length`)",
    body: () => " ".repeat(LIMITS.max_body_bytes + 1),
    headers: JSON_TYPE,
    status: 413,
    code: "body_too_large",
  },
  {
    name: "body over the limit (chunked, no length)",
    body: () => chunked(LIMITS.max_body_bytes * 4),
    headers: JSON_TYPE,
    status: 413,
    code: "body_too_large",
  },
  {
    name: "gzip body that inflates past the limit",
    body: () => gzip(new Uint8Array(1024 * 1024).fill(0x20)),
    headers: { ...JSON_TYPE, "content-encoding": "gzip" },
    status: 413,
    code: "body_too_large",
    message: /Inflated/,
  },
  {
    name: "invalid gzip",
    body: () => new Uint8Array([0x1f, 0x8b, 0x08, 0x00, 1, 2, 3, 4, 5, 6, 7, 8]),
    headers: { ...JSON_TYPE, "content-encoding": "gzip" },
    status: 400,
    code: "invalid_gzip",
  },
  {
    name: "gzip header on a plain body",
    body: () => bytes(JSON.stringify(record())),
    headers: { ...JSON_TYPE, "content-encoding": "gzip" },
    status: 400,
    code: "invalid_gzip",
  },
  {
    name: "invalid UTF-8",
    body: () => new Uint8Array([...bytes('[{"user_id":"'), 0xc3, 0x28, ...bytes('"}]')]),
    headers: JSON_TYPE,
    status: 400,
    code: "invalid_utf8",
  },
  {
    name: "metadata nested 32 deep (at the limit)",
    body: () => JSON.stringify(record({ id: "deep-32", metadata: nested(32) })),
    headers: JSON_TYPE,
    status: 200,
    code: "accepted 1",
    ingest: { accepted: 1, duplicates: 0, rejected: 0 },
    stores: 1,
  },
  {
    name: "metadata nested 33 deep (limit 32)",
    body: () => JSON.stringify(record({ id: "deep", metadata: nested(33) })),
    headers: JSON_TYPE,
    status: 422,
    code: "rejected (validate)",
    ingest: rejected(/metadata: .*nesting exceeds/),
  },
  {
    name: "string over the limit (`user_id` of 1001)",
    body: () => JSON.stringify(record({ id: "long", user_id: "u".repeat(1001) })),
    headers: JSON_TYPE,
    status: 422,
    code: "rejected (validate)",
    ingest: rejected(/user_id: .*longer than 1000/),
  },
  {
    name: "string over the limit inside metadata",
    body: () => JSON.stringify(record({ id: "long-m", metadata: { note: "m".repeat(1001) } })),
    headers: JSON_TYPE,
    status: 422,
    code: "rejected (validate)",
    ingest: rejected(/metadata: .*string of 1001 characters/),
  },
  {
    name: "more records than the limit (101 of 100)",
    body: () => JSON.stringify(Array.from({ length: 101 }, (_, i) => ({ id: i }))),
    headers: JSON_TYPE,
    status: 413,
    code: "too_many_records",
  },
  {
    name: "`NaN` literal",
    body: () =>
      '{"id":"nan","timestamp":"2025-01-15T10:00:00Z","user_id":"u","event":"e","value":NaN}',
    headers: JSON_TYPE,
    status: 400,
    code: "invalid_json",
  },
  {
    name: "`Infinity` literal",
    body: () => '[{"id":"inf","value":Infinity}]',
    headers: JSON_TYPE,
    status: 400,
    code: "invalid_json",
  },
  {
    name: "`-Infinity` in NDJSON",
    body: () => '{"id":"inf","value":-Infinity}\n',
    headers: NDJSON_TYPE,
    status: 400,
    code: "invalid_ndjson",
    message: /line 1/,
  },
  {
    name: 'number as a string (`"value":"1.5"`)',
    body: () => JSON.stringify(record({ id: "str-num", value: "1.5" })),
    headers: JSON_TYPE,
    status: 422,
    code: "rejected (validate)",
    ingest: rejected(/value: must be a number/),
  },
  {
    name: "negative id",
    body: () => JSON.stringify(record({ id: -1 })),
    headers: JSON_TYPE,
    status: 422,
    code: "rejected (validate)",
    ingest: rejected(/^id: /),
  },
  {
    name: "fractional id",
    body: () => JSON.stringify(record({ id: 1.5 })),
    headers: JSON_TYPE,
    status: 422,
    code: "rejected (validate)",
    ingest: rejected(/^id: /),
  },
  {
    name: 'timestamp `"2025/01/15"`',
    body: () => JSON.stringify(record({ id: "ts-1", timestamp: "2025/01/15" })),
    headers: JSON_TYPE,
    status: 422,
    code: "rejected (validate)",
    ingest: rejected(/timestamp: .*ISO 8601/),
  },
  {
    name: 'timestamp `"yesterday"`',
    body: () => JSON.stringify(record({ id: "ts-2", timestamp: "yesterday" })),
    headers: JSON_TYPE,
    status: 422,
    code: "rejected (validate)",
    ingest: rejected(/timestamp: .*ISO 8601/),
  },
  {
    name: "timestamp `1736935200` (epoch seconds)",
    body: () => JSON.stringify(record({ id: "ts-3", timestamp: 1736935200 })),
    headers: JSON_TYPE,
    status: 422,
    code: "rejected (validate)",
    ingest: rejected(/timestamp: .*ISO 8601/),
  },
  {
    name: "the same id twice in one request",
    body: () => JSON.stringify([record({ id: "twice" }), record({ id: "twice", value: 2 })]),
    headers: JSON_TYPE,
    status: 200,
    code: "accepted 1, duplicates 1",
    ingest: { accepted: 1, duplicates: 1, rejected: 0 },
    stores: 1,
  },
  {
    name: "invalid `Idempotency-Key` (256 characters)",
    body: () => JSON.stringify(record({ id: "key" })),
    headers: { ...JSON_TYPE, "idempotency-key": "k".repeat(256) },
    status: 400,
    code: "invalid_idempotency_key",
  },
];

Deno.test("POST /v1/records answers bad input with a 4xx and changes nothing stored", async (t) => {
  const svc = await startTestService({ limits: LIMITS });
  const rows: string[] = [];
  try {
    const seeded = await post(svc.url, JSON.stringify(SEED_RECORDS), JSON_TYPE);
    assert.equal(seeded.status, 200);
    let before = await snapshot(svc.url);
    assert.deepEqual(before.user, SEED_USER);

    for (const c of CASES) {
      await t.step(c.name, async () => {
        const res = await post(svc.url, c.body(), c.headers);
        assert.equal(res.status, c.status, res.text);
        assert.match(res.contentType ?? "", /^application\/json/);
        if (c.ingest === undefined) {
          assert.ok(res.status >= 400 && res.status < 500);
          assert.deepEqual(Object.keys(res.body), ["error"]);
          assert.deepEqual(Object.keys(res.body.error), ["code", "message", "details"]);
          assert.equal(res.body.error.code, c.code);
          assert.equal(typeof res.body.error.message, "string");
          assert.ok(!res.body.error.message.endsWith("."), res.body.error.message);
          if (c.message) assert.match(res.body.error.message, c.message);
        } else {
          const { error, ...counts } = c.ingest;
          assert.deepEqual(
            { accepted: res.body.accepted, duplicates: res.body.duplicates },
            { accepted: counts.accepted, duplicates: counts.duplicates },
          );
          assert.equal(res.body.rejected, counts.rejected);
          assert.equal(res.body.errors.length, counts.rejected);
          if (error) {
            assert.equal(res.body.errors[0].stage, "validate");
            assert.match(res.body.errors[0].message, error);
          }
        }
        await assertReady(svc.url);
        const after = await snapshot(svc.url);
        assert.deepEqual(
          after,
          { ...before, stored_records: before.stored_records + (c.stores ?? 0) },
          "nothing already stored changed",
        );
        before = after;
        const detail = c.ingest?.error ? `: ${res.body.errors[0].message}` : "";
        rows.push(`| ${c.name} | ${res.status} | \`${c.code}\`${detail} |`);
      });
    }
  } finally {
    await svc.close();
  }
  console.log(["", "| case | status | error code |", "|---|---|---|", ...rows].join("\n"));
});

Deno.test("POST /v1/records never answers random bytes or random JSON with a 5xx", async () => {
  const svc = await startTestService({ limits: LIMITS });
  try {
    assert.equal((await post(svc.url, JSON.stringify(SEED_RECORDS), JSON_TYPE)).status, 200);
    const before = await snapshot(svc.url);

    // Mostly accepted types, so that many bodies get as far as the parser and the schema.
    const contentType = fc.oneof(
      {
        weight: 6,
        arbitrary: fc.constantFrom(
          "application/json",
          "application/x-ndjson",
          "application/ndjson",
          "application/jsonl",
          "application/json; charset=utf-8",
        ),
      },
      { weight: 1, arbitrary: fc.constantFrom("text/plain", "application/xml", "", undefined) },
    );
    // Record-like objects reach the schema; user_001 is left alone so its aggregate stays.
    const recordLike = fc.record({
      id: fc.oneof(fc.integer(), fc.double(), fc.string(), fc.constant(null)),
      timestamp: fc.oneof(
        fc.date({ noInvalidDate: true }).map((d) => d.toISOString()),
        fc.string(),
        fc.integer(),
      ),
      user_id: fc.oneof(fc.constant("user_fuzz"), fc.string()).filter((u) => u !== "user_001"),
      event: fc.oneof(fc.constantFrom("login", "click"), fc.string(), fc.integer()),
      value: fc.oneof(fc.double({ noNaN: true, noDefaultInfinity: true }), fc.string()),
      metadata: fc.oneof(fc.object(), fc.jsonValue()),
    }, { requiredKeys: [] });
    // A valid record (with any metadata object) and maybe one field replaced or removed.
    const nearValid = fc.record({
      n: fc.nat(),
      metadata: fc.object(),
      field: fc.constantFrom("none", "id", "timestamp", "user_id", "event", "value", "metadata"),
      value: fc.option(fc.jsonValue(), { nil: undefined }),
    }).map(({ n, metadata, field, value }) => {
      const r = record({ id: `fuzz-${n}`, user_id: "user_fuzz", metadata });
      return field === "none" ? r : { ...r, [field]: value };
    })
      // Only a string can be user_001 (String() throws on an object with a "toString" key).
      .filter((r) => typeof r.user_id !== "string" || r.user_id.trim() !== "user_001");
    const text = fc.oneof(
      {
        weight: 3,
        arbitrary: fc.array(nearValid, { maxLength: 20 }).map((a) => JSON.stringify(a)),
      },
      {
        weight: 3,
        arbitrary: fc.array(nearValid, { maxLength: 20 }).map((a) =>
          a.map((r) => JSON.stringify(r)).join("\n")
        ),
      },
      { weight: 1, arbitrary: fc.jsonValue().map((v) => JSON.stringify(v)) },
      {
        weight: 1,
        arbitrary: fc.array(fc.oneof(fc.object(), recordLike), { maxLength: 20 })
          .map((a) => JSON.stringify(a)),
      },
      {
        weight: 1,
        arbitrary: fc.array(recordLike, { maxLength: 20 })
          .map((a) => a.map((r) => JSON.stringify(r)).join("\n")),
      },
      { weight: 1, arbitrary: fc.string({ maxLength: 200 }) },
    );
    const body = fc.oneof(
      { weight: 1, arbitrary: fc.uint8Array({ maxLength: 2048 }) },
      { weight: 2, arbitrary: text.map(bytes) },
    );
    const request = fc.record({
      contentType,
      body,
      // Mostly plain; gzip with and without its header, and the header alone.
      gzip: fc.constantFrom("none", "none", "none", "both", "both", "header", "body"),
      // Sometimes a key: one shared by many bodies, or a random (maybe invalid) one.
      key: fc.option(fc.oneof(fc.constant("fuzz-key"), fc.string({ maxLength: 300 })), {
        nil: undefined,
        freq: 3,
      }),
    });

    const seen = new Map<number, number>();
    await fc.assert(
      fc.asyncProperty(request, async (r) => {
        const headers: Record<string, string> = {};
        if (r.contentType !== undefined) headers["content-type"] = r.contentType;
        if (r.gzip === "both" || r.gzip === "header") headers["content-encoding"] = "gzip";
        if (r.key !== undefined) headers["idempotency-key"] = r.key;
        const payload = r.gzip === "both" || r.gzip === "body" ? gzip(r.body) : r.body;
        const res = await post(svc.url, payload, headers);
        seen.set(res.status, (seen.get(res.status) ?? 0) + 1);
        assert.ok(res.status < 500, `${res.status} ${res.text}`);
        assert.match(res.contentType ?? "", /^application\/json/);
        assert.ok(
          "error" in res.body || "accepted" in res.body,
          `an error or an ingest answer: ${res.text}`,
        );
      }),
      { numRuns: 200 },
    );
    await assertReady(svc.url);
    const after = await snapshot(svc.url);
    assert.deepEqual(after.user, before.user, "user_001 is untouched");
    assert.deepEqual(after.record, before.record, "record 1 is untouched");
    assert.ok(after.stored_records >= before.stored_records);
    console.log("statuses:", Object.fromEntries([...seen].sort(([a], [b]) => a - b)));
  } finally {
    await svc.close();
  }
});

/** POSTs records as JSON with an `Idempotency-Key`. */
function postKeyed(svc: TestService, key: string, records: unknown): Promise<Answer> {
  return post(svc.url, JSON.stringify(records), { ...JSON_TYPE, "idempotency-key": key });
}

Deno.test("POST /v1/records with an Idempotency-Key answers a retry with the first answer", async (t) => {
  const svc = await startTestService();
  try {
    await t.step("the same key and body: same status and body, processed once", async () => {
      const records = makeRecords(50, "idem");
      const first = await postKeyed(svc, "batch-1", records);
      assert.equal(first.status, 200);
      assert.deepEqual(first.body, { accepted: 50, duplicates: 0, rejected: 0, errors: [] });
      assert.equal(first.headers.get("idempotent-replayed"), null);
      const stored = (await snapshot(svc.url)).stored_records;

      const second = await postKeyed(svc, "batch-1", records);
      assert.equal(second.status, 200);
      assert.match(second.contentType ?? "", /^application\/json/);
      assert.equal(second.text, first.text, "accepted 50 again, not duplicates 50");
      assert.equal(second.headers.get("idempotent-replayed"), "true");
      assert.equal((await snapshot(svc.url)).stored_records, stored);

      // Without the key the same records are processed again: all duplicates.
      const plain = await post(svc.url, JSON.stringify(records), JSON_TYPE);
      assert.equal(plain.body.duplicates, 50);
    });

    await t.step("the same key with another body is 422 and processes nothing", async () => {
      const before = await snapshot(svc.url);
      const res = await postKeyed(svc, "batch-1", makeRecords(5, "other"));
      assert.equal(res.status, 422);
      assert.equal(res.body.error.code, "idempotency_key_reused");
      assert.match(res.body.error.message, /"batch-1"/);
      assert.deepEqual(res.body.error.details, { idempotency_key: "batch-1" });
      assert.deepEqual(await snapshot(svc.url), before);
      assert.equal((await getJson(svc.url, "/v1/records/other-0")).status, 404);
    });

    await t.step("a 422 ingest answer is remembered: the rejection is stored once", async () => {
      const bad = [record({ id: "bad-ts", timestamp: "yesterday" })];
      const failedBefore = (await getJson(svc.url, "/v1/stats")).body.failed_records;
      const first = await postKeyed(svc, "bad-1", bad);
      assert.equal(first.status, 422);
      const second = await postKeyed(svc, "bad-1", bad);
      assert.equal(second.status, 422);
      assert.equal(second.text, first.text);
      assert.equal(second.headers.get("idempotent-replayed"), "true");
      const failedAfter = (await getJson(svc.url, "/v1/stats")).body.failed_records;
      assert.equal(failedAfter, failedBefore + 1);
    });

    await t.step("an unreadable body is not remembered, so the key stays free", async () => {
      const res = await post(svc.url, "{nope", { ...JSON_TYPE, "idempotency-key": "fix-me" });
      assert.equal(res.status, 400);
      assert.equal(res.body.error.code, "invalid_json");
      const fixed = await postKeyed(svc, "fix-me", makeRecords(3, "fixed"));
      assert.equal(fixed.status, 200);
      assert.equal(fixed.body.accepted, 3);
      assert.equal(fixed.headers.get("idempotent-replayed"), null);
    });

    await t.step("keys that are empty, too long or not printable ASCII are 400", async () => {
      let sent = 0;
      for (const key of ["", "k".repeat(256), "caf\u00e9", "a\u0001b"]) {
        const init = {
          method: "POST",
          headers: [["content-type", "application/json"], ["idempotency-key", key]],
          body: JSON.stringify(makeRecords(1, "never")),
        };
        let res: Response;
        try {
          res = await fetch(`${svc.url}/v1/records`, init as RequestInit);
        } catch {
          continue; // The client refuses to send this header value at all.
        }
        sent++;
        const body = await res.json();
        assert.equal(res.status, 400, JSON.stringify(key));
        assert.equal(body.error.code, "invalid_idempotency_key");
      }
      assert.ok(sent >= 2, `${sent} keys reached the server`);
      assert.equal((await getJson(svc.url, "/v1/records/never-0")).status, 404);
    });

    await t.step("the same body under the same key but gzip-encoded is another body", async () => {
      const records = makeRecords(2, "zip");
      const plain = await postKeyed(svc, "zip-1", records);
      assert.equal(plain.status, 200);
      const zipped = await post(svc.url, gzip(bytes(JSON.stringify(records))), {
        ...JSON_TYPE,
        "content-encoding": "gzip",
        "idempotency-key": "zip-1",
      });
      assert.equal(zipped.status, 422);
      assert.equal(zipped.body.error.code, "idempotency_key_reused");
    });
  } finally {
    await svc.close();
  }
});

Deno.test("POST /v1/records makes a retry wait for the same Idempotency-Key in flight", async () => {
  // Transform takes 300 ms per batch, so the first request is still in flight.
  const faults = new FaultInjector({ stages: { transform: { latency_ms: 300 } } });
  const svc = await startTestService({}, faults);
  try {
    const records = makeRecords(20, "wait");
    const first = postKeyed(svc, "slow-1", records);
    const deadline = Date.now() + 5000;
    while (svc.system.load === 0 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 5));
    }
    assert.ok(svc.system.load > 0, "the first request is in the pipeline");
    const second = postKeyed(svc, "slow-1", records);
    const other = postKeyed(svc, "slow-1", makeRecords(1, "meanwhile"));
    const [a, b, c] = await Promise.all([first, second, other]);
    assert.equal(a.status, 200);
    assert.equal(a.body.accepted, 20);
    assert.equal(b.status, 200);
    assert.equal(b.text, a.text, "the waiting retry gets the first answer");
    assert.equal(b.headers.get("idempotent-replayed"), "true");
    assert.equal(c.status, 422, "another body is refused without waiting");
    assert.equal(c.body.error.code, "idempotency_key_reused");
    assert.equal((await snapshot(svc.url)).stored_records, 20);
  } finally {
    await svc.close();
  }
});

Deno.test("POST /v1/records does not remember a 429: the retry is processed for real", async () => {
  // One-record mailboxes, no wait, and a slow transform: a second request finds no room.
  const faults = new FaultInjector({ stages: { transform: { latency_ms: 200 } } });
  const one = { min_workers: 1, max_workers: 1, mailbox_capacity: 1 };
  const svc = await startTestService({
    pipeline: {
      batch_size: 1,
      stages: { validate: one, transform: one, aggregate: one, store: one },
    },
    ingest: { max_wait_ms: 0 },
  }, faults);
  try {
    const busy = post(svc.url, JSON.stringify(makeRecords(10, "busy")), JSON_TYPE);
    const validate = svc.system.runtimes.validate.mailbox;
    const deadline = Date.now() + 5000;
    while (validate.depth === 0 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 2));
    }
    // Room may come back between looking and sending: try fresh keys until one is refused.
    let refused: Answer | undefined;
    let key = "";
    let records: Record<string, unknown>[] = [];
    for (let attempt = 0; attempt < 20 && refused === undefined; attempt++) {
      key = `full-${attempt}`;
      records = makeRecords(2, `later-${attempt}`);
      const res = await postKeyed(svc, key, records);
      if (res.status === 429) refused = res;
      else assert.equal(res.status, 200, res.text);
    }
    assert.ok(refused, "a request was refused with 429 while the pipeline was full");
    assert.ok(refused.headers.get("retry-after"));
    assert.equal(refused.body.error.code, "too_many_requests");
    assert.equal((await busy).status, 200);

    const retried = await postKeyed(svc, key, records);
    assert.equal(retried.status, 200);
    assert.equal(retried.headers.get("idempotent-replayed"), null);
    assert.equal(retried.body.accepted, 2);
    const replayed = await postKeyed(svc, key, records);
    assert.equal(replayed.headers.get("idempotent-replayed"), "true");
    assert.equal(replayed.text, retried.text);
  } finally {
    await svc.close();
  }
});
