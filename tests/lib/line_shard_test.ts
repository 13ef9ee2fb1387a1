/**
 * @module
 * Tests of {@linkcode lineIdKey} and {@linkcode lineShard}: examples of
 * each way a line can carry (or hide) its id, and property tests over
 * generated JSON objects written in many ways (whitespace, escaped keys
 * and values, nested objects with their own `id`, repeated `id` keys,
 * numbers as `1`, `1.0`, `1e0`, `"1"`), over those lines broken, and over
 * arbitrary text: the key is always the one `JSON.parse` would give, and
 * every line has exactly one shard, the same whether it is asked alone or
 * in the middle of a text.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { hashRange, lineIdKey, lineShard, lineShardAt } from "../../lib/line_shard.ts";
import { recordKey } from "../../lib/schemas.ts";

/** The key `JSON.parse` gives a line: `recordKey(id)` for a string or number id, else `undefined`. */
function parsedKey(line: string): { json: boolean; key: string | undefined } {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    return { json: false, key: undefined };
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    return { json: true, key: undefined };
  }
  const id = (value as Record<string, unknown>).id;
  return {
    json: true,
    key: typeof id === "string" || typeof id === "number" ? recordKey(id) : undefined,
  };
}

/** The shard `lineShard` must give: the hash of the key, or 0 without one. */
function expectedShard(line: string, shards: number): number {
  const key = lineIdKey(line);
  return key === undefined || shards <= 1 ? 0 : hashRange(key, 0, key.length) % shards;
}

Deno.test("lineIdKey reads the top-level id the way JSON.parse does", async (t) => {
  const cases: Array<[string, string | undefined]> = [
    ['{"id":7,"event":"login"}', "7"],
    ['{"id":"7","event":"login"}', "7"],
    ['{"id":7}', "7"],
    ['{"id":0,"x":1}', "0"],
    ['{"id":-0}', "0"],
    ['{"id":1.0}', "1"],
    ['{"id":1e3}', "1000"],
    ['{"id":12345678901234567}', "12345678901234568"],
    ['{"id":1.5}', "1.5"],
    ['{"id":"a\\"b"}', 'a"b'],
    ['{"id":"\\u00e9"}', "é"],
    ['{"id":""}', ""],
    ['  { "event" : "x" , "id" : "abc" }  ', "abc"],
    ['{"event":"login","id":42}', "42"],
    ['{"meta":{"id":1},"id":2}', "2"],
    ['{"id":2,"meta":{"id":1}}', "2"],
    ['{"id":1,"id":2}', "2"],
    ['{"id":1,"x":"y","id":"z"}', "z"],
    ['{"id":1,"\\u0069d":3}', "3"],
    ['{"i\\u0064":5}', "5"],
    ['{"id":1,"user_id":"u"}', "1"],
    ['{"id":1,"x":"\\"id\\""}', "1"],
    ['{"id":1,"x":["id",{"id":9}]}', "1"],
    ['{"meta":{"id":1}}', undefined],
    ['{"x":1}', undefined],
    ["{}", undefined],
    ['{"id":null}', undefined],
    ['{"id":true}', undefined],
    ['{"id":{"a":1}}', undefined],
    ['{"id":[1]}', undefined],
    ['{"id":1,"id":null}', undefined],
    ["[1,2]", undefined],
    ['"id"', undefined],
    ["", undefined],
    ["   ", undefined],
    ["not json", undefined],
  ];
  for (const [line, key] of cases) {
    await t.step(line === "" ? "(empty line)" : line, () => {
      assert.equal(lineIdKey(line), key);
      const parsed = parsedKey(line);
      if (parsed.json) assert.equal(key, parsed.key, "the table agrees with JSON.parse");
      for (const shards of [1, 2, 3, 4]) {
        assert.equal(lineShard(line, shards), expectedShard(line, shards));
      }
    });
  }
});

Deno.test("lineShard gives one id, written any way, one shard", () => {
  for (const shards of [2, 3, 4, 7]) {
    const forms = [
      '{"id":42}',
      '{"id":"42"}',
      '{"id":42.0}',
      '{"id":4.2e1}',
      '{ "x": 1, "id": 42 }',
    ];
    const got = forms.map((line) => lineShard(line, shards));
    assert.equal(new Set(got).size, 1, `${shards} shards: ${got}`);
  }
});

Deno.test("lineShard spreads consecutive ids over the shards", () => {
  for (const shards of [2, 3, 4]) {
    const counts = new Array<number>(shards).fill(0);
    for (let id = 1; id <= 30_000; id++) counts[lineShard(`{"id":${id},"v":1}`, shards)]++;
    for (const c of counts) {
      assert.ok(Math.abs(c - 30_000 / shards) < 30_000 / shards * 0.05, `${counts}`);
    }
    const strings = new Array<number>(shards).fill(0);
    for (let id = 1; id <= 30_000; id++) strings[lineShard(`{"id":"ev-${id * 2}"}`, shards)]++;
    for (const c of strings) {
      assert.ok(Math.abs(c - 30_000 / shards) < 30_000 / shards * 0.05, `${strings}`);
    }
  }
});

/** JSON whitespace, or none. */
const space = fc.constantFrom("", "", "", " ", "  ", "\t", "\r\n", " \n ");

/** A string written as JSON, sometimes with characters escaped that need not be. */
function jsonString(s: string, escapeAll: boolean): string {
  if (!escapeAll) return JSON.stringify(s);
  return `"${[...s].map((ch) => `\\u${ch.charCodeAt(0).toString(16).padStart(4, "0")}`).join("")}"`;
}

