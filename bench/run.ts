/**
 * @module
 * The load benchmark of troupe: starts the ceiling servers
 * (`bench/ceiling_server.ts`, parse only and parse + validate) and the real
 * service (`main.ts serve`, a fresh SQLite directory per measurement, with
 * `storage.synchronous` `full` and `normal`) on Deno and on Bun, drives
 * each with the generator of `bench/load.ts` for a few connection counts and
 * batch sizes, and prints a markdown table whose main figure is the ratio of
 * the end-to-end rate to the parse-only ceiling measured in the same run.
 * After the closed-loop runs it measures the latency of the service at half
 * of its best rate (open loop), and the time from SIGTERM to exit after each
 * load. It stops every process it started.
 *
 * ```
 * run.ts ──(generator, in this process)──► ceiling_server.ts --mode parse     (one per runtime)
 *                                      ├─► ceiling_server.ts --mode validate  (one per runtime)
 *                                      └─► main.ts serve  (fresh data dir per measurement)
 * ```
 *
 * The generator shares the machine with the server; its own CPU time is in
 * the JSON report. Before each measurement the harness waits (up to
 * `--settle` seconds) for a second in which the machine is nearly idle, and
 * the table's "noise cores" column says how much CPU other processes took
 * during the measurement; a measurement noisier than `--max-noise` cores is
 * repeated up to `--retries` times and the quietest attempt kept.
 *
 * `run.ts profile` instead runs the service once under the CPU profiler
 * (`--cpu-prof`), stops it with SIGTERM so the profile is written, and
 * prints the summary of `bench/cpu_profile.ts`.
 *
 * `--store-workers` runs every service measurement once per count of
 * storage connections (`pipeline.stages.store`, min = max), for the chart
 * of records/s against worker counts and batch sizes.
 *
 * Run:
 * ```sh
 * deno run -A bench/run.ts [--duration 5] [--warmup 1] [--connections 4,16,64] [--batch 100,1000]
 *   [--runtimes deno,bun] [--servers parse,validate,full,normal] [--no-half-rate]
 *   [--store-workers 1,2,4] [--settle 60] [--max-noise 0.3] [--retries 2] [--json FILE] [--svg FILE]
 * deno run -A bench/run.ts profile [--runtime deno|bun] [--batch 1000] [--connections 16]
 *   [--duration 10] [--synchronous full|normal] [--dir DIR]
 * ```
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import {
  closeSync,
  existsSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { cpus, loadavg, tmpdir, totalmem } from "node:os";
import { dirname, join } from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { recordTails } from "./_records.ts";
import { formatSummary, summariseProfile } from "./cpu_profile.ts";
import { type LoadReport, runLoad, sampleMachine } from "./load.ts";

/** The repository root, where `main.ts` is. */
const ROOT = dirname(dirname(fileURLToPath(import.meta.url)));

/** A runtime that runs the servers. */
export type Runtime = "deno" | "bun";

/** What answers `POST /v1/records`: a ceiling server or the service with one `synchronous` setting. */
export type ServerKind = "parse" | "validate" | "full" | "normal";

const SERVER_KINDS: readonly ServerKind[] = ["parse", "validate", "full", "normal"];

/** One measurement: a server under one closed- or open-loop load. */
export interface Measurement {
  runtime: Runtime;
  server: ServerKind;
  report: LoadReport;
  /** Milliseconds from SIGTERM to exit after the load (service only). */
  shutdownMs: number | null;
  /** Exit code after SIGTERM (service only). */
  exitCode: number | null;
  /** Set on an attempt that was too noisy and is repeated (progress output only). */
  discarded?: boolean;
  /** Storage connections of the service (`pipeline.stages.store`), when the run set them. */
  storeWorkers?: number;
}

/** A server process started by the harness. */
export interface Started {
  child: ChildProcess;
  pid: number;
  url: string;
  dir: string;
  exited: Promise<{ code: number | null; signal: string | null }>;
}

