/**
 * Scale out (issue 7), end to end: real `troupe serve` processes from
 * source, on different loopback ports, sharing one redis-server
 * (`TROUPE_QUEUE`) and one PostgreSQL (`TROUPE_STORE`), both started here on
 * 127.0.0.1 and stopped at the end.
 *
 * - Two instances share the work of the streams: each commits entries.
 * - Records posted to either instance, some of them to both, are stored
 *   exactly once (counted in PostgreSQL).
 * - An instance killed with SIGKILL while it holds pending entries loses
 *   nothing: the survivor takes its entries over and commits them within
 *   30 s of the kill.
 * - The aggregates in PostgreSQL equal a recomputation from the stored
 *   records.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import postgres from "postgres";
import { streamKey } from "../lib/queue.ts";
import { type ServeProcess, startServe } from "./_child_process.ts";
import { makeRecords } from "./_helpers.ts";
import { startPostgres } from "./_postgres_server.ts";
import { metricValue, redisClient, scrape } from "./_queue_helpers.ts";
import { startRedis } from "./_redis_server.ts";

const PARTITIONS = 4;
const STREAMS = Array.from({ length: PARTITIONS }, (_, p) => streamKey("troupe:records", p));
/** Quick takeovers, so the kill test stays short; the default is 10 s. */
const CLAIM_IDLE_MS = 3_000;

const CONFIG = `
queue:
  partitions: ${PARTITIONS}
  block_ms: 200
  batch_count: 10
  claim_idle_ms: ${CLAIM_IDLE_MS}
server:
  shutdown_timeout_ms: 5000
`;

interface Stack {
  redisUrl: string;
  dbUrl: string;
  dir: string;
  sql: ReturnType<typeof postgres>;
  start(faults?: unknown): Promise<ServeProcess>;
}

/** Redis, PostgreSQL and a config file; everything stopped and removed after `body`. */
async function withStack(name: string, body: (stack: Stack) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "troupe_scale_" });
  const redis = await startRedis();
  const pg = await startPostgres().catch(async (error) => {
    await redis.stop();
    throw error;
  });
  const dbUrl = await pg.createDatabase(name);
  const sql = postgres(dbUrl, { max: 1, onnotice: () => {} });
  const config = join(dir, "troupe.yaml");
  await Deno.writeTextFile(config, CONFIG);
  const started: ServeProcess[] = [];
  let n = 0;
  try {
    await body({
      redisUrl: redis.url,
      dbUrl,
      dir,
      sql,
      start: async (faults) => {
        const data = join(dir, `instance${++n}`);
        const p = await startServe(Deno.execPath(), ["run", "--allow-all", "main.ts"], data, [
          "--config",
          config,
        ], {
          TROUPE_QUEUE: redis.url,
          TROUPE_STORE: dbUrl,
          TROUPE_FAULTS: faults === undefined ? "" : JSON.stringify(faults),
        });
        started.push(p);
        return p;
      },
    });
  } finally {
    for (const p of started) {
      try {
        p.child.kill("SIGKILL");
      } catch {
        // already gone
      }
      await p.child.status;
    }
    await sql.end({ timeout: 1 });
    await pg.stop();
    await redis.stop();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

async function post(url: string, records: unknown[]): Promise<void> {
  const res = await fetch(`${url}/v1/records`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(records),
  });
  const text = await res.text();
  assert.equal(res.status, 202, text);
}

async function storedCount(sql: Stack["sql"]): Promise<number> {
  const [row] = await sql`SELECT count(*)::int AS n FROM troupe.records`;
  return row.n as number;
}

/** Entries left in the streams and entries delivered but not acknowledged. */
async function backlog(redisUrl: string): Promise<{ length: number; pending: number }> {
  const client = redisClient(redisUrl);
  try {
    let length = 0;
    let pending = 0;
    for (const s of STREAMS) {
      length += await client.xlen(s);
      const summary = await client.xpending(s, "troupe").catch(() => [0]) as [number];
      pending += Number(summary[0]);
    }
    return { length, pending };
  } finally {
    client.disconnect();
  }
}

