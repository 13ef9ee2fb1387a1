/**
 * @module
 * Tests for `lib/body.ts`: content types, encodings, byte and record limits,
 * gzip bombs, strict UTF-8, JSON and NDJSON parsing, and properties over
 * random bytes, random records and random NDJSON line mixes.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import {
  type BodyLimits,
  type BodyResult,
  DEFAULT_BODY_LIMITS,
  parseJsonRecords,
  parseNdjsonRecords,
  readRecords,
} from "../../lib/body.ts";

const URL = "http://localhost/v1/records";
const JSON_TYPE = { "content-type": "application/json" };
const NDJSON_TYPE = { "content-type": "application/x-ndjson" };
const NDJSON_TYPES = ["application/x-ndjson", "application/ndjson", "application/jsonl"];
const MEDIA_TYPES = ["application/json", ...NDJSON_TYPES];
const encoder = new TextEncoder();

function post(body: BodyInit | null, headers: Record<string, string>): Request {
  return new Request(URL, { method: "POST", body, headers });
}

async function gzip(bytes: Uint8Array): Promise<Uint8Array<ArrayBuffer>> {
  const stream = new Blob([bytes as Uint8Array<ArrayBuffer>]).stream()
    .pipeThrough(new CompressionStream("gzip"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/** A body that hands out `bytes` in `chunkSize` pieces, only when read, and tells what it gave. */
function trackedStream(bytes: Uint8Array, chunkSize: number) {
  const seen = { pulledBytes: 0, cancelled: false };
  const stream = new ReadableStream<Uint8Array>({
    pull(controller) {
      if (seen.pulledBytes >= bytes.byteLength) {
        controller.close();
        return;
      }
      const chunk = bytes.slice(seen.pulledBytes, seen.pulledBytes + chunkSize);
      seen.pulledBytes += chunk.byteLength;
      controller.enqueue(chunk);
    },
    cancel() {
      seen.cancelled = true;
    },
  }, { highWaterMark: 0 });
  return { stream, seen };
}

/** Lets queued cancellations run their course; waits for an event, not for a duration. */
async function settle(done: () => boolean): Promise<void> {
  for (let i = 0; i < 100 && !done(); i++) await new Promise((resolve) => setTimeout(resolve, 0));
}

function assertRecords(result: BodyResult, expected: unknown[]): void {
  assert.ok(result.ok, `expected records, got ${JSON.stringify(result)}`);
  assert.deepEqual(result.value, expected);
}

function assertError(result: BodyResult, status: number, code: string) {
  assert.ok(!result.ok, `expected error ${code}, got ${JSON.stringify(result)}`);
  assert.equal(result.error.code, code, result.error.message);
  assert.equal(result.error.status, status);
  assert.equal(typeof result.error.message, "string");
  assert.ok(!result.error.message.endsWith("."), "message ends without a period");
  return result.error;
}

/** The obvious NDJSON parser, to hold `parseNdjsonRecords` against. */
function referenceNdjson(
  text: string,
): { ok: true; value: unknown[] } | { ok: false; line: number } {
  const value: unknown[] = [];
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    if (/^[\t\r ]*$/.test(lines[i])) continue;
    try {
      value.push(JSON.parse(lines[i]));
    } catch {
      return { ok: false, line: i + 1 };
    }
  }
  return value.length === 0 ? { ok: false, line: 0 } : { ok: true, value };
}

/** Asserts that `actual` is what {@linkcode referenceNdjson} answers for `text`. */
function assertAsReference(actual: BodyResult, text: string): void {
  const expected = referenceNdjson(text);
  if (expected.ok) {
    assertRecords(actual, expected.value);
  } else if (expected.line === 0) {
    assertError(actual, 400, "empty_body");
  } else {
    const error = assertError(actual, 400, "invalid_ndjson");
    assert.deepEqual(error.details, { line: expected.line });
  }
}

const RECORD = {
  id: 1,
  timestamp: "2025-01-15T10:00:00Z",
  user_id: "user_001",
  event: "login",
  value: 1,
  metadata: { ip: "192.168.1.1" },
};
const SMALL: BodyLimits = { maxBytes: 1024, maxRecords: 3 };

Deno.test("DEFAULT_BODY_LIMITS is 10 MiB and 10000 records", () => {
  assert.deepEqual(DEFAULT_BODY_LIMITS, { maxBytes: 10 * 1024 * 1024, maxRecords: 10_000 });
});

