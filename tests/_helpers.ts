/**
 * @module
 * Shared test fixtures: a real service on a free loopback port over a real
 * SQLite file in a temporary directory, and seed 000's records.
 */
import { type Config, parseConfig } from "../lib/config.ts";
import { type ProcessedRecord, type RecordId, toUtcIso } from "../lib/schemas.ts";
import type { FaultInjector } from "../lib/faults.ts";
import { setupLogging } from "../lib/log.ts";
import { openStorage, type Service, startService } from "../main.ts";

/** Seed 000's two input records. */
export const SEED_RECORDS = [
  {
    id: 1,
    timestamp: "2025-01-15T10:00:00Z",
    user_id: "user_001",
    event: "login",
    value: 1.0,
    metadata: { ip: "192.168.1.1" },
  },
  {
    id: 2,
    timestamp: "2025-01-15T10:00:05Z",
    user_id: "user_001",
    event: "page_view",
    value: 0.5,
    metadata: { page: "/home" },
  },
];

/** Seed 000's expected aggregate for user_001. */
export const SEED_USER = {
  user_id: "user_001",
  total_events: 2,
  total_value: 1.5,
  events: ["login", "page_view"],
  last_activity: "2025-01-15T10:00:05Z",
};

let logging: Promise<void> | undefined;

/** Sends logs of tests to nowhere unless TROUPE_TEST_LOGS is set. */
export function quietLogs(): Promise<void> {
  logging ??= setupLogging({
    level: Deno.env.get("TROUPE_TEST_LOGS") ? "debug" : "error",
    sink: Deno.env.get("TROUPE_TEST_LOGS") ? (l) => console.error(l) : () => {},
  });
  return logging;
}

/** A config for tests: port 0, the given data dir, and `overrides` laid over. */
export function testConfig(data: string, overrides: Record<string, unknown> = {}): Config {
  const parsed = parseConfig({
    ...overrides,
    data,
    server: { port: 0, ...(overrides.server ?? {}) },
  });
  if (!parsed.ok) throw new Error(JSON.stringify(parsed.error));
  return parsed.value;
}

/** A service running in this process, with its base URL. */
export interface TestService extends Service {
  url: string;
  dir: string;
  config: Config;
  /** Stops the service and removes its data directory. */
  close(): Promise<void>;
}

/**
 * Starts a real service on a free port over a fresh SQLite file (or the
 * PostgreSQL of `storage.url` in `overrides`).
 */
export async function startTestService(
  overrides: Record<string, unknown> = {},
  faults?: FaultInjector,
  dir?: string,
): Promise<TestService> {
  await quietLogs();
  const data = dir ?? await Deno.makeTempDir({ prefix: "troupe_test_" });
  const config = testConfig(data, overrides);
  const storage = await openStorage(config);
  let service: Service;
  try {
    service = startService(config, faults, storage);
  } catch (error) {
    await storage?.close();
    throw error;
  }
  const url = `http://127.0.0.1:${service.server.port}`;
  await waitFor(() => service.system.readiness().ready, 5000, "service ready");
  return {
    ...service,
    url,
    dir: data,
    config,
    close: async () => {
      await service.stop();
      if (dir === undefined) await Deno.remove(data, { recursive: true }).catch(() => {});
    },
  };
}

/** Posts `records` as JSON and returns status and parsed body. */
export async function postRecords(
  url: string,
  records: unknown,
  headers: Record<string, string> = {},
  signal?: AbortSignal,
): Promise<{ status: number; body: Record<string, unknown>; headers: Headers }> {
  const res = await fetch(`${url}/v1/records`, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: typeof records === "string" ? records : JSON.stringify(records),
    signal,
  });
  return { status: res.status, body: await res.json(), headers: res.headers };
}

/** GETs `path` and returns status and parsed body. */
export async function getJson(
  url: string,
  path: string,
  headers: Record<string, string> = {},
  // deno-lint-ignore no-explicit-any
): Promise<{ status: number; body: any }> {
  const res = await fetch(`${url}${path}`, { headers });
  return { status: res.status, body: await res.json() };
}

/** Polls `check` until it is true, or throws after `timeoutMs`. */
export async function waitFor(
  check: () => boolean | Promise<boolean>,
  timeoutMs: number,
  what: string,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) {
      throw new Error(`Timed out after ${timeoutMs} ms waiting for ${what}`);
    }
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** `n` valid records with ids `prefix-0` … spread over `users` users. */
export function makeRecords(n: number, prefix = "r", users = 10): Record<string, unknown>[] {
  const out = [];
  for (let i = 0; i < n; i++) {
    out.push({
      id: `${prefix}-${i}`,
      timestamp: new Date(Date.UTC(2025, 0, 15, 10, 0, i % 60)).toISOString(),
      user_id: `user_${i % users}`,
      event: ["login", "page_view", "click", "logout"][i % 4],
      value: (i % 7) + 0.5,
    });
  }
  return out;
}

/** When the fixtures below were "received". */
export const FIXTURE_RECEIVED_AT = "2025-01-15T10:00:06Z";

/** A record as the transform stage would leave it, for storage tests. */
export function processedRecord(
  r: { id: RecordId; timestamp: string; user_id: string; event: string; value: number },
  extra: Partial<ProcessedRecord> = {},
): ProcessedRecord {
  const timestamp_ms = Date.parse(r.timestamp);
  return {
    id: r.id,
    timestamp: toUtcIso(timestamp_ms),
    timestamp_ms,
    user_id: r.user_id,
    event: r.event,
    value: r.value,
    metadata: {},
    received_at: FIXTURE_RECEIVED_AT,
    anomaly_score: 0,
    is_anomaly: false,
    ...extra,
  };
}

/** Seed 000's two records, transformed. */
export const SEED_PROCESSED: ProcessedRecord[] = SEED_RECORDS.map(({ metadata, ...r }) =>
  processedRecord(r, { metadata })
);
