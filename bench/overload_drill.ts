/**
 * @module
 * Overload drill: starts `troupe serve`, measures the sustainable rate with
 * closed-loop load (`bench/load.ts`: `--clients` connections × `--batch`
 * records for `--measure` seconds), then offers `--factor` times that rate
 * open loop for `--duration` seconds (requests leave on a timer whatever the
 * answers, at most `--max-outstanding` in flight so the generator stays
 * bounded) while the server's RSS is read from `/proc/PID/status` every
 * 100 ms. It reports the peak RSS of each phase, the RSS over time, the
 * share of 200/429/503 answers, and whether the server was still ready
 * afterwards and its RSS stayed under `--rss-limit` MB.
 *
 * Loopback only; bounded in time (each phase, plus `--timeout` per
 * request); the server is killed in a `finally` and its data directory
 * removed. Exit status 1 when the server died, was not ready afterwards, or
 * went over the RSS limit.
 *
 * Run: `deno run -A bench/overload_drill.ts [--clients 8] [--batch 1000]
 * [--measure 10] [--factor 5] [--duration 30] [--max-outstanding 2000]
 * [--rss-limit 2048] [--timeout 30000] [--config FILE] [--v8-flags FLAGS] [--json]`
 *
 * `--v8-flags` goes to the server only, as `DENO_V8_FLAGS` (for example
 * `--max-old-space-size=80,--max-semi-space-size=4`), not to the generator.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { parseArgs } from "node:util";
import { type LoadReport, runLoad, sampleProc } from "./load.ts";
import { recordTails } from "./_records.ts";
import { machineInfo, sleep, startServer } from "./_server.ts";

/** Options of {@linkcode runOverloadDrill}. */
export interface OverloadOptions {
  /** Closed-loop connections. @default 8 */
  clients?: number;
  /** Records per request. @default 1000 */
  batch?: number;
  /** Seconds of closed-loop measurement. @default 10 */
  measureS?: number;
  /** Offered rate as a multiple of the sustainable one. @default 5 */
  factor?: number;
  /** Seconds of open-loop overload. @default 30 */
  durationS?: number;
  /** Most requests in flight in the open loop. @default 2000 */
  maxOutstanding?: number;
  /** RSS in MB above which the drill fails. @default 2048 */
  rssLimitMb?: number;
  /** Milliseconds before a request is abandoned. @default 30000 */
  timeoutMs?: number;
  /** Configuration file passed to the server with `--config`. */
  config?: string;
  /** V8 flags for the server only (`DENO_V8_FLAGS`), comma-separated. */
  v8Flags?: string;
}

/** What the drill measured. */
export interface OverloadReport {
  sustainable: LoadReport;
  overload: LoadReport;
  /** RSS, MB: after start, peak while measuring, peak in overload, 5 s after the overload. */
  rssMb: { idle: number; measure: number; overload: number; after: number };
  /** Highest RSS in each 5 s of the overload, MB. */
  rssTimelineMb: number[];
  /** Answers in the overload window by status, as fractions of all answers. */
  shares: Record<string, number>;
  /** `/readyz` status after the overload. */
  readyAfter: string;
  alive: boolean;
  ok: boolean;
}

const round = (x: number, d = 1) => Math.round(x * 10 ** d) / 10 ** d;

/** Runs the drill; throws only when the server cannot be started. */
export async function runOverloadDrill(options: OverloadOptions = {}): Promise<OverloadReport> {
  const clients = options.clients ?? 8;
  const batch = options.batch ?? 1000;
  const measureS = options.measureS ?? 10;
  const factor = options.factor ?? 5;
  const durationS = options.durationS ?? 30;
  const maxOutstanding = options.maxOutstanding ?? 2000;
  const rssLimitMb = options.rssLimitMb ?? 2048;
  const timeoutMs = options.timeoutMs ?? 30_000;
  const data = mkdtempSync(join(tmpdir(), "troupe_overload_"));
  const server = await startServer({
    data,
    extra: options.config === undefined ? [] : ["--config", options.config],
    env: options.v8Flags === undefined ? {} : { DENO_V8_FLAGS: options.v8Flags },
  });
  const rss = () => (sampleProc(server.pid)?.rssKb ?? 0) / 1024;
  let phasePeak = 0;
  let timeline: number[] | null = null;
  let overloadStart = 0;
  const sampler = setInterval(() => {
    const r = rss();
    phasePeak = Math.max(phasePeak, r);
    if (timeline !== null) {
      const bucket = Math.floor((performance.now() - overloadStart) / 5000);
      timeline[bucket] = Math.max(timeline[bucket] ?? 0, r);
    }
  }, 100);
  try {
    const tails = recordTails();
    await sleep(500);
    const idle = rss();
    phasePeak = 0;
    const sustainable = await runLoad({
      url: server.url,
      batch,
      connections: clients,
      durationS: measureS,
      warmupS: 1,
      pid: server.pid,
      timeoutMs,
      tails,
    });
    const measure = phasePeak;
    const rate = Math.max(batch, sustainable.recordsPerS * factor);
    phasePeak = 0;
    timeline = [];
    overloadStart = performance.now();
    const overload = await runLoad({
      url: server.url,
      batch,
      connections: maxOutstanding,
      durationS,
      warmupS: 0,
      rate,
      pid: server.pid,
      idStart: 1_000_000_000,
      timeoutMs,
      tails,
    });
    const overloadPeak = phasePeak;
    const rssTimelineMb = timeline.map((x) => round(x ?? 0));
    timeline = null;
    await sleep(5000);
    const after = rss();
    const readyAfter = await fetch(`${server.url}/readyz`, { signal: AbortSignal.timeout(5000) })
      .then(async (r) => {
        await r.body?.cancel();
        return String(r.status);
      }, () => "timeout");
    const answered = overload.requests;
    const counts: Record<string, number> = {
      "200": answered - Object.values(overload.errors).reduce((a, b) => a + b, 0),
    };
    for (const [k, v] of Object.entries(overload.errors)) counts[k] = v;
    const shares: Record<string, number> = {};
    for (const [k, v] of Object.entries(counts)) shares[k] = answered ? round(v / answered, 3) : 0;
    const alive = server.alive();
    return {
      sustainable,
      overload,
      rssMb: {
        idle: round(idle),
        measure: round(measure),
        overload: round(overloadPeak),
        after: round(after),
      },
      rssTimelineMb,
      shares,
      readyAfter,
      alive,
      ok: alive && readyAfter === "200" && overloadPeak < rssLimitMb,
    };
  } finally {
    clearInterval(sampler);
    await server.kill();
    rmSync(data, { recursive: true, force: true });
  }
}

