/**
 * @module
 * The crash test: proves that a record troupe acknowledged survives a
 * SIGKILL, is stored once, and is counted once in the aggregates.
 *
 * Each trial, on a fresh data directory of its own:
 *
 * ```
 * start server A ──► C clients post batches of N unique records ──► SIGKILL A after T ms
 *                     (ledger: which ids were sent, which got a 200)
 * start server B on the same directory ──► API snapshot ──► SIGTERM B ──► read troupe.db
 *   check 1  every acknowledged id is stored          (full: every row of `records`)
 *   check 2  no id counted twice                      (Σ users.total_events = stored_records = rows)
 *   check 3  aggregates = recomputation from the rows (per user and per event, through the API)
 * start server C ──► resend every unacknowledged record, as a client retrying would
 *   duplicates must equal the unacknowledged records B already had; then checks 1-3 again,
 *   with every sent id expected
 * ```
 *
 * Records are a pure function of `(seed, id)` (user from a small set,
 * event, a value in quarters so every sum is exact, a timestamp in 2025),
 * so a resend carries exactly what was sent first and a stored body can be
 * checked against what was sent. A trial has a hard timeout; every server
 * it started is killed in a `finally` and its directory removed.
 *
 * The injection drill (`--inject RATE`) runs closed-loop load for
 * `--duration` seconds against a clean server, then against one started
 * with `TROUPE_FAULTS` making a stage throw on RATE of its batches, checks
 * both stores as above and reports the throughput ratio injected/clean.
 *
 * Run: `deno run -A bench/crash_test.ts [--trials 50] [--target source|bun|binary]
 * [--binary PATH] [--clients 8] [--seed N] [--json]`, or
 * `deno run -A bench/crash_test.ts --inject 0.01 --duration 60 [--stage transform]
 * [--config FILE]`.
 * Exits 1 when a record was lost, double counted or an aggregate differs,
 * or when a trial could not run.
 *
 * Everything here is web standards and `node:` built-ins, so `bun
 * bench/crash_test.ts` runs it too.
 *
 * @example
 * ```ts
 * import { runCrashTrials } from "./bench/crash_test.ts";
 * const report = await runCrashTrials({ trials: 5, target: "source" });
 * console.log(report.totals.lost); // 0
 * ```
 */
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { cpus, release, tmpdir, totalmem, type as osType } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { DatabaseSync } from "node:sqlite";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { decodeBody } from "../lib/sqlite_store.ts";

const ROOT = fileURLToPath(new URL("../", import.meta.url));

/** How the server under test is run. */
export type CrashTarget = "source" | "bun" | "binary";

/** Event names of the generated records. */
export const EVENTS: readonly string[] = [
  "login",
  "page_view",
  "click",
  "search",
  "purchase",
  "logout",
];

/** Options of {@linkcode runCrashTrials}. */
export interface CrashOptions {
  /** Trials to run. @default 10 */
  trials?: number;
  /** `source` runs `deno run -A main.ts`, `bun` runs `bun main.ts`, `binary` a compiled binary. @default "source" */
  target?: CrashTarget;
  /** The compiled binary for `target: "binary"`; built once with `bun build --compile` when absent. */
  binary?: string;
  /** Concurrent clients, each with one request in flight. @default 8 */
  clients?: number;
  /** Fewest records in a batch. @default 50 */
  minBatch?: number;
  /** Most records in a batch. @default 500 */
  maxBatch?: number;
  /** Distinct `user_id`s. @default 16 */
  users?: number;
  /** Earliest SIGKILL, ms after the load starts. @default 50 */
  killMinMs?: number;
  /** Latest SIGKILL, ms after the load starts. @default 1500 */
  killMaxMs?: number;
  /** Acknowledged ids also fetched through `GET /v1/records/:id` (all of them when fewer). @default 200 */
  sample?: number;
  /** Resend the unacknowledged records after the crash and check again. @default true */
  resend?: boolean;
  /** Hard limit on one trial, ms. @default 60000 */
  trialTimeoutMs?: number;
  /** Seed of every random choice; trial `i` uses `seed + i`. @default a random one */
  seed?: number;
  /** Where per-trial lines go. @default nowhere */
  log?: (line: string) => void;
  /**
   * Runs on the data directory between the SIGKILL and the restart, with the
   * acknowledged ids. Tests tamper with the store here to prove the checks
   * notice; leave it out otherwise.
   */
  afterCrash?: (data: string, acknowledged: readonly number[]) => void | Promise<void>;
}

/** What the resend after a crash found. */
export interface ResendResult {
  /** Records resent (every sent record without a 200). */
  records: number;
  accepted: number;
  /** Resent records the server already had: must equal the trial's `unacknowledgedStored`. */
  duplicates: number;
  /** Sent records still missing after the resend. */
  lost: number;
  doubleCounted: number;
  aggregateMismatches: number;
}

/** One crash trial. */
export interface TrialResult {
  trial: number;
  seed: number;
  /** When the SIGKILL came, ms after the load started. */
  killAfterMs: number;
  /** Records sent (every id a request carried). */
  sent: number;
  /** Records whose request answered 200 without listing them in `errors`. */
  acknowledged: number;
  /** Rows in `records` after the restart. */
  stored: number;
  /** Stored records whose request had no 200 (in flight at the kill): allowed. */
  unacknowledgedStored: number;
  /** Acknowledged records missing after the restart. */
  lost: number;
  /** Up to 20 of the lost ids. */
  lostIds: number[];
  /** Σ users.total_events above stored_records, plus stored_records above the rows. */
  doubleCounted: number;
  /** Users and events whose aggregate differs from the recomputation, and count disagreements. */
  aggregateMismatches: number;
  /** Stored records never sent, or whose body differs from what was sent. */
  unexpectedStored: number;
  resend: ResendResult | null;
  /** HTTP outcomes of the load, by status (`network` for no answer). */
  statuses: Record<string, number>;
  /** Details of every failed check. */
  problems: string[];
  /** Odd but harmless observations (a 5xx before the kill, a slow exit). */
  notes: string[];
  /** Why the trial could not run; `null` when it ran. */
  error: string | null;
  ms: number;
}

/** Everything {@linkcode runCrashTrials} found. */
export interface CrashReport {
  target: CrashTarget;
  /** The server command line, without `serve` and its flags. */
  command: string;
  machine: string;
  clients: number;
  batch: [number, number];
  killWindowMs: [number, number];
  seed: number;
  trials: TrialResult[];
  totals: {
    trials: number;
    sent: number;
    acknowledged: number;
    lost: number;
    doubleCounted: number;
    aggregateMismatches: number;
    unexpectedStored: number;
    unacknowledgedStored: number;
    resent: number;
    resendDuplicates: number;
    /** Trials that could not run or whose resend check failed. */
    failedTrials: number;
  };
  ms: number;
  /** Nothing lost, double counted or mismatched, and every trial ran. */
  ok: boolean;
}

