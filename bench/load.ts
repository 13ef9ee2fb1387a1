/**
 * @module
 * The load generator of troupe's benchmarks: sends NDJSON bodies of `batch`
 * records with unique ids (`bench/_records.ts`) to `POST /v1/records` over
 * `connections` keep-alive connections for `duration` seconds, after a
 * warm-up, and reports what the server accepted.
 *
 * - Closed loop (the default): each connection sends its next request as
 *   soon as the last one is answered; this finds the maximum rate.
 * - Open loop (`--rate R`): requests leave on a fixed schedule of R
 *   records/s whatever the answers, at most `connections` at a time; a
 *   request's latency counts from when it was due, not from when a
 *   connection came free, so a stalled server cannot hide its stalls
 *   ("coordinated omission").
 *
 * Only requests answered inside the measured window count, and the figures
 * are: records/s accepted, requests/s, request latency p50/p95/p99/max,
 * failures by status (`network` for no answer), and with `--pid` the
 * server's peak RSS (sampled from `/proc/PID/status` every 100 ms, and its
 * `VmHWM`) and the CPU time it used in the window (`/proc/PID/stat`).
 * Loopback only; bounded in time (`--duration`, `--timeout`) and count
 * (`--max-requests`).
 *
 * Run: `deno run -A bench/load.ts --url URL [--batch B] [--connections C]
 * [--duration D] [--warmup W] [--rate R] [--pid PID] [--id-start N]
 * [--max-requests N] [--json]`
 *
 * @example
 * ```sh
 * deno run -A main.ts serve --port 8080 --data /tmp/troupe_data &
 * deno run -A bench/load.ts --url http://127.0.0.1:8080 --connections 16 --duration 10 --pid $!
 * ```
 */
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import process from "node:process";
import { parseArgs } from "node:util";
import { BodyMaker, recordTails } from "./_records.ts";

/** Options of {@linkcode runLoad}. */
export interface LoadOptions {
  /** The server, such as `http://127.0.0.1:8080`; `/v1/records` is added when the path is `/`. */
  url: string;
  /** Records per request. @default 1000 */
  batch?: number;
  /** Connections (closed loop), or most requests in flight (open loop). @default 16 */
  connections?: number;
  /** Seconds measured. @default 10 */
  durationS?: number;
  /** Seconds of load before the measured window. @default 1 */
  warmupS?: number;
  /** Open loop at this many records/s; closed loop when absent. */
  rate?: number;
  /** Server process to sample from `/proc`. */
  pid?: number;
  /** Id of the first record sent. @default 1 */
  idStart?: number;
  /** Most requests sent, warm-up included. @default 10000000 */
  maxRequests?: number;
  /** Milliseconds before a request is abandoned (counted as `network`). @default 30000 */
  timeoutMs?: number;
  /** Record tails to build bodies from (see `bench/_records.ts`). */
  tails?: readonly string[];
  /** Extra request headers, such as `authorization`. */
  headers?: Record<string, string>;
}

/** Figures of one load run. */
export interface LoadReport {
  url: string;
  batch: number;
  connections: number;
  durationS: number;
  warmupS: number;
  /** Open loop target in records/s, or `null` for closed loop. */
  rate: number | null;
  /** Records accepted per second in the window. */
  recordsPerS: number;
  /** Requests answered 2xx per second in the window. */
  requestsPerS: number;
  accepted: number;
  duplicates: number;
  rejected: number;
  /** Requests answered in the window, any status. */
  requests: number;
  /** Failed requests by status (`"429"`, `"network"`, ...). */
  errors: Record<string, number>;
  /** Request latency in milliseconds over the window (from the due time in open loop). */
  latencyMs: { p50: number; p95: number; p99: number; max: number; mean: number };
  /** Open loop: requests that left later than due because `connections` were busy. */
  late: number;
  /** The server's figures, when `pid` was given. */
  server: {
    pid: number;
    /** Highest RSS seen: samples every 100 ms and the kernel's `VmHWM`. */
    peakRssMb: number;
    /** CPU seconds (user + system) used in the window. */
    cpuS: number;
    /** `cpuS` over the window: 1.0 is one core kept busy. */
    cores: number;
  } | null;
  /** CPU seconds the generator itself used in the window. */
  generatorCpuS: number;
  /**
   * Cores the whole machine kept busy in the window (`/proc/stat`); what is
   * above server plus generator is other processes: noise.
   */
  machineCores: number;
}

/** What `/proc` says about a process at one moment. */
interface ProcSample {
  rssKb: number;
  hwmKb: number;
  cpuTicks: number;
}