function runtimeCommand(
  runtime: Runtime,
  script: string,
  args: string[],
  profileDir?: string,
): [string, string[]] {
  const prof = profileDir === undefined ? [] : ["--cpu-prof", `--cpu-prof-dir=${profileDir}`];
  if (runtime === "deno") return ["deno", ["run", "-A", ...prof, script, ...args]];
  return ["bun", [...prof, script, ...args]];
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Starts a server whose stdout and stderr go to `log.txt` in a fresh temp
 * directory, waits for its "listening on http://host:port" line, and for
 * `/readyz` when `ready` is set.
 */
export async function startServer(
  runtime: Runtime,
  script: string,
  args: (dir: string) => string[],
  options: { ready: boolean; profileDir?: string },
): Promise<Started> {
  const dir = mkdtempSync(join(tmpdir(), "troupe_bench_"));
  const logPath = join(dir, "log.txt");
  const log = openSync(logPath, "w");
  const [cmd, argv] = runtimeCommand(runtime, script, args(dir), options.profileDir);
  // The server's settings come from its flags alone, not from TROUPE_* variables of this shell.
  const env = Object.fromEntries(
    Object.entries(process.env).filter(([k]) => !k.startsWith("TROUPE_")),
  );
  const child = spawn(cmd, argv, { cwd: ROOT, env, stdio: ["ignore", log, log] });
  closeSync(log);
  const exited = new Promise<{ code: number | null; signal: string | null }>((resolve) => {
    child.once("exit", (code, signal) => resolve({ code, signal }));
  });
  let done = false;
  exited.then(() => (done = true));
  const deadline = Date.now() + 30_000;
  let port: number | undefined;
  while (port === undefined) {
    if (done || Date.now() > deadline) {
      const text = existsSync(logPath) ? readFileSync(logPath, "utf8").slice(-2000) : "";
      child.kill("SIGKILL");
      throw new Error(`Server "${cmd} ${argv.join(" ")}" did not start:\n${text}`);
    }
    await sleep(50);
    const match = /listening on http:\/\/[^:\s]+:(\d+)/.exec(readFileSync(logPath, "utf8"));
    if (match) port = Number(match[1]);
  }
  const url = `http://127.0.0.1:${port}`;
  while (options.ready) {
    if (done || Date.now() > deadline) throw new Error(`Server on ${url} never became ready`);
    try {
      const res = await fetch(`${url}/readyz`);
      await res.body?.cancel();
      if (res.status === 200) break;
    } catch { /* not listening yet */ }
    await sleep(50);
  }
  return { child, pid: child.pid!, url, dir, exited };
}

/** Sends SIGTERM and waits for the exit (SIGKILL after `graceMs`); returns the milliseconds it took. */
export async function stopServer(
  s: Started,
  graceMs = 10_000,
): Promise<{ ms: number; code: number | null }> {
  const started = performance.now();
  s.child.kill("SIGTERM");
  const timer = setTimeout(() => s.child.kill("SIGKILL"), graceMs);
  const { code } = await s.exited;
  clearTimeout(timer);
  const ms = Math.round(performance.now() - started);
  rmSync(s.dir, { recursive: true, force: true });
  return { ms, code };
}

/** Runs `load` against `s`, then stops `s` (also when the load throws). */
async function loadThenStop(
  s: Started,
  load: () => Promise<LoadReport>,
): Promise<[LoadReport, { ms: number; code: number | null }]> {
  let report: LoadReport;
  try {
    report = await load();
  } catch (error) {
    await stopServer(s);
    throw error;
  }
  return [report, await stopServer(s)];
}

export function startCeiling(runtime: Runtime, mode: "parse" | "validate"): Promise<Started> {
  return startServer(runtime, "bench/ceiling_server.ts", () => ["--port", "0", "--mode", mode], {
    ready: false,
  });
}

export function startService(
  runtime: Runtime,
  synchronous: "full" | "normal",
  profileDir?: string,
  storeWorkers?: number,
): Promise<Started> {
  return startServer(runtime, "main.ts", (dir) => {
    const config = join(dir, "troupe.yaml");
    const store = storeWorkers === undefined
      ? ""
      : `pipeline:\n  stages:\n    store: { min_workers: ${storeWorkers}, max_workers: ${storeWorkers} }\n`;
    writeFileSync(config, `storage:\n  synchronous: ${synchronous}\n${store}`);
    return ["serve", "--port", "0", "--data", join(dir, "data"), "--config", config];
  }, { ready: true, profileDir });
}

/** Runtime versions, machine and load, for the head of the report. */
export function describeMachine(): string[] {
  const model = cpus()[0]?.model ?? "unknown CPU";
  const versions = (["deno", "bun"] as const).map((cmd) => {
    try {
      const out = execFileSync(cmd, ["--version"], {
        encoding: "utf8",
        stdio: ["ignore", "pipe", "ignore"],
      });
      return `${cmd} ${out.split("\n")[0].replace(/^deno /, "")}`;
    } catch {
      return `${cmd} unavailable`;
    }
  });
  return [
    `machine: ${cpus().length} × ${model}, ${Math.round(totalmem() / 2 ** 30)} GiB RAM`,
    `runtimes: ${versions.join(", ")}`,
  ];
}

function loadAverage(): string {
  return loadavg().map((x) => x.toFixed(2)).join(" ");
}

/**
 * Waits until the machine is quiet: a one-second window in which all
 * processes together keep less than `maxCores` busy, or `maxWaitS` passed.
 * Returns the busy cores of the last window.
 */
export async function settle(maxWaitS: number, maxCores = 0.25): Promise<number> {
  const deadline = Date.now() + maxWaitS * 1000;
  let busy = NaN;
  do {
    const a = sampleMachine();
    await sleep(1000);
    const b = sampleMachine();
    if (a === null || b === null) return NaN;
    busy = (cpus().length * (b.busy - a.busy)) / (b.total - a.total);
    if (busy < maxCores) break;
  } while (Date.now() < deadline);
  return busy;
}

/** Cores kept busy by other processes during a measurement: the noise in it. */
export function noiseCores(r: LoadReport): number {
  const others = r.machineCores - (r.server?.cores ?? 0) - r.generatorCpuS / r.durationS;
  return Math.max(0, Math.round(others * 100) / 100);
}

/** Options of {@linkcode runMatrix}. */
export interface MatrixOptions {
  runtimes: Runtime[];
  servers: ServerKind[];
  batches: number[];
  connections: number[];
  durationS: number;
  warmupS: number;
  /** Measure the service's latency at half its best rate. */
  halfRate: boolean;
  /** Storage connections to run the service with, each a measurement; the default when empty. */
  storeWorkers: number[];
  /** Seconds to wait at most for a quiet machine before each measurement (0: do not wait). */
  settleS: number;
  /** A measurement during which other processes kept more cores busy than this is repeated. */
  maxNoise: number;
  /** Repeats of a noisy measurement; the quietest attempt is kept. */
  retries: number;
  /** Called with each measurement as it completes. */
  onMeasurement?: (m: Measurement) => void;
}

/**
 * Runs every runtime × batch × connections × server, ceiling servers kept
 * up per runtime and a fresh service per measurement, then the half-rate
 * runs. Stops everything it started, also on failure.
 */
export async function runMatrix(options: MatrixOptions): Promise<Measurement[]> {
  const tails = recordTails();
  const results: Measurement[] = [];
  const load = async (
    url: string,
    pid: number,
    batch: number,
    connections: number,
    rate?: number,
  ) => {
    if (options.settleS > 0) await settle(options.settleS);
    return await runLoad({
      url,
      pid,
      batch,
      connections,
      rate,
      durationS: options.durationS,
      warmupS: options.warmupS,
      tails,
      timeoutMs: 30_000,
    });
  };
  /** Measures until the noise is low enough or the retries are spent; keeps the quietest. */
  const measure = async (once: () => Promise<Measurement>) => {
    let best: Measurement | undefined;
    for (let attempt = 0; attempt <= options.retries; attempt++) {
      const m = await once();
      if (best === undefined || noiseCores(m.report) < noiseCores(best.report)) best = m;
      if (noiseCores(m.report) <= options.maxNoise) break;
      options.onMeasurement?.({ ...m, discarded: true });
    }
    results.push(best!);
    options.onMeasurement?.(best!);
  };
  const service = async (
    runtime: Runtime,
    server: ServerKind,
    batch: number,
    connections: number,
    rate?: number,
    storeWorkers?: number,
  ): Promise<Measurement> => {
    const s = await startService(runtime, server as "full" | "normal", undefined, storeWorkers);
    const [report, stopped] = await loadThenStop(
      s,
      () => load(s.url, s.pid, batch, connections, rate),
    );
    return {
      runtime,
      server,
      report,
      shutdownMs: stopped.ms,
      exitCode: stopped.code,
      ...(storeWorkers === undefined ? {} : { storeWorkers }),
    };
  };
  for (const runtime of options.runtimes) {
    const ceilings = new Map<ServerKind, Started>();
    try {
      for (const mode of ["parse", "validate"] as const) {
        if (options.servers.includes(mode)) ceilings.set(mode, await startCeiling(runtime, mode));
      }
      for (const batch of options.batches) {
        for (const connections of options.connections) {
          // Interleaved, so a drift of the machine's speed hits ceiling and service alike.
          for (const server of options.servers) {
            const ceiling = ceilings.get(server);
            if (ceiling !== undefined) {
              await measure(async () => ({
                runtime,
                server,
                report: await load(ceiling.url, ceiling.pid, batch, connections),
                shutdownMs: null,
                exitCode: null,
              }));
              continue;
            }
            const workers = options.storeWorkers.length === 0 ? [undefined] : options.storeWorkers;
            for (const w of workers) {
              await measure(() => service(runtime, server, batch, connections, undefined, w));
            }
          }
        }
      }
    } finally {
      for (const s of ceilings.values()) await stopServer(s);
    }
    if (!options.halfRate) continue;
    for (const server of options.servers.filter((s) => s === "full" || s === "normal")) {
      for (const batch of options.batches) {
        const best = results
          .filter((m) =>
            m.runtime === runtime && m.server === server && m.report.batch === batch &&
            m.report.rate === null
          )
          .sort((a, b) => b.report.recordsPerS - a.report.recordsPerS)[0];
        if (best === undefined || best.report.recordsPerS === 0) continue;
        const rate = Math.round(best.report.recordsPerS / 2);
        const connections = Math.max(64, best.report.connections);
        await measure(() => service(runtime, server, batch, connections, rate));
      }
    }
  }
  return results;
}

const fmt = (x: number) => (Number.isFinite(x) ? Math.round(x).toLocaleString("en-US") : "–");

/** The ceiling that `m` is compared with: parse-only, same runtime, batch and connections. */
function ceilingOf(
  m: Measurement,
  all: Measurement[],
  kind: ServerKind = "parse",
): Measurement | undefined {
  return all.find((c) =>
    c.server === kind && c.runtime === m.runtime && c.report.batch === m.report.batch &&
    c.report.connections === m.report.connections && c.report.rate === null
  );
}

/**
 * The results as markdown: the closed-loop table (records/s, ratio to the
 * parse-only ceiling of the same runtime, batch and connections, latency,
 * failures, peak RSS, CPU, shutdown) and the half-rate table.
 */
export function formatTable(all: Measurement[]): string {
  const closed = all.filter((m) => m.report.rate === null);
  const open = all.filter((m) => m.report.rate !== null);
  const errors = (r: LoadReport) =>
    Object.entries(r.errors).map(([s, c]) => `${s}×${c}`).join(" ") || "0";
  const row = (cells: Array<string | number>) => `| ${cells.join(" | ")} |`;
  const lines = [
    row([
      "runtime",
      "server",
      "batch",
      "conns",
      "store conns",
      "records/s",
      "× parse ceiling",
      "p50 ms",
      "p99 ms",
      "failed",
      "peak RSS MB",
      "server cores",
      "noise cores",
      "shutdown ms",
    ]),
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
  ];
  for (const m of closed) {
    const r = m.report;
    const ceiling = m.server === "parse" ? undefined : ceilingOf(m, all);
    const ratio = ceiling ? (r.recordsPerS / ceiling.report.recordsPerS).toFixed(2) : "";
    lines.push(row([
      m.runtime,
      m.server,
      r.batch,
      r.connections,
      m.server === "parse" || m.server === "validate" ? "" : m.storeWorkers ?? "default",
      fmt(r.recordsPerS),
      ratio,
      r.latencyMs.p50,
      r.latencyMs.p99,
      errors(r),
      r.server?.peakRssMb ?? "",
      r.server?.cores ?? "",
      noiseCores(r),
      m.shutdownMs ?? "",
    ]));
  }
  if (open.length > 0) {
    lines.push(
      "",
      "Open loop at half of the best closed-loop rate of the same runtime, server and batch " +
        "(latency from the due time):",
      "",
      row([
        "runtime",
        "server",
        "batch",
        "target records/s",
        "achieved records/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "max ms",
        "late",
        "failed",
        "peak RSS MB",
        "noise cores",
        "shutdown ms",
      ]),
      "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    );
    for (const m of open) {
      const r = m.report;
      lines.push(row([
        m.runtime,
        m.server,
        r.batch,
        fmt(r.rate!),
        fmt(r.recordsPerS),
        r.latencyMs.p50,
        r.latencyMs.p95,
        r.latencyMs.p99,
        r.latencyMs.max,
        r.late,
        errors(r),
        r.server?.peakRssMb ?? "",
        noiseCores(r),
        m.shutdownMs ?? "",
      ]));
    }
  }
  return lines.join("\n");
}

/**
 * A grouped bar chart (SVG) of closed-loop records/s: one group per
 * runtime, batch and connections, one bar per server.
 */
/** The bar group of a measurement in the chart: runtime, batch, connections, store workers. */
function groupKey(m: Measurement): string {
  const w = m.storeWorkers === undefined ? "" : ` W${m.storeWorkers}`;
  return `${m.runtime} B${m.report.batch} C${m.report.connections}${w}`;
}

export function renderSvg(all: Measurement[], title: string): string {
  const closed = all.filter((m) => m.report.rate === null);
  const servers = SERVER_KINDS.filter((s) => closed.some((m) => m.server === s));
  const groups: string[] = [];
  for (const m of closed) {
    const key = groupKey(m);
    if (!groups.includes(key)) groups.push(key);
  }
  const colours: Record<ServerKind, string> = {
    parse: "#9aa5b1",
    validate: "#5b7083",
    full: "#d9480f",
    normal: "#f08c00",
  };
  const max = Math.max(1, ...closed.map((m) => m.report.recordsPerS));
  const step = 10 ** Math.floor(Math.log10(max));
  const top = Math.ceil(max / step) * step;
  const bar = 14;
  const groupW = servers.length * bar + 16;
  const left = 70;
  const plotH = 260;
  const width = left + groups.length * groupW + 20;
  const height = plotH + 130;
  const y = (v: number) => 40 + plotH - (v / top) * plotH;
  const out = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="11">`,
    `<text x="${left}" y="20" font-size="13">${title}</text>`,
  ];
  for (let v = 0; v <= top; v += step) {
    out.push(
      `<line x1="${left}" x2="${width - 10}" y1="${y(v)}" y2="${y(v)}" stroke="#ddd"/>`,
      `<text x="${left - 6}" y="${y(v) + 4}" text-anchor="end">${v / 1000}k</text>`,
    );
  }
  groups.forEach((g, gi) => {
    const x0 = left + gi * groupW + 8;
    servers.forEach((s, si) => {
      const m = closed.find((m) => groupKey(m) === g && m.server === s);
      if (!m) return;
      const v = m.report.recordsPerS;
      out.push(
        `<rect x="${x0 + si * bar}" y="${y(v)}" width="${bar - 2}" height="${y(0) - y(v)}" fill="${
          colours[s]
        }"><title>${g} ${s}: ${fmt(v)} records/s</title></rect>`,
      );
    });
    const cx = x0 + (servers.length * bar) / 2;
    out.push(
      `<text transform="translate(${cx},${y(0) + 10}) rotate(60)" font-size="10">${g}</text>`,
    );
  });
  servers.forEach((s, si) => {
    const x = left + si * 150;
    const label = {
      parse: "ceiling: parse",
      validate: "ceiling: parse + validate",
      full: "service, sync full",
      normal: "service, sync normal",
    }[s];
    out.push(
      `<rect x="${x}" y="${height - 18}" width="10" height="10" fill="${colours[s]}"/>`,
      `<text x="${x + 14}" y="${height - 9}">${label}</text>`,
    );
  });
  out.push(
    `<text transform="translate(14,${
      40 + plotH / 2
    }) rotate(-90)" text-anchor="middle">records/s</text>`,
    "</svg>",
  );
  return out.join("\n") + "\n";
}