/** A JSON value with its text, nested objects sometimes holding an `id` of their own. */
const value: fc.Arbitrary<string> = fc.letrec<{ value: string }>((tie) => ({
  value: fc.oneof(
    { depthSize: "small", withCrossShrink: true },
    fc.constantFrom("null", "true", "false", "0", "-1", "1.5", "1e3", '"id"', '"\\"id\\":1"'),
    fc.integer().map(String),
    fc.string({ maxLength: 6 }).map((s) => JSON.stringify(s)),
    fc.array(tie("value"), { maxLength: 3 }).map((items) => `[${items.join(",")}]`),
    fc.array(fc.tuple(fc.constantFrom("id", "x", "user_id", "id "), tie("value")), {
      maxLength: 3,
    }).map((entries) => `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${v}`).join(",")}}`),
  ),
})).value;

/** An id value as written: numbers in several notations, strings with escapes. */
const idValue = fc.oneof(
  fc.nat({ max: 1_000_000 }).map(String),
  fc.nat({ max: 1_000 }).map((n) => `${n}.0`),
  fc.nat({ max: 1_000 }).map((n) => `${n}e0`),
  fc.nat({ max: 1_000 }).map((n) => `-${n}`),
  fc.constantFrom("1.25", "1E2", "-0", "9007199254740993", "null", "true", "{}", "[]", '{"id":1}'),
  fc.tuple(fc.string({ maxLength: 8 }), fc.boolean()).map(([s, all]) => jsonString(s, all)),
  fc.nat({ max: 1_000 }).map((n) => JSON.stringify(String(n))),
);

/** A JSON object line: keys in any order, `id` absent, once or repeated, keys sometimes escaped. */
const objectLine = fc.record({
  entries: fc.array(
    fc.oneof(
      fc.tuple(fc.constant("id"), idValue),
      fc.tuple(fc.constantFrom("user_id", "event", "ID", "idx", "metadata", "x"), value),
    ),
    { maxLength: 6 },
  ),
  escapeKeys: fc.array(fc.boolean(), { minLength: 6, maxLength: 6 }),
  spaces: fc.array(space, { minLength: 30, maxLength: 30 }),
}).map(({ entries, escapeKeys, spaces }) => {
  let k = 0;
  const sp = () => spaces[k++ % spaces.length];
  const body = entries.map(([key, v], i) =>
    `${sp()}${jsonString(key, escapeKeys[i])}${sp()}:${sp()}${v}${sp()}`
  );
  return `${sp()}{${body.join(",")}${entries.length === 0 ? sp() : ""}}${sp()}`;
});

Deno.test("lineIdKey agrees with JSON.parse on any JSON object line", () => {
  fc.assert(
    fc.property(objectLine, fc.integer({ min: 2, max: 5 }), (line, shards) => {
      const parsed = parsedKey(line);
      assert.ok(parsed.json, `generated line is not JSON: ${line}`);
      assert.equal(lineIdKey(line), parsed.key, line);
      assert.equal(lineShard(line, shards), expectedShard(line, shards), line);
    }),
    { numRuns: 5_000 },
  );
});

Deno.test("lineShard gives every line, broken or not, exactly one shard in range", () => {
  const broken = fc.tuple(objectLine, fc.nat(), fc.nat(), fc.string({ maxLength: 3 })).map(
    ([line, a, b, insert]) => {
      const i = a % (line.length + 1);
      const j = i + (b % 4);
      return line.slice(0, i) + insert + line.slice(j);
    },
  );
  const anyLine = fc.oneof(
    broken,
    fc.string({ maxLength: 40 }),
    fc.string({ unit: "binary", maxLength: 20 }),
  );
  fc.assert(
    fc.property(anyLine, fc.integer({ min: 1, max: 5 }), (line, shards) => {
      const shard = lineShard(line, shards);
      assert.ok(Number.isInteger(shard) && shard >= 0 && shard < shards, `${shard} for ${line}`);
      // The same answer every time, so no two shards both take or both skip the line.
      assert.equal(lineShard(line, shards), shard);
      assert.equal(shard, expectedShard(line, shards), line);
      // Any line that is JSON gets the key JSON.parse gives it.
      const parsed = parsedKey(line);
      if (parsed.json) assert.equal(lineIdKey(line), parsed.key, line);
    }),
    { numRuns: 10_000 },
  );
});

Deno.test("lineShardAt gives each line of a text the shard lineShard gives it alone", () => {
  const anyLine = fc.oneof(
    { weight: 4, arbitrary: objectLine.map((l) => l.replaceAll("\n", " ")) },
    fc.constantFrom('{"id":1}', '{"id":"a\\"b"}', '{"id":1,"x":"\\"}', '{"id":2,"id":3}', ""),
    fc.string({ maxLength: 12 }).map((l) => l.replaceAll("\n", "")),
  );
  fc.assert(
    fc.property(
      fc.array(anyLine, { maxLength: 12 }),
      fc.integer({ min: 2, max: 4 }),
      (lines, shards) => {
        const text = lines.join("\n");
        let start = 0;
        for (const line of lines) {
          assert.equal(
            lineShardAt(text, start, start + line.length, shards),
            lineShard(line, shards),
            line,
          );
          start += line.length + 1;
        }
      },
    ),
    { numRuns: 3_000 },
  );
});
