/**
 * @module
 * Storage outage drill: starts `troupe serve` with a token (so the admin
 * route exists), puts steady load on it (`--clients` clients, one request
 * in flight each, NDJSON batches of `--batch` records with unique ids), then
 * sets `{"storage_outage_ms": N}` through `PUT /v1/admin/faults` and
 * measures:
 *
 * - how long until `/readyz` turns 503 (polled every 50 ms);
 * - what clients get during the outage (200 after waiting, 503/429 with
 *   `Retry-After` once mailboxes fill), per second of the run;
 * - how long after the outage ends `/readyz` is 200 again, and the first
 *   ingest 200 that started after it ended (time to recover);
 * - that every acknowledged id is stored once: `GET /v1/stats`
 *   `stored_records` equals the acknowledged records, and after a SIGTERM
 *   every row of `<data>/troupe.db` is read back (acknowledged ids missing,
 *   ids stored twice, ids stored that were never acknowledged).
 *
 * A client that gets 429 or 503 waits `Retry-After` (at most `--max-backoff`
 * ms) and moves on to fresh ids. Loopback only; bounded in time (`--limit`
 * seconds for the whole drill); the server is killed in a `finally` and its
 * data directory removed. Exit status 1 when anything acknowledged is
 * missing or the server did not recover.
 *
 * Run: `deno run -A bench/outage_drill.ts [--clients 4] [--batch 500]
 * [--outage 10000] [--before 3] [--after 5] [--max-backoff 1000] [--limit 120]
 * [--config FILE] [--json]`
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { DatabaseSync } from "node:sqlite";
import { parseArgs } from "node:util";
import { BodyMaker, recordTails } from "./_records.ts";
import { machineInfo, sleep, startServer } from "./_server.ts";

/** The token the drill's server requires. */
export const DRILL_TOKEN = "0123456789abcdef0123";

/** Options of {@linkcode runOutageDrill}. */
export interface OutageOptions {
  /** Concurrent clients. @default 4 */
  clients?: number;
  /** Records per request. @default 500 */
  batch?: number;
  /** Length of the injected outage, ms. @default 10000 */
  outageMs?: number;
  /** Seconds of load before the outage. @default 3 */
  beforeS?: number;
  /** Seconds of load after `/readyz` is 200 again. @default 5 */
  afterS?: number;
  /** Longest a client waits after a 429/503, ms. @default 1000 */
  maxBackoffMs?: number;
  /** Seconds the whole drill may take before it gives up. @default 120 */
  limitS?: number;
  /** Configuration file passed to the server with `--config`. */
  config?: string;
}

/** One request's fate. */
interface Sent {
  /** ms since the load started. */
  start: number;
  end: number;
  status: string;
  firstId: number;
  count: number;
  accepted: number;
  /** Indexes in the batch the answer rejected. */
  rejectedIndexes: number[];
}

/** What the drill measured. */
export interface OutageReport {
  clients: number;
  batch: number;
  outageMs: number;
  /** ms since the load started: when the fault plan was set, when the outage ended. */
  outageStart: number;
  outageEnd: number;
  /** ms from setting the fault to the first `/readyz` 503, or `null` when it never turned. */
  toNotReadyMs: number | null;
  /** ms from the outage's end to `/readyz` 200 again, or `null` when it never recovered. */
  toReadyMs: number | null;
  /** ms from the outage's end to the first ingest 200 of a request sent after it ended. */
  toFirstAckMs: number | null;
  /** Statuses by the phase the request was sent in. */
  statuses: {
    before: Record<string, number>;
    during: Record<string, number>;
    after: Record<string, number>;
  };
  /** Longest a request sent during the outage waited before it was answered 200, ms. */
  longestAckWaitMs: number;
  /** Per second of the run: answers by status (by the second they arrived). */
  timeline: {
    second: number;
    /** `/readyz` answers polled in that second (`timeout`: none in 2 s). */
    ready: Record<string, number>;
    statuses: Record<string, number>;
  }[];
  requests: number;
  acknowledged: number;
  /** `GET /v1/stats` `stored_records` after the load. */
  storedRecords: number;
  /** Rows of `records` in the database. */
  rows: number;
  distinctIds: number;
  lost: number;
  /** Rows of ids that were sent but not acknowledged (a 503 whose batch was committed). */
  unacknowledgedStored: number;
  loadS: number;
  ok: boolean;
  notes: string[];
}