Deno.test("parseJsonRecords turns an object into one record and an array into its elements", () => {
  assertRecords(parseJsonRecords('{"id":1}'), [{ id: 1 }]);
  assertRecords(parseJsonRecords(' [{"id":1}, {"id":2}, 3] '), [{ id: 1 }, { id: 2 }, 3]);
  assertRecords(parseJsonRecords("[]"), []);
});

Deno.test("parseJsonRecords refuses other JSON values as invalid_json", () => {
  for (const text of ["1", '"x"', "null", "true"]) {
    const error = assertError(parseJsonRecords(text), 400, "invalid_json");
    assert.match(error.message, /object or an array/);
  }
});

Deno.test("parseJsonRecords reports the parser's message as invalid_json", () => {
  const error = assertError(parseJsonRecords('{"id":'), 400, "invalid_json");
  assert.match(error.message, /^Cannot parse JSON body: \S/);
});

Deno.test("parseJsonRecords and parseNdjsonRecords answer empty_body for whitespace", () => {
  for (const text of ["", " ", "\n\r\n\t "]) {
    assertError(parseJsonRecords(text), 400, "empty_body");
    assertError(parseNdjsonRecords(text), 400, "empty_body");
  }
});

Deno.test("parseJsonRecords and parseNdjsonRecords survive pathological nesting", () => {
  const depth = 1_000_000;
  for (const text of ["[".repeat(depth) + "]".repeat(depth), "[".repeat(depth)]) {
    for (const result of [parseJsonRecords(text), parseNdjsonRecords(text)]) {
      if (!result.ok) assert.equal(result.error.status, 400);
    }
  }
  assertError(parseJsonRecords("[".repeat(depth)), 400, "invalid_json");
  assertError(parseNdjsonRecords("[".repeat(depth)), 400, "invalid_ndjson");
});

Deno.test("parseNdjsonRecords reads one value per line and skips blank and CRLF lines", () => {
  assertRecords(parseNdjsonRecords('{"id":1}\r\n\r\n  \n{"id":2}\r\n[3]\n"s"\n'), [
    { id: 1 },
    { id: 2 },
    [3],
    "s",
  ]);
  assertRecords(parseNdjsonRecords('\n\n{"id":1}'), [{ id: 1 }]);
});

Deno.test("parseNdjsonRecords names the 1-based line of the first bad line", async (t) => {
  await t.step("a broken object", () => {
    const error = assertError(
      parseNdjsonRecords('{"id":1}\n\n{"id":\n{"id":2}'),
      400,
      "invalid_ndjson",
    );
    assert.deepEqual(error.details, { line: 3 });
    assert.match(error.message, /^Cannot parse NDJSON line 3: \S/);
  });
  await t.step("fragments that only parse when lines are joined", () => {
    for (
      const [text, line] of [
        ["1,2", 1],
        ['{"a":1}\n[1\n2]', 2],
        ['{"a":1}\n{"b":\n1}', 2],
        ['"abc\ndef"', 1],
        ["[\n]", 1],
        ['{"a":1}\n]', 2],
        ['{"a":1},{"b":2}', 1],
      ] as const
    ) {
      const error = assertError(parseNdjsonRecords(text), 400, "invalid_ndjson");
      assert.deepEqual(error.details, { line }, text);
    }
  });
});

Deno.test("readRecords reads JSON and NDJSON bodies", async (t) => {
  await t.step("a JSON array", async () => {
    assertRecords(await readRecords(post(JSON.stringify([RECORD, RECORD]), JSON_TYPE)), [
      RECORD,
      RECORD,
    ]);
  });
  await t.step("a JSON object", async () => {
    assertRecords(await readRecords(post(JSON.stringify(RECORD), JSON_TYPE)), [RECORD]);
  });
  await t.step("content type with parameters and in upper case", async () => {
    const headers = { "content-type": "Application/JSON ; charset=UTF-8" };
    assertRecords(await readRecords(post("[1]", headers)), [1]);
  });
  for (const type of NDJSON_TYPES) {
    await t.step(`NDJSON as ${type}`, async () => {
      const body = `${JSON.stringify(RECORD)}\n${JSON.stringify(RECORD)}\n`;
      assertRecords(await readRecords(post(body, { "content-type": type })), [RECORD, RECORD]);
    });
  }
  await t.step("CRLF NDJSON", async () => {
    const body = '{"id":1}\r\n\r\n{"id":2}\r\n';
    assertRecords(await readRecords(post(body, NDJSON_TYPE)), [{ id: 1 }, { id: 2 }]);
  });
});