let clockTicks: number | undefined;

/** `sysconf(_SC_CLK_TCK)`, the unit of `/proc/PID/stat` times; 100 on Linux in practice. */
function ticksPerSecond(): number {
  if (clockTicks === undefined) {
    try {
      clockTicks = Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim()) || 100;
    } catch {
      clockTicks = 100;
    }
  }
  return clockTicks;
}

/** Reads RSS, peak RSS and CPU ticks of `pid`, or `null` once it is gone. */
export function sampleProc(pid: number): ProcSample | null {
  try {
    const status = readFileSync(`/proc/${pid}/status`, "utf8");
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const kb = (key: string) =>
      Number(new RegExp(`^${key}:\\s+(\\d+)`, "m").exec(status)?.[1] ?? 0);
    // Fields after the command name, which is in parentheses and may hold spaces:
    // state is field 3, utime field 14, stime field 15.
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return {
      rssKb: kb("VmRSS"),
      hwmKb: kb("VmHWM"),
      cpuTicks: Number(fields[11]) + Number(fields[12]),
    };
  } catch {
    return null;
  }
}

/** Busy and total CPU ticks of the whole machine, from the first line of `/proc/stat`. */
export function sampleMachine(): { busy: number; total: number } | null {
  try {
    const cpu = readFileSync("/proc/stat", "utf8").split("\n", 1)[0].trim().split(/\s+/).slice(1)
      .map(Number);
    // user nice system idle iowait irq softirq steal ...: idle and iowait are not busy.
    const total = cpu.slice(0, 8).reduce((a, b) => a + b, 0);
    return { busy: total - cpu[3] - cpu[4], total };
  } catch {
    return null;
  }
}

/** Percentile `p` (0 to 1) of sorted values, nearest rank. */
function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(p * sorted.length) - 1))];
}

const LOOPBACK = new Set(["127.0.0.1", "localhost", "[::1]", "::1"]);

/** The ingest URL of `url`, refusing anything but loopback. */
export function ingestUrl(url: string): string {
  const u = new URL(url);
  if (u.protocol !== "http:") throw new Error(`Only http: URLs are load-tested (got "${url}")`);
  if (!LOOPBACK.has(u.hostname) && !/^127\.\d+\.\d+\.\d+$/.test(u.hostname)) {
    throw new Error(`Only loopback servers are load-tested (got host "${u.hostname}")`);
  }
  if (u.pathname === "/" || u.pathname === "") u.pathname = "/v1/records";
  return u.toString();
}

const round = (x: number, digits = 1) => Math.round(x * 10 ** digits) / 10 ** digits;

/**
 * Runs one load and reports it. Never throws for what the server answers;
 * throws for a bad option.
 *
 * @example
 * ```ts
 * const report = await runLoad({ url: "http://127.0.0.1:8080", batch: 100, connections: 4, durationS: 5 });
 * console.log(report.recordsPerS, report.latencyMs.p99);
 * ```
 */
