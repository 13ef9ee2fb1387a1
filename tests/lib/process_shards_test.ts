/**
 * @module
 * Tests of a sharded `process` run on real files and real Worker threads:
 * 2 and 3 shards write the same records, the same failed lines (with the
 * same line numbers of the whole file) and the same aggregates as one
 * shard, on a generated file with invalid lines, blank lines, an overlong
 * line, and ids repeated in several spellings; a shard that crashes, one
 * that ends without a word and one whose pipeline gives up each end the
 * run with exit 1, a message naming the shard and no `summary.json`; the
 * shard count; the summary merge; and `main.ts process --shards 2`.
 */
import assert from "node:assert/strict";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as v from "valibot";
import { writeRecords } from "../../bench/make_records.ts";
import { type Config, defaultConfig, parseConfig } from "../../lib/config.ts";
import { FaultInjector, FaultPlan } from "../../lib/faults.ts";
import {
  FAILED_FILE,
  PROCESSED_FILE,
  type ProcessSummary,
  SUMMARY_FILE,
} from "../../lib/jsonl_store.ts";
import { processFile, type ProcessOptions, runProcess } from "../../lib/process_file.ts";
import { AUTO_SHARD_BYTES, mergeSummaries, shardCount } from "../../lib/process_shards.ts";
import { type FailedRecord, type ProcessedRecord, recordKey } from "../../lib/schemas.ts";

const ROOT = new URL("../../", import.meta.url).pathname;
const TESTDATA = new URL("../testdata/", import.meta.url);

