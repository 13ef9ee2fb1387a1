/**
 * @module
 * The crash test of `bench/crash_test.ts`, as part of the suite: real
 * `troupe serve` processes (from source under Deno, and as a binary built
 * with `bun build --compile`) on free loopback ports over real SQLite files,
 * killed with SIGKILL in the middle of concurrent load, restarted on the
 * same directory and checked: every acknowledged record stored, none
 * counted twice, aggregates equal to a recomputation from the stored rows,
 * and a resend of everything unacknowledged stored once.
 *
 * A last test tampers with the store between the kill and the restart, to
 * show the checks are not vacuous.
 *
 * Each run prints its seed; `deno run -A bench/crash_test.ts --seed N`
 * replays the same records, batch sizes and kill times.
 */
import assert from "node:assert/strict";
import { DatabaseSync } from "node:sqlite";
import { join } from "node:path";
import { type CrashReport, formatCrashReport, runCrashTrials } from "../bench/crash_test.ts";

/** The report's summary and every problem, for assertion messages. */
function explain(report: CrashReport): string {
  const details = report.trials.flatMap((t) => [
    ...(t.error === null ? [] : [`trial ${t.trial}: ${t.error}`]),
    ...t.problems.map((p) => `trial ${t.trial}: ${p}`),
  ]);
  return [formatCrashReport(report), ...details.slice(0, 30)].join("\n");
}

function assertNothingLost(report: CrashReport, trials: number): void {
  const why = explain(report);
  assert.equal(report.totals.trials, trials, why);
  for (const t of report.trials) assert.equal(t.error, null, why);
  assert.ok(report.totals.acknowledged > 0, `nothing was acknowledged\n${why}`);
  assert.equal(report.totals.lost, 0, why);
  assert.equal(report.totals.doubleCounted, 0, why);
  assert.equal(report.totals.aggregateMismatches, 0, why);
  assert.equal(report.totals.unexpectedStored, 0, why);
  // A client retrying what it had no 200 for finds exactly the in-flight records already stored.
  assert.equal(report.totals.resendDuplicates, report.totals.unacknowledgedStored, why);
  assert.equal(report.totals.failedTrials, 0, why);
  assert.ok(report.ok, why);
}

/** Kills after 200 ms at the earliest, so every run has acknowledged records even on a slow machine. */
const KILL_WINDOW = { killMinMs: 200, killMaxMs: 1500 };

Deno.test("runCrashTrials loses nothing acknowledged when the server from source is SIGKILLed", async () => {
  const report = await runCrashTrials({ trials: 5, target: "source", ...KILL_WINDOW });
  console.log(`source: seed ${report.seed}, acknowledged ${report.totals.acknowledged}`);
  assertNothingLost(report, 5);
});

Deno.test("runCrashTrials loses nothing acknowledged when the compiled binary is SIGKILLed", async () => {
  const report = await runCrashTrials({ trials: 2, target: "binary", ...KILL_WINDOW });
  console.log(`binary: seed ${report.seed}, acknowledged ${report.totals.acknowledged}`);
  assertNothingLost(report, 2);
});

Deno.test("runCrashTrials reports a deleted record as lost and an inflated aggregate as double counted", async () => {
  let deleted: number | undefined;
  const report = await runCrashTrials({
    trials: 1,
    target: "source",
    ...KILL_WINDOW,
    resend: false,
    afterCrash: (data, acknowledged) => {
      assert.ok(acknowledged.length > 0, "no record was acknowledged before the kill");
      deleted = acknowledged[Math.floor(acknowledged.length / 2)];
      const db = new DatabaseSync(join(data, "troupe.db"));
      try {
        db.prepare("DELETE FROM records WHERE id = ?").run(String(deleted));
        db.exec("UPDATE totals SET stored_records = stored_records - 1 WHERE id = 1");
        db.exec(
          "UPDATE users SET total_events = total_events + 1 WHERE user_id = (SELECT min(user_id) FROM users)",
        );
      } finally {
        db.close();
      }
    },
  });
  const [trial] = report.trials;
  assert.equal(trial.error, null, explain(report));
  assert.equal(trial.lost, 1);
  assert.deepEqual(trial.lostIds, [deleted]);
  assert.ok(trial.doubleCounted >= 1, explain(report));
  assert.ok(trial.aggregateMismatches >= 1, explain(report));
  assert.equal(report.ok, false);
});