export async function runLoad(options: LoadOptions): Promise<LoadReport> {
  const url = ingestUrl(options.url);
  const batch = options.batch ?? 1000;
  const connections = options.connections ?? 16;
  const durationS = options.durationS ?? 10;
  const warmupS = options.warmupS ?? 1;
  const rate = options.rate ?? null;
  const maxRequests = options.maxRequests ?? 10_000_000;
  const timeoutMs = options.timeoutMs ?? 30_000;
  for (const [name, n] of [["connections", connections], ["max requests", maxRequests]] as const) {
    if (!Number.isSafeInteger(n) || n < 1) {
      throw new RangeError(`${name} must be a positive integer (got ${n})`);
    }
  }
  if (!(durationS > 0) || !(warmupS >= 0)) {
    throw new RangeError(
      `Duration must be above 0 and warm-up at least 0 (got ${durationS}, ${warmupS})`,
    );
  }
  if (rate !== null && !(rate > 0)) throw new RangeError(`Rate must be above 0 (got ${rate})`);
  const bodies = new BodyMaker({ batch, idStart: options.idStart ?? 1, tails: options.tails });
  const headers = { "content-type": "application/x-ndjson", ...options.headers };

  const latencies: number[] = [];
  const errors: Record<string, number> = {};
  let accepted = 0;
  let duplicates = 0;
  let rejected = 0;
  let requests = 0;
  let okRequests = 0;
  let late = 0;
  let sent = 0;

  const t0 = performance.now();
  const windowStart = t0 + warmupS * 1000;
  const windowEnd = windowStart + durationS * 1000;

  // Sampling /proc every 100 ms; CPU is read exactly at the window's edges.
  let peakKb = 0;
  let cpuStart: number | undefined;
  let cpuEnd: number | undefined;
  const sample = () => {
    if (options.pid === undefined) return null;
    const s = sampleProc(options.pid);
    if (s !== null) peakKb = Math.max(peakKb, s.rssKb, s.hwmKb);
    return s;
  };
  sample();
  const sampler = setInterval(sample, 100);
  // Set in timers: the casts keep TypeScript from narrowing them to `null` here.
  let machineStart = null as ReturnType<typeof sampleMachine>;
  let machineEnd = null as ReturnType<typeof sampleMachine>;
  let genCpuStart: ReturnType<typeof process.cpuUsage> | undefined;
  let genCpuEnd: ReturnType<typeof process.cpuUsage> | undefined;
  const edges = [
    setTimeout(() => {
      cpuStart = sample()?.cpuTicks;
      genCpuStart = process.cpuUsage();
      machineStart = sampleMachine();
    }, warmupS * 1000),
    setTimeout(() => {
      cpuEnd = sample()?.cpuTicks;
      genCpuEnd = process.cpuUsage(genCpuStart);
      machineEnd = sampleMachine();
    }, (warmupS + durationS) * 1000),
  ];

  /** Sends one request; `due` is when it should have left (its latency's origin). */
  async function send(due: number): Promise<void> {
    const body = bodies.next();
    let status = "network";
    let result: { accepted?: number; duplicates?: number; rejected?: number; queued?: number } = {};
    try {
      const res = await fetch(url, {
        method: "POST",
        headers,
        body,
        signal: AbortSignal.timeout(timeoutMs),
      });
      status = String(res.status);
      const text = await res.text();
      if (res.ok || res.status === 422) {
        try {
          result = JSON.parse(text);
        } catch {
          status = "bad_json";
        }
      }
    } catch {
      status = "network";
    }
    const done = performance.now();
    if (done < windowStart || done > windowEnd) return;
    requests++;
    latencies.push(done - due);
    // 202: queue mode, where "accepted" means appended to the stream (`queued`).
    if (status === "200" || status === "202" || status === "422") {
      okRequests++;
      accepted += result.accepted ?? result.queued ?? 0;
      duplicates += result.duplicates ?? 0;
      rejected += result.rejected ?? 0;
    }
    if (status !== "200" && status !== "202") errors[status] = (errors[status] ?? 0) + 1;
  }

  if (rate === null) {
    const worker = async () => {
      while (performance.now() < windowEnd && sent < maxRequests) {
        sent++;
        await send(performance.now());
      }
    };
    await Promise.all(Array.from({ length: connections }, worker));
  } else {
    const intervalMs = (batch / rate) * 1000;
    const inFlight = new Set<Promise<void>>();
    let wake: (() => void) | undefined;
    /** Last time a due request found every connection busy. */
    let capHitAt = -Infinity;
    for (;;) {
      const now = performance.now();
      if (now >= windowEnd || sent >= maxRequests) break;
      const due = Math.min(maxRequests, Math.floor((now - t0) / intervalMs) + 1);
      while (sent < due && inFlight.size < connections) {
        const dueAt = t0 + sent * intervalMs;
        if (dueAt <= capHitAt) late++;
        sent++;
        const p: Promise<void> = send(dueAt).finally(() => {
          inFlight.delete(p);
          wake?.();
        });
        inFlight.add(p);
      }
      if (sent < due) capHitAt = now;
      // Wake at the next due time, or sooner when a backlog waits for a free slot.
      const nextDue = t0 + sent * intervalMs;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.max(0, nextDue - performance.now()));
        wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      wake = undefined;
    }
    await Promise.all(inFlight);
  }
  // A run cut short by maxRequests ends before the window does.
  const ended = Math.min(performance.now(), windowEnd);
  clearInterval(sampler);
  for (const t of edges) clearTimeout(t);
  if (cpuEnd === undefined) {
    cpuEnd = sample()?.cpuTicks;
    genCpuEnd = genCpuStart ? process.cpuUsage(genCpuStart) : undefined;
    machineEnd = sampleMachine();
  }
  sample();

  const windowS = Math.max(1e-3, (ended - windowStart) / 1000);
  const sorted = Float64Array.from(latencies).sort();
  const mean = latencies.length ? latencies.reduce((a, b) => a + b, 0) / latencies.length : NaN;
  const cpuS = cpuStart !== undefined && cpuEnd !== undefined
    ? (cpuEnd - cpuStart) / ticksPerSecond()
    : NaN;
  return {
    url,
    batch,
    connections,
    durationS,
    warmupS,
    rate,
    recordsPerS: Math.round(accepted / windowS),
    requestsPerS: round(okRequests / windowS),
    accepted,
    duplicates,
    rejected,
    requests,
    errors,
    latencyMs: {
      p50: round(percentile(sorted, 0.5), 2),
      p95: round(percentile(sorted, 0.95), 2),
      p99: round(percentile(sorted, 0.99), 2),
      max: round(percentile(sorted, 1), 2),
      mean: round(mean, 2),
    },
    late,
    server: options.pid === undefined ? null : {
      pid: options.pid,
      peakRssMb: round(peakKb / 1024),
      cpuS: round(cpuS, 2),
      cores: round(cpuS / windowS, 2),
    },
    generatorCpuS: genCpuEnd ? round((genCpuEnd.user + genCpuEnd.system) / 1e6, 2) : NaN,
    machineCores: machineStart && machineEnd
      ? round((machineEnd.busy - machineStart.busy) / ticksPerSecond() / windowS, 2)
      : NaN,
  };
}

