/**
 * The stream consumers against a real redis-server on loopback and a real
 * troupe service (SQLite) in this process: commit then acknowledge,
 * takeover of a dead consumer's entries, giving up on an entry delivered
 * too often, holding entries through a storage outage, and a graceful stop
 * that leaves nothing delivered and unacknowledged.
 */
import assert from "node:assert/strict";
import { streamKey } from "../../lib/queue.ts";
import { getJson, makeRecords, postRecords, waitFor } from "../_helpers.ts";
import {
  appendEntry,
  metricValue,
  pendingCount,
  redisClient,
  scrape,
  startQueuedService,
} from "../_queue_helpers.ts";
import { startRedis } from "../_redis_server.ts";

const STREAMS = [0, 1, 2, 3].map((p) => streamKey("troupe:records", p));

Deno.test("streamConsumerMachine commits queued records once, then acknowledges and deletes their entries", async () => {
  const redis = await startRedis();
  const client = redisClient(redis.url);
  const service = await startQueuedService(redis.url);
  try {
    const records = makeRecords(300, "c", 12);
    const first = await postRecords(service.url, records);
    assert.equal(first.status, 202);
    assert.equal(first.body.queued, 300);
    await waitFor(
      async () => (await service.reader.counts()).stored_records === 300,
      10_000,
      "300 records stored",
    );
    // Every entry acknowledged and deleted: nothing left in any stream.
    await waitFor(
      async () => {
        const lengths = await Promise.all(STREAMS.map((s) => client.xlen(s)));
        return lengths.every((n) => n === 0);
      },
      5_000,
      "streams emptied",
    );
    for (const s of STREAMS) assert.equal(await pendingCount(client, s), 0);

    // The same records again: duplicates, nothing counted twice.
    assert.equal((await postRecords(service.url, records)).status, 202);
    await waitFor(
      async () =>
        metricValue(await scrape(service.url), "troupe_records_total", { outcome: "duplicate" }) ===
          300,
      10_000,
      "300 duplicates",
    );
    assert.equal((await service.reader.counts()).stored_records, 300);
    const user = await getJson(service.url, "/v1/users/user_0");
    assert.equal(user.body.total_events, records.filter((r) => r.user_id === "user_0").length);

    const text = await scrape(service.url);
    assert.equal(metricValue(text, "troupe_queue_records_total", { outcome: "committed" }), 600);
    assert.equal(metricValue(text, "troupe_queue_records_total", { outcome: "appended" }), 600);
    for (const s of STREAMS) {
      assert.match(text, new RegExp(`troupe_stream_lag\\{stream="${s}"\\} 0`));
    }
    assert.match(text, /troupe_stream_pending\{stream="troupe:records:0"\} 0/);

    const tree = await getJson(service.url, "/v1/actors");
    const queue = tree.body.children.find((c: { id: string }) => c.id === "queue");
    assert.equal(queue.type, "queue_supervisor");
    assert.deepEqual(
      queue.children.map((c: { id: string; type: string }) => [c.id, c.type]),
      [0, 1, 2, 3].map((p) => [`consumer.${p}`, "stream_consumer"]),
    );
    for (const c of queue.children) {
      assert.ok(["reading", "next", "claiming"].includes(c.state), c.state);
    }
  } finally {
    await service.close();
    client.disconnect();
    await redis.stop();
  }
});