/** Pending entries per consumer name, over every stream. */
async function pendingByConsumer(redisUrl: string): Promise<Map<string, number>> {
  const client = redisClient(redisUrl);
  const out = new Map<string, number>();
  try {
    for (const s of STREAMS) {
      const summary = await client.xpending(s, "troupe").catch(() => [0]) as [
        number,
        string,
        string,
        [string, string][] | null,
      ];
      for (const [consumer, count] of summary[3] ?? []) {
        out.set(consumer, (out.get(consumer) ?? 0) + Number(count));
      }
    }
    return out;
  } finally {
    client.disconnect();
  }
}

async function until(check: () => Promise<boolean>, timeoutMs: number, what: string) {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) {
      throw new Error(`Timed out after ${timeoutMs} ms waiting for ${what}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** The users and events tables against a recomputation from the stored records. */
async function assertAggregatesMatch(sql: Stack["sql"]): Promise<void> {
  const users = await sql`
    WITH r AS (SELECT body::jsonb AS b FROM troupe.records)
    SELECT u.user_id, u.total_events, u.total_value, x.n, x.total
    FROM troupe.users u FULL JOIN (
      SELECT b->>'user_id' AS user_id, count(*)::bigint AS n, sum((b->>'value')::float8) AS total
      FROM r GROUP BY 1
    ) x ON x.user_id = u.user_id`;
  assert.ok(users.length > 0);
  for (const u of users) {
    assert.equal(Number(u.total_events), Number(u.n), `user ${u.user_id}: events`);
    assert.ok(Math.abs(Number(u.total_value) - Number(u.total)) < 1e-6, `user ${u.user_id}: value`);
  }
  const events = await sql`
    WITH r AS (SELECT body::jsonb AS b FROM troupe.records)
    SELECT e.event, e.count, e.total_value, x.n, x.total
    FROM troupe.events e FULL JOIN (
      SELECT b->>'event' AS event, count(*)::bigint AS n, sum((b->>'value')::float8) AS total
      FROM r GROUP BY 1
    ) x ON x.event = e.event`;
  for (const e of events) {
    assert.equal(Number(e.count), Number(e.n), `event ${e.event}: count`);
    assert.ok(Math.abs(Number(e.total_value) - Number(e.total)) < 1e-6, `event ${e.event}: value`);
  }
  const [totals] = await sql`SELECT sum(stored_records)::int AS n FROM troupe.totals`;
  assert.equal(totals.n, await storedCount(sql));
}

Deno.test("two instances on Redis Streams and PostgreSQL share the work and store each record once", async () => {
  await withStack("share", async ({ sql, redisUrl, start }) => {
    const [a, b] = await Promise.all([start(), start()]);
    const records = makeRecords(2_000, "share", 50);
    const requests = Array.from({ length: 40 }, (_, i) => records.slice(i * 50, i * 50 + 50));
    // Every request to one instance or the other, ten of them to both.
    await Promise.all(requests.map((r, i) => post(i % 2 === 0 ? a.url : b.url, r)));
    await Promise.all(requests.slice(0, 10).map((r, i) => post(i % 2 === 0 ? b.url : a.url, r)));

    await until(
      async () => (await storedCount(sql)) === 2_000,
      30_000,
      "2000 records in PostgreSQL",
    );
    await until(
      async () => {
        const left = await backlog(redisUrl);
        return left.length === 0 && left.pending === 0;
      },
      10_000,
      "the streams to empty",
    );
    assert.equal(await storedCount(sql), 2_000);

    const [ta, tb] = await Promise.all([scrape(a.url), scrape(b.url)]);
    const committed = [ta, tb].map((t) =>
      metricValue(t, "troupe_queue_entries_total", { outcome: "committed" })
    );
    assert.ok(committed[0] > 0 && committed[1] > 0, `both consumers commit: ${committed}`);
    const sum = (name: string, labels: Record<string, string>) =>
      metricValue(ta, name, labels) + metricValue(tb, name, labels);
    assert.equal(sum("troupe_queue_records_total", { outcome: "appended" }), 2_500);
    // A takeover (an instance stalled past claim_idle_ms) would commit an entry again: harmless,
    // so at least every entry; but each record is new exactly once over all instances.
    assert.ok(sum("troupe_queue_records_total", { outcome: "committed" }) >= 2_500);
    assert.equal(sum("troupe_records_total", { outcome: "accepted" }), 2_000);
    assert.ok(sum("troupe_records_total", { outcome: "duplicate" }) >= 500);
    assert.match(ta, /troupe_stream_pending\{stream="troupe:records:0"\} \d+/);
    const [failed] = await sql`SELECT count(*)::int AS n FROM troupe.failed`;
    assert.equal(failed.n, 0);
    await assertAggregatesMatch(sql);

    // A graceful stop of both leaves nothing behind.
    assert.equal((await a.stop("SIGTERM")).code, 0);
    assert.equal((await b.stop("SIGTERM")).code, 0);
  });
});

Deno.test("an instance killed with SIGKILL while holding entries loses nothing: the other takes them over", async () => {
  await withStack("kill", async ({ sql, redisUrl, start }) => {
    // A commits slowly (2 s per batch), so it holds delivered, unacknowledged entries.
    const a = await start({ stages: { store: { latency_ms: 2_000 } } });
    const records = makeRecords(1_200, "kill", 40);
    const requests = Array.from({ length: 24 }, (_, i) => records.slice(i * 50, i * 50 + 50));
    await Promise.all(requests.slice(0, 12).map((r) => post(a.url, r)));
    const aName = (held: Map<string, number>) =>
      [...held.keys()].find((k) => k.endsWith(`-${a.child.pid}`));
    // A has committed some records and still holds entries.
    await until(
      async () => {
        const held = await pendingByConsumer(redisUrl);
        const name = aName(held);
        return name !== undefined && (held.get(name) ?? 0) > 0 && (await storedCount(sql)) > 0;
      },
      15_000,
      "A to commit some records and hold pending entries",
    );

    const b = await start();
    await Promise.all(requests.slice(12).map((r) => post(b.url, r)));
    const held = await pendingByConsumer(redisUrl);
    const heldByA = held.get(aName(held) ?? "") ?? 0;
    assert.ok(heldByA > 0, `A holds no entries: ${JSON.stringify([...held])}`);
    const before = await storedCount(sql);
    assert.ok(before > 0 && before < 1_200, `${before} records stored before the kill`);

    a.child.kill("SIGKILL");
    await a.child.status;
    const killedAt = Date.now();
    await until(async () => (await storedCount(sql)) === 1_200, 30_000, "1200 records within 30 s");
    await until(
      async () => {
        const left = await backlog(redisUrl);
        return left.length === 0 && left.pending === 0;
      },
      30_000 - (Date.now() - killedAt),
      "every entry acknowledged within 30 s",
    );
    console.log(
      `A held ${heldByA} entries; ${before} of 1200 records stored at the kill; ` +
        `all stored and acknowledged ${Date.now() - killedAt} ms after it`,
    );

    const tb = await scrape(b.url);
    assert.ok(metricValue(tb, "troupe_queue_entries_total", { outcome: "reclaimed" }) >= heldByA);
    assert.equal(metricValue(tb, "troupe_queue_entries_total", { outcome: "gave_up" }), 0);
    const [failed] = await sql`SELECT count(*)::int AS n FROM troupe.failed`;
    assert.equal(failed.n, 0);
    await assertAggregatesMatch(sql);
    assert.equal((await b.stop("SIGTERM")).code, 0);
  });
});