/** Options of {@linkcode runInjectionDrill}. */
export interface InjectionOptions {
  /** Fraction of batches on which `stage` throws. @default 0.01 */
  rate?: number;
  /** The stage that throws. @default "transform" */
  stage?: "validate" | "transform" | "aggregate" | "store";
  /** Seconds of load on each server. @default 60 */
  durationS?: number;
  target?: CrashTarget;
  binary?: string;
  /** @default 8 */
  clients?: number;
  /** @default 50 */
  minBatch?: number;
  /** @default 500 */
  maxBatch?: number;
  /** @default 16 */
  users?: number;
  seed?: number;
  /** A configuration file passed to both servers as `--config`. */
  config?: string;
  log?: (line: string) => void;
}

/** One load run of the drill. */
export interface DrillRun {
  faults: string | null;
  seconds: number;
  sent: number;
  acknowledged: number;
  /** Acknowledged records per second. */
  recordsPerS: number;
  statuses: Record<string, number>;
  /** Records the server rejected (reported in `errors`, sent to the failed store). */
  rejected: number;
  /** Sum of `troupe_actor_restarts_total` at the end of the load. */
  restarts: number;
  lost: number;
  doubleCounted: number;
  aggregateMismatches: number;
  unexpectedStored: number;
  unacknowledgedStored: number;
  /** Exit code after SIGTERM. */
  exitCode: number | null;
  problems: string[];
  notes: string[];
}

/** Everything {@linkcode runInjectionDrill} found. */
export interface InjectionReport {
  target: CrashTarget;
  command: string;
  machine: string;
  rate: number;
  stage: string;
  durationS: number;
  clients: number;
  batch: [number, number];
  clean: DrillRun;
  injected: DrillRun;
  /** `injected.recordsPerS / clean.recordsPerS`. */
  ratio: number;
  ms: number;
  ok: boolean;
}

// ---------------------------------------------------------------------------
// Records: a pure function of (seed, id)

function hash32(a: number, b: number): number {
  let h = Math.imul(a ^ 0x9e3779b9, 0x85ebca6b) ^ Math.imul(b + 0x632be5ab, 0xc2b2ae35);
  h ^= h >>> 16;
  h = Math.imul(h, 0x7feb352d);
  h ^= h >>> 15;
  h = Math.imul(h, 0x846ca68b);
  h ^= h >>> 16;
  return h >>> 0;
}

/** mulberry32: small, fast, seedable. */
function rng(seed: number): { next(): number; int(lo: number, hi: number): number } {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return { next, int: (lo, hi) => lo + Math.floor(next() * (hi - lo + 1)) };
}

const YEAR_START_MS = Date.UTC(2025, 0, 1);
const YEAR_SECONDS = 365 * 24 * 3600;

/** What a generated record carries, as the store keeps it. */
interface Expected {
  user_id: string;
  event: string;
  value: number;
  timestamp_ms: number;
}

function expectedRecord(seed: number, id: number, users: number): Expected {
  const r = rng(hash32(seed, id));
  const second = Math.floor(r.next() * YEAR_SECONDS);
  const ms = r.next() < 0.25 ? r.int(1, 999) : 0;
  return {
    user_id: `user_${String(r.int(0, users - 1)).padStart(3, "0")}`,
    event: EVENTS[r.int(0, EVENTS.length - 1)],
    // Quarters: every sum of them is exact in binary floating point, whatever the order.
    value: (r.int(0, 40_000) - 4_000) / 4,
    timestamp_ms: YEAR_START_MS + second * 1000 + ms,
  };
}

function recordJson(seed: number, id: number, users: number): string {
  const e = expectedRecord(seed, id, users);
  return JSON.stringify({
    id,
    timestamp: new Date(e.timestamp_ms).toISOString(),
    user_id: e.user_id,
    event: e.event,
    value: e.value,
    metadata: { source: "crash_test", n: id % 97 },
  });
}

function batchBody(seed: number, ids: readonly number[], users: number): string {
  return `[${ids.map((id) => recordJson(seed, id, users)).join(",")}]`;
}

// ---------------------------------------------------------------------------
// The ledger: what happened to every id

const UNSENT = 0;
const SENT = 1;
const ACKED = 2;

/** Ids count up from 1; one byte of state each. */
class Ledger {
  #state = new Uint8Array(1 << 16);
  #next = 1;

  /** Takes `n` fresh ids and marks them sent. */
  take(n: number): number[] {
    const ids: number[] = [];
    for (let i = 0; i < n; i++) ids.push(this.#next++);
    this.#grow(this.#next);
    for (const id of ids) this.#state[id] = SENT;
    return ids;
  }

  ack(id: number): void {
    this.#state[id] = ACKED;
  }

  /** Highest id handed out. */
  get maxId(): number {
    return this.#next - 1;
  }

  state(id: number): number {
    return id < this.#state.length ? this.#state[id] : UNSENT;
  }

  count(state: number): number {
    let n = 0;
    for (let id = 1; id <= this.maxId; id++) if (this.#state[id] === state) n++;
    return n;
  }

  ids(state: number): number[] {
    const out: number[] = [];
    for (let id = 1; id <= this.maxId; id++) if (this.#state[id] === state) out.push(id);
    return out;
  }

  #grow(size: number): void {
    if (size < this.#state.length) return;
    let length = this.#state.length;
    while (length <= size) length *= 2;
    const bigger = new Uint8Array(length);
    bigger.set(this.#state);
    this.#state = bigger;
  }
}

// ---------------------------------------------------------------------------
// Server processes

/** A server child process. */
interface ServerProcess {
  url: string;
  child: ChildProcess;
  /** Resolves with the exit code (`null` when killed by a signal). */
  exited: Promise<number | null>;
  alive(): boolean;
  /** The last 64 KiB the child wrote. */
  output(): string;
}

interface ServerCommand {
  command: string;
  args: string[];
  /** Flags after `serve` and its own. */
  extra?: string[];
}

function denoPath(): string {
  return typeof Deno !== "undefined" ? Deno.execPath() : "deno";
}

function serverCommand(target: CrashTarget, binary?: string): ServerCommand {
  if (target === "source") return { command: denoPath(), args: ["run", "-A", "main.ts"] };
  if (target === "bun") return { command: "bun", args: ["main.ts"] };
  if (binary === undefined) throw new Error('Target "binary" needs the path of a binary');
  return { command: binary, args: [] };
}

/** The environment of a server: ours without any TROUPE_* setting, then `extra`. */
function serverEnv(extra: Record<string, string>): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (v !== undefined && !k.startsWith("TROUPE_")) env[k] = v;
  }
  return { ...env, TROUPE_STATUS: "0", TROUPE_LOG_LEVEL: "warning", NO_COLOR: "1", ...extra };
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address !== null ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener("abort", done, { once: true });
  });
}

/** The error of a server that could not bind its port. */
class PortTakenError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "PortTakenError";
  }
}

