/**
 * @module
 * Measures reading `POST /v1/records` bodies (`lib/body.ts`): parsing NDJSON
 * and JSON text alone, then `readRecords` on a whole `Request`, raw and gzip,
 * for 100 and 1000 typical `DataRecord` lines.
 *
 * Records per second = records in the bench name / average time per
 * iteration. Run with `deno bench --allow-all bench/body_bench.ts`.
 */
import {
  DEFAULT_BODY_LIMITS,
  parseJsonRecords,
  parseNdjsonRecords,
  readRecords,
} from "../lib/body.ts";

const SIZES = [100, 1000];
const EVENTS = ["login", "logout", "purchase", "view", "click"];

/** One typical record line, like `{"id":1,"timestamp":"2025-01-15T10:00:00Z",...}`. */
function recordLine(i: number): string {
  return JSON.stringify({
    id: i + 1,
    timestamp: `2025-01-15T10:${String(Math.floor(i / 60) % 60).padStart(2, "0")}:${
      String(i % 60).padStart(2, "0")
    }Z`,
    user_id: `user_${String(i % 1000).padStart(3, "0")}`,
    event: EVENTS[i % EVENTS.length],
    value: (i % 100) + 0.5,
    metadata: { ip: `192.168.1.${i % 255}` },
  });
}

async function gzip(bytes: Uint8Array<ArrayBuffer>): Promise<Uint8Array<ArrayBuffer>> {
  const stream = new Blob([bytes]).stream().pipeThrough(new CompressionStream("gzip"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

function post(body: Uint8Array<ArrayBuffer>, headers: Record<string, string>): Request {
  return new Request("http://localhost/v1/records", { method: "POST", body, headers });
}

const encoder = new TextEncoder();
const runtime = "Deno" in globalThis ? `Deno ${Deno.version.deno}` : "unknown runtime";
console.log(
  `body_bench on ${runtime}: ${recordLine(0).length}-byte records, e.g. ${recordLine(0)}`,
);

for (const n of SIZES) {
  const lines = Array.from({ length: n }, (_, i) => recordLine(i));
  const ndjson = lines.join("\n") + "\n";
  const json = "[" + lines.join(",") + "]";
  const ndjsonBytes = encoder.encode(ndjson);
  const gzipped = await gzip(ndjsonBytes);
  const ndjsonHeaders = { "content-type": "application/x-ndjson" };
  const gzipHeaders = { ...ndjsonHeaders, "content-encoding": "gzip" };
  for (const [text, parse] of [[ndjson, parseNdjsonRecords], [json, parseJsonRecords]] as const) {
    const result = parse(text);
    if (!result.ok || result.value.length !== n) throw new Error(`bench data for ${n} is wrong`);
  }

  Deno.bench(`parseNdjsonRecords ${n} records (${ndjson.length} B)`, {
    group: `parse ${n}`,
    baseline: true,
  }, () => {
    parseNdjsonRecords(ndjson);
  });
  Deno.bench(`parseJsonRecords ${n} records (${json.length} B)`, { group: `parse ${n}` }, () => {
    parseJsonRecords(json);
  });

  Deno.bench(`readRecords NDJSON ${n} records`, {
    group: `request ${n}`,
    baseline: true,
  }, async (b) => {
    const req = post(ndjsonBytes, ndjsonHeaders);
    b.start();
    const result = await readRecords(req, DEFAULT_BODY_LIMITS);
    b.end();
    if (!result.ok) throw new Error(result.error.message);
  });
  Deno.bench(
    `readRecords gzip NDJSON ${n} records (${gzipped.byteLength} B)`,
    { group: `request ${n}` },
    async (b) => {
      const req = post(gzipped, gzipHeaders);
      b.start();
      const result = await readRecords(req, DEFAULT_BODY_LIMITS);
      b.end();
      if (!result.ok) throw new Error(result.error.message);
    },
  );
}
