/**
 * @module
 * Tests of the `process` command on real files in a temporary directory:
 * seed 000's records with an invalid record, a line that is not JSON, a
 * blank line and a duplicate id; a missing input; overlong lines; a 10k
 * record generated file through small batches and mailboxes; and the
 * command itself run as `deno run -A main.ts process`. The line splitter
 * gets a property test over arbitrary text cut at arbitrary bytes.
 */
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { mkdir, mkdtemp, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import * as v from "valibot";
import { writeRecords } from "../../bench/make_records.ts";
import { type Config, defaultConfig, parseConfig } from "../../lib/config.ts";
import { FaultInjector, FaultPlan } from "../../lib/faults.ts";
import { FAILED_FILE, PROCESSED_FILE, SUMMARY_FILE } from "../../lib/jsonl_store.ts";
import { createMetrics } from "../../lib/metrics.ts";
import {
  LineSplitter,
  OverlongLine,
  processFile,
  type ProcessOptions,
  runProcess,
} from "../../lib/process_file.ts";
import type { FailedRecord, ProcessedRecord } from "../../lib/schemas.ts";

const ROOT = new URL("../../", import.meta.url).pathname;

const SEED_000_LINES = [
  `{"id":1,"timestamp":"2025-01-15T10:00:00Z","user_id":"user_001","event":"login","value":1.0,"metadata":{"ip":"192.168.1.1"}}`,
  `{"id":2,"timestamp":"2025-01-15T10:00:05Z","user_id":"user_001","event":"page_view","value":0.5,"metadata":{"page":"/home"}}`,
];

/** Seed 000's records, an invalid record, a blank line, a line that is not JSON, a duplicate id. */
const MIXED = [
  ...SEED_000_LINES,
  `{"id":3,"timestamp":"2025-01-15T10:00:06Z","event":"login","value":2}`,
  "",
  `{"id":4,"timestamp": not json`,
  `{"id":1,"timestamp":"2025-01-15T11:00:00Z","user_id":"user_001","event":"logout","value":100}`,
].join("\n") + "\n";

const EXPECTED_USER = {
  total_events: 2,
  total_value: 1.5,
  events: ["login", "page_view"],
  last_activity: "2025-01-15T10:00:05Z",
};

function config(raw: Record<string, unknown> = {}): Config {
  const parsed = parseConfig(raw);
  if (!parsed.ok) assert.fail(JSON.stringify(parsed.error));
  return parsed.value;
}

function readLines<T>(path: string): T[] {
  return readFileSync(path, "utf8").split("\n").filter((l) => l !== "").map((l) =>
    JSON.parse(l) as T
  );
}

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), "troupe_process_test_"));
  try {
    await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** Runs {@linkcode runProcess} with stderr captured. */
async function run(
  options: Omit<ProcessOptions, "config" | "stderr"> & { config?: Config },
): Promise<{ code: number; stderr: string[] }> {
  const stderr: string[] = [];
  const code = await runProcess({
    config: defaultConfig(),
    ...options,
    stderr: (line) => stderr.push(line),
  });
  return { code, stderr };
}

Deno.test("runProcess writes processed, failed and summary files for seed 000's records", async () => {
  await withDir(async (dir) => {
    const input = join(dir, "records.ndjson");
    const out = join(dir, "out");
    await writeFile(input, MIXED);

    const { code, stderr } = await run({ input, out });

    assert.equal(code, 0, stderr.join("\n"));
    const stored = readLines<ProcessedRecord>(join(out, PROCESSED_FILE));
    assert.deepEqual(stored.map((r) => [r.id, r.event, r.timestamp]), [
      [1, "login", "2025-01-15T10:00:00Z"],
      [2, "page_view", "2025-01-15T10:00:05Z"],
    ]);
    assert.deepEqual(stored[0].metadata, { ip: "192.168.1.1" });

    const failed = readLines<FailedRecord>(join(out, FAILED_FILE));
    assert.equal(failed.length, 2);
    const notJson = failed.find((f) => f.record_id === null)!;
    assert.equal(notJson.stage, "validate");
    assert.match(notJson.reason, /^line 5 is not valid JSON: /);
    assert.equal(notJson.raw, `{"id":4,"timestamp": not json`);
    assert.ok(!Number.isNaN(Date.parse(notJson.failed_at)));
    const invalid = failed.find((f) => f.record_id === 3)!;
    assert.equal(invalid.stage, "validate");
    assert.equal(invalid.reason, "user_id: is required");
    assert.deepEqual(invalid.raw, {
      id: 3,
      timestamp: "2025-01-15T10:00:06Z",
      event: "login",
      value: 2,
    });

    const summary = JSON.parse(readFileSync(join(out, SUMMARY_FILE), "utf8"));
    assert.equal(summary.processed, 2);
    assert.equal(summary.failed, 2);
    assert.equal(summary.duplicates, 1);
    assert.equal(summary.anomalies, 0);
    assert.equal(summary.total_value, 1.5);
    assert.deepEqual(summary.users, { user_001: EXPECTED_USER });
    assert.deepEqual(summary.events, {
      login: { count: 1, total_value: 1, min_value: 1, max_value: 1 },
      page_view: { count: 1, total_value: 0.5, min_value: 0.5, max_value: 0.5 },
    });
    assert.equal(typeof summary.elapsed_ms, "number");
    assert.equal(typeof summary.records_per_second, "number");
    assert.match(stderr.at(-1)!, /^processed 5 records in .*: 2 stored, 2 failed, 1 duplicates/);
  });
});

Deno.test("runProcess answers 2 and names the file when the input cannot be read", async (t) => {
  await withDir(async (dir) => {
    await t.step("a missing file", async () => {
      const input = join(dir, "missing.ndjson");
      const out = join(dir, "out");
      const { code, stderr } = await run({ input, out });
      assert.equal(code, 2);
      assert.equal(stderr.length, 1);
      assert.ok(stderr[0].startsWith(`troupe: Cannot read input "${input}": `), stderr[0]);
      assert.equal(existsSync(out), false);
    });

    await t.step("a directory", async () => {
      const out = join(dir, "out2");
      const { code, stderr } = await run({ input: dir, out });
      assert.equal(code, 2);
      assert.equal(stderr[0], `troupe: Cannot read input "${dir}": it is a directory`);
      assert.equal(existsSync(out), false);
    });
  });
});

Deno.test("runProcess answers 1 when the output directory cannot be created", async () => {
  await withDir(async (dir) => {
    const input = join(dir, "records.ndjson");
    await writeFile(input, MIXED);
    // A file where a directory should be.
    const { code, stderr } = await run({ input, out: join(input, "out") });
    assert.equal(code, 1);
    assert.ok(
      stderr[0].startsWith(`troupe: Cannot write to output directory "${join(input, "out")}"`),
    );
  });
});

Deno.test("runProcess answers 1 when writing the output fails", {
  ignore: !existsSync("/dev/full"),
}, async () => {
  await withDir(async (dir) => {
    const input = join(dir, "records.ndjson");
    const out = join(dir, "out");
    await writeFile(input, MIXED);
    await mkdir(out);
    // Every write to /dev/full fails with ENOSPC.
    await symlink("/dev/full", join(out, PROCESSED_FILE));

    const { code, stderr } = await run({ input, out });

    assert.equal(code, 1);
    assert.match(stderr.at(-1)!, /^troupe: Cannot write to ".*out": /);
    assert.equal(existsSync(join(out, SUMMARY_FILE)), false);
  });
});

Deno.test("runProcess answers 1 when the pipeline gives up", async () => {
  await withDir(async (dir) => {
    const input = join(dir, "records.ndjson");
    await writeFile(input, MIXED);
    const quick = config({
      supervisor: { max_restarts: 1, within_ms: 60_000, backoff_initial_ms: 1, backoff_max_ms: 1 },
    });
    const faults = new FaultInjector(v.parse(FaultPlan, { stages: { store: { throw_rate: 1 } } }));

    const { code, stderr } = await run({ input, out: join(dir, "out"), config: quick, faults });

    assert.equal(code, 1);
    // Either the failed tickets or the health check report it first.
    assert.match(
      stderr.at(-1)!,
      /^troupe: (Not committed: the root supervisor|The pipeline) gave up/,
    );
  });
});

Deno.test("runProcess refuses lines longer than limits.max_body_bytes and goes on", async () => {
  await withDir(async (dir) => {
    const input = join(dir, "records.ndjson");
    const out = join(dir, "out");
    const long = (id: number, chars: number) =>
      `{"id":${id},"timestamp":"2025-01-15T10:00:00Z","user_id":"u","event":"e","value":1,"metadata":{"pad":"${
        "x".repeat(chars)
      }"}}`;
    // Line 4 spans several 1 MiB reads, so it is refused before it ends.
    const lines = [long(1, 10), long(2, 500), long(3, 10), long(4, 3 << 20), long(5, 10)];
    await writeFile(input, lines.join("\r\n"));

    const { code, stderr } = await run({
      input,
      out,
      config: config({ limits: { max_body_bytes: 200 } }),
    });

    assert.equal(code, 0, stderr.join("\n"));
    const stored = readLines<ProcessedRecord>(join(out, PROCESSED_FILE));
    assert.deepEqual(stored.map((r) => r.id), [1, 3, 5]);
    const failed = readLines<FailedRecord>(join(out, FAILED_FILE));
    assert.deepEqual(failed.map((f) => f.reason), [
      "line 2 is longer than 200 characters",
      "line 4 is longer than 200 characters",
    ]);
    assert.deepEqual(failed.map((f) => f.stage), ["validate", "validate"]);
    assert.equal(failed[0].raw, `${lines[1]}…`);
    assert.equal(failed[1].raw, `${lines[3].slice(0, 1000)}…`);
  });
});

Deno.test("runProcess processes a 10k record file through small batches, each id once", async () => {
  await withDir(async (dir) => {
    const input = join(dir, "records.ndjson");
    const out = join(dir, "out");
    writeRecords(input, { count: 10_000 });
    // Small batches and mailboxes, so submit waits for room and the store groups batches.
    const small = config({
      process: { batch_size: 250 },
      pipeline: {
        stages: {
          validate: { mailbox_capacity: 1_000 },
          transform: { mailbox_capacity: 1_000 },
          store: { max_workers: 5, mailbox_capacity: 2_000 },
        },
      },
    });

    const { code, stderr } = await run({ input, out, config: small, maxInFlight: 4 });

    assert.equal(code, 0, stderr.join("\n"));
    const summary = JSON.parse(readFileSync(join(out, SUMMARY_FILE), "utf8"));
    assert.equal(summary.processed, 10_000);
    assert.equal(summary.failed, 0);
    assert.equal(summary.duplicates, 0);
    const ids = readLines<ProcessedRecord>(join(out, PROCESSED_FILE)).map((r) => r.id);
    assert.equal(ids.length, 10_000);
    assert.equal(new Set(ids).size, 10_000);
    assert.equal(readFileSync(join(out, FAILED_FILE), "utf8"), "");
    const users = Object.values(summary.users) as Array<{ total_events: number }>;
    assert.equal(users.reduce((n, u) => n + u.total_events, 0), 10_000);
  });
});

Deno.test("processFile batches by process.batch_size, not pipeline.batch_size", async () => {
  await withDir(async (dir) => {
    const input = join(dir, "records.ndjson");
    writeRecords(input, { count: 10_000 });
    const metrics = createMetrics({ defaultMetrics: false });

    const result = await processFile({
      config: config({ pipeline: { batch_size: 100 }, process: { batch_size: 2_500 } }),
      input,
      out: join(dir, "out"),
      metrics,
      shards: 1,
      stderr: () => {},
    });

    assert.ok(result.ok, JSON.stringify(result));
    assert.equal(result.value.processed, 10_000);
    const batches = (await metrics.stageBatchesTotal.get()).values
      .filter((s) => s.labels.stage === "validate");
    assert.deepEqual(batches.map((s) => [s.labels.outcome, s.value]), [["ok", 4]]);
  });
});

Deno.test("processFile counts generated invalid lines as failed", async () => {
  await withDir(async (dir) => {
    const input = join(dir, "records.ndjson");
    writeRecords(input, { count: 3_000, invalid: 30 });

    const result = await processFile({
      config: defaultConfig(),
      input,
      out: join(dir, "out"),
      stderr: () => {},
    });

    if (!result.ok) assert.fail(result.error.message);
    assert.equal(result.value.processed, 2_970);
    assert.equal(result.value.failed, 30);
    const failed = readLines<FailedRecord>(join(dir, "out", FAILED_FILE));
    assert.equal(failed.filter((f) => /^line \d+ is not valid JSON/.test(f.reason)).length, 10);
  });
});

Deno.test("main.ts process runs the command and exits with its code", async (t) => {
  await withDir(async (dir) => {
    const input = join(dir, "records.ndjson");
    await writeFile(input, MIXED);
    const command = (args: string[]) =>
      new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", join(ROOT, "main.ts"), "process", ...args],
        cwd: dir,
        stdout: "piped",
        stderr: "piped",
        env: { TROUPE_LOG_LEVEL: "error" },
      }).output();

    await t.step("on a file", async () => {
      const out = join(dir, "out");
      const { code, stderr } = await command(["--input", input, "--out", out]);
      const text = new TextDecoder().decode(stderr);
      assert.equal(code, 0, text);
      assert.match(text, /processed 5 records in .*: 2 stored, 2 failed, 1 duplicates/);
      const summary = JSON.parse(readFileSync(join(out, SUMMARY_FILE), "utf8"));
      assert.deepEqual(summary.users, { user_001: EXPECTED_USER });
      assert.equal(readLines(join(out, PROCESSED_FILE)).length, 2);
      assert.equal(readLines(join(out, FAILED_FILE)).length, 2);
    });

    await t.step("on a missing file", async () => {
      const missing = join(dir, "missing.ndjson");
      const { code, stderr } = await command(["--input", missing, "--out", join(dir, "out2")]);
      assert.equal(code, 2);
      assert.match(new TextDecoder().decode(stderr), /Cannot read input ".*missing\.ndjson"/);
    });
  });
});

