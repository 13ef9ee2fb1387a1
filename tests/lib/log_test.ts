/**
 * @module
 * Tests of the structured logs: lines captured through the `sink` option,
 * and the default stderr writer in a child Deno process.
 */
import assert from "node:assert/strict";
import { closeLogging, getLog, setupLogging } from "../../lib/log.ts";

const REPO_ROOT = new URL("../../", import.meta.url);

/** Sets up logging into an array of lines; close it with `closeLogging`. */
async function captureLogs(level: "debug" | "info" | "warning" | "error"): Promise<string[]> {
  const lines: string[] = [];
  await setupLogging({ level, sink: (line) => lines.push(line) });
  return lines;
}

function parseLines(lines: readonly string[]): Record<string, unknown>[] {
  return lines.map((line) => {
    assert.ok(!line.includes("\n"), `one line per record: ${JSON.stringify(line)}`);
    return JSON.parse(line);
  });
}

Deno.test("setupLogging writes one JSON object per record with its fields", async () => {
  const lines = await captureLogs("info");
  try {
    getLog("http").info("Listening on {url}", { url: "http://127.0.0.1:8080", port: 8080 });

    const [record, ...rest] = parseLines(lines);
    assert.deepEqual(rest, []);
    assert.equal(typeof record["@timestamp"], "string");
    assert.ok(!Number.isNaN(Date.parse(record["@timestamp"] as string)));
    assert.equal(record.level, "INFO");
    assert.equal(record.logger, "troupe.http");
    assert.equal(record.message, 'Listening on "http://127.0.0.1:8080"');
    assert.equal(record.url, "http://127.0.0.1:8080");
    assert.equal(record.port, 8080);
  } finally {
    await closeLogging();
  }
});

Deno.test("setupLogging drops records below the configured level", async () => {
  const lines = await captureLogs("warning");
  try {
    const log = getLog("pipeline");

    log.debug("debug");
    log.info("info");
    log.warning("warning");
    log.error("error");

    const records = parseLines(lines);
    assert.deepEqual(records.map((record) => [record.level, record.message]), [
      ["WARN", "warning"],
      ["ERROR", "error"],
    ]);
  } finally {
    await closeLogging();
  }
});

Deno.test("setupLogging writes errors with name, message, stack and cause", async () => {
  const lines = await captureLogs("debug");
  try {
    const error = new Error('Cannot connect to storage "main"', { cause: "timed out" });

    getLog("storage").error("Commit failed", { error });

    const [record] = parseLines(lines);
    const written = record.error as Record<string, unknown>;
    assert.equal(written.name, "Error");
    assert.equal(written.message, 'Cannot connect to storage "main"');
    assert.equal(written.cause, "timed out");
    assert.equal(typeof written.stack, "string");
  } finally {
    await closeLogging();
  }
});

Deno.test("setupLogging replaces an earlier configuration", async () => {
  const first = await captureLogs("debug");
  const second = await captureLogs("debug");
  try {
    getLog("main").info("once");

    assert.deepEqual(first, []);
    assert.equal(parseLines(second).length, 1);
  } finally {
    await closeLogging();
  }
});

Deno.test("getLog returns the same logger before and after setupLogging", async () => {
  const early = getLog("early");
  const lines = await captureLogs("info");
  try {
    early.info("taken before setup");

    const [record] = parseLines(lines);
    assert.equal(record.logger, "troupe.early");
    assert.equal(record.message, "taken before setup");
  } finally {
    await closeLogging();
  }
});

Deno.test("closeLogging turns logging off", async () => {
  const lines = await captureLogs("info");

  await closeLogging();
  getLog("main").info("after close");

  assert.deepEqual(lines, []);
});

/** Runs `code` in a child Deno process at the repository root; returns its stderr lines. */
async function runChild(code: string): Promise<{ code: number; stdout: string; lines: string[] }> {
  const output = await new Deno.Command(Deno.execPath(), {
    args: ["eval", "--ext=ts", code],
    cwd: REPO_ROOT,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const decoder = new TextDecoder();
  const stderr = decoder.decode(output.stderr);
  return {
    code: output.code,
    stdout: decoder.decode(output.stdout),
    lines: stderr.split("\n").filter((line) => line !== ""),
  };
}

Deno.test("setupLogging writes to stderr by default", async (t) => {
  await t.step("every line by closeLogging, then the process exits", async () => {
    const child = await runChild(`
      import { closeLogging, getLog, setupLogging } from "./lib/log.ts";
      await setupLogging({ level: "info" });
      const log = getLog("child");
      for (let i = 0; i < 300; i++) log.info("line {i}", { i });
      await closeLogging();
      console.log("closed");
    `);

    assert.equal(child.code, 0, child.lines.join("\n"));
    assert.equal(child.stdout, "closed\n");
    const records = parseLines(child.lines);
    assert.deepEqual(records.map((record) => record.i), Array.from({ length: 300 }, (_, i) => i));
    assert.ok(records.every((record) => record.logger === "troupe.child"));
  });

  await t.step("a burst beyond the buffer drops the oldest and says how many", async () => {
    const child = await runChild(`
      import { closeLogging, getLog, setupLogging } from "./lib/log.ts";
      await setupLogging({ level: "info" });
      const log = getLog("child");
      for (let i = 0; i < 1000; i++) log.info("line {i}", { i });
      await closeLogging();
    `);

    assert.equal(child.code, 0, child.lines.join("\n"));
    const records = parseLines(child.lines);
    const written = records.filter((record) => record.logger === "troupe.child");
    const notices = records.filter((record) => record.logger === "troupe.log");
    const dropped = notices.reduce((sum, notice) => sum + (notice.dropped as number), 0);
    assert.ok(dropped > 0);
    assert.equal(written.length + dropped, 1000);
    assert.ok(notices.every((notice) => notice.level === "WARN"));
    assert.equal(written.at(-1)?.i, 999);
  });
});
