import assert from "node:assert/strict";
import fc from "fast-check";
import * as v from "valibot";
import {
  checkNesting,
  DataRecord,
  dataRecordSchema,
  DEFAULT_RECORD_LIMITS,
  fastValidate,
  isRealDate,
  recordKey,
  type RecordLimits,
  recordLimitsOf,
  toUtcIso,
} from "../../lib/schemas.ts";
import { normaliseTimestamp } from "../../actors/transform_stage.ts";

const GOOD = { id: 1, timestamp: "2025-01-15T10:00:00Z", user_id: "u", event: "e", value: 1 };

Deno.test("isRealDate refuses days that do not exist instead of rolling them over", () => {
  assert.equal(isRealDate("2025-02-30T00:00:00Z"), false);
  assert.equal(isRealDate("2025-04-31T10:00:00Z"), false);
  assert.equal(isRealDate("2025-02-29T00:00:00Z"), false);
  assert.equal(isRealDate("2024-02-29T00:00:00Z"), true);
  assert.equal(isRealDate("2025-12-31T23:59:59+05:00"), true);
  assert.equal(
    v.safeParse(DataRecord, { ...GOOD, timestamp: "2025-02-30T00:00:00Z" }).success,
    false,
  );
});

Deno.test("isRealDate agrees with a calendar round trip for every day of 1900-2199", () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1900, max: 2199 }),
      fc.integer({ min: 1, max: 12 }),
      fc.integer({ min: 1, max: 31 }),
      (y, m, d) => {
        const ts = `${y}-${String(m).padStart(2, "0")}-${String(d).padStart(2, "0")}T00:00:00Z`;
        const back = new Date(Date.UTC(y, m - 1, d));
        const real = back.getUTCMonth() === m - 1 && back.getUTCDate() === d;
        assert.equal(isRealDate(ts), real, ts);
      },
    ),
    { numRuns: 2000 },
  );
});

/** `isRealDate` as it was before its arithmetic fast path: the reference it must agree with. */
function isRealDateByCalendar(ts: string): boolean {
  if (!Number.isFinite(Date.parse(ts))) return false;
  const y = Number(ts.slice(0, 4));
  const m = Number(ts.slice(5, 7));
  const d = Number(ts.slice(8, 10));
  const days = new Date(Date.UTC(y, m, 0)).getUTCDate();
  return m >= 1 && m <= 12 && d >= 1 && d <= days;
}

const pad2 = (n: number) => String(n).padStart(2, "0");

/**
 * Timestamps of many shapes, most of them ISO 8601: any year of four digits,
 * months 0-13, days 0-32, hours up to 24, `T` or space, fractions of 0-10
 * digits, and the zones valibot's `isoTimestamp` allows and some it does not.
 */
const timestampLike = fc.tuple(
  fc.oneof(fc.integer({ min: 0, max: 9999 }), fc.constantFrom(0, 4, 100, 1900, 2000, 2024)),
  fc.integer({ min: 0, max: 13 }),
  fc.integer({ min: 0, max: 32 }),
  fc.integer({ min: 0, max: 24 }),
  fc.integer({ min: 0, max: 60 }),
  fc.constantFrom("T", "T", "T", " ", "t"),
  fc.oneof(fc.constant(""), fc.integer({ min: 1, max: 10 }).map((n) => "." + "7".repeat(n))),
  fc.constantFrom("Z", "Z", "+00:00", "-05:30", "+23:59", "+0500", "+05", " +05:00", "", "z"),
).map(([y, mo, d, h, mi, sep, frac, zone]) =>
  `${String(y).padStart(4, "0")}-${pad2(mo)}-${pad2(d)}${sep}${pad2(h)}:${pad2(mi)}:${
    pad2(mi)
  }${frac}${zone}`
);

Deno.test("isRealDate answers as the calendar round trip did, for every shape of timestamp", () => {
  for (
    const ts of [
      "0000-02-29T00:00:00Z", // Date.UTC reads year 0 as 1900, which has no February 29
      "0004-02-29T00:00:00Z",
      "2000-02-29T00:00:00.000Z",
      "2100-02-29T00:00:00Z",
      "2025-01-15 10:00:00Z",
      "2025-01-15T10:00:00+05",
      "2025-01-31T10:00:00.123456789+0530",
      "2025-13-01T00:00:00Z",
      "2025-00-10T00:00:00Z",
      "2025-01-00T00:00:00Z",
      "",
      "yesterday",
    ]
  ) assert.equal(isRealDate(ts), isRealDateByCalendar(ts), ts);
  fc.assert(
    fc.property(fc.oneof(timestampLike, fc.string()), (ts) => {
      assert.equal(isRealDate(ts), isRealDateByCalendar(ts), ts);
    }),
    { numRuns: 5000 },
  );
});

