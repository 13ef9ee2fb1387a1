/**
 * @module
 * Scale-out benchmark (issue 7): for 1, 2 and 3 `troupe serve` instances
 * sharing one redis-server (`TROUPE_QUEUE`) and one PostgreSQL
 * (`TROUPE_STORE`), all on loopback, drives the load generator
 * (`bench/load.ts`) spread evenly over the instances and measures:
 *
 * - records/s **committed**: the stored-record count in PostgreSQL
 *   (`troupe.totals`) sampled at the edges of the measured window;
 * - records/s **queued**: what ingest answered 202 for in the window;
 * - the **stream lag** under load: entries not yet delivered
 *   (`XINFO GROUPS` lag, summed over the streams) and entries delivered but
 *   not acknowledged (`XPENDING`), sampled every 500 ms, and the records
 *   queued but not yet committed at the end of the window;
 * - how long the backlog takes to drain once the load stops (bounded).
 *
 * Every round starts a fresh redis-server and a fresh database; PostgreSQL
 * is started once. Bounded in time: warm-up + duration per round, plus at
 * most `--drain-limit` seconds of draining.
 *
 * Run: `deno run -A bench/scale_out.ts [--instances 1,2,3] [--duration 15]
 * [--warmup 3] [--connections 6] [--batch 1000] [--rate R] [--drain-limit 60] [--json]`
 */
import { join } from "node:path";
import process from "node:process";
import { parseArgs } from "node:util";
import postgres from "postgres";
import { Redis } from "ioredis";
import { streamKey } from "../lib/queue.ts";
import { startPostgres } from "../tests/_postgres_server.ts";
import { startRedis } from "../tests/_redis_server.ts";
import { type LoadReport, runLoad } from "./load.ts";
import { type DrillServer, machineInfo, sleep, startServer } from "./_server.ts";

/** Options of {@linkcode runScaleOut}. */
export interface ScaleOutOptions {
  /** Instance counts to measure, in order. @default [1, 2, 3] */
  instances?: number[];
  /** Seconds measured per round. @default 15 */
  durationS?: number;
  /** Seconds of load before the window. @default 3 */
  warmupS?: number;
  /** Connections of the load generator, spread over the instances. @default 6 */
  connections?: number;
  /** Records per request. @default 1000 */
  batch?: number;
  /** Open loop at this many records/s in total; closed loop when absent. */
  rate?: number;
  /** Longest wait for the backlog to drain after the load, seconds. @default 60 */
  drainLimitS?: number;
  /** Streams (`queue.partitions`). @default 8 */
  partitions?: number;
}

/** Figures of one round. */
export interface ScaleOutRound {
  instances: number;
  /** Records/s answered 202 in the window, all instances. */
  queuedPerS: number;
  /** Records/s stored in PostgreSQL in the window. */
  committedPerS: number;
  /** Stream lag (entries not delivered), summed over the streams: mean and max of the samples. */
  lagEntries: { mean: number; max: number; end: number };
  /** Entries delivered and not acknowledged: mean and max. */
  pendingEntries: { mean: number; max: number };
  /** Records appended but not stored at the end of the window. */
  behindRecords: number;
  /** Seconds from the end of the load until every entry was acknowledged; null past the limit. */
  drainS: number | null;
  /** Failed requests by status, all instances. */
  errors: Record<string, number>;
  /** Request latency p50 / p99 of ingest, ms (worst instance). */
  latencyMs: { p50: number; p99: number };
}

async function streamFigures(
  client: Redis,
  streams: string[],
): Promise<{ lag: number; pending: number; length: number }> {
  const pipe = client.pipeline();
  for (const s of streams) pipe.xinfo("GROUPS", s).xlen(s);
  const replies = (await pipe.exec()) ?? [];
  let lag = 0;
  let pending = 0;
  let length = 0;
  for (let i = 0; i < streams.length; i++) {
    const [gErr, groups] = replies[2 * i];
    const [, len] = replies[2 * i + 1];
    length += Number(len ?? 0);
    if (gErr !== null) continue;
    for (const flat of groups as unknown[][]) {
      const info: Record<string, unknown> = {};
      for (let j = 0; j + 1 < flat.length; j += 2) info[String(flat[j])] = flat[j + 1];
      if (info.name !== "troupe") continue;
      const p = Number(info.pending ?? 0);
      pending += p;
      lag += typeof info.lag === "number" ? info.lag : Math.max(0, Number(len ?? 0) - p);
    }
  }
  return { lag, pending, length };
}