const count = (m: Record<string, number>, k: string) => m[k] = (m[k] ?? 0) + 1;

/** Runs the drill; throws only when the server cannot be started. */
export async function runOutageDrill(options: OutageOptions = {}): Promise<OutageReport> {
  const clients = options.clients ?? 4;
  const batch = options.batch ?? 500;
  const outageMs = options.outageMs ?? 10_000;
  const beforeS = options.beforeS ?? 3;
  const afterS = options.afterS ?? 5;
  const maxBackoffMs = options.maxBackoffMs ?? 1000;
  const limitS = options.limitS ?? 120;
  const notes: string[] = [];
  const data = mkdtempSync(join(tmpdir(), "troupe_outage_"));
  const auth = { authorization: `Bearer ${DRILL_TOKEN}` };
  const server = await startServer({
    data,
    env: { TROUPE_TOKEN: DRILL_TOKEN },
    extra: options.config === undefined ? [] : ["--config", options.config],
  });
  try {
    const url = server.url;
    const bodies = new BodyMaker({ batch, idStart: 1, tails: recordTails(2000) });
    const sent: Sent[] = [];
    const t0 = performance.now();
    const now = () => performance.now() - t0;
    const hardEnd = limitS * 1000;
    let stop = false;

    // /readyz every 50 ms: transitions and the state at each second.
    const readySamples: { at: number; status: string }[] = [];
    let polling = true;
    const poller = (async () => {
      while (polling) {
        const at = now();
        const status = await fetch(`${url}/readyz`, { signal: AbortSignal.timeout(2000) }).then(
          async (r) => {
            await r.body?.cancel();
            return String(r.status);
          },
          () => "timeout",
        );
        readySamples.push({ at, status });
        await sleep(50);
      }
    })();

    const client = async () => {
      while (!stop && now() < hardEnd) {
        const firstId = bodies.nextId;
        const body = bodies.next();
        const start = now();
        let status = "network";
        let accepted = 0;
        let rejectedIndexes: number[] = [];
        let retryAfterS = 1;
        try {
          const res = await fetch(`${url}/v1/records`, {
            method: "POST",
            headers: { ...auth, "content-type": "application/x-ndjson" },
            body,
            signal: AbortSignal.timeout(Math.max(1000, hardEnd - start)),
          });
          status = String(res.status);
          const json = await res.json().catch(() => null);
          if (res.status === 200 && json !== null) {
            accepted = json.accepted;
            rejectedIndexes = (json.errors ?? []).map((e: { index: number }) => e.index);
          }
          retryAfterS = Number(res.headers.get("retry-after") ?? 1) || 1;
        } catch {
          status = "network";
        }
        sent.push({ start, end: now(), status, firstId, count: batch, accepted, rejectedIndexes });
        if (status !== "200") await sleep(Math.min(maxBackoffMs, retryAfterS * 1000));
      }
    };
    const load = Promise.all(Array.from({ length: clients }, client));

    await sleep(beforeS * 1000);
    const outageStart = now();
    const put = await fetch(`${url}/v1/admin/faults`, {
      method: "PUT",
      headers: { ...auth, "content-type": "application/json" },
      body: JSON.stringify({ storage_outage_ms: outageMs }),
    });
    const putText = await put.text();
    if (put.status !== 200) notes.push(`PUT /v1/admin/faults answered ${put.status}: ${putText}`);
    const outageEnd = outageStart + outageMs;

    // Wait for the outage to end and /readyz to be 200 again, then load for afterS more.
    let readyAgainAt: number | null = null;
    while (now() < hardEnd - afterS * 1000) {
      const last = readySamples.at(-1);
      if (last && last.at > outageEnd && last.status === "200") {
        readyAgainAt = readySamples.find((s) => s.at > outageEnd && s.status === "200")!.at;
        break;
      }
      await sleep(50);
    }
    if (readyAgainAt === null) notes.push("/readyz never answered 200 after the outage");
    await sleep(afterS * 1000);
    stop = true;
    await load;
    polling = false;
    await poller;
    const loadS = now() / 1000;

    const firstNotReady = readySamples.find((s) => s.at >= outageStart && s.status === "503");
    const phase = (s: Sent) =>
      s.start < outageStart ? "before" : s.start < outageEnd ? "during" : "after";
    const statuses = { before: {}, during: {}, after: {} } as OutageReport["statuses"];
    let longestAckWaitMs = 0;
    let firstAckAfter: number | null = null;
    const timelineMap = new Map<number, Record<string, number>>();
    let acknowledged = 0;
    for (const s of sent) {
      count(statuses[phase(s)], s.status);
      if (s.status === "200" && phase(s) === "during") {
        longestAckWaitMs = Math.max(longestAckWaitMs, s.end - s.start);
      }
      if (s.status === "200" && s.start >= outageEnd) {
        firstAckAfter = Math.min(firstAckAfter ?? Infinity, s.end);
      }
      const sec = Math.floor(s.end / 1000);
      if (!timelineMap.has(sec)) timelineMap.set(sec, {});
      count(timelineMap.get(sec)!, s.status);
      if (s.status === "200") acknowledged += s.accepted;
    }
    const lastSecond = Math.floor(loadS);
    const timeline = Array.from({ length: lastSecond + 1 }, (_, second) => {
      const samples = readySamples.filter((r) =>
        r.at >= second * 1000 && r.at < second * 1000 + 1000
      );
      const ready: Record<string, number> = {};
      for (const r of samples) count(ready, r.status);
      return { second, ready, statuses: timelineMap.get(second) ?? {} };
    });

    const stats = await fetch(`${url}/v1/stats`, { headers: auth }).then((r) => r.json());
    const storedRecords = Number(stats.stored_records);
    const code = await server.stop();
    if (code !== 0) notes.push(`server exited with ${code} after SIGTERM`);

    // Every row, against what was acknowledged.
    const maxId = bodies.nextId - 1;
    const acked = new Uint8Array(maxId + 1);
    for (const s of sent) {
      if (s.status !== "200") continue;
      const rejected = new Set(s.rejectedIndexes);
      for (let i = 0; i < s.count; i++) if (!rejected.has(i)) acked[s.firstId + i] = 1;
    }
    const seen = new Uint8Array(maxId + 1);
    let rows = 0;
    let distinctIds = 0;
    let unacknowledgedStored = 0;
    let unknown = 0;
    const db = new DatabaseSync(join(data, "troupe.db"), { readOnly: true });
    try {
      for (const row of db.prepare("SELECT id FROM records").iterate()) {
        rows++;
        const id = Number(String(row.id));
        if (!Number.isSafeInteger(id) || id < 1 || id > maxId) {
          unknown++;
          continue;
        }
        if (seen[id] === 0) distinctIds++;
        seen[id]++;
        if (acked[id] === 0) unacknowledgedStored++;
      }
    } finally {
      db.close();
    }
    let lost = 0;
    for (let id = 1; id <= maxId; id++) if (acked[id] === 1 && seen[id] === 0) lost++;
    if (unknown > 0) notes.push(`${unknown} stored ids were never sent`);
    const ok = lost === 0 && rows === distinctIds && unknown === 0 && readyAgainAt !== null &&
      storedRecords === acknowledged + unacknowledgedStored;
    return {
      clients,
      batch,
      outageMs,
      outageStart: Math.round(outageStart),
      outageEnd: Math.round(outageEnd),
      toNotReadyMs: firstNotReady ? Math.round(firstNotReady.at - outageStart) : null,
      toReadyMs: readyAgainAt === null ? null : Math.round(readyAgainAt - outageEnd),
      toFirstAckMs: firstAckAfter === null ? null : Math.round(firstAckAfter - outageEnd),
      statuses,
      longestAckWaitMs: Math.round(longestAckWaitMs),
      timeline,
      requests: sent.length,
      acknowledged,
      storedRecords,
      rows,
      distinctIds,
      lost,
      unacknowledgedStored,
      loadS: Math.round(loadS * 10) / 10,
      ok,
      notes,
    };
  } finally {
    await server.kill();
    rmSync(data, { recursive: true, force: true });
  }
}