/**
 * Starts `serve` on a free port over `data`; resolves once `/readyz`
 * answers 200. A port taken by someone else between {@linkcode freePort}
 * and the bind (tests run in parallel) costs a retry on another one.
 */
async function startServer(
  cmd: ServerCommand,
  data: string,
  env: Record<string, string>,
  children: Set<ServerProcess>,
  signal: AbortSignal,
): Promise<ServerProcess> {
  for (let attempt = 1;; attempt++) {
    try {
      return await spawnServer(cmd, data, env, children, signal);
    } catch (error) {
      if (!(error instanceof PortTakenError) || attempt >= 3) throw error;
    }
  }
}

async function spawnServer(
  cmd: ServerCommand,
  data: string,
  env: Record<string, string>,
  children: Set<ServerProcess>,
  signal: AbortSignal,
): Promise<ServerProcess> {
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const child = spawn(
    cmd.command,
    [
      ...cmd.args,
      "serve",
      "--host",
      "127.0.0.1",
      "--port",
      String(port),
      "--data",
      data,
      ...(cmd.extra ?? []),
    ],
    { cwd: ROOT, env: serverEnv(env), stdio: ["ignore", "pipe", "pipe"] },
  );
  let tail = "";
  const keep = (chunk: Buffer | string) => {
    tail = (tail + chunk.toString()).slice(-65536);
  };
  child.stdout?.on("data", keep);
  child.stderr?.on("data", keep);
  let done = false;
  const exited = new Promise<number | null>((resolve) => {
    child.once("exit", (code) => {
      done = true;
      resolve(code);
    });
    child.once("error", (error) => {
      done = true;
      keep(`spawn error: ${error.message}\n`);
      resolve(-1);
    });
  });
  const server: ServerProcess = { url, child, exited, alive: () => !done, output: () => tail };
  children.add(server);
  const deadline = Date.now() + 30_000;
  while (true) {
    if (signal.aborted) throw new Error("Aborted while waiting for the server to be ready");
    if (!server.alive()) {
      const code = await exited;
      const message = `Server exited with code ${code} before it was ready:\n${tail}`;
      throw /EADDRINUSE|AddrInUse|address already in use/i.test(tail)
        ? new PortTakenError(message)
        : new Error(message);
    }
    const ready = await fetch(`${url}/readyz`, { signal: AbortSignal.timeout(2000) }).then(
      async (res) => {
        await res.text();
        return res.status === 200;
      },
      () => false,
    );
    if (ready) return server;
    if (Date.now() > deadline) throw new Error(`Server on ${url} not ready after 30 s:\n${tail}`);
    await sleep(25, signal);
  }
}

/**
 * Signals the server by pid: Deno's `ChildProcess.kill` reports the signal
 * it sent as the cause of the exit even when the child exits by itself.
 */
function signalServer(server: ServerProcess, signal: "SIGKILL" | "SIGTERM"): void {
  if (!server.alive() || server.child.pid === undefined) return;
  try {
    process.kill(server.child.pid, signal);
  } catch { /* already gone */ }
}

async function killServer(server: ServerProcess): Promise<void> {
  signalServer(server, "SIGKILL");
  await server.exited;
}

/** SIGTERM, then SIGKILL after `timeoutMs`; the exit code, or `null` when it had to be killed. */
async function stopServer(
  server: ServerProcess,
  notes: string[],
  timeoutMs = 15_000,
): Promise<number | null> {
  if (!server.alive()) return await server.exited;
  signalServer(server, "SIGTERM");
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<"timeout">((r) => timer = setTimeout(() => r("timeout"), timeoutMs));
  const result = await Promise.race([server.exited, timeout]);
  clearTimeout(timer);
  if (result === "timeout") {
    notes.push(`server did not exit within ${timeoutMs} ms of SIGTERM; killed`);
    await killServer(server);
    return null;
  }
  if (result !== 0) notes.push(`server exited with code ${result} after SIGTERM`);
  return result;
}

// ---------------------------------------------------------------------------
// Load

interface LoadSpec {
  url: string;
  seed: number;
  clients: number;
  minBatch: number;
  maxBatch: number;
  users: number;
  ledger: Ledger;
  /** True once clients must stop sending. */
  stopped(): boolean;
  /** Whether an error is expected now (the server was killed). */
  expectFailures(): boolean;
  signal: AbortSignal;
}

interface LoadResult {
  statuses: Record<string, number>;
  rejected: number;
  /** Fresh records the server called duplicates: never right. */
  unexpectedDuplicates: number;
  notes: string[];
}

interface IngestAnswer {
  accepted: number;
  duplicates: number;
  rejected: number;
  errors: { index: number }[];
}

function isIngestAnswer(body: unknown): body is IngestAnswer {
  const b = body as IngestAnswer;
  return typeof b === "object" && b !== null && typeof b.accepted === "number" &&
    typeof b.duplicates === "number" && typeof b.rejected === "number" && Array.isArray(b.errors);
}

/** Posts one batch; the answer's status (or `network`) and parsed body. */
async function post(
  url: string,
  body: string,
  signal: AbortSignal,
): Promise<{ status: string; body: unknown; retryAfter: number }> {
  try {
    const res = await fetch(`${url}/v1/records`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body,
      signal: AbortSignal.any([signal, AbortSignal.timeout(60_000)]),
    });
    const text = await res.text();
    let parsed: unknown = text;
    try {
      parsed = JSON.parse(text);
    } catch { /* kept as text */ }
    const retryAfter = Number(res.headers.get("retry-after") ?? "1");
    return { status: String(res.status), body: parsed, retryAfter };
  } catch {
    return { status: "network", body: null, retryAfter: 0 };
  }
}

/** Marks every record of a 200 answer not listed in `errors` as acknowledged. */
function acknowledge(ledger: Ledger, ids: readonly number[], answer: IngestAnswer): number {
  const failed = new Set(answer.errors.map((e) => e.index));
  let acked = 0;
  ids.forEach((id, i) => {
    if (!failed.has(i)) {
      ledger.ack(id);
      acked++;
    }
  });
  return acked;
}

async function runClients(spec: LoadSpec): Promise<LoadResult> {
  const result: LoadResult = { statuses: {}, rejected: 0, unexpectedDuplicates: 0, notes: [] };
  const count = (status: string) => result.statuses[status] = (result.statuses[status] ?? 0) + 1;
  const client = async (index: number) => {
    const r = rng(hash32(spec.seed, -1 - index));
    while (!spec.stopped()) {
      const ids = spec.ledger.take(r.int(spec.minBatch, spec.maxBatch));
      const answer = await post(spec.url, batchBody(spec.seed, ids, spec.users), spec.signal);
      count(answer.status);
      if (answer.status === "200" && isIngestAnswer(answer.body)) {
        const a = answer.body;
        acknowledge(spec.ledger, ids, a);
        result.rejected += a.rejected;
        result.unexpectedDuplicates += a.duplicates;
        if (a.accepted + a.duplicates + a.rejected !== ids.length) {
          result.notes.push(
            `a 200 answer for ${ids.length} records counted ${
              a.accepted + a.duplicates + a.rejected
            }`,
          );
        }
      } else if (answer.status === "429" || answer.status === "503") {
        await sleep(Math.min(Math.max(answer.retryAfter, 0) * 1000, 250), spec.signal);
      } else if (!spec.expectFailures()) {
        if (result.notes.length < 20) {
          result.notes.push(
            `unexpected ${answer.status} during load: ${JSON.stringify(answer.body).slice(0, 300)}`,
          );
        }
        await sleep(50, spec.signal);
      }
    }
  };
  await Promise.all(Array.from({ length: spec.clients }, (_, i) => client(i)));
  return result;
}