async function appended(servers: DrillServer[]): Promise<number> {
  let sum = 0;
  for (const s of servers) {
    const text = await fetch(`${s.url}/metrics`).then((r) => r.text()).catch(() => "");
    const m = /^troupe_queue_records_total\{outcome="appended"\} (\S+)$/m.exec(text);
    sum += Number(m?.[1] ?? 0);
  }
  return sum;
}

/** Runs every round; prints progress on stderr. */
export async function runScaleOut(options: ScaleOutOptions = {}): Promise<ScaleOutRound[]> {
  const instances = options.instances ?? [1, 2, 3];
  const durationS = options.durationS ?? 15;
  const warmupS = options.warmupS ?? 3;
  const connections = options.connections ?? 6;
  const batch = options.batch ?? 1000;
  const drainLimitS = options.drainLimitS ?? 60;
  const partitions = options.partitions ?? 8;
  const streams = Array.from({ length: partitions }, (_, p) => streamKey("troupe:records", p));
  const dir = await Deno.makeTempDir({ prefix: "troupe_scale_bench_" });
  const config = join(dir, "troupe.yaml");
  await Deno.writeTextFile(config, `queue:\n  partitions: ${partitions}\n`);
  const pg = await startPostgres();
  const rounds: ScaleOutRound[] = [];
  try {
    for (const n of instances) {
      const redis = await startRedis();
      const dbUrl = await pg.createDatabase(`scale_${n}_${rounds.length}`);
      const sql = postgres(dbUrl, { max: 1, onnotice: () => {} });
      const client = new Redis(redis.url, { maxRetriesPerRequest: 1 });
      const servers: DrillServer[] = [];
      try {
        for (let i = 0; i < n; i++) {
          servers.push(
            await startServer({
              data: join(dir, `round${rounds.length}_${i}`),
              env: { TROUPE_QUEUE: redis.url, TROUPE_STORE: dbUrl },
              extra: ["--config", config],
            }),
          );
        }
        const stored = async () => {
          const [row] =
            await sql`SELECT coalesce(sum(stored_records), 0)::bigint AS n FROM troupe.totals`;
          return Number(row.n);
        };
        // Samples of the streams every 500 ms while the load runs.
        const lags: number[] = [];
        const pendings: number[] = [];
        let sampling = true;
        const t0 = performance.now();
        const sampler = (async () => {
          while (sampling) {
            const f = await streamFigures(client, streams).catch(() => null);
            if (f !== null && performance.now() - t0 > warmupS * 1000) {
              lags.push(f.lag);
              pendings.push(f.pending);
            }
            await sleep(500);
          }
        })();
        let windowStart = 0;
        let windowEnd = 0;
        const edges = [
          setTimeout(async () => windowStart = await stored(), warmupS * 1000),
          setTimeout(async () => windowEnd = await stored(), (warmupS + durationS) * 1000),
        ];
        const per = Math.max(1, Math.round(connections / n));
        process.stderr.write(
          `scale_out: ${n} instance(s), ${
            per * n
          } connections, ${batch} records/request, ${durationS} s\n`,
        );
        const reports: LoadReport[] = await Promise.all(servers.map((s, i) =>
          runLoad({
            url: s.url,
            batch,
            connections: per,
            durationS,
            warmupS,
            rate: options.rate === undefined ? undefined : options.rate / n,
            idStart: 1 + i * 1_000_000_000,
            timeoutMs: 30_000,
          })
        ));
        const loadEnded = performance.now();
        // The window's last edge fires before runLoad returns; make sure it has landed.
        while (windowEnd === 0) await sleep(20);
        const behind = (await appended(servers)) - (await stored());
        sampling = false;
        await sampler;
        for (const t of edges) clearTimeout(t);
        const end = await streamFigures(client, streams);
        let drainS: number | null = null;
        while (performance.now() - loadEnded < drainLimitS * 1000) {
          const f = await streamFigures(client, streams);
          if (f.length === 0 && f.pending === 0) {
            drainS = Math.round((performance.now() - loadEnded) / 100) / 10;
            break;
          }
          await sleep(200);
        }
        const errors: Record<string, number> = {};
        for (const r of reports) {
          for (const [k, v] of Object.entries(r.errors)) errors[k] = (errors[k] ?? 0) + v;
        }
        const mean = (xs: number[]) => xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : 0;
        const round: ScaleOutRound = {
          instances: n,
          queuedPerS: reports.reduce((a, r) => a + r.recordsPerS, 0),
          committedPerS: Math.round((windowEnd - windowStart) / durationS),
          lagEntries: {
            mean: Math.round(mean(lags)),
            max: Math.max(0, ...lags),
            end: end.lag,
          },
          pendingEntries: { mean: Math.round(mean(pendings)), max: Math.max(0, ...pendings) },
          behindRecords: behind,
          drainS,
          errors,
          latencyMs: {
            p50: Math.max(...reports.map((r) => r.latencyMs.p50)),
            p99: Math.max(...reports.map((r) => r.latencyMs.p99)),
          },
        };
        process.stderr.write(`${JSON.stringify(round)}\n`);
        rounds.push(round);
      } finally {
        await Promise.all(servers.map((s) => s.stop()));
        client.disconnect();
        await sql.end({ timeout: 1 });
        await redis.stop();
      }
    }
  } finally {
    await pg.stop();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
  return rounds;
}

/** The rounds as a Markdown table. */
export function formatScaleOut(rounds: ScaleOutRound[]): string {
  const n = (x: number) => x.toLocaleString("en-US");
  const lines = [
    "| instances | queued records/s | committed records/s | stream lag, entries (mean / max / end) | pending entries (mean / max) | records behind at the end | drain after the load | ingest p50 / p99 ms |",
    "| --: | --: | --: | --: | --: | --: | --: | --: |",
  ];
  for (const r of rounds) {
    lines.push(
      `| ${r.instances} | ${n(r.queuedPerS)} | ${n(r.committedPerS)} | ${n(r.lagEntries.mean)} / ${
        n(r.lagEntries.max)
      } / ${n(r.lagEntries.end)} | ${n(r.pendingEntries.mean)} / ${n(r.pendingEntries.max)} | ${
        n(r.behindRecords)
      } | ${
        r.drainS === null ? "over the limit" : `${r.drainS} s`
      } | ${r.latencyMs.p50} / ${r.latencyMs.p99} |`,
    );
  }
  return lines.join("\n");
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: process.argv.slice(2),
    options: {
      instances: { type: "string", default: "1,2,3" },
      duration: { type: "string", default: "15" },
      warmup: { type: "string", default: "3" },
      connections: { type: "string", default: "6" },
      batch: { type: "string", default: "1000" },
      rate: { type: "string" },
      "drain-limit": { type: "string", default: "60" },
      partitions: { type: "string", default: "8" },
      json: { type: "boolean", default: false },
    },
  });
  const m = machineInfo();
  const rounds = await runScaleOut({
    instances: values.instances.split(",").map(Number),
    durationS: Number(values.duration),
    warmupS: Number(values.warmup),
    connections: Number(values.connections),
    batch: Number(values.batch),
    rate: values.rate === undefined ? undefined : Number(values.rate),
    drainLimitS: Number(values["drain-limit"]),
    partitions: Number(values.partitions),
  });
  if (values.json) {
    console.log(JSON.stringify({ machine: m, rounds }, null, 2));
  } else {
    console.log(`${m.nproc} cores, ${m.cpu}, ${m.runtime}, load ${m.loadavg}`);
    console.log(formatScaleOut(rounds));
  }
}