function config(raw: Record<string, unknown> = {}): Config {
  const parsed = parseConfig(raw);
  if (!parsed.ok) assert.fail(JSON.stringify(parsed.error));
  return parsed.value;
}

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), "troupe_shards_test_"));
  try {
    await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

function readLines<T>(path: string): T[] {
  return readFileSync(path, "utf8").split("\n").filter((l) => l !== "").map((l) =>
    JSON.parse(l) as T
  );
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

/**
 * Writes a file of 6000 generated lines (60 of them invalid) with, spread
 * through it: ids repeated as numbers, as strings and in other notations,
 * blank lines, an overlong line, lines whose id is not the first key or is
 * hidden in an escaped key, a nested `id`, a record without an id, and
 * lines that are not JSON but look like records.
 */
async function writeMixedFile(path: string): Promise<string[]> {
  writeRecords(path, { count: 6_000, invalid: 60, seed: 7 });
  const lines = (await readFile(path, "utf8")).split("\n").filter((l) => l !== "");
  const record = (id: unknown, extra: Record<string, unknown> = {}) =>
    JSON.stringify({
      id,
      timestamp: "2025-01-15T12:00:00Z",
      user_id: "user_dup",
      event: "login",
      value: 3,
      ...extra,
    });
  const extras: Array<[number, string]> = [
    [10, record(5)], // a repeat of an earlier id
    [20, record("5")], // the same id as a string
    [30, record(5.0).replace('"id":5', '"id":5.0')],
    [40, record(77).replace('"id":77', '"id":7.7e1')],
    [50, ""],
    [60, "   "],
    [
      70,
      `{"id":9000001,"timestamp":"2025-01-15T12:00:00Z","user_id":"u","event":"e","value":1,"metadata":{"pad":"${
        "x".repeat(3_000)
      }"}}`,
    ],
    [
      80,
      `{ "timestamp" : "2025-01-15T12:00:01Z", "user_id":"u2", "event":"click", "value":2, "id" : "late-id" }`,
    ],
    [
      90,
      `{"\\u0069d":"escaped-key","timestamp":"2025-01-15T12:00:02Z","user_id":"u3","event":"click","value":2}`,
    ],
    [
      100,
      `{"metadata":{"id":123},"id":"outer","timestamp":"2025-01-15T12:00:03Z","user_id":"u4","event":"view","value":4}`,
    ],
    [110, `{"timestamp":"2025-01-15T12:00:04Z","user_id":"u5","event":"view","value":4}`],
    [
      120,
      `{"id":"late-id","timestamp":"2025-01-15T12:00:05Z","user_id":"u6","event":"view","value":4}`,
    ],
    [
      130,
      `{"id":"escaped-key","timestamp":"2025-01-15T12:00:06Z","user_id":"u6","event":"view","value":4}`,
    ],
    [140, `{"id":"half`],
    [
      150,
      `{"id":1,"id":"double-key","timestamp":"2025-01-15T12:00:07Z","user_id":"u7","event":"view","value":4}`,
    ],
    [5_990, record("double-key")],
    [5_995, record(5_990)],
    [5_998, record("5990")],
  ];
  for (const [at, line] of extras.toReversed()) lines.splice(at, 0, line);
  await writeFile(path, lines.join("\n") + "\n");
  return lines;
}

/** The output of a run, without what depends on the clock or on which shard scored a record. */
function readOutput(out: string) {
  const processed = readLines<ProcessedRecord>(join(out, PROCESSED_FILE))
    .map(({ received_at: _r, anomaly_score: _a, is_anomaly: _i, ...rest }) => rest)
    .sort((a, b) => recordKey(a.id).localeCompare(recordKey(b.id)));
  const failed = readLines<FailedRecord>(join(out, FAILED_FILE))
    .map(({ failed_at: _, ...rest }) => JSON.stringify(rest))
    .sort();
  const summary = JSON.parse(readFileSync(join(out, SUMMARY_FILE), "utf8")) as ProcessSummary;
  return { processed, failed, summary };
}

/** Asserts that two summaries agree: counts, minima and maxima exactly, sums to 1e-9. */
function assertSameAggregates(got: ProcessSummary, want: ProcessSummary): void {
  const close = (a: number, b: number, what: string) =>
    assert.ok(Math.abs(a - b) <= 1e-9 * Math.max(1, Math.abs(b)), `${what}: ${a} != ${b}`);
  assert.equal(got.processed, want.processed);
  assert.equal(got.failed, want.failed);
  assert.equal(got.duplicates, want.duplicates);
  close(got.total_value, want.total_value, "total_value");
  assert.deepEqual(Object.keys(got.events), Object.keys(want.events));
  for (const [name, e] of Object.entries(want.events)) {
    const g = got.events[name];
    assert.equal(g.count, e.count, name);
    assert.equal(g.min_value, e.min_value, name);
    assert.equal(g.max_value, e.max_value, name);
    close(g.total_value, e.total_value, `${name} total_value`);
  }
  assert.deepEqual(Object.keys(got.users), Object.keys(want.users));
  for (const [id, u] of Object.entries(want.users)) {
    const g = got.users[id];
    assert.equal(g.total_events, u.total_events, id);
    assert.equal(g.last_activity, u.last_activity, id);
    assert.deepEqual([...g.events].sort(), [...u.events].sort(), id);
    close(g.total_value, u.total_value, `${id} total_value`);
  }
}

Deno.test("processFile with 2 and 3 shards writes what 1 shard writes", async (t) => {
  await withDir(async (dir) => {
    const input = join(dir, "records.ndjson");
    const lines = await writeMixedFile(input);
    const lineOf = (start: string) => lines.findIndex((l) => l.startsWith(start)) + 1;
    const small = config({ limits: { max_body_bytes: 1_000 }, process: { batch_size: 250 } });

    const one = await run({ input, out: join(dir, "one"), config: small, shards: 1 });
    assert.equal(one.code, 0, one.stderr.join("\n"));
    const want = readOutput(join(dir, "one"));
    // The file holds what the test means it to.
    assert.equal(want.summary.duplicates, 9);
    const overlong = `"reason":"line ${lineOf('{"id":9000001,')} is longer than 1000 characters"`;
    assert.ok(want.failed.some((f) => f.includes(overlong)), overlong);
    const notJson = `"reason":"line ${lineOf('{"id":"half')} is not valid JSON`;
    assert.ok(want.failed.some((f) => f.includes(notJson)), notJson);
    assert.ok(want.processed.some((r) => r.id === "late-id" && r.user_id === "u2"));
    assert.ok(want.processed.some((r) => r.id === "escaped-key" && r.user_id === "u3"));
    assert.ok(want.processed.some((r) => r.id === "double-key" && r.user_id === "u7"));
    assert.ok(want.processed.some((r) => r.id === "outer"));

    for (const shards of [2, 3]) {
      await t.step(`${shards} shards`, async () => {
        const out = join(dir, `out${shards}`);
        const { code, stderr } = await run({ input, out, config: small, shards });

        assert.equal(code, 0, stderr.join("\n"));
        const got = readOutput(out);
        assert.deepEqual(got.processed, want.processed);
        assert.deepEqual(got.failed, want.failed);
        assertSameAggregates(got.summary, want.summary);
        // The same last line, but for the time and the anomalies.
        const gist = (line: string) =>
          line.replace(/ in .* s \(\d+\/s\)/, "").replace(/, \d+ anomalies; .*/, "");
        assert.equal(gist(stderr.at(-1)!), gist(one.stderr.at(-1)!));
        assert.match(
          gist(stderr.at(-1)!),
          /^processed 6016 records: \d+ stored, \d+ failed, 9 duplicates$/,
        );
        assert.deepEqual(readdirSync(out).sort(), [FAILED_FILE, PROCESSED_FILE, SUMMARY_FILE]);
      });
    }
  });
});

Deno.test("processFile with 2 shards keeps each id once across runs of generated records", async () => {
  await withDir(async (dir) => {
    const input = join(dir, "records.ndjson");
    writeRecords(input, { count: 20_000 });
    // Every record twice: the repeat always lands in the shard that stored the first.
    const text = await readFile(input, "utf8");
    await writeFile(input, text + text.replaceAll(/"id":(\d+)/g, '"id":"$1"'));

    const result = await processFile({
      config: defaultConfig(),
      input,
      out: join(dir, "out"),
      shards: 2,
      stderr: () => {},
    });

    if (!result.ok) assert.fail(result.error.message);
    assert.equal(result.value.processed, 20_000);
    assert.equal(result.value.duplicates, 20_000);
    const ids = readLines<ProcessedRecord>(join(dir, "out", PROCESSED_FILE)).map((r) => r.id);
    assert.equal(new Set(ids.map(String)).size, 20_000);
  });
});

Deno.test("a sharded run fails with exit 1 and names the shard", async (t) => {
  await withDir(async (dir) => {
    const input = join(dir, "records.ndjson");
    writeRecords(input, { count: 4_000 });

    /** Runs 2 shards into a fresh `out` holding a stale summary; checks what is left. */
    const failing = async (name: string, options: Partial<ProcessOptions>) => {
      const out = join(dir, name);
      await Deno.mkdir(out);
      await writeFile(join(out, SUMMARY_FILE), "{}\n");
      const result = await run({ input, out, shards: 2, ...options });
      assert.equal(result.code, 1, result.stderr.join("\n"));
      assert.equal(
        existsSync(join(out, SUMMARY_FILE)),
        false,
        "no summary: nothing looks complete",
      );
      assert.deepEqual(readdirSync(out).sort(), [FAILED_FILE, PROCESSED_FILE]);
      return result.stderr.at(-1)!;
    };

    await t.step("a shard that crashes", async () => {
      const message = await failing("crash", {
        shardWorkerUrl: new URL("crashing_shard_worker.ts", TESTDATA),
      });
      assert.match(message, /^troupe: Shard 1 of 2 died: .*injected crash of shard 1/);
    });

    await t.step("a shard that ends without a word", async () => {
      const message = await failing("silent", {
        shardWorkerUrl: new URL("silent_shard_worker.ts", TESTDATA),
        // Long enough that the live shard, which reports every 50 ms, is never taken for dead.
        shardSilenceMs: 3_000,
      });
      // Bun reports the end of a worker; Deno only its silence.
      assert.match(
        message,
        /^troupe: Shard 1 of 2 (exited before it finished|stopped answering \(nothing for 3000 ms\))$/,
      );
    });

    await t.step("a worker entry that cannot load", async () => {
      const message = await failing("missing", {
        shardWorkerUrl: new URL("no_such_worker.ts", TESTDATA),
      });
      assert.match(message, /^troupe: Shard [01] of 2 (died|could not start): /);
    });

    await t.step("a shard whose pipeline gives up (injected store faults)", async () => {
      const quick = config({
        supervisor: {
          max_restarts: 1,
          within_ms: 60_000,
          backoff_initial_ms: 1,
          backoff_max_ms: 1,
        },
      });
      const faults = new FaultInjector(
        v.parse(FaultPlan, { stages: { store: { throw_rate: 1 } } }),
      );
      const message = await failing("faults", { config: quick, faults });
      assert.match(
        message,
        /^troupe: Shard [01] of 2 failed: (Not committed: the root supervisor|The pipeline) gave up/,
      );
    });
  });
});

Deno.test("processShards answers as one shard does when the files are wrong", async (t) => {
  await withDir(async (dir) => {
    const input = join(dir, "records.ndjson");
    writeRecords(input, { count: 100 });

    await t.step("a missing input: exit 2", async () => {
      const missing = join(dir, "missing.ndjson");
      const { code, stderr } = await run({ input: missing, out: join(dir, "o1"), shards: 2 });
      assert.equal(code, 2);
      assert.ok(stderr[0].startsWith(`troupe: Cannot read input "${missing}": `), stderr[0]);
    });

    await t.step("an input that is a directory: exit 2", async () => {
      const { code, stderr } = await run({ input: dir, out: join(dir, "o2"), shards: 2 });
      assert.equal(code, 2);
      assert.equal(stderr[0], `troupe: Cannot read input "${dir}": it is a directory`);
    });

    await t.step("an output directory that cannot be made: exit 1", async () => {
      const out = join(input, "out");
      const { code, stderr } = await run({ input, out, shards: 2 });
      assert.equal(code, 1);
      assert.ok(stderr[0].startsWith(`troupe: Cannot write to output directory "${out}"`));
    });
  });
});

Deno.test("shardCount takes the option, then the config, then one per 16 MiB", async () => {
  await withDir(async (dir) => {
    const input = join(dir, "records.ndjson");
    writeRecords(input, { count: 100 });
    const base = { input, out: dir };
    assert.equal(await shardCount({ ...base, config: defaultConfig() }), 1);
    assert.equal(await shardCount({ ...base, config: defaultConfig(), shards: 3 }), 3);
    assert.equal(await shardCount({ ...base, config: config({ process: { shards: 2 } }) }), 2);
    assert.equal(
      await shardCount({ ...base, config: config({ process: { shards: 2 } }), shards: 1 }),
      1,
    );
    assert.equal(
      await shardCount({ ...base, input: join(dir, "missing"), config: defaultConfig() }),
      1,
    );
    // A sparse file of 40 MiB: two shards' worth, and at least two CPUs here.
    const big = join(dir, "big.ndjson");
    const file = await Deno.open(big, { create: true, write: true });
    await file.truncate(AUTO_SHARD_BYTES * 2.5);
    file.close();
    const auto = await shardCount({ ...base, input: big, config: defaultConfig() });
    assert.equal(auto, Math.min(2, navigator.hardwareConcurrency));
  });
});

Deno.test("mergeSummaries adds counts and sums, keeps minima, maxima and the last activity", () => {
  const part = (
    users: ProcessSummary["users"],
    events: ProcessSummary["events"],
    counts: Partial<ProcessSummary> = {},
  ): ProcessSummary => ({
    processed: 0,
    failed: 0,
    duplicates: 0,
    anomalies: 0,
    total_value: 0,
    users,
    events,
    elapsed_ms: 0,
    records_per_second: 0,
    ...counts,
  });
  const a = part(
    {
      u1: {
        total_events: 2,
        total_value: 3,
        events: ["login", "view"],
        last_activity: "2025-01-15T10:00:05.250Z",
      },
    },
    { login: { count: 1, total_value: 1, min_value: 1, max_value: 1 } },
    { processed: 2, failed: 1, duplicates: 1, anomalies: 1, total_value: 3 },
  );
  const b = part(
    {
      u1: {
        total_events: 1,
        total_value: 4,
        events: ["click", "login"],
        last_activity: "2025-01-15T10:00:05Z",
      },
      u0: { total_events: 1, total_value: 1, events: ["x"], last_activity: "2025-01-15T09:00:00Z" },
    },
    {
      login: { count: 2, total_value: -5, min_value: -6, max_value: 1 },
      click: { count: 1, total_value: 4, min_value: 4, max_value: 4 },
    },
    { processed: 2, failed: 2, total_value: 5 },
  );

  const merged = mergeSummaries([a, b], { elapsedMs: 2_000, records: 10 });

  assert.deepEqual(merged, {
    processed: 4,
    failed: 3,
    duplicates: 1,
    anomalies: 1,
    total_value: 8,
    users: {
      u0: { total_events: 1, total_value: 1, events: ["x"], last_activity: "2025-01-15T09:00:00Z" },
      u1: {
        total_events: 3,
        total_value: 7,
        events: ["login", "view", "click"],
        // 05.250 is later than 05, though it sorts before it as text.
        last_activity: "2025-01-15T10:00:05.250Z",
      },
    },
    events: {
      click: { count: 1, total_value: 4, min_value: 4, max_value: 4 },
      login: { count: 3, total_value: -4, min_value: -6, max_value: 1 },
    },
    elapsed_ms: 2_000,
    records_per_second: 5,
  });
  // The parts are not changed.
  assert.deepEqual(a.users.u1.events, ["login", "view"]);
  assert.equal(a.events.login.count, 1);
});

Deno.test("main.ts process --shards 2 runs the command over 2 shards", async () => {
  await withDir(async (dir) => {
    const input = join(dir, "records.ndjson");
    writeRecords(input, { count: 2_000, invalid: 20 });
    const command = (args: string[]) =>
      new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", join(ROOT, "main.ts"), "process", ...args],
        cwd: dir,
        stdout: "piped",
        stderr: "piped",
        env: { TROUPE_LOG_LEVEL: "error" },
      }).output();

    const ok = await command(["--input", input, "--out", join(dir, "out"), "--shards", "2"]);
    const text = new TextDecoder().decode(ok.stderr);
    assert.equal(ok.code, 0, text);
    assert.match(text, /processed 2000 records in .*: 1980 stored, 20 failed, 0 duplicates/);
    assert.equal(readLines(join(dir, "out", PROCESSED_FILE)).length, 1_980);

    const bad = await command(["--input", input, "--out", join(dir, "out"), "--shards", "0"]);
    assert.equal(bad.code, 2);
    assert.match(new TextDecoder().decode(bad.stderr), /process\.shards.*at least 1/);
  });
});