Deno.test("LineSplitter returns the lines of any text cut at any bytes", () => {
  const line = fc.oneof(
    fc.string({ unit: "grapheme", maxLength: 12 }),
    fc.string({ unit: "binary", maxLength: 12 }),
    fc.constantFrom("", "\r", " ", "{}", "é", "😀", "\u2028"),
  ).map((s) => s.replaceAll("\n", ""));
  const input = fc.record({
    lines: fc.array(line, { maxLength: 12 }),
    crlf: fc.array(fc.boolean(), { minLength: 12, maxLength: 12 }),
    trailingNewline: fc.boolean(),
    cuts: fc.array(fc.nat(), { maxLength: 6 }),
    maxLine: fc.integer({ min: 1, max: 16 }),
  });
  fc.assert(
    fc.property(input, ({ lines, crlf, trailingNewline, cuts, maxLine }) => {
      const ends: string[] = lines.map((_, i) => (crlf[i] ? "\r\n" : "\n"));
      if (!trailingNewline && ends.length > 0) ends[ends.length - 1] = "";
      const text = lines.map((l, i) => l + ends[i]).join("");
      const bytes = new TextEncoder().encode(text);
      const points = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b);

      const splitter = new LineSplitter(maxLine);
      const got: Array<string | OverlongLine | null> = [];
      let from = 0;
      for (const p of [...points, bytes.length]) {
        got.push(...splitter.push(bytes.slice(from, p)));
        from = p;
      }
      got.push(...splitter.end());

      // What a whole-text split gives (the decoder turns lone surrogates into U+FFFD).
      const decoded = new TextDecoder().decode(bytes);
      const expected = decoded.split("\n");
      if (expected.at(-1) === "") expected.pop();
      assert.equal(got.length, expected.length);
      got.forEach((g, i) => {
        const raw = expected[i];
        if (raw.length > maxLine) {
          assert.ok(g instanceof OverlongLine, `line ${i + 1} should be overlong`);
          assert.ok(raw.startsWith(g.preview));
        } else {
          assert.equal(g, raw.endsWith("\r") ? raw.slice(0, -1) : raw);
        }
      });
    }),
    { numRuns: 1000 },
  );
});

