/**
 * @module
 * Measures the `process` command on a generated file: each combination of
 * runtime (Deno, Bun) and shard count runs several times as a child process
 * under `/usr/bin/time`, and the table gives the minimum, median and
 * maximum of records per second (as the command reports it), wall time,
 * CPU time (user + system) and peak RSS. Runs alternate between the
 * combinations, so a burst of load from elsewhere on the machine spreads
 * over all of them.
 *
 * Run: `deno run -A bench/process_mode.ts [--file F] [--count N] [--runs R] [--shards 1,2] [--runtimes deno,bun] [--config FILE]`
 *
 * The file is made with `bench/make_records.ts` if it is missing. Bun runs
 * `bun main.ts`, which needs `node_modules` (`deno install`).
 */
import { existsSync } from "node:fs";
import os from "node:os";
import process from "node:process";
import { parseArgs } from "node:util";
import { writeRecords } from "./make_records.ts";

const ROOT = new URL("../", import.meta.url).pathname;

interface Sample {
  rate: number;
  wallS: number;
  cpuS: number;
  rssMiB: number;
}

/** One run of `troupe process` under `/usr/bin/time`. */
export interface ProcessSample {
  /** Records per second, as the command reports it. */
  rate: number;
  wallS: number;
  /** User + system CPU seconds of the whole process. */
  cpuS: number;
  rssMiB: number;
}

/** Options of {@linkcode processOnce}. */
export interface ProcessOptions {
  file: string;
  runtime: "deno" | "bun";
  /** `--shards`; the command's own default when absent. */
  shards?: string;
  out?: string;
  config?: string;
}

/** Writes `count` records to `file` unless it exists. */
export function ensureRecordFile(file: string, count: number): void {
  if (existsSync(file)) return;
  process.stderr.write(`writing ${count} records to ${file}\n`);
  writeRecords(file, { count });
}

/** Runs `main.ts process` once on `options.file`; throws when it fails. */
export async function processOnce(options: ProcessOptions): Promise<ProcessSample> {
  const { runtime, shards, file, config } = options;
  const command = runtime === "bun"
    ? ["bun", "main.ts"]
    : [Deno.execPath(), "run", "-A", "main.ts"];
  const out = await new Deno.Command("/usr/bin/time", {
    args: [
      "-f",
      "TIME %e %U %S %M",
      ...command,
      "process",
      "--input",
      file,
      "--out",
      options.out ?? "/tmp/troupe_process_bench_out",
      ...(shards === undefined ? [] : ["--shards", shards]),
      ...(config === undefined ? [] : ["--config", config]),
    ],
    cwd: ROOT,
    env: { TROUPE_LOG_LEVEL: "error" },
    stdout: "null",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stderr);
  const done = /processed \d+ records in [\d.]+ s \((\d+)\/s\)/.exec(text);
  const time = /TIME ([\d.]+) ([\d.]+) ([\d.]+) (\d+)/.exec(text);
  if (out.code !== 0 || done === null || time === null) {
    throw new Error(
      `${runtime} --shards ${shards ?? "(default)"} failed (exit ${out.code}):\n${text}`,
    );
  }
  return {
    rate: Number(done[1]),
    wallS: Number(time[1]),
    cpuS: Number(time[2]) + Number(time[3]),
    rssMiB: Number(time[4]) / 1024,
  };
}

function stats(xs: number[], digits: number): string {
  const s = [...xs].sort((a, b) => a - b);
  const f = (x: number) => x.toFixed(digits);
  return `${f(s[0])} / ${f(s[Math.floor((s.length - 1) / 2)])} / ${f(s[s.length - 1])}`;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: process.argv.slice(2),
    options: {
      file: { type: "string", default: "/tmp/troupe_process_1m.ndjson" },
      count: { type: "string", default: "1000000" },
      runs: { type: "string", default: "3" },
      shards: { type: "string", default: "1,2" },
      runtimes: { type: "string", default: "deno,bun" },
      out: { type: "string", default: "/tmp/troupe_process_bench_out" },
      config: { type: "string" },
    },
  });
  const file = values.file!;
  const count = Number(values.count);
  ensureRecordFile(file, count);
  const combos = values.runtimes!.split(",").flatMap((runtime) =>
    values.shards!.split(",").map((shards) => ({ runtime: runtime as "deno" | "bun", shards }))
  );
  const samples = new Map<string, ProcessSample[]>(
    combos.map((c) => [`${c.runtime} ${c.shards}`, []]),
  );
  for (let run = 0; run < Number(values.runs); run++) {
    for (const { runtime, shards } of combos) {
      const sample = await processOnce({
        file,
        runtime,
        shards,
        out: values.out,
        config: values.config,
      });
      samples.get(`${runtime} ${shards}`)!.push(sample);
      process.stderr.write(
        `${runtime} --shards ${shards}: ${sample.rate}/s, ${sample.wallS} s wall, ` +
          `${sample.cpuS.toFixed(2)} s CPU, ${sample.rssMiB.toFixed(0)} MiB\n`,
      );
    }
  }
  console.log(
    `${count} records (${file}), ${values.runs} runs each, ${os.cpus().length} CPUs, ` +
      `config ${values.config ?? "default"}, ` +
      `load average ${os.loadavg().map((l) => l.toFixed(1)).join(" ")} at the end`,
  );
  console.log("");
  console.log(
    "| runtime | shards | records/s (min / median / max) | wall s | CPU s (user + sys) | peak RSS MiB |",
  );
  console.log("|---|---:|---|---|---|---|");
  for (const { runtime, shards } of combos) {
    const xs = samples.get(`${runtime} ${shards}`)!;
    console.log(
      `| ${runtime} | ${shards} | ${stats(xs.map((x) => x.rate), 0)} | ${
        stats(xs.map((x) => x.wallS), 2)
      } | ${stats(xs.map((x) => x.cpuS), 2)} | ${stats(xs.map((x) => x.rssMiB), 0)} |`,
    );
  }
}

if (import.meta.main) await main();