Deno.test("normaliseTimestamp gives the same canonical UTC form as formatting the parsed date", () => {
  fc.assert(
    fc.property(
      fc.date({
        min: new Date("1970-01-01T00:00:00Z"),
        max: new Date("2199-12-31T23:59:59Z"),
        noInvalidDate: true,
      }),
      fc.constantFrom("Z", ".000Z", "ms", "+02:00", "-05:30"),
      (date, style) => {
        const ms = date.getTime();
        let ts: string;
        if (style === "Z") ts = new Date(ms - (ms % 1000)).toISOString().replace(".000Z", "Z");
        else if (style === ".000Z") ts = new Date(ms - (ms % 1000)).toISOString();
        else if (style === "ms") ts = date.toISOString();
        else {
          const sign = style[0] === "+" ? 1 : -1;
          const offMin = sign * (Number(style.slice(1, 3)) * 60 + Number(style.slice(4, 6)));
          const local = new Date(ms - (ms % 1000) + offMin * 60_000).toISOString().slice(0, 19);
          ts = local + style;
        }
        const { iso, ms: parsed } = normaliseTimestamp(ts);
        assert.equal(iso, toUtcIso(Date.parse(ts)), ts);
        assert.equal(parsed, Date.parse(ts));
      },
    ),
    { numRuns: 1000 },
  );
});

Deno.test("DataRecord accepts seed 000's record and trims strings", () => {
  const r = v.safeParse(DataRecord, {
    ...GOOD,
    user_id: "  user_001 ",
    metadata: { ip: "1.2.3.4" },
  });
  assert.ok(r.success);
  assert.equal(r.output.user_id, "user_001");
});

Deno.test("DataRecord refuses what the issue lists as bad records", async (t) => {
  const cases: Array<[string, Record<string, unknown>]> = [
    ["value as a string", { ...GOOD, value: "1.5" }],
    ["negative id", { ...GOOD, id: -1 }],
    ["fractional id", { ...GOOD, id: 1.5 }],
    ["empty string id", { ...GOOD, id: "" }],
    ["non-ISO timestamp", { ...GOOD, timestamp: "2025/01/15" }],
    ["timestamp as a number", { ...GOOD, timestamp: 1736935200 }],
    ["blank user_id", { ...GOOD, user_id: "   " }],
    ["missing event", { id: 1, timestamp: GOOD.timestamp, user_id: "u", value: 1 }],
    ["metadata as an array", { ...GOOD, metadata: [1, 2] }],
  ];
  for (const [name, record] of cases) {
    await t.step(name, () => assert.equal(v.safeParse(DataRecord, record).success, false));
  }
});

Deno.test("dataRecordSchema enforces metadata depth and string length limits", () => {
  const schema = dataRecordSchema({ maxDepth: 3, maxStringLength: 10 });
  assert.ok(v.safeParse(schema, { ...GOOD, metadata: { a: { b: 1 } } }).success);
  assert.ok(v.safeParse(schema, { ...GOOD, metadata: { a: { b: { c: { d: 1 } } } } }).success);
  assert.equal(
    v.safeParse(schema, { ...GOOD, metadata: { a: { b: { c: { d: {} } } } } }).success,
    false,
  );
  assert.equal(v.safeParse(schema, { ...GOOD, metadata: { a: "x".repeat(11) } }).success, false);
  assert.equal(v.safeParse(schema, { ...GOOD, user_id: "x".repeat(11) }).success, false);
});

Deno.test("checkNesting survives hostile nesting without recursion", () => {
  let deep: unknown = 1;
  for (let i = 0; i < 100_000; i++) deep = { a: deep };
  assert.match(checkNesting(deep, { maxDepth: 32, maxStringLength: 10 }) ?? "", /nesting/);
});

Deno.test('recordKey makes 1 and "1" the same id', () => {
  assert.equal(recordKey(1), recordKey("1"));
});