// ---------------------------------------------------------------------------
// Checks

interface UserView {
  total_events: number;
  total_value: number;
  events: string[];
  last_activity: string;
}

interface EventView {
  event: string;
  count: number;
  total_value: number;
  min_value: number;
  max_value: number;
}

/** What the running server says about its store. */
interface ApiSnapshot {
  storedRecords: number;
  failedRecords: number;
  users: Map<string, UserView>;
  events: Map<string, EventView>;
  restarts: number;
  sampleChecked: number;
  sampleMissing: number[];
}

// deno-lint-ignore no-explicit-any
async function getJson(url: string, signal: AbortSignal): Promise<{ status: number; body: any }> {
  const res = await fetch(url, { signal: AbortSignal.any([signal, AbortSignal.timeout(30_000)]) });
  const text = await res.text();
  return { status: res.status, body: text.length > 0 ? JSON.parse(text) : null };
}

async function apiSnapshot(
  url: string,
  ledger: Ledger,
  sample: number,
  seed: number,
  signal: AbortSignal,
): Promise<ApiSnapshot> {
  const stats = await getJson(`${url}/v1/stats`, signal);
  if (stats.status !== 200) throw new Error(`GET /v1/stats answered ${stats.status}`);
  const users = new Map<string, UserView>();
  let cursor = "";
  for (let page = 0; page < 10_000; page++) {
    const res = await getJson(
      `${url}/v1/users?limit=1000&cursor=${encodeURIComponent(cursor)}`,
      signal,
    );
    if (res.status !== 200) throw new Error(`GET /v1/users answered ${res.status}`);
    for (const [id, u] of Object.entries(res.body.users as Record<string, UserView>)) {
      users.set(id, u);
    }
    if (res.body.next_cursor === null) break;
    cursor = res.body.next_cursor;
  }
  const events = new Map<string, EventView>();
  for (const event of EVENTS) {
    const res = await getJson(`${url}/v1/events/${encodeURIComponent(event)}`, signal);
    if (res.status === 200) events.set(event, res.body);
    else if (res.status !== 404) throw new Error(`GET /v1/events/${event} answered ${res.status}`);
  }
  const metrics = await fetch(`${url}/metrics`, { signal }).then((r) => r.text());
  let restarts = 0;
  for (const m of metrics.matchAll(/^troupe_actor_restarts_total\{[^}]*\} (\S+)$/gm)) {
    restarts += Number(m[1]);
  }
  // A sample of acknowledged ids through the API, the way a client would look one up.
  const acked = ledger.ids(ACKED);
  const r = rng(hash32(seed, 0x5a5a));
  for (let i = acked.length - 1; i > 0 && acked.length > sample; i--) {
    const j = r.int(0, i);
    [acked[i], acked[j]] = [acked[j], acked[i]];
  }
  const picked = acked.slice(0, sample);
  const sampleMissing: number[] = [];
  for (let start = 0; start < picked.length; start += 16) {
    await Promise.all(
      picked.slice(start, start + 16).map(async (id) => {
        const res = await getJson(`${url}/v1/records/${id}`, signal);
        if (res.status !== 200 || res.body.id !== id) sampleMissing.push(id);
      }),
    );
  }
  return {
    storedRecords: stats.body.stored_records,
    failedRecords: stats.body.failed_records,
    users,
    events,
    restarts,
    sampleChecked: picked.length,
    sampleMissing,
  };
}

/** What reading `troupe.db` against the ledger and the snapshot found. */
interface StoreCheck {
  rows: number;
  lost: number;
  lostIds: number[];
  unacknowledgedStored: number;
  unexpectedStored: number;
  doubleCounted: number;
  aggregateMismatches: number;
  problems: string[];
}

function close(a: number, b: number): boolean {
  return Math.abs(a - b) <= 1e-9 * Math.max(1, Math.abs(a), Math.abs(b));
}

/**
 * Reads every stored record from `<data>/troupe.db` (read-only, server
 * stopped), then checks: every acknowledged id is stored, nothing is counted
 * twice, and the snapshot's aggregates equal a recomputation from the rows.
 */