/** The report as text. */
export function formatOutageReport(r: OutageReport): string {
  const n = (x: number) => x.toLocaleString("en-US");
  const st = (m: Record<string, number>) =>
    Object.entries(m).sort().map(([k, v]) => `${k} × ${n(v)}`).join(", ") || "none";
  const ms = (x: number | null) => x === null ? "never" : `${n(x)} ms`;
  const lines = [
    `outage drill: ${r.clients} clients × ${r.batch} records, storage outage ${n(r.outageMs)} ms ` +
    `at t=${(r.outageStart / 1000).toFixed(1)} s, load ${r.loadS} s`,
    `  /readyz 503 after:          ${ms(r.toNotReadyMs)} (from setting the fault)`,
    `  /readyz 200 again after:    ${ms(r.toReadyMs)} (from the outage's end)`,
    `  first ingest 200 after:     ${ms(r.toFirstAckMs)} (request sent after the outage's end)`,
    `  longest 200 wait (outage):  ${n(r.longestAckWaitMs)} ms`,
    `  answers before:  ${st(r.statuses.before)}`,
    `  answers during:  ${st(r.statuses.during)}`,
    `  answers after:   ${st(r.statuses.after)}`,
    `  timeline (second: /readyz polls | ingest answers that arrived in it):`,
    ...r.timeline.map((t) =>
      `    ${String(t.second).padStart(3)}  ${
        Object.entries(t.ready).sort().map(([k, v]) => `${k}×${v}`).join(" ").padEnd(22)
      }| ${st(t.statuses)}`
    ),
    `  requests ${n(r.requests)}, acknowledged records ${n(r.acknowledged)}, ` +
    `stored_records ${n(r.storedRecords)}, rows ${n(r.rows)} (distinct ids ${n(r.distinctIds)})`,
    `  lost ${n(r.lost)}, unacknowledged but stored ${n(r.unacknowledgedStored)}`,
    ...r.notes.map((x) => `  note: ${x}`),
    `  ${r.ok ? "OK" : "FAILED"}`,
  ];
  return lines.join("\n");
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: process.argv.slice(2),
    options: {
      clients: { type: "string", default: "4" },
      batch: { type: "string", default: "500" },
      outage: { type: "string", default: "10000" },
      before: { type: "string", default: "3" },
      after: { type: "string", default: "5" },
      "max-backoff": { type: "string", default: "1000" },
      limit: { type: "string", default: "120" },
      config: { type: "string" },
      json: { type: "boolean", default: false },
    },
  });
  const m = machineInfo();
  const report = await runOutageDrill({
    clients: Number(values.clients),
    batch: Number(values.batch),
    outageMs: Number(values.outage),
    beforeS: Number(values.before),
    afterS: Number(values.after),
    maxBackoffMs: Number(values["max-backoff"]),
    limitS: Number(values.limit),
    config: values.config,
  });
  if (values.json) console.log(JSON.stringify({ machine: m, ...report }, null, 2));
  else {
    console.log(`machine: ${m.nproc} × ${m.cpu}, ${m.runtime}, load average ${m.loadavg}`);
    console.log(formatOutageReport(report));
  }
  process.exit(report.ok ? 0 : 1);
}