Deno.test("readRecords answers 415 unsupported_media_type naming the type", async (t) => {
  await t.step("missing content type", async () => {
    const req = new Request(URL, { method: "POST", body: encoder.encode("[1]") });
    assert.equal(req.headers.get("content-type"), null);
    const error = assertError(await readRecords(req), 415, "unsupported_media_type");
    assert.match(error.message, /^Missing content type: /);
    for (const type of MEDIA_TYPES) assert.ok(error.message.includes(type), type);
  });
  await t.step("another content type", async () => {
    const error = assertError(
      await readRecords(post("[1]", { "content-type": "text/plain; charset=utf-8" })),
      415,
      "unsupported_media_type",
    );
    assert.match(error.message, /"text\/plain; charset=utf-8"/);
    for (const type of MEDIA_TYPES) assert.ok(error.message.includes(type), type);
    assert.deepEqual(error.details, {
      received: "text/plain; charset=utf-8",
      accepted: MEDIA_TYPES,
    });
  });
});

Deno.test("readRecords honours content-encoding", async (t) => {
  const records = [RECORD, { ...RECORD, id: 2 }];
  const compressed = await gzip(encoder.encode(JSON.stringify(records)));
  for (const encoding of ["gzip", "x-gzip", "GZIP"]) {
    await t.step(`inflates ${encoding}`, async () => {
      const req = post(compressed, { ...JSON_TYPE, "content-encoding": encoding });
      assertRecords(await readRecords(req), records);
    });
  }
  await t.step("reads identity as is", async () => {
    const req = post(JSON.stringify(records), { ...JSON_TYPE, "content-encoding": "identity" });
    assertRecords(await readRecords(req), records);
  });
  await t.step("refuses br as unsupported_encoding", async () => {
    const req = post(compressed, { ...JSON_TYPE, "content-encoding": "br" });
    const error = assertError(await readRecords(req), 415, "unsupported_encoding");
    assert.match(error.message, /"br"/);
  });
  await t.step("refuses bytes that are not gzip as invalid_gzip", async () => {
    const req = post(encoder.encode('[{"id":1}]'), { ...JSON_TYPE, "content-encoding": "gzip" });
    assertError(await readRecords(req), 400, "invalid_gzip");
  });
  await t.step("refuses truncated gzip as invalid_gzip", async () => {
    const req = post(compressed.slice(0, compressed.byteLength - 6), {
      ...JSON_TYPE,
      "content-encoding": "gzip",
    });
    assertError(await readRecords(req), 400, "invalid_gzip");
  });
});

Deno.test("readRecords answers 413 from content-length without reading the body", async () => {
  const { stream, seen } = trackedStream(encoder.encode("[1]"), 1);
  const req = post(stream, { ...JSON_TYPE, "content-length": "1025" });

  const error = assertError(await readRecords(req, SMALL), 413, "body_too_large");

  assert.equal(seen.pulledBytes, 0);
  assert.deepEqual(error.details, { limit: 1024, received: 1025 });
});

Deno.test("readRecords stops reading a body once it passes maxBytes", async () => {
  const body = encoder.encode(JSON.stringify(Array.from({ length: 1000 }, () => RECORD)));
  const { stream, seen } = trackedStream(body, 100);

  const error = assertError(
    await readRecords(post(stream, JSON_TYPE), SMALL),
    413,
    "body_too_large",
  );
  await settle(() => seen.cancelled);

  assert.deepEqual(error.details, { limit: 1024 });
  assert.ok(seen.pulledBytes <= 1100, `read ${seen.pulledBytes} bytes`);
  assert.ok(seen.cancelled);
});

Deno.test("readRecords accepts a body of exactly maxBytes", async () => {
  const body = "[" + " ".repeat(SMALL.maxBytes - 3) + "1]";
  assert.equal(encoder.encode(body).byteLength, SMALL.maxBytes);
  assertRecords(await readRecords(post(body, JSON_TYPE), SMALL), [1]);
  const gzipped = await gzip(encoder.encode(body));
  const req = post(gzipped, { ...JSON_TYPE, "content-encoding": "gzip" });
  assertRecords(await readRecords(req, SMALL), [1]);
});