Deno.test("streamConsumerMachine takes over the entries of a dead consumer once they are idle", async () => {
  const redis = await startRedis();
  const client = redisClient(redis.url);
  let service;
  try {
    // A consumer that read three entries and died without acknowledging them.
    await client.xgroup("CREATE", STREAMS[1], "troupe", "0", "MKSTREAM");
    const records = makeRecords(30, "dead", 3);
    for (let i = 0; i < 3; i++) {
      await appendEntry(client, STREAMS[1], records.slice(i * 10, i * 10 + 10));
    }
    const read = await client.xreadgroup(
      "GROUP",
      "troupe",
      "dead-1",
      "COUNT",
      10,
      "STREAMS",
      STREAMS[1],
      ">",
    );
    assert.ok(read !== null);
    assert.equal(await pendingCount(client, STREAMS[1]), 3);

    service = await startQueuedService(redis.url);
    await waitFor(
      async () => (await service!.reader.counts()).stored_records === 30,
      10_000,
      "the dead consumer's 30 records stored",
    );
    await waitFor(
      async () => (await pendingCount(client, STREAMS[1])) === 0,
      5_000,
      "no pending entries",
    );
    assert.equal(await client.xlen(STREAMS[1]), 0);
    assert.equal(
      metricValue(await scrape(service.url), "troupe_queue_entries_total", {
        outcome: "reclaimed",
      }),
      3,
    );
  } finally {
    await service?.close();
    client.disconnect();
    await redis.stop();
  }
});

Deno.test("streamConsumerMachine gives up on an entry delivered more than max_deliveries times", async () => {
  const redis = await startRedis();
  const client = redisClient(redis.url);
  let service;
  try {
    await client.xgroup("CREATE", STREAMS[2], "troupe", "0", "MKSTREAM");
    const records = makeRecords(3, "poison", 1);
    const id = await appendEntry(client, STREAMS[2], records);
    await client.xreadgroup("GROUP", "troupe", "dead-2", "STREAMS", STREAMS[2], ">");
    // Delivered 4 times already (and crashed its consumers each time): the takeover is the 5th.
    await client.xclaim(STREAMS[2], "troupe", "dead-2", 0, id, "RETRYCOUNT", 4);

    service = await startQueuedService(redis.url, { queue: { max_deliveries: 4 } });
    await waitFor(
      async () => (await service!.reader.counts()).failed_records === 3,
      10_000,
      "3 failed records",
    );
    assert.equal((await service.reader.counts()).stored_records, 0);
    const failed = await getJson(service.url, "/v1/failed?stage=queue");
    assert.equal(failed.status, 200);
    assert.deepEqual(
      failed.body.failed.map((f: { record_id: string }) => f.record_id).sort(),
      records.map((r) => r.id).sort(),
    );
    for (const f of failed.body.failed) {
      assert.equal(f.stage, "queue");
      assert.match(
        f.reason,
        new RegExp(`Stream entry ${id} of ${STREAMS[2]} was delivered 5 times`),
      );
      assert.equal(f.raw.user_id, "user_0");
    }
    await waitFor(
      async () => (await pendingCount(client, STREAMS[2])) === 0,
      5_000,
      "entry acknowledged",
    );
    assert.equal(await client.xlen(STREAMS[2]), 0);
    assert.equal(
      metricValue(await scrape(service.url), "troupe_queue_entries_total", { outcome: "gave_up" }),
      1,
    );
  } finally {
    await service?.close();
    client.disconnect();
    await redis.stop();
  }
});

Deno.test("streamConsumerMachine sends an entry it cannot read to the failed store and goes on", async () => {
  const redis = await startRedis();
  const client = redisClient(redis.url);
  const service = await startQueuedService(redis.url);
  try {
    await client.xadd(STREAMS[0], "*", "something", "else");
    await appendEntry(client, STREAMS[0], makeRecords(5, "after", 1));
    await waitFor(
      async () => {
        const c = await service.reader.counts();
        return c.failed_records === 1 && c.stored_records === 5;
      },
      10_000,
      "1 failed entry and 5 records stored",
    );
    const failed = await getJson(service.url, "/v1/failed?stage=queue");
    assert.equal(failed.body.failed.length, 1);
    assert.equal(failed.body.failed[0].record_id, null);
    assert.deepEqual(failed.body.failed[0].raw, { something: "else" });
    assert.match(failed.body.failed[0].reason, /is unreadable; .* has no "records" field/);
    await waitFor(async () => (await client.xlen(STREAMS[0])) === 0, 5_000, "stream emptied");
  } finally {
    await service.close();
    client.disconnect();
    await redis.stop();
  }
});

