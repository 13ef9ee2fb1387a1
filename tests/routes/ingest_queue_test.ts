/**
 * `POST /v1/records` in queue mode, over a real listening server and a real
 * redis-server on loopback: 202 once Redis has the entries, one entry per
 * partition, `Idempotency-Key` replays, 503 with `Retry-After` while Redis
 * is down (and `/readyz` says why), and the consumers catching up once it
 * is back.
 */
import assert from "node:assert/strict";
import { partitionOf, streamKey } from "../../lib/queue.ts";
import { getJson, makeRecords, postRecords, waitFor } from "../_helpers.ts";
import { metricValue, redisClient, scrape, startQueuedService } from "../_queue_helpers.ts";
import { startRedis } from "../_redis_server.ts";

Deno.test("POST /v1/records in queue mode answers 202 with one entry per partition", async () => {
  const redis = await startRedis();
  const service = await startQueuedService(redis.url);
  try {
    const records = makeRecords(40, "q", 10);
    const res = await postRecords(service.url, records);
    assert.equal(res.status, 202);
    assert.match(res.headers.get("content-type") ?? "", /application\/json/);
    assert.equal(res.body.queued, 40);
    const partitions = res.body.partitions as {
      partition: number;
      stream: string;
      id: string;
      records: number;
    }[];
    const expected = new Map<number, number>();
    for (const r of records) {
      const p = partitionOf(r.user_id, 4);
      expected.set(p, (expected.get(p) ?? 0) + 1);
    }
    assert.deepEqual(
      partitions.map((p) => [p.partition, p.records]),
      [...expected].sort((a, b) => a[0] - b[0]),
    );
    for (const p of partitions) {
      assert.equal(p.stream, streamKey("troupe:records", p.partition));
      assert.match(p.id, /^\d+-\d+$/);
    }
    // A body that cannot be read is refused before anything reaches Redis.
    const bad = await postRecords(service.url, "{not json");
    assert.equal(bad.status, 400);
    assert.equal((bad.body.error as { code: string }).code, "invalid_json");
    // An empty request queues nothing.
    const empty = await postRecords(service.url, []);
    assert.equal(empty.status, 202);
    assert.deepEqual(empty.body, { queued: 0, partitions: [] });
    await waitFor(
      async () => (await service.reader.counts()).stored_records === 40,
      10_000,
      "40 stored",
    );
  } finally {
    await service.close();
    await redis.stop();
  }
});

Deno.test("POST /v1/records in queue mode replays an Idempotency-Key without appending again", async () => {
  const redis = await startRedis();
  const service = await startQueuedService(redis.url);
  try {
    const records = makeRecords(10, "idem", 3);
    const headers = { "idempotency-key": "queue-key-1" };
    const first = await postRecords(service.url, records, headers);
    assert.equal(first.status, 202);
    const again = await postRecords(service.url, records, headers);
    assert.equal(again.status, 202);
    assert.equal(again.headers.get("idempotent-replayed"), "true");
    assert.deepEqual(again.body, first.body);
    const other = await postRecords(service.url, makeRecords(1, "other"), headers);
    assert.equal(other.status, 422);
    const text = await scrape(service.url);
    assert.equal(metricValue(text, "troupe_queue_records_total", { outcome: "appended" }), 10);
  } finally {
    await service.close();
    await redis.stop();
  }
});

Deno.test("POST /v1/records in queue mode answers 503 while Redis is down, and the consumers catch up after", async () => {
  const redis = await startRedis();
  const service = await startQueuedService(redis.url);
  const client = redisClient(redis.url);
  try {
    assert.equal((await postRecords(service.url, makeRecords(20, "before", 4))).status, 202);
    await waitFor(
      async () => (await service.reader.counts()).stored_records === 20,
      10_000,
      "20 stored",
    );
    client.disconnect();
    await redis.kill();

    await waitFor(
      async () => (await fetch(`${service.url}/readyz`).then((r) => r.json())).status !== "ready",
      5_000,
      "readiness to drop",
    );
    const ready = await getJson(service.url, "/readyz");
    assert.equal(ready.status, 503);
    const queueCheck = ready.body.checks.find((c: { name: string }) => c.name === "queue");
    assert.equal(queueCheck.ok, false);
    assert.match(queueCheck.message, /^Queue unavailable: Redis at redis:\/\/127\.0\.0\.1:\d+ is /);

    const refused = await postRecords(service.url, makeRecords(5, "during", 1));
    assert.equal(refused.status, 503);
    assert.equal(refused.headers.get("retry-after"), "1");
    const error = refused.body.error as { code: string; message: string };
    assert.equal(error.code, "queue_unavailable");
    assert.match(error.message, /^Cannot append to the queue: /);

    // Back on the same port, from its append-only file: the producer and every consumer reconnect.
    await redis.restart();
    await waitFor(() => service.system.readiness().ready, 15_000, "ready again");
    assert.equal((await postRecords(service.url, makeRecords(30, "after", 4))).status, 202);
    await waitFor(
      async () => (await service.reader.counts()).stored_records === 50,
      15_000,
      "50 stored",
    );
    const tree = await getJson(service.url, "/v1/actors");
    const queue = tree.body.children.find((c: { id: string }) => c.id === "queue");
    assert.equal(queue.children.length, 4);
  } finally {
    client.disconnect();
    await service.close();
    await redis.stop();
  }
});