function checkStore(
  data: string,
  ledger: Ledger,
  snapshot: ApiSnapshot,
  seed: number,
  users: number,
): StoreCheck {
  const problems: string[] = [];
  const stored = new Uint8Array(ledger.maxId + 1);
  let rows = 0;
  let unexpectedStored = 0;
  const perUser = new Map<
    string,
    { count: number; total: number; events: Set<string>; lastMs: number }
  >();
  const perEvent = new Map<string, { count: number; total: number; min: number; max: number }>();
  const db = new DatabaseSync(join(data, "troupe.db"), { readOnly: true });
  try {
    for (const row of db.prepare("SELECT id, body FROM records").iterate()) {
      rows++;
      const key = String(row.id);
      const id = Number(key);
      const body = decodeBody(String(row.body));
      if (!Number.isSafeInteger(id) || id < 1 || id > ledger.maxId) {
        unexpectedStored++;
        if (unexpectedStored <= 5) problems.push(`stored id "${key}" was never sent`);
        continue;
      }
      stored[id]++;
      const want = expectedRecord(seed, id, users);
      if (
        body.id !== id || body.user_id !== want.user_id || body.event !== want.event ||
        body.value !== want.value || body.timestamp_ms !== want.timestamp_ms
      ) {
        unexpectedStored++;
        if (unexpectedStored <= 5) {
          problems.push(`stored record ${id} differs from what was sent: ${String(row.body)}`);
        }
      }
      let u = perUser.get(body.user_id);
      if (u === undefined) {
        u = { count: 0, total: 0, events: new Set(), lastMs: -Infinity };
        perUser.set(body.user_id, u);
      }
      u.count++;
      u.total += body.value;
      u.events.add(body.event);
      u.lastMs = Math.max(u.lastMs, body.timestamp_ms);
      const e = perEvent.get(body.event);
      if (e === undefined) {
        perEvent.set(body.event, { count: 1, total: body.value, min: body.value, max: body.value });
      } else {
        e.count++;
        e.total += body.value;
        e.min = Math.min(e.min, body.value);
        e.max = Math.max(e.max, body.value);
      }
    }
  } finally {
    db.close();
  }

  let lost = 0;
  const lostIds: number[] = [];
  let unacknowledgedStored = 0;
  let doubleRows = 0;
  for (let id = 1; id <= ledger.maxId; id++) {
    const state = ledger.state(id);
    if (stored[id] > 1) doubleRows += stored[id] - 1;
    if (state === ACKED && stored[id] === 0) {
      lost++;
      if (lostIds.length < 20) lostIds.push(id);
    } else if (state === SENT && stored[id] > 0) {
      unacknowledgedStored++;
    }
  }
  if (lost > 0) {
    problems.push(`${lost} acknowledged records missing, such as ${lostIds.join(", ")}`);
  }
  for (const id of snapshot.sampleMissing.slice(0, 5)) {
    problems.push(`GET /v1/records/${id} did not return the acknowledged record`);
  }

  // Counted twice: aggregates above the totals row, or the totals row above the rows.
  let userSum = 0;
  for (const u of snapshot.users.values()) userSum += u.total_events;
  const doubleCounted = Math.max(0, userSum - snapshot.storedRecords) +
    Math.max(0, snapshot.storedRecords - rows) + doubleRows;
  let aggregateMismatches = 0;
  if (userSum !== snapshot.storedRecords || snapshot.storedRecords !== rows) {
    if (userSum < snapshot.storedRecords || snapshot.storedRecords < rows) aggregateMismatches++;
    problems.push(
      `Σ users.total_events ${userSum}, stored_records ${snapshot.storedRecords}, rows ${rows}`,
    );
  }

  for (const [userId, want] of perUser) {
    const got = snapshot.users.get(userId);
    const ok = got !== undefined && got.total_events === want.count &&
      close(got.total_value, want.total) &&
      JSON.stringify([...got.events].sort()) === JSON.stringify([...want.events].sort()) &&
      Date.parse(got.last_activity) === want.lastMs;
    if (!ok) {
      aggregateMismatches++;
      if (problems.length < 40) {
        problems.push(
          `user "${userId}": API ${JSON.stringify(got)}, recomputed ${
            JSON.stringify({
              total_events: want.count,
              total_value: want.total,
              events: [...want.events].sort(),
              last_activity: new Date(want.lastMs).toISOString(),
            })
          }`,
        );
      }
    }
  }
  for (const userId of snapshot.users.keys()) {
    if (!perUser.has(userId)) {
      aggregateMismatches++;
      problems.push(`user "${userId}" has an aggregate but no stored record`);
    }
  }
  for (const [event, want] of perEvent) {
    const got = snapshot.events.get(event);
    const ok = got !== undefined && got.count === want.count &&
      close(got.total_value, want.total) &&
      got.min_value === want.min && got.max_value === want.max;
    if (!ok) {
      aggregateMismatches++;
      if (problems.length < 40) {
        problems.push(
          `event "${event}": API ${JSON.stringify(got)}, recomputed ${JSON.stringify(want)}`,
        );
      }
    }
  }
  for (const event of snapshot.events.keys()) {
    if (!perEvent.has(event)) {
      aggregateMismatches++;
      problems.push(`event "${event}" has an aggregate but no stored record`);
    }
  }
  return {
    rows,
    lost,
    lostIds,
    unacknowledgedStored,
    unexpectedStored,
    doubleCounted,
    aggregateMismatches,
    problems,
  };
}

// ---------------------------------------------------------------------------
// Resend

/** Resends every sent-but-unacknowledged record, like a client retrying after the crash. */
async function resendUnacknowledged(
  url: string,
  ledger: Ledger,
  seed: number,
  users: number,
  maxBatch: number,
  signal: AbortSignal,
  problems: string[],
): Promise<{ records: number; accepted: number; duplicates: number }> {
  const ids = ledger.ids(SENT);
  const batches: number[][] = [];
  for (let i = 0; i < ids.length; i += maxBatch) batches.push(ids.slice(i, i + maxBatch));
  let accepted = 0;
  let duplicates = 0;
  let next = 0;
  const worker = async () => {
    while (next < batches.length && !signal.aborted) {
      const batch = batches[next++];
      const body = batchBody(seed, batch, users);
      for (let attempt = 1;; attempt++) {
        const answer = await post(url, body, signal);
        if (answer.status === "200" && isIngestAnswer(answer.body)) {
          const a = answer.body;
          acknowledge(ledger, batch, a);
          accepted += a.accepted;
          duplicates += a.duplicates;
          if (a.rejected > 0) problems.push(`resend: ${a.rejected} records rejected`);
          break;
        }
        if (attempt >= 20 || signal.aborted) {
          problems.push(`resend: a batch answered ${answer.status} ${attempt} times`);
          break;
        }
        await sleep(100, signal);
      }
    }
  };
  await Promise.all([worker(), worker(), worker(), worker()]);
  return { records: ids.length, accepted, duplicates };
}

// ---------------------------------------------------------------------------
// Trials

interface Resolved {
  target: CrashTarget;
  cmd: ServerCommand;
  clients: number;
  minBatch: number;
  maxBatch: number;
  users: number;
  killMinMs: number;
  killMaxMs: number;
  sample: number;
  resend: boolean;
  trialTimeoutMs: number;
  seed: number;
  afterCrash?: CrashOptions["afterCrash"];
}