Deno.test("streamConsumerMachine holds its entries through a storage outage and keeps them from being taken over", async () => {
  const redis = await startRedis();
  const client = redisClient(redis.url);
  // Storage down for 3 s from the start: twice claim_idle_ms.
  const service = await startQueuedService(redis.url, { queue: { claim_idle_ms: 1_500 } }, {
    storage_outage_ms: 3_000,
  });
  try {
    const started = Date.now();
    const records = makeRecords(80, "outage", 8);
    assert.equal((await postRecords(service.url, records)).status, 202);
    await waitFor(
      async () =>
        (await Promise.all(STREAMS.map((s) => pendingCount(client, s)))).some((n) => n > 0),
      5_000,
      "entries delivered",
    );
    // While storage is down nobody can take them over: their idle time keeps being reset.
    let stolen = 0;
    while (Date.now() - started < 2_500) {
      for (const s of STREAMS) {
        const [, claimed] = await client.xautoclaim(
          s,
          "troupe",
          "thief",
          1_500,
          "0-0",
          "COUNT",
          100,
        ) as [
          string,
          unknown[],
        ];
        stolen += claimed.length;
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(stolen, 0);
    assert.equal((await service.reader.counts()).stored_records, 0);
    await waitFor(
      async () => (await service.reader.counts()).stored_records === 80,
      15_000,
      "80 records stored after the outage",
    );
    for (const s of STREAMS) {
      await waitFor(async () => (await pendingCount(client, s)) === 0, 5_000, `${s} acknowledged`);
    }
    assert.equal(
      metricValue(await scrape(service.url), "troupe_queue_entries_total", {
        outcome: "reclaimed",
      }),
      0,
    );
  } finally {
    await service.close();
    client.disconnect();
    await redis.stop();
  }
});

Deno.test("a graceful stop commits and acknowledges the entries the consumers hold, and reads no more", async () => {
  const redis = await startRedis();
  const client = redisClient(redis.url);
  const service = await startQueuedService(
    redis.url,
    { server: { shutdown_timeout_ms: 8_000 }, queue: { batch_count: 2 } },
    { stages: { store: { latency_ms: 200 } } },
  );
  let closed = false;
  try {
    for (let i = 0; i < 20; i++) {
      assert.equal((await postRecords(service.url, makeRecords(40, `stop${i}`, 8))).status, 202);
    }
    await waitFor(
      async () =>
        (await Promise.all(STREAMS.map((s) => pendingCount(client, s)))).some((n) => n > 0),
      5_000,
      "entries delivered",
    );
    assert.equal(await service.stop(), true);
    closed = true;
    // Nothing delivered and left unacknowledged; what was not read waits in the streams.
    let waiting = 0;
    for (const s of STREAMS) {
      assert.equal(await pendingCount(client, s), 0, `${s} has pending entries after the stop`);
      const entries = await client.xrange(s, "-", "+");
      for (const [, fields] of entries) waiting += JSON.parse(fields[1]).length;
    }
    // The reader is closed after the stop: count in the file.
    const { DatabaseSync } = await import("node:sqlite");
    const db = new DatabaseSync(`${service.dir}/troupe.db`);
    // The storage worker thread may still be closing its connection.
    db.exec("PRAGMA busy_timeout = 10000");
    const stored = Number(
      (db.prepare("SELECT count(*) AS n FROM records").get() as { n: number }).n,
    );
    db.close();
    assert.equal(stored + waiting, 800, `stored ${stored} + waiting ${waiting}`);
    assert.ok(stored > 0, "nothing was committed before the stop");
    assert.ok(waiting > 0, "the consumers kept reading after the stop began");
  } finally {
    if (!closed) await service.stop();
    await Deno.remove(service.dir, { recursive: true }).catch(() => {});
    client.disconnect();
    await redis.stop();
  }
});