/** Runs the service once under the CPU profiler and returns the profile's path. */
export async function profileService(options: {
  runtime: Runtime;
  synchronous: "full" | "normal";
  batch: number;
  connections: number;
  durationS: number;
  dir: string;
}): Promise<{ profile: string; report: LoadReport; shutdownMs: number }> {
  rmSync(options.dir, { recursive: true, force: true });
  const service = await startService(options.runtime, options.synchronous, options.dir);
  const [report, stopped] = await loadThenStop(service, () =>
    runLoad({
      url: service.url,
      pid: service.pid,
      batch: options.batch,
      connections: options.connections,
      durationS: options.durationS,
      warmupS: 1,
    }));
  const file = readdirSync(options.dir).find((f) => f.endsWith(".cpuprofile"));
  if (file === undefined) throw new Error(`No .cpuprofile was written to ${options.dir}`);
  return { profile: join(options.dir, file), report, shutdownMs: stopped.ms };
}

function list<T>(raw: string, parse: (s: string) => T, ok: (x: T) => boolean, name: string): T[] {
  const items = raw.split(",").map((s) => parse(s.trim()));
  for (const x of items) if (!ok(x)) throw new Error(`Bad --${name} value "${raw}"`);
  return items;
}

async function main(args: string[]): Promise<number> {
  const profile = args[0] === "profile";
  const { values } = parseArgs({
    args: profile ? args.slice(1) : args,
    options: {
      duration: { type: "string", default: profile ? "10" : "5" },
      warmup: { type: "string", default: "1" },
      connections: { type: "string", default: profile ? "16" : "4,16,64" },
      batch: { type: "string", default: profile ? "1000" : "100,1000" },
      runtimes: { type: "string", default: "deno,bun" },
      runtime: { type: "string", default: "deno" },
      servers: { type: "string", default: SERVER_KINDS.join(",") },
      synchronous: { type: "string", default: "full" },
      "no-half-rate": { type: "boolean", default: false },
      "store-workers": { type: "string", default: "" },
      settle: { type: "string", default: "60" },
      "max-noise": { type: "string", default: "0.3" },
      retries: { type: "string", default: "2" },
      json: { type: "string" },
      svg: { type: "string" },
      dir: { type: "string", default: join(tmpdir(), "troupe_bench_profile") },
    },
  });
  const positive = (n: number) => Number.isSafeInteger(n) && n > 0;
  const durationS = Number(values.duration);
  const warmupS = Number(values.warmup);
  const head = [...describeMachine(), `load average at start: ${loadAverage()}`];
  if (profile) {
    const runtime = values.runtime as Runtime;
    const synchronous = values.synchronous as "full" | "normal";
    if (!["deno", "bun"].includes(runtime) || !["full", "normal"].includes(synchronous)) {
      throw new Error(`Bad --runtime "${runtime}" or --synchronous "${synchronous}"`);
    }
    const { profile: file, report, shutdownMs } = await profileService({
      runtime,
      synchronous,
      batch: Number(values.batch),
      connections: Number(values.connections),
      durationS,
      dir: values.dir,
    });
    console.log(head.join("\n"));
    console.log(
      `profiled ${runtime} main.ts serve (synchronous ${synchronous}): ${
        fmt(report.recordsPerS)
      } records/s, ` +
        `p99 ${report.latencyMs.p99} ms, peak RSS ${report.server?.peakRssMb} MB, shutdown ${shutdownMs} ms; profile ${file}`,
    );
    console.log(`load average at end: ${loadAverage()}\n`);
    console.log(formatSummary(summariseProfile(JSON.parse(readFileSync(file, "utf8")), 30)));
    return 0;
  }
  const options: MatrixOptions = {
    runtimes: list(
      values.runtimes,
      (s) => s as Runtime,
      (s) => s === "deno" || s === "bun",
      "runtimes",
    ),
    servers: list(
      values.servers,
      (s) => s as ServerKind,
      (s) => SERVER_KINDS.includes(s),
      "servers",
    ),
    batches: list(values.batch, Number, positive, "batch"),
    connections: list(values.connections, Number, positive, "connections"),
    durationS,
    warmupS,
    halfRate: !values["no-half-rate"],
    storeWorkers: values["store-workers"] === ""
      ? []
      : list(values["store-workers"], Number, (n) => positive(n) && n <= 5, "store-workers"),
    settleS: Number(values.settle),
    maxNoise: Number(values["max-noise"]),
    retries: Number(values.retries),
    onMeasurement: (m) => {
      const r = m.report;
      process.stderr.write(
        `${m.runtime} ${m.server} B${r.batch} C${r.connections}${
          r.rate ? ` rate ${r.rate}` : ""
        }: ${fmt(r.recordsPerS)} records/s, p99 ${r.latencyMs.p99} ms, noise ${
          noiseCores(r)
        } cores${m.discarded ? " (too noisy: again)" : ""}\n`,
      );
    },
  };
  const results = await runMatrix(options);
  console.log(head.join("\n"));
  console.log(`load average at end: ${loadAverage()}`);
  console.log(
    `each: ${warmupS} s warm-up + ${durationS} s measured, NDJSON bodies of seed 000 records with unique ids\n`,
  );
  console.log(formatTable(results));
  if (values.json) {
    writeFileSync(values.json, JSON.stringify({ machine: head, results }, null, 2) + "\n");
  }
  if (values.svg) {
    writeFileSync(
      values.svg,
      renderSvg(
        results,
        options.storeWorkers.length === 0
          ? "troupe: records/s by runtime, batch (B) and connections (C)"
          : "troupe: records/s by runtime, batch (B), connections (C) and storage connections (W)",
      ),
    );
  }
  return 0;
}

if (import.meta.main) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (error) => {
      process.stderr.write(`run: ${error?.stack ?? error}\n`);
      process.exit(1);
    },
  );
}