Deno.test("readRecords stops inflating a gzip bomb at maxBytes", async () => {
  const zeros = new Uint8Array(1024 * 1024);
  const compressor = new CompressionStream("gzip");
  const writer = compressor.writable.getWriter();
  const writing = (async () => {
    for (let i = 0; i < 50; i++) await writer.write(zeros);
    await writer.close();
  })();
  const bomb = new Uint8Array(await new Response(compressor.readable).arrayBuffer());
  await writing;
  const { stream, seen } = trackedStream(bomb, 512);
  const req = post(stream, { ...JSON_TYPE, "content-encoding": "gzip" });

  const error = assertError(
    await readRecords(req, { maxBytes: 1024 * 1024, maxRecords: 10 }),
    413,
    "body_too_large",
  );
  await settle(() => seen.cancelled);

  // 50 MiB of zeros packs into about 50 KiB: passing 1 MiB inflated takes
  // about 1 KiB of it, so reading most of the bomb would mean inflating most of it.
  assert.match(error.message, /^Inflated request body exceeds the limit of 1048576 bytes/);
  assert.ok(
    seen.pulledBytes < bomb.byteLength / 4,
    `read ${seen.pulledBytes} of ${bomb.byteLength} compressed bytes`,
  );
  assert.ok(seen.cancelled, "the body stream is cancelled");
});

Deno.test("readRecords caps compressed bytes at maxBytes too", async () => {
  const noise = crypto.getRandomValues(new Uint8Array(4096));
  const compressed = await gzip(noise);
  const { stream, seen } = trackedStream(compressed, 2048);
  const req = post(stream, { ...JSON_TYPE, "content-encoding": "gzip" });

  const error = assertError(await readRecords(req, SMALL), 413, "body_too_large");
  await settle(() => seen.cancelled);

  assert.match(error.message, /^Compressed request body/);
  assert.ok(seen.cancelled);
});

Deno.test("readRecords refuses bytes that are not UTF-8 as invalid_utf8", async (t) => {
  const cases: Record<string, number[]> = {
    "a stray continuation byte": [0x80],
    "an invalid byte": [0xff],
    "an overlong encoding": [0xc0, 0xaf],
    "an encoded surrogate": [0xed, 0xa0, 0x80],
    "a truncated sequence": [0xe2, 0x82],
  };
  for (const [name, bad] of Object.entries(cases)) {
    await t.step(name, async () => {
      const body = new Uint8Array([...encoder.encode('[{"s":"'), ...bad, ...encoder.encode('"}]')]);
      assertError(await readRecords(post(body, JSON_TYPE)), 400, "invalid_utf8");
      assertError(
        await readRecords(post(await gzip(body), { ...NDJSON_TYPE, "content-encoding": "gzip" })),
        400,
        "invalid_utf8",
      );
    });
  }
});

Deno.test("readRecords skips a leading byte order mark", async () => {
  const bom = [0xef, 0xbb, 0xbf];
  const json = new Uint8Array([...bom, ...encoder.encode('[{"id":1}]')]);
  assertRecords(await readRecords(post(json, JSON_TYPE)), [{ id: 1 }]);
  const ndjson = new Uint8Array([...bom, ...encoder.encode('{"id":1}\n{"id":2}\n')]);
  assertRecords(await readRecords(post(ndjson, NDJSON_TYPE)), [{ id: 1 }, { id: 2 }]);
});

Deno.test("readRecords answers empty_body for no body or whitespace only", async (t) => {
  await t.step("no body", async () => {
    assertError(await readRecords(post(null, JSON_TYPE)), 400, "empty_body");
  });
  await t.step("zero bytes", async () => {
    assertError(await readRecords(post("", NDJSON_TYPE)), 400, "empty_body");
  });
  await t.step("whitespace", async () => {
    assertError(await readRecords(post(" \r\n\t", JSON_TYPE)), 400, "empty_body");
    assertError(await readRecords(post("\n\r\n  \n", NDJSON_TYPE)), 400, "empty_body");
  });
  await t.step("zero bytes with gzip", async () => {
    const headers = { ...JSON_TYPE, "content-encoding": "gzip" };
    assertError(await readRecords(post("", headers)), 400, "empty_body");
    const empty = await gzip(new Uint8Array(0));
    assertError(await readRecords(post(empty, headers)), 400, "empty_body");
  });
});