Deno.test("recordLimitsOf gives the limits a schema was built with, copied", () => {
  const limits = { maxStringLength: 10, maxDepth: 3 };
  const schema = dataRecordSchema(limits);
  limits.maxStringLength = 99;
  assert.deepEqual(recordLimitsOf(schema), { maxStringLength: 10, maxDepth: 3 });
  assert.equal(recordLimitsOf(v.object({})), undefined);
  assert.equal(v.safeParse(schema, { ...GOOD, metadata: { a: "x".repeat(11) } }).success, false);
});

const SMALL: RecordLimits = { maxStringLength: 16, maxDepth: 3 };
const FLAT: RecordLimits = { maxStringLength: 16, maxDepth: 0 };
const SCHEMAS = new Map(
  [DEFAULT_RECORD_LIMITS, SMALL, FLAT].map((l) => [l, dataRecordSchema(l)]),
);

/** Strings with blanks around, up to 20 characters inside (over the small limit), never blank. */
const paddedText = fc.tuple(
  fc.constantFrom("", "", " ", "\t", "\u00a0", " \n"),
  fc.oneof(
    fc.string({ minLength: 1, maxLength: 20 }),
    fc.string({ minLength: 1, maxLength: 20, unit: "binary" }),
  ).filter((text) => text.trim().length > 0),
  fc.constantFrom("", "", " ", "\r\n", "\ufeff"),
).map(([a, b, c]) => a + b + c);

/** Timestamps of the shapes clients send, all valid. */
const validTimestamp = fc.tuple(
  fc.date({
    min: new Date("0000-01-01T00:00:00Z"),
    max: new Date("9999-12-31T23:59:59Z"),
    noInvalidDate: true,
  }),
  fc.constantFrom("ms", "Z", "+02:00", "-05:30", "+0130", "space"),
).map(([date, style]) => {
  const iso = date.toISOString();
  if (style === "ms") return iso;
  const seconds = iso.slice(0, 19);
  if (style === "Z") return `${seconds}Z`;
  // Date.parse reads the space-separated form of years 0-99 its own way.
  if (style === "space" && date.getUTCFullYear() >= 100) return `${seconds.replace("T", " ")}Z`;
  if (style === "space") return `${seconds}Z`;
  return seconds + style;
});

/** A JSON object nested up to a few levels, as `metadata` usually is. */
const jsonObject = fc.dictionary(fc.string({ maxLength: 5 }), fc.jsonValue({ maxDepth: 4 }), {
  maxKeys: 4,
});

/** Records valibot accepts with the default limits (the small ones may refuse some). */
const validRecord = fc.record({
  id: fc.oneof(
    fc.nat({ max: Number.MAX_SAFE_INTEGER }),
    fc.constantFrom(0, -0, Number.MAX_SAFE_INTEGER),
    fc.string({ minLength: 1, maxLength: 256 }),
  ),
  timestamp: validTimestamp,
  user_id: paddedText,
  event: paddedText,
  value: fc.double({ noNaN: true, noDefaultInfinity: true }),
  metadata: fc.oneof(jsonObject, fc.constant(null), fc.constant(undefined)),
  extra: fc.jsonValue({ maxDepth: 2 }),
}, { requiredKeys: ["id", "timestamp", "user_id", "event", "value"] });

/** Values that break one field. */
const badValue = fc.oneof(
  fc.constantFrom(
    undefined,
    null,
    "",
    "   ",
    -1,
    1.5,
    2 ** 53,
    Number.NaN,
    Infinity,
    "2025-02-30T00:00:00Z",
    "2025-01-15",
    "x".repeat(257),
    [],
    [1],
    true,
    { a: { b: { c: { d: { e: 1 } } } } },
    { s: "x".repeat(17) },
  ),
  fc.jsonValue({ maxDepth: 2 }),
  timestampLike,
);

const FIELDS = ["id", "timestamp", "user_id", "event", "value", "metadata"] as const;

/** A valid record with one field broken or removed. */
const almostValidRecord = fc.tuple(validRecord, fc.constantFrom(...FIELDS), badValue, fc.boolean())
  .map(([record, field, bad, remove]) => {
    const broken: Record<string, unknown> = { ...record };
    if (remove) delete broken[field];
    else broken[field] = bad;
    return broken;
  });

function isPlainObject(x: unknown): boolean {
  if (typeof x !== "object" || x === null) return false;
  const proto = Object.getPrototypeOf(x);
  return proto === Object.prototype || proto === null;
}

/**
 * Checks `fastValidate` against the schema on `raw`: it declines, or gives
 * valibot's output exactly; and it never declines a plain object valibot
 * accepts. Returns whether valibot accepted `raw`.
 */
