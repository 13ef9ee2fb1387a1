import assert from "node:assert/strict";
import fc from "fast-check";
import * as v from "valibot";
import {
  checkNesting,
  DataRecord,
  dataRecordSchema,
  isRealDate,
  recordKey,
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