/** The report as a few lines of text. */
export function formatReport(r: LoadReport): string {
  const n = (x: number) => x.toLocaleString("en-US");
  const mode = r.rate === null
    ? "closed loop"
    : `open loop at ${n(r.rate)} records/s (${r.late} late)`;
  const errors = Object.entries(r.errors).map(([s, c]) => `${s}×${c}`).join(", ") || "none";
  const lines = [
    `load: ${r.connections} connections, ${r.batch} records/request, ${r.durationS} s (+${r.warmupS} s warm-up), ${mode} -> ${r.url}`,
    `  records/s ${n(r.recordsPerS)} accepted (duplicates ${n(r.duplicates)}, rejected ${
      n(r.rejected)
    }); requests/s ${r.requestsPerS}`,
    `  latency ms: p50 ${r.latencyMs.p50}, p95 ${r.latencyMs.p95}, p99 ${r.latencyMs.p99}, max ${r.latencyMs.max}`,
    `  failed requests: ${errors}`,
  ];
  if (r.server) {
    lines.push(
      `  server pid ${r.server.pid}: peak RSS ${r.server.peakRssMb} MB, CPU ${r.server.cpuS} s (${r.server.cores} cores)`,
    );
  }
  lines.push(`  generator CPU ${r.generatorCpuS} s; whole machine ${r.machineCores} cores busy`);
  if (r.duplicates > 0) lines.push("  note: some ids were already stored; pass a fresh --id-start");
  return lines.join("\n");
}

function usage(message: string): never {
  process.stderr.write(
    `load: ${message}\nUsage: load.ts --url URL [--batch B] [--connections C] [--duration D] ` +
      `[--warmup W] [--rate R] [--pid PID] [--id-start N] [--max-requests N] [--timeout MS] [--json]\n`,
  );
  process.exit(2);
}

if (import.meta.main) {
  let values;
  try {
    ({ values } = parseArgs({
      args: process.argv.slice(2),
      options: {
        url: { type: "string" },
        batch: { type: "string" },
        connections: { type: "string" },
        duration: { type: "string" },
        warmup: { type: "string" },
        rate: { type: "string" },
        pid: { type: "string" },
        "id-start": { type: "string" },
        "max-requests": { type: "string" },
        timeout: { type: "string" },
        json: { type: "boolean" },
      },
    }));
  } catch (error) {
    usage((error as Error).message);
  }
  if (values.url === undefined) usage("--url is required");
  const num = (name: string, raw: string | undefined) => {
    if (raw === undefined) return undefined;
    const x = Number(raw);
    if (!Number.isFinite(x)) usage(`--${name} must be a number (got "${raw}")`);
    return x;
  };
  try {
    const report = await runLoad({
      url: values.url,
      batch: num("batch", values.batch),
      connections: num("connections", values.connections),
      durationS: num("duration", values.duration),
      warmupS: num("warmup", values.warmup),
      rate: num("rate", values.rate),
      pid: num("pid", values.pid),
      idStart: num("id-start", values["id-start"]),
      maxRequests: num("max-requests", values["max-requests"]),
      timeoutMs: num("timeout", values.timeout),
      tails: recordTails(),
    });
    process.stdout.write((values.json ? JSON.stringify(report) : formatReport(report)) + "\n");
  } catch (error) {
    usage((error as Error).message);
  }
}