async function runTrial(
  o: Resolved,
  trial: number,
  children: Set<ServerProcess>,
  signal: AbortSignal,
): Promise<TrialResult> {
  const started = performance.now();
  const seed = (o.seed + trial) >>> 0;
  const r = rng(seed);
  const killAfterMs = r.int(o.killMinMs, o.killMaxMs);
  const result: TrialResult = {
    trial,
    seed,
    killAfterMs,
    sent: 0,
    acknowledged: 0,
    stored: 0,
    unacknowledgedStored: 0,
    lost: 0,
    lostIds: [],
    doubleCounted: 0,
    aggregateMismatches: 0,
    unexpectedStored: 0,
    resend: null,
    statuses: {},
    problems: [],
    notes: [],
    error: null,
    ms: 0,
  };
  const data = mkdtempSync(join(tmpdir(), "troupe_crash_"));
  const ledger = new Ledger();
  try {
    // 1. Load, then SIGKILL at a random moment.
    const first = await startServer(o.cmd, data, {}, children, signal);
    let killed = false;
    const timer = setTimeout(() => {
      killed = true;
      signalServer(first, "SIGKILL");
    }, killAfterMs);
    let load: LoadResult;
    try {
      load = await runClients({
        url: first.url,
        seed,
        clients: o.clients,
        minBatch: o.minBatch,
        maxBatch: o.maxBatch,
        users: o.users,
        ledger,
        stopped: () => killed || signal.aborted,
        expectFailures: () => killed || !first.alive(),
        signal,
      });
    } finally {
      clearTimeout(timer);
    }
    await killServer(first);
    if (!killed) result.notes.push("the server died before the SIGKILL");
    result.statuses = load.statuses;
    result.notes.push(...load.notes);
    if (load.unexpectedDuplicates > 0) {
      result.problems.push(`${load.unexpectedDuplicates} fresh records answered as duplicates`);
    }
    result.sent = ledger.maxId;
    result.acknowledged = ledger.count(ACKED);
    await o.afterCrash?.(data, ledger.ids(ACKED));

    // 2. Restart on the same directory; what does it say, and what is in the file?
    const second = await startServer(o.cmd, data, {}, children, signal);
    const snapshot = await apiSnapshot(second.url, ledger, o.sample, seed, signal);
    await stopServer(second, result.notes);
    const check = checkStore(data, ledger, snapshot, seed, o.users);
    result.stored = check.rows;
    result.lost = check.lost;
    result.lostIds = check.lostIds;
    result.unacknowledgedStored = check.unacknowledgedStored;
    result.unexpectedStored = check.unexpectedStored;
    result.doubleCounted = check.doubleCounted;
    result.aggregateMismatches = check.aggregateMismatches;
    result.problems.push(...check.problems);

    // 3. A client retrying everything it has no 200 for: stored once, counted once.
    if (o.resend) {
      const third = await startServer(o.cmd, data, {}, children, signal);
      const problems: string[] = [];
      const sent = await resendUnacknowledged(
        third.url,
        ledger,
        seed,
        o.users,
        o.maxBatch,
        signal,
        problems,
      );
      const after = await apiSnapshot(third.url, ledger, 0, seed, signal);
      await stopServer(third, result.notes);
      const again = checkStore(data, ledger, after, seed, o.users);
      result.resend = {
        records: sent.records,
        accepted: sent.accepted,
        duplicates: sent.duplicates,
        lost: again.lost,
        doubleCounted: again.doubleCounted,
        aggregateMismatches: again.aggregateMismatches,
      };
      if (sent.duplicates !== check.unacknowledgedStored) {
        problems.push(
          `resend: ${sent.duplicates} duplicates, but ${check.unacknowledgedStored} unacknowledged records were stored`,
        );
      }
      if (again.rows !== ledger.maxId) {
        problems.push(`resend: ${again.rows} records stored of ${ledger.maxId} sent`);
      }
      result.problems.push(...problems, ...again.problems.map((p) => `after resend: ${p}`));
    }
  } catch (error) {
    result.error = signal.aborted
      ? `Trial timed out: ${(error as Error).message}`
      : String((error as Error).stack ?? error);
    const tails = [...children].map((c) => c.output().slice(-2000)).join("\n---\n");
    if (tails.length > 0) result.error += `\nserver output:\n${tails}`;
  } finally {
    await Promise.all([...children].map(killServer));
    rmSync(data, { recursive: true, force: true });
    result.ms = Math.round(performance.now() - started);
  }
  return result;
}

/**
 * Runs trial `i` with a hard deadline: its signal aborts after
 * `trialTimeoutMs`, and if it has still not wound down 15 s later its
 * servers are killed and it is reported as timed out.
 */
async function runBoundedTrial(o: Resolved, i: number): Promise<TrialResult> {
  const controller = new AbortController();
  const children = new Set<ServerProcess>();
  let abortTimer: ReturnType<typeof setTimeout> | undefined;
  let graceTimer: ReturnType<typeof setTimeout> | undefined;
  const gaveUp = new Promise<"gave up">((resolve) => {
    abortTimer = setTimeout(() => {
      controller.abort();
      graceTimer = setTimeout(() => resolve("gave up"), 15_000);
    }, o.trialTimeoutMs);
  });
  try {
    const trial = runTrial(o, i, children, controller.signal);
    const result = await Promise.race([trial, gaveUp]);
    if (result !== "gave up") return result;
    return {
      trial: i,
      seed: (o.seed + i) >>> 0,
      killAfterMs: 0,
      sent: 0,
      acknowledged: 0,
      stored: 0,
      unacknowledgedStored: 0,
      lost: 0,
      lostIds: [],
      doubleCounted: 0,
      aggregateMismatches: 0,
      unexpectedStored: 0,
      resend: null,
      statuses: {},
      problems: [],
      notes: [],
      error: `Trial did not finish within ${o.trialTimeoutMs + 15_000} ms`,
      ms: o.trialTimeoutMs + 15_000,
    };
  } finally {
    clearTimeout(abortTimer);
    clearTimeout(graceTimer);
    await Promise.all([...children].map(killServer));
  }
}

function trialFailed(t: TrialResult): boolean {
  const resendBad = t.resend !== null &&
    (t.resend.lost > 0 || t.resend.doubleCounted > 0 || t.resend.aggregateMismatches > 0 ||
      t.resend.duplicates !== t.unacknowledgedStored);
  return t.error !== null || t.lost > 0 || t.doubleCounted > 0 || t.aggregateMismatches > 0 ||
    t.unexpectedStored > 0 || resendBad || t.problems.length > 0;
}

function formatTrial(t: TrialResult, of: number): string {
  const head = `trial ${String(t.trial + 1).padStart(String(of).length)}/${of}`;
  if (t.error !== null) return `${head} ERROR ${t.error.split("\n")[0]} (${t.ms} ms)`;
  const resend = t.resend === null
    ? ""
    : `, resent ${t.resend.records} (${t.resend.duplicates} duplicates, lost ${t.resend.lost})`;
  const mark = trialFailed(t) ? "FAIL" : "ok";
  return `${head} ${mark}: kill at ${t.killAfterMs} ms, sent ${t.sent}, acknowledged ${t.acknowledged}, ` +
    `stored ${t.stored} (${t.unacknowledgedStored} unacknowledged), lost ${t.lost}, ` +
    `double counted ${t.doubleCounted}, mismatches ${t.aggregateMismatches}${resend} (${t.ms} ms)`;
}

/** One line about the machine: CPUs, memory, OS, and the runtime running this program. */
export function describeMachine(): string {
  const cpu = cpus();
  const runtime = typeof Deno !== "undefined"
    ? `Deno ${Deno.version.deno}`
    : `Bun ${process.versions.bun ?? "?"}`;
  return `${cpu.length} × ${cpu[0]?.model ?? "unknown CPU"}, ${
    Math.round(totalmem() / 2 ** 30)
  } GiB RAM, ${osType()} ${release()}, harness on ${runtime}`;
}