/** The report as text. */
export function formatOverloadReport(r: OverloadReport): string {
  const n = (x: number) => x.toLocaleString("en-US");
  const s = r.sustainable;
  const o = r.overload;
  const pct = Object.entries(r.shares).sort().map(([k, v]) => `${k} ${round(v * 100)} %`).join(
    ", ",
  );
  const counts = {
    "200": o.requests - Object.values(o.errors).reduce((a, b) => a + b, 0),
    ...o.errors,
  };
  return [
    `sustainable (closed loop, ${s.connections} clients × ${s.batch} records, ${s.durationS} s): ` +
    `${n(s.recordsPerS)} records/s, p99 ${s.latencyMs.p99} ms`,
    `overload (open loop at ${n(o.rate ?? 0)} records/s = ${
      round((o.rate ?? 0) / Math.max(1, s.recordsPerS))
    }× ` +
    `for ${o.durationS} s, at most ${n(o.connections)} outstanding):`,
    `  accepted ${n(o.recordsPerS)} records/s; answers ${n(o.requests)}: ` +
    Object.entries(counts).sort().map(([k, v]) => `${k} × ${n(v)}`).join(", "),
    `  shares: ${pct}`,
    `  latency ms (from due time): p50 ${o.latencyMs.p50}, p99 ${o.latencyMs.p99}, max ${o.latencyMs.max}; ` +
    `late (cap reached) ${n(o.late)}`,
    `  server CPU ${o.server?.cores} cores; generator CPU ${o.generatorCpuS} s`,
    `RSS MB: idle ${r.rssMb.idle}, peak closed loop ${r.rssMb.measure}, peak overload ${r.rssMb.overload}, ` +
    `5 s after ${r.rssMb.after}`,
    `  overload peak per 5 s: ${r.rssTimelineMb.join(", ")}`,
    `server alive ${r.alive}, /readyz after ${r.readyAfter}`,
    r.ok ? "OK" : "FAILED",
  ].join("\n");
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: process.argv.slice(2),
    options: {
      clients: { type: "string", default: "8" },
      batch: { type: "string", default: "1000" },
      measure: { type: "string", default: "10" },
      factor: { type: "string", default: "5" },
      duration: { type: "string", default: "30" },
      "max-outstanding": { type: "string", default: "2000" },
      "rss-limit": { type: "string", default: "2048" },
      timeout: { type: "string", default: "30000" },
      config: { type: "string" },
      "v8-flags": { type: "string" },
      json: { type: "boolean", default: false },
    },
  });
  const m = machineInfo();
  const report = await runOverloadDrill({
    clients: Number(values.clients),
    batch: Number(values.batch),
    measureS: Number(values.measure),
    factor: Number(values.factor),
    durationS: Number(values.duration),
    maxOutstanding: Number(values["max-outstanding"]),
    rssLimitMb: Number(values["rss-limit"]),
    timeoutMs: Number(values.timeout),
    config: values.config,
    v8Flags: values["v8-flags"],
  });
  if (values.json) console.log(JSON.stringify({ machine: m, ...report }, null, 2));
  else {
    console.log(`machine: ${m.nproc} × ${m.cpu}, ${m.runtime}, load average ${m.loadavg}`);
    console.log(formatOverloadReport(report));
  }
  process.exit(report.ok ? 0 : 1);
}
