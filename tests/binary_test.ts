/**
 * @module
 * The standalone binary: `bun build --compile main.ts` once into a
 * temporary directory, then the binary run as a real separate process.
 * `--version`, `--help` and an unknown option; `serve` on a free loopback
 * port over a real SQLite file, through seed 000's round trip, stopped by
 * SIGTERM; `process` on a small NDJSON file, whose output must match what
 * `deno run main.ts process` writes for the same file, and on a generated
 * file over 2 shards (Worker threads inside the binary), whose output must
 * match one shard's.
 *
 * The build needs `node_modules` (Bun resolves the bare specifiers there);
 * `deno install` makes it when it is missing.
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import denoJson from "../deno.json" with { type: "json" };
import { writeRecords } from "../bench/make_records.ts";
import { FAILED_FILE, PROCESSED_FILE, SUMMARY_FILE } from "../lib/jsonl_store.ts";
import { CHILD_ENV, ROOT, type ServeProcess, startServe as startChild } from "./_child_process.ts";
import { SEED_RECORDS, SEED_USER } from "./_helpers.ts";

/** Runs `command` in the repository root and collects its exit code and output. */
async function run(
  command: string,
  args: string[],
): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(command, {
    args,
    cwd: ROOT,
    env: CHILD_ENV,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const decoder = new TextDecoder();
  return { code: out.code, stdout: decoder.decode(out.stdout), stderr: decoder.decode(out.stderr) };
}

/** Makes `<dir>/troupe` with `bun build --compile`, after `deno install` if `node_modules` lacks xstate. */
async function buildBinary(dir: string): Promise<string> {
  if (!existsSync(join(ROOT, "node_modules", "xstate"))) {
    const install = await run(Deno.execPath(), ["install"]);
    assert.equal(install.code, 0, `deno install failed:\n${install.stdout}${install.stderr}`);
  }
  const bin = join(dir, "troupe");
  const build = await run("bun", [
    "build",
    "--compile",
    "--outfile",
    bin,
    "main.ts",
    "lib/sqlite_worker.ts",
    "lib/process_shard_worker.ts",
  ]);
  assert.equal(build.code, 0, `bun build --compile failed:\n${build.stdout}${build.stderr}`);
  return bin;
}

/** Starts `<bin> serve` over `data`. */
function startServe(bin: string, data: string): Promise<ServeProcess> {
  return startChild(bin, [], data);
}

async function postJson(url: string, body: unknown): Promise<{ status: number; body: unknown }> {
  const res = await fetch(`${url}/v1/records`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  return { status: res.status, body: await res.json() };
}

/** Reads the `process` output in `dir`, without the fields that depend on the clock. */
async function readProcessOutput(dir: string) {
  const lines = async (file: string) =>
    (await readFile(join(dir, file), "utf8")).split("\n").filter((l) => l !== "").map((l) =>
      JSON.parse(l)
    );
  const processed = (await lines(PROCESSED_FILE))
    .map(({ received_at: _, ...rest }) => rest)
    .sort((a, b) => String(a.id).localeCompare(String(b.id)));
  const failed = (await lines(FAILED_FILE))
    .map(({ failed_at: _, ...rest }) => rest)
    .sort((a, b) => String(a.raw).localeCompare(String(b.raw)));
  const { elapsed_ms: _e, records_per_second: _r, ...summary } = JSON.parse(
    await readFile(join(dir, SUMMARY_FILE), "utf8"),
  );
  return { processed, failed, summary };
}

Deno.test("bun build --compile makes a troupe binary that serves and processes seed 000", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "troupe_binary_" });
  try {
    const bin = await buildBinary(dir);

    await t.step("--version prints the version of deno.json", async () => {
      const res = await run(bin, ["--version"]);
      assert.equal(res.code, 0, res.stderr);
      assert.equal(res.stdout.trim(), `troupe ${denoJson.version}`);
    });

    await t.step("--help names the serve and process commands", async () => {
      const res = await run(bin, ["--help"]);
      assert.equal(res.code, 0, res.stderr);
      assert.match(res.stdout, /\bserve\b/);
      assert.match(res.stdout, /\bprocess\b/);
    });

    await t.step("an unknown option exits 2 and names the option", async () => {
      const res = await run(bin, ["--nope"]);
      assert.equal(res.code, 2);
      assert.match(res.stderr, /"--nope"/);
    });

    await t.step("serve answers seed 000's round trip and exits 0 on SIGTERM", async () => {
      const data = join(dir, "data");
      const server = await startServe(bin, data);
      let code: number | undefined;
      let openStream: ReadableStreamDefaultReader<Uint8Array> | undefined;
      try {
        const first = await postJson(server.url, SEED_RECORDS);
        assert.equal(first.status, 200);
        assert.deepEqual(first.body, { accepted: 2, duplicates: 0, rejected: 0, errors: [] });

        const user = await fetch(`${server.url}/v1/users/user_001`);
        assert.equal(user.status, 200);
        assert.deepEqual(await user.json(), SEED_USER);

        const again = await postJson(server.url, SEED_RECORDS);
        assert.equal(again.status, 200);
        assert.deepEqual(again.body, { accepted: 0, duplicates: 2, rejected: 0, errors: [] });

        const health = await fetch(`${server.url}/healthz`);
        assert.equal(health.status, 200);
        assert.equal((await health.json()).status, "ok");

        const metrics = await fetch(`${server.url}/metrics`);
        assert.equal(metrics.status, 200);
        const text = await metrics.text();
        assert.match(text, /troupe_records_total/);
        assert.match(text, /troupe_records_total\{outcome="accepted"\} 2\b/);

        // The dashboard is embedded in the binary.
        const page = await fetch(`${server.url}/dashboard`);
        assert.equal(page.status, 200);
        assert.equal(page.headers.get("content-type"), "text/html; charset=utf-8");
        assert.match(await page.text(), /<title>troupe · dashboard<\/title>/);
        const script = await fetch(`${server.url}/dashboard/app.js`);
        assert.equal(script.status, 200);
        assert.match(await script.text(), /uPlot/);

        // A live stream left open while SIGTERM arrives must not hold the exit.
        const stream = await fetch(`${server.url}/v1/stream`);
        assert.equal(stream.status, 200);
        const reader = stream.body!.getReader();
        assert.match(new TextDecoder().decode((await reader.read()).value), /^retry: \d+/);
        openStream = reader;
      } finally {
        code = (await server.stop("SIGTERM")).code;
        await openStream?.cancel().catch(() => {});
      }
      assert.equal(code, 0, `exit code ${code}; output:\n${server.output()}`);
    });

    await t.step("process writes seed 000's records as deno run main.ts process does", async () => {
      const input = join(dir, "records.ndjson");
      const invalid = { id: 3, timestamp: "nope", user_id: "user_002", event: "login", value: 1 };
      const lines = [
        ...SEED_RECORDS.map((r) => JSON.stringify(r)),
        "",
        "not json",
        JSON.stringify(invalid),
      ];
      await writeFile(input, lines.join("\n") + "\n");

      const res = await run(bin, ["process", "--input", input, "--out", join(dir, "out_bin")]);
      assert.equal(res.code, 0, `exit code ${res.code}:\n${res.stdout}${res.stderr}`);
      const fromBin = await readProcessOutput(join(dir, "out_bin"));
      assert.deepEqual(fromBin.processed.map((r) => r.id), [1, 2]);
      assert.deepEqual(fromBin.failed.map((f) => [f.record_id, f.stage]), [[3, "validate"], [
        null,
        "validate",
      ]]);
      assert.match(fromBin.failed[1].reason, /^line 4 is not valid JSON/);
      const { user_id: _, ...user } = SEED_USER;
      assert.deepEqual(fromBin.summary.users, { user_001: user });
      assert.equal(fromBin.summary.processed, 2);
      assert.equal(fromBin.summary.failed, 2);

      const deno = await run(Deno.execPath(), [
        "run",
        "--allow-all",
        "main.ts",
        "process",
        "--input",
        input,
        "--out",
        join(dir, "out_deno"),
      ]);
      assert.equal(deno.code, 0, `deno exit code ${deno.code}:\n${deno.stdout}${deno.stderr}`);
      const fromDeno = await readProcessOutput(join(dir, "out_deno"));
      assert.deepEqual(fromBin.processed, fromDeno.processed);
      assert.deepEqual(fromBin.summary, fromDeno.summary);
      // The engines word JSON.parse errors differently; everything else matches.
      const withoutParseError = (f: { reason: string }) => ({
        ...f,
        reason: f.reason.replace(/(is not valid JSON).*$/, "$1"),
      });
      assert.deepEqual(
        fromBin.failed.map(withoutParseError),
        fromDeno.failed.map(withoutParseError),
      );
    });

    await t.step("process --shards 2 writes what one shard writes", async () => {
      const input = join(dir, "generated.ndjson");
      writeRecords(input, { count: 3_000, invalid: 30 });
      const text = await readFile(input, "utf8");
      // Every 10th record again with its id as a string: duplicates across the spellings.
      const repeats = text.split("\n").filter((_, i) => i % 10 === 3)
        .map((l) => l.replace(/^\{"id":(\d+)/, '{"id":"$1"'));
      await writeFile(input, text + repeats.join("\n") + "\n");

      const outputs = [];
      for (const shards of ["1", "2"]) {
        const out = join(dir, `out_shards_${shards}`);
        const res = await run(bin, ["process", "--input", input, "--out", out, "--shards", shards]);
        assert.equal(res.code, 0, `exit code ${res.code}:\n${res.stdout}${res.stderr}`);
        outputs.push(await readProcessOutput(out));
      }
      const [one, two] = outputs;
      const withoutScore = (r: Record<string, unknown>) => {
        const { anomaly_score: _a, is_anomaly: _i, ...rest } = r;
        return rest;
      };
      assert.equal(two.processed.length, 2_970);
      assert.deepEqual(two.processed.map(withoutScore), one.processed.map(withoutScore));
      const byText = (failed: unknown[]) => failed.map((f) => JSON.stringify(f)).sort();
      assert.deepEqual(byText(two.failed), byText(one.failed));
      for (const key of ["processed", "failed", "duplicates"]) {
        assert.equal(two.summary[key], one.summary[key], key);
      }
      assert.equal(two.summary.duplicates, 300);
      assert.deepEqual(Object.keys(two.summary.users), Object.keys(one.summary.users));
      type Totals = Record<string, { count: number; min_value: number; max_value: number }>;
      const events: Totals = two.summary.events;
      for (const [name, e] of Object.entries(one.summary.events as Totals)) {
        assert.equal(events[name].count, e.count, name);
        assert.equal(events[name].min_value, e.min_value, name);
        assert.equal(events[name].max_value, e.max_value, name);
      }
    });
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});