async function runCommand(command: string, args: string[]): Promise<void> {
  const child = spawn(command, args, { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  child.stdout?.on("data", (c) => output += c.toString());
  child.stderr?.on("data", (c) => output += c.toString());
  const code = await new Promise<number | null>((resolve) => {
    child.once("exit", resolve);
    child.once("error", (e) => {
      output += e.message;
      resolve(-1);
    });
  });
  if (code !== 0) throw new Error(`${command} ${args.join(" ")} failed (${code}):\n${output}`);
}

/**
 * Builds the server with `bun build --compile` into `dir` (after `deno
 * install` when `node_modules` lacks xstate); returns the binary's path.
 */
export async function buildBinary(dir: string): Promise<string> {
  if (!existsSync(join(ROOT, "node_modules", "xstate"))) await runCommand(denoPath(), ["install"]);
  const binary = join(dir, "troupe");
  await runCommand("bun", [
    "build",
    "--compile",
    "--outfile",
    binary,
    "main.ts",
    "lib/sqlite_worker.ts",
  ]);
  return binary;
}

/** Resolves the server command, building a binary into a temporary directory when needed. */
async function prepareTarget(
  target: CrashTarget,
  binary: string | undefined,
): Promise<{ cmd: ServerCommand; cleanup: () => void }> {
  if (target !== "binary" || binary !== undefined) {
    return { cmd: serverCommand(target, binary), cleanup: () => {} };
  }
  const dir = mkdtempSync(join(tmpdir(), "troupe_crash_bin_"));
  try {
    const built = await buildBinary(dir);
    return {
      cmd: serverCommand("binary", built),
      cleanup: () => rmSync(dir, { recursive: true, force: true }),
    };
  } catch (error) {
    rmSync(dir, { recursive: true, force: true });
    throw error;
  }
}

function checkPositive(name: string, n: number): number {
  if (!Number.isSafeInteger(n) || n < 1) {
    throw new RangeError(`Invalid ${name} ${n}: expected a positive integer`);
  }
  return n;
}

/**
 * Runs `options.trials` crash trials (see the module comment) one after
 * another and sums them up. Never throws for what a trial finds: a trial
 * that cannot run is reported with its `error`.
 */
export async function runCrashTrials(options: CrashOptions = {}): Promise<CrashReport> {
  const started = performance.now();
  const target = options.target ?? "source";
  const trials = checkPositive("trials", options.trials ?? 10);
  const minBatch = checkPositive("minBatch", options.minBatch ?? 50);
  const maxBatch = checkPositive("maxBatch", options.maxBatch ?? 500);
  if (maxBatch < minBatch) throw new RangeError(`maxBatch ${maxBatch} is below ${minBatch}`);
  const killMinMs = options.killMinMs ?? 50;
  const killMaxMs = options.killMaxMs ?? 1500;
  if (!(killMinMs >= 0 && killMaxMs >= killMinMs)) {
    throw new RangeError(`Invalid kill window ${killMinMs}..${killMaxMs} ms`);
  }
  const log = options.log ?? (() => {});
  const prepared = await prepareTarget(target, options.binary);
  const o: Resolved = {
    target,
    cmd: prepared.cmd,
    clients: checkPositive("clients", options.clients ?? 8),
    minBatch,
    maxBatch,
    users: checkPositive("users", options.users ?? 16),
    killMinMs,
    killMaxMs,
    sample: options.sample ?? 200,
    resend: options.resend ?? true,
    trialTimeoutMs: options.trialTimeoutMs ?? 60_000,
    seed: (options.seed ?? Math.floor(Math.random() * 2 ** 31)) >>> 0,
    afterCrash: options.afterCrash,
  };
  const results: TrialResult[] = [];
  try {
    for (let i = 0; i < trials; i++) {
      const t = await runBoundedTrial(o, i);
      results.push(t);
      log(formatTrial(t, trials));
      for (const p of t.problems.slice(0, 10)) log(`  problem: ${p}`);
      for (const n of t.notes.slice(0, 5)) log(`  note: ${n}`);
    }
  } finally {
    prepared.cleanup();
  }
  const sum = (f: (t: TrialResult) => number) => results.reduce((n, t) => n + f(t), 0);
  const totals = {
    trials: results.length,
    sent: sum((t) => t.sent),
    acknowledged: sum((t) => t.acknowledged),
    lost: sum((t) => t.lost + (t.resend?.lost ?? 0)),
    doubleCounted: sum((t) => t.doubleCounted + (t.resend?.doubleCounted ?? 0)),
    aggregateMismatches: sum((t) => t.aggregateMismatches + (t.resend?.aggregateMismatches ?? 0)),
    unexpectedStored: sum((t) => t.unexpectedStored),
    unacknowledgedStored: sum((t) => t.unacknowledgedStored),
    resent: sum((t) => t.resend?.records ?? 0),
    resendDuplicates: sum((t) => t.resend?.duplicates ?? 0),
    failedTrials: results.filter(trialFailed).length,
  };
  return {
    target,
    command: [o.cmd.command, ...o.cmd.args].join(" "),
    machine: describeMachine(),
    clients: o.clients,
    batch: [minBatch, maxBatch],
    killWindowMs: [killMinMs, killMaxMs],
    seed: o.seed,
    trials: results,
    totals,
    ms: Math.round(performance.now() - started),
    ok: totals.failedTrials === 0 && totals.lost === 0 && totals.doubleCounted === 0 &&
      totals.aggregateMismatches === 0,
  };
}

/** The summary lines of a crash report. */
export function formatCrashReport(report: CrashReport): string {
  const t = report.totals;
  return [
    `crash test: ${report.target} (${report.command}), ${report.clients} clients, batches of ` +
    `${report.batch[0]}-${report.batch[1]}, SIGKILL ${report.killWindowMs[0]}-${
      report.killWindowMs[1]
    } ms into the load, seed ${report.seed}`,
    `machine: ${report.machine}`,
    `trials ${t.trials}, sent ${t.sent}, acknowledged ${t.acknowledged}, lost ${t.lost}, ` +
    `double counted ${t.doubleCounted}, aggregate mismatches ${t.aggregateMismatches}, ` +
    `unexpected stored ${t.unexpectedStored}`,
    `unacknowledged but stored ${t.unacknowledgedStored}; resent ${t.resent}, of which ` +
    `${t.resendDuplicates} duplicates; failed trials ${t.failedTrials}; time ${
      (report.ms / 1000).toFixed(1)
    } s`,
    report.ok ? "OK" : "FAILED",
  ].join("\n");
}

// ---------------------------------------------------------------------------
// Crash injection under load

async function drillRun(
  o: Resolved,
  data: string,
  faults: string | null,
  durationS: number,
  seed: number,
): Promise<DrillRun> {
  const children = new Set<ServerProcess>();
  const ledger = new Ledger();
  const notes: string[] = [];
  const controller = new AbortController();
  const hardTimer = setTimeout(() => controller.abort(), (durationS + 120) * 1000);
  const signal = controller.signal;
  try {
    const env: Record<string, string> = faults === null ? {} : { TROUPE_FAULTS: faults };
    const server = await startServer(o.cmd, data, env, children, signal);
    const started = performance.now();
    const deadline = started + durationS * 1000;
    const load = await runClients({
      url: server.url,
      seed,
      clients: o.clients,
      minBatch: o.minBatch,
      maxBatch: o.maxBatch,
      users: o.users,
      ledger,
      stopped: () => performance.now() >= deadline || signal.aborted,
      expectFailures: () => false,
      signal,
    });
    const seconds = (performance.now() - started) / 1000;
    notes.push(...load.notes);
    const snapshot = await apiSnapshot(server.url, ledger, o.sample, seed, signal);
    const exitCode = await stopServer(server, notes);
    const check = checkStore(data, ledger, snapshot, seed, o.users);
    const acknowledged = ledger.count(ACKED);
    return {
      faults,
      seconds: Math.round(seconds * 10) / 10,
      sent: ledger.maxId,
      acknowledged,
      recordsPerS: Math.round(acknowledged / seconds),
      statuses: load.statuses,
      rejected: load.rejected,
      restarts: snapshot.restarts,
      lost: check.lost,
      doubleCounted: check.doubleCounted,
      aggregateMismatches: check.aggregateMismatches,
      unexpectedStored: check.unexpectedStored,
      unacknowledgedStored: check.unacknowledgedStored,
      exitCode,
      problems: [
        ...check.problems,
        ...(load.unexpectedDuplicates > 0
          ? [`${load.unexpectedDuplicates} fresh records answered as duplicates`]
          : []),
      ],
      notes,
    };
  } finally {
    clearTimeout(hardTimer);
    await Promise.all([...children].map(killServer));
  }
}

function formatDrillRun(name: string, r: DrillRun): string {
  const statuses = Object.entries(r.statuses).map(([k, v]) => `${k}×${v}`).join(" ");
  return `${name}: ${r.seconds} s, sent ${r.sent}, acknowledged ${r.acknowledged} ` +
    `(${r.recordsPerS} records/s), rejected ${r.rejected}, restarts ${r.restarts}, ` +
    `lost ${r.lost}, double counted ${r.doubleCounted}, mismatches ${r.aggregateMismatches}, ` +
    `unacknowledged but stored ${r.unacknowledgedStored}, exit ${r.exitCode}, answers ${statuses}`;
}

/**
 * Closed-loop load for `durationS` on a clean server, then on one whose
 * `stage` throws on `rate` of its batches; both stores are checked as in a
 * crash trial (0 lost, 0 double counted, aggregates recomputed).
 */
export async function runInjectionDrill(options: InjectionOptions = {}): Promise<InjectionReport> {
  const started = performance.now();
  const target = options.target ?? "source";
  const rate = options.rate ?? 0.01;
  if (!(rate >= 0 && rate <= 1)) throw new RangeError(`Invalid rate ${rate}: expected 0 to 1`);
  const stage = options.stage ?? "transform";
  const durationS = options.durationS ?? 60;
  const log = options.log ?? (() => {});
  const prepared = await prepareTarget(target, options.binary);
  if (options.config !== undefined) prepared.cmd.extra = ["--config", options.config];
  const o: Resolved = {
    target,
    cmd: prepared.cmd,
    clients: checkPositive("clients", options.clients ?? 8),
    minBatch: checkPositive("minBatch", options.minBatch ?? 50),
    maxBatch: checkPositive("maxBatch", options.maxBatch ?? 500),
    users: checkPositive("users", options.users ?? 16),
    killMinMs: 0,
    killMaxMs: 0,
    sample: 200,
    resend: false,
    trialTimeoutMs: 0,
    seed: (options.seed ?? Math.floor(Math.random() * 2 ** 31)) >>> 0,
  };
  const faults = JSON.stringify({ stages: { [stage]: { throw_rate: rate } } });
  const runs: DrillRun[] = [];
  try {
    for (const plan of [null, faults]) {
      const data = mkdtempSync(join(tmpdir(), "troupe_inject_"));
      try {
        const run = await drillRun(o, data, plan, durationS, o.seed);
        runs.push(run);
        log(formatDrillRun(plan === null ? "clean" : `injected ${plan}`, run));
        for (const p of run.problems.slice(0, 10)) log(`  problem: ${p}`);
        for (const n of run.notes.slice(0, 5)) log(`  note: ${n}`);
      } finally {
        rmSync(data, { recursive: true, force: true });
      }
    }
  } finally {
    prepared.cleanup();
  }
  const [clean, injected] = runs;
  const bad = (r: DrillRun) =>
    r.lost > 0 || r.doubleCounted > 0 || r.aggregateMismatches > 0 || r.unexpectedStored > 0 ||
    r.problems.length > 0 || r.acknowledged === 0;
  return {
    target,
    command: [o.cmd.command, ...o.cmd.args].join(" "),
    machine: describeMachine(),
    rate,
    stage,
    durationS,
    clients: o.clients,
    batch: [o.minBatch, o.maxBatch],
    clean,
    injected,
    ratio: clean.recordsPerS > 0
      ? Math.round(injected.recordsPerS / clean.recordsPerS * 1000) / 1000
      : 0,
    ms: Math.round(performance.now() - started),
    ok: !bad(clean) && !bad(injected),
  };
}

// ---------------------------------------------------------------------------
// Command line

const USAGE = `Usage:
  deno run -A bench/crash_test.ts [--trials 50] [--target source|bun|binary] [--binary PATH]
                                  [--clients 8] [--seed N] [--json]
  deno run -A bench/crash_test.ts --inject 0.01 [--duration 60] [--stage transform]
                                  [--config FILE] [--target ...] [--clients 8] [--seed N] [--json]`;

async function main(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      trials: { type: "string", default: "10" },
      target: { type: "string", default: "source" },
      binary: { type: "string" },
      clients: { type: "string", default: "8" },
      seed: { type: "string" },
      inject: { type: "string" },
      duration: { type: "string", default: "60" },
      stage: { type: "string", default: "transform" },
      config: { type: "string" },
      json: { type: "boolean", default: false },
      help: { type: "boolean", default: false },
    },
  });
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  const target = values.target as CrashTarget;
  if (!["source", "bun", "binary"].includes(target)) {
    console.error(`Invalid target "${values.target}": expected source, bun or binary\n${USAGE}`);
    return 2;
  }
  const seed = values.seed === undefined ? undefined : Number(values.seed);
  const log = values.json ? () => {} : (line: string) => console.log(line);
  if (values.inject !== undefined) {
    const report = await runInjectionDrill({
      target,
      binary: values.binary,
      rate: Number(values.inject),
      stage: values.stage as InjectionOptions["stage"],
      durationS: Number(values.duration),
      config: values.config,
      clients: Number(values.clients),
      seed,
      log,
    });
    if (values.json) console.log(JSON.stringify(report, null, 2));
    else {
      console.log(`machine: ${report.machine}`);
      console.log(
        `throughput injected/clean: ${report.injected.recordsPerS}/${report.clean.recordsPerS} = ${report.ratio}`,
      );
      console.log(report.ok ? "OK" : "FAILED");
    }
    return report.ok ? 0 : 1;
  }
  const report = await runCrashTrials({
    trials: Number(values.trials),
    target,
    binary: values.binary,
    clients: Number(values.clients),
    seed,
    log,
  });
  if (values.json) console.log(JSON.stringify(report, null, 2));
  else console.log(formatCrashReport(report));
  return report.ok ? 0 : 1;
}

if (import.meta.main) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (error) => {
      console.error(error instanceof RangeError ? `crash_test: ${error.message}` : error);
      process.exit(2);
    },
  );
}