Deno.test("readRecords refuses unparsable JSON and NDJSON", async () => {
  const json = assertError(await readRecords(post("[{", JSON_TYPE)), 400, "invalid_json");
  assert.match(json.message, /^Cannot parse JSON body: \S/);
  const ndjson = assertError(
    await readRecords(post('{"id":1}\r\n\r\nnope\r\n', NDJSON_TYPE)),
    400,
    "invalid_ndjson",
  );
  assert.deepEqual(ndjson.details, { line: 3 });
  assert.match(ndjson.message, /line 3/);
});

Deno.test("readRecords answers 413 too_many_records past maxRecords", async () => {
  const limits = { maxBytes: 1024 * 1024, maxRecords: 2 };
  const json = assertError(
    await readRecords(post("[1,2,3]", JSON_TYPE), limits),
    413,
    "too_many_records",
  );
  assert.deepEqual(json.details, { limit: 2, received: 3 });
  const ndjson = assertError(
    await readRecords(post("1\n2\n3\n", NDJSON_TYPE), limits),
    413,
    "too_many_records",
  );
  assert.deepEqual(ndjson.details, { limit: 2, received: 3 });
  assertRecords(await readRecords(post("1\n2\n", NDJSON_TYPE), limits), [1, 2]);
});

Deno.test("readRecords answers invalid_body when the body stream fails", async (t) => {
  function failing() {
    let sent = false;
    return new ReadableStream<Uint8Array>({
      pull(controller) {
        if (sent) throw new Error("connection reset");
        sent = true;
        controller.enqueue(encoder.encode("[1,"));
      },
    });
  }
  await t.step("plain", async () => {
    const error = assertError(await readRecords(post(failing(), JSON_TYPE)), 400, "invalid_body");
    assert.match(error.message, /connection reset/);
  });
  await t.step("gzip", async () => {
    const req = post(failing(), { ...JSON_TYPE, "content-encoding": "gzip" });
    assertError(await readRecords(req), 400, "invalid_body");
  });
  await t.step("a body already read", async () => {
    const req = post("[1]", JSON_TYPE);
    await req.text();
    assertError(await readRecords(req), 400, "invalid_body");
  });
  await t.step("chunks that are not bytes", async () => {
    const stream = new ReadableStream({
      start(controller) {
        controller.enqueue("[1]");
        controller.close();
      },
    });
    const plain = post(stream as ReadableStream<Uint8Array>, JSON_TYPE);
    assertError(await readRecords(plain), 400, "invalid_body");
  });
});

Deno.test("readRecords never throws and answers ok or a 4xx error for random bytes", async () => {
  const bodies = fc.oneof(
    fc.uint8Array({ maxLength: 300 }),
    fc.string({ unit: "binary", maxLength: 200 }).map((s) => encoder.encode(s)),
    fc.json({ maxDepth: 4 }).map((s) => encoder.encode(s)),
    fc.tuple(fc.array(fc.json({ maxDepth: 3 }), { maxLength: 8 }), fc.constantFrom("\n", "\r\n"))
      .map(([lines, eol]) => encoder.encode(lines.join(eol))),
  );
  await fc.assert(
    fc.asyncProperty(
      bodies,
      fc.constantFrom(...MEDIA_TYPES, "text/plain", undefined),
      fc.constantFrom("none", "header only", "gzip"),
      fc.boolean(),
      async (bytes, type, encoding, gzipped) => {
        const headers: Record<string, string> = {};
        if (type !== undefined) headers["content-type"] = type;
        let body: Uint8Array = bytes;
        if (encoding !== "none") headers["content-encoding"] = "gzip";
        if (encoding === "gzip" && gzipped) body = await gzip(bytes);
        const limits = { maxBytes: 256, maxRecords: 5 };

        const result = await readRecords(post(body as Uint8Array<ArrayBuffer>, headers), limits);

        if (result.ok) {
          assert.ok(Array.isArray(result.value));
          assert.ok(result.value.length <= limits.maxRecords);
        } else {
          assert.ok([400, 413, 415].includes(result.error.status), JSON.stringify(result.error));
          assert.match(result.error.code, /^[a-z][a-z0-9_]*$/);
          assert.ok(result.error.message.length > 0);
        }
      },
    ),
    { numRuns: 300 },
  );
});