function agreesWithSchema(raw: unknown, limits: RecordLimits): boolean {
  const fast = fastValidate(raw, limits);
  const r = v.safeParse(SCHEMAS.get(limits)!, raw);
  if (fast !== undefined) {
    assert.ok(r.success, `fastValidate accepted what valibot refuses: ${r.issues?.[0].message}`);
    assert.deepStrictEqual(fast, r.output);
    assert.deepStrictEqual(Object.keys(fast), Object.keys(r.output), "same keys, same order");
    assert.equal(JSON.stringify(fast), JSON.stringify(r.output));
    assert.equal(fast.metadata, r.output.metadata, "metadata is the object given");
  } else if (r.success) {
    assert.ok(!isPlainObject(raw), "fastValidate declined a plain record valibot accepts");
  }
  return r.success;
}

const anyLimits = fc.constantFrom(DEFAULT_RECORD_LIMITS, SMALL, FLAT);

Deno.test("fastValidate accepts every valid record and gives valibot's output", () => {
  fc.assert(
    fc.property(validRecord, anyLimits, (raw, limits) => {
      const accepted = agreesWithSchema(raw, limits);
      if (limits === DEFAULT_RECORD_LIMITS) {
        assert.ok(accepted, "the generator makes valid records");
        assert.notEqual(fastValidate(raw, limits), undefined, "the fast path triggers");
      }
    }),
    { numRuns: 3000 },
  );
});

Deno.test("fastValidate declines or agrees with valibot on records with one field broken", () => {
  fc.assert(
    fc.property(almostValidRecord, anyLimits, (raw, limits) => {
      agreesWithSchema(raw, limits);
    }),
    { numRuns: 5000 },
  );
});

Deno.test("fastValidate declines or agrees with valibot on any JSON or JavaScript value", () => {
  fc.assert(
    fc.property(fc.oneof(fc.jsonValue(), fc.anything()), anyLimits, (raw, limits) => {
      agreesWithSchema(raw, limits);
    }),
    { numRuns: 3000 },
  );
});

Deno.test("fastValidate keeps and refuses what valibot does at the edges", () => {
  const limits = SMALL;
  for (
    const raw of [
      { ...GOOD, id: -0 },
      { ...GOOD, id: "x".repeat(256) },
      { ...GOOD, user_id: ` ${"x".repeat(16)} ` },
      { ...GOOD, metadata: undefined },
      { ...GOOD, metadata: null },
      { ...GOOD, metadata: { a: { b: { c: 1 } } } },
      { ...GOOD, timestamp: "2024-02-29T23:59:59.999-23:59" },
      { value: 1, event: "e", user_id: "u", timestamp: GOOD.timestamp, id: 1, zzz: 1 },
      Object.assign(Object.create(null), GOOD),
    ]
  ) {
    assert.ok(agreesWithSchema(raw, limits), JSON.stringify(raw));
    assert.notEqual(fastValidate(raw, limits), undefined, JSON.stringify(raw));
  }
  for (
    const raw of [
      { ...GOOD, metadata: { ["k".repeat(17)]: 1 } },
      { ...GOOD, metadata: { s: "x".repeat(17) } },
      { ...GOOD, metadata: { a: { b: { c: { d: {} } } } } },
      { ...GOOD, timestamp: "2025-02-29T00:00:00Z" },
      { ...GOOD, timestamp: "2025-13-01T00:00:00Z" },
    ]
  ) {
    assert.equal(agreesWithSchema(raw, limits), false, JSON.stringify(raw));
    assert.equal(fastValidate(raw, limits), undefined, JSON.stringify(raw));
  }
  assert.equal(fastValidate({ ...GOOD, metadata: { a: 1 } }, FLAT)?.metadata?.a, 1);
  assert.equal(fastValidate({ ...GOOD, metadata: { a: {} } }, FLAT), undefined);
  const none = { maxStringLength: 16, maxDepth: -1 };
  assert.equal(v.safeParse(dataRecordSchema(none), { ...GOOD, metadata: {} }).success, false);
  assert.equal(fastValidate({ ...GOOD, metadata: {} }, none), undefined);
  // Valid for valibot, but not a plain object: left to valibot.
  class Record_ {
    id = 1;
    timestamp = GOOD.timestamp;
    user_id = "u";
    event = "e";
    value = 1;
  }
  assert.equal(fastValidate(new Record_(), limits), undefined);
  assert.ok(v.safeParse(SCHEMAS.get(limits)!, new Record_()).success);
});