Deno.test("LineSplitter drops a byte order mark and keeps a last line without newline", () => {
  const splitter = new LineSplitter(100);
  const bytes = new TextEncoder().encode('\uFEFF{"id":1}\n{"id":2}');
  assert.deepEqual(splitter.push(bytes.slice(0, 2)), []);
  assert.deepEqual(splitter.push(bytes.slice(2)), ['{"id":1}']);
  assert.deepEqual(splitter.end(), ['{"id":2}']);
});

Deno.test("LineSplitter with keep gives null for the lines it does not keep, cut anywhere", () => {
  const text = '{"id":1}\r\n\n{"id":22}\nxx\n' + "y".repeat(30) + '\n{"id":3}';
  const bytes = new TextEncoder().encode(text);
  for (let cut = 0; cut <= bytes.length; cut++) {
    const asked: string[] = [];
    const splitter = new LineSplitter(20, (t, start, end) => {
      const line = t.slice(start, end);
      asked.push(line);
      return line.includes("2") || line === "xx";
    });
    const got = [
      ...splitter.push(bytes.slice(0, cut)),
      ...splitter.push(bytes.slice(cut)),
      ...splitter.end(),
    ];
    assert.deepEqual(got.slice(0, 4), [null, null, '{"id":22}', "xx"], `cut at ${cut}`);
    assert.ok(got[4] instanceof OverlongLine, "an overlong line is never offered to keep");
    assert.equal(got[5], null);
    assert.equal(got.length, 6);
    assert.deepEqual(asked, ['{"id":1}', "", '{"id":22}', "xx", '{"id":3}']);
  }
});