Deno.test("readRecords gives back the same records as a JSON array, NDJSON and gzip NDJSON", async () => {
  const records = fc.array(
    fc.dictionary(fc.string(), fc.jsonValue({ maxDepth: 3 }), { maxKeys: 6 }),
    { minLength: 1, maxLength: 20 },
  );
  await fc.assert(
    fc.asyncProperty(records, fc.constantFrom("\n", "\r\n"), async (objects, eol) => {
      // JSON cannot carry -0, so the expected value is what survives a round trip.
      const expected = JSON.parse(JSON.stringify(objects));
      const ndjson = objects.map((o) => JSON.stringify(o)).join(eol) + eol;
      const limits = { maxBytes: 1024 * 1024, maxRecords: 20 };

      const fromJson = await readRecords(post(JSON.stringify(objects), JSON_TYPE), limits);
      const fromNdjson = await readRecords(post(ndjson, NDJSON_TYPE), limits);
      const fromGzip = await readRecords(
        post(await gzip(encoder.encode(ndjson)), { ...NDJSON_TYPE, "content-encoding": "gzip" }),
        limits,
      );

      assertRecords(fromJson, expected);
      assertRecords(fromNdjson, expected);
      assertRecords(fromGzip, expected);
    }),
    { numRuns: 150 },
  );
});

/** NDJSON lines that trip up parsers which do not parse each line on its own. */
const trickyLine = fc.oneof(
  fc.constantFrom(
    '{"a":1}',
    "[1,2]",
    "1,2",
    "[",
    "]",
    "[1",
    "2]",
    "{",
    "}",
    '{"a":',
    "1}",
    '"abc',
    'def"',
    ",",
    "],[",
    '{"a":1},{"b":2}',
    "",
    "  ",
    "\r",
    '  {"b":[1,{"c":null}]}  \r',
    "null",
    "\ufeff1",
    "\u00a0",
    "1 2",
    '"\\u2028"',
  ),
  fc.json({ maxDepth: 2 }),
  fc.string({ maxLength: 8 }).filter((s) => !s.includes("\n")),
);
Deno.test("parseNdjsonRecords agrees with a line-by-line reference on tricky line mixes", () => {
  fc.assert(
    fc.property(
      fc.array(trickyLine, { maxLength: 12 }),
      fc.constantFrom("\n", "\r\n"),
      (lines, eol) => {
        const text = lines.join(eol);

        assertAsReference(parseNdjsonRecords(text), text);
      },
    ),
    { numRuns: 2000 },
  );
});

Deno.test("readRecords gives an NDJSON body cut into any chunks the answer of the whole body", async () => {
  const line = fc.oneof(
    trickyLine,
    fc.constantFrom('{"city":"Zürich","note":"日本 🎉"}', "\u00e9", "€"),
  );
  const notUtf8 = fc.constantFrom([0xff], [0xc3], [0xe2, 0x82], [0xed, 0xa0, 0x80]);
  await fc.assert(
    fc.asyncProperty(
      fc.array(line, { maxLength: 12 }),
      fc.constantFrom("\n", "\r\n"),
      fc.option(fc.tuple(fc.nat(), notUtf8), { nil: undefined }),
      fc.array(fc.nat(), { maxLength: 6 }),
      async (lines, eol, bad, cuts) => {
        let bytes = encoder.encode(lines.join(eol));
        if (bad !== undefined) {
          const at = bad[0] % (bytes.length + 1);
          bytes = new Uint8Array([...bytes.subarray(0, at), ...bad[1], ...bytes.subarray(at)]);
        }
        const points = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b);
        const chunks = [0, ...points].map((from, k) =>
          bytes.slice(from, k < points.length ? points[k] : bytes.length)
        );
        const body = new ReadableStream<Uint8Array>({
          pull(controller) {
            const next = chunks.shift();
            if (next === undefined) controller.close();
            else controller.enqueue(next);
          },
        });

        const actual = await readRecords(post(body, NDJSON_TYPE), DEFAULT_BODY_LIMITS);

        let text: string;
        try {
          text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
        } catch {
          assertError(actual, 400, "invalid_utf8");
          return;
        }
        assertAsReference(actual, text);
      },
    ),
    { numRuns: 1000 },
  );
});
