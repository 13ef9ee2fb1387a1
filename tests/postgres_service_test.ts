/**
 * @module
 * troupe on PostgreSQL (`storage.url`, as `TROUPE_STORE` sets it) end to
 * end, against a real PostgreSQL 15 started on loopback for this file:
 * seed 000 through the HTTP routes and idempotent reposts; two instances
 * on one database taking overlapping records at once without counting any
 * twice; and an outage under load (PostgreSQL stopped, then started again
 * on the same port and data directory) that turns `/readyz` 503, recovers,
 * and loses nothing acknowledged.
 */
import assert from "node:assert/strict";
import postgres from "postgres";
import { envOverrides } from "../main.ts";
import { parseConfig } from "../lib/config.ts";
import {
  getJson,
  makeRecords,
  postRecords,
  SEED_RECORDS,
  SEED_USER,
  startTestService,
  waitFor,
} from "./_helpers.ts";
import { startPostgres } from "./_postgres_server.ts";

/** Settings that make an outage short to sit through: quick backoff, small mailboxes. */
const OUTAGE_CONFIG = {
  supervisor: { backoff_initial_ms: 20, backoff_max_ms: 300 },
  pipeline: {
    batch_size: 50,
    stages: {
      validate: { mailbox_capacity: 400 },
      transform: { mailbox_capacity: 400 },
      aggregate: { mailbox_capacity: 400 },
      store: { mailbox_capacity: 400 },
    },
  },
  ingest: { max_wait_ms: 50 },
  monitor: { enabled: false },
};

Deno.test("troupe on PostgreSQL serves, scales out and rides out an outage", async (t) => {
  const pg = await startPostgres();
  try {
    await t.step("TROUPE_STORE sets storage.url, which must be postgres://", () => {
      const env = envOverrides({ TROUPE_STORE: pg.url });
      assert.ok(env.ok);
      const parsed = parseConfig(env.value);
      assert.ok(parsed.ok);
      assert.equal(parsed.value.storage.url, pg.url);
      const none = parseConfig({});
      assert.ok(none.ok);
      assert.equal(none.value.storage.url, null);
      assert.ok(parseConfig({ storage: { url: "postgresql://db/troupe" } }).ok);

      for (
        const url of ["mysql://troupe:s3cret@db/troupe", "postgres://troupe:s3cret@db:99999/x"]
      ) {
        const bad = parseConfig({ storage: { url } });
        assert.ok(!bad.ok);
        assert.equal(bad.error[0].path, "storage.url");
        assert.match(
          bad.error[0].message,
          /^must be a (postgres:\/\/ or postgresql:\/\/|valid) URL/,
        );
        // The password never shows in the message.
        assert.ok(!bad.error[0].message.includes("s3cret"), bad.error[0].message);
        assert.match(bad.error[0].message, /troupe:\*\*\*@db/);
      }
    });

    await t.step("seed 000 goes in and reads back; a repost changes nothing", async () => {
      const url = await pg.createDatabase("seed");
      const svc = await startTestService({ storage: { url } });
      try {
        assert.equal((await getJson(svc.url, "/readyz")).status, 200);
        const first = await postRecords(svc.url, SEED_RECORDS);
        assert.equal(first.status, 200);
        assert.deepEqual(first.body, { accepted: 2, duplicates: 0, rejected: 0, errors: [] });

        const user = await getJson(svc.url, "/v1/users/user_001");
        assert.equal(user.status, 200);
        assert.deepEqual(user.body, SEED_USER);
        const { user_id: _, ...aggregate } = SEED_USER;
        assert.deepEqual((await getJson(svc.url, "/v1/users")).body, {
          users: { user_001: aggregate },
          next_cursor: null,
        });
        assert.deepEqual((await getJson(svc.url, "/v1/events/page_view")).body, {
          event: "page_view",
          count: 1,
          total_value: 0.5,
          min_value: 0.5,
          max_value: 0.5,
        });
        const record = await getJson(svc.url, "/v1/records/2");
        assert.equal(record.status, 200);
        assert.deepEqual(record.body.metadata, { page: "/home" });
        assert.equal((await getJson(svc.url, "/v1/users/user_002")).status, 404);

        const again = await postRecords(svc.url, SEED_RECORDS);
        assert.equal(again.status, 200);
        assert.deepEqual(again.body, { accepted: 0, duplicates: 2, rejected: 0, errors: [] });
        assert.deepEqual((await getJson(svc.url, "/v1/users/user_001")).body, SEED_USER);
        const stats = await getJson(svc.url, "/v1/stats");
        assert.equal(stats.body.stored_records, 2);
      } finally {
        await svc.close();
      }
      // Nothing of it went to SQLite: the records are in PostgreSQL only.
      const sql = postgres(url, { max: 1, onnotice: () => {} });
      try {
        const [row] = await sql`SELECT count(*)::int AS n FROM troupe.records`;
        assert.equal(row.n, 2);
      } finally {
        await sql.end({ timeout: 1 });
      }
    });

    await t.step("a record PostgreSQL cannot store goes to the failed store alone", async () => {
      const url = await pg.createDatabase("poison");
      const svc = await startTestService({
        storage: { url },
        supervisor: { backoff_initial_ms: 1, backoff_max_ms: 10 },
        monitor: { enabled: false },
      });
      try {
        const records = makeRecords(20, "p", 3);
        // Text in PostgreSQL cannot hold NUL; SQLite's can.
        records[7] = { ...records[7], user_id: "user_\u0000" };
        const res = await postRecords(svc.url, records);
        assert.equal(res.status, 200);
        assert.equal(res.body.accepted, 19);
        assert.equal(res.body.rejected, 1);
        const errors = res.body.errors as { index: number; stage: string }[];
        assert.deepEqual(errors.map((e) => [e.index, e.stage]), [[7, "store"]]);
        const failed = await getJson(svc.url, "/v1/failed");
        assert.equal(failed.body.failed.length, 1);
        assert.equal(failed.body.failed[0].record_id, "p-7");
        assert.equal(failed.body.failed[0].raw.user_id, "user_\u0000");
        assert.equal((await getJson(svc.url, "/v1/stats")).body.stored_records, 19);
      } finally {
        await svc.close();
      }
    });

    await t.step("two instances on one database never count a record twice", async () => {
      const url = await pg.createDatabase("shared");
      const [a, b] = await Promise.all([
        startTestService({ storage: { url }, monitor: { enabled: false } }),
        startTestService({ storage: { url }, monitor: { enabled: false } }),
      ]);
      try {
        // Both get every record, in different request sizes and orders, at the same time.
        const records = makeRecords(3000, "shared", 40);
        const send = async (svc: typeof a, size: number, reverse: boolean) => {
          const ordered = reverse ? [...records].reverse() : records;
          let accepted = 0;
          const requests = [];
          for (let at = 0; at < ordered.length; at += size) {
            requests.push(postRecords(svc.url, ordered.slice(at, at + size)));
          }
          for (const r of await Promise.all(requests)) {
            assert.equal(r.status, 200);
            accepted += r.body.accepted as number;
          }
          return accepted;
        };
        const [fromA, fromB] = await Promise.all([send(a, 500, false), send(b, 300, true)]);

        assert.equal(fromA + fromB, 3000);
        for (const svc of [a, b]) {
          const stats = await getJson(svc.url, "/v1/stats");
          assert.equal(stats.body.stored_records, 3000);
          const events = await getJson(svc.url, "/v1/events/login");
          assert.equal(events.body.count, 750);
          const user = await getJson(svc.url, "/v1/users/user_7");
          assert.equal(user.body.total_events, 75);
        }
      } finally {
        await Promise.all([a.close(), b.close()]);
      }
    });

    await t.step(
      "an outage under load: /readyz 503, back after, nothing acknowledged lost",
      async () => {
        const url = await pg.createDatabase("outage");
        const svc = await startTestService({ storage: { url }, ...OUTAGE_CONFIG });
        const acknowledged = new Set<string>();
        let stopping = false;
        let next = 0;
        const client = async (c: number) => {
          while (!stopping) {
            const records = makeRecords(25, `c${c}-${next++}`, 17);
            let res;
            // Bounded: a request still unanswered after 30 s is given up (and not acknowledged).
            const abort = new AbortController();
            const timer = setTimeout(() => abort.abort(), 30_000);
            try {
              res = await postRecords(svc.url, records, {}, abort.signal);
            } catch {
              continue;
            } finally {
              clearTimeout(timer);
            }
            if (res.status === 200) {
              assert.equal((res.body.accepted as number) + (res.body.duplicates as number), 25);
              for (const r of records) acknowledged.add(r.id as string);
            } else {
              assert.ok(res.status === 503 || res.status === 429, `status ${res.status}`);
              await new Promise((r) => setTimeout(r, 50));
            }
          }
        };
        try {
          await underLoad(Promise.all([0, 1, 2, 3].map(client)));
          await verify();
        } finally {
          await svc.close();
        }

        async function underLoad(load: Promise<unknown>): Promise<void> {
          try {
            await waitFor(() => acknowledged.size >= 500, 10_000, "load before the outage");

            await pg.halt();
            await waitFor(
              async () => (await getJson(svc.url, "/readyz")).status === 503,
              20_000,
              "readyz 503 with PostgreSQL down",
            );
            const down = await getJson(svc.url, "/readyz");
            const storage = down.body.checks.find((c: { name: string }) => c.name === "storage");
            assert.equal(storage.ok, false);
            assert.match(storage.message, /circuit breaker/);
            // Reads say 503 too, without naming the server.
            const read = await getJson(svc.url, "/v1/users/user_1");
            assert.equal(read.status, 503);
            assert.equal(read.body.error.code, "unavailable");
            await new Promise((r) => setTimeout(r, 500));
            const duringOutage = acknowledged.size;

            await pg.resume();
            await waitFor(
              async () => (await getJson(svc.url, "/readyz")).status === 200,
              30_000,
              "readyz 200 once PostgreSQL is back",
            );
            await waitFor(
              () => acknowledged.size >= duringOutage + 500,
              15_000,
              "load after the outage",
            );
          } finally {
            stopping = true;
            await load;
          }
        }

        async function verify(): Promise<void> {
          assert.equal(
            svc.system.runtimes.store.workerRestarts,
            0,
            "no storage connection crashed for the outage",
          );
          const stats = await getJson(svc.url, "/v1/stats");
          const sql = postgres(url, { max: 1, onnotice: () => {} });
          try {
            const rows = await sql`SELECT id FROM troupe.records`;
            const stored = new Set(rows.map((r) => r.id as string));
            const missing = [...acknowledged].filter((id) => !stored.has(id));
            assert.deepEqual(missing, [], "acknowledged records missing");
            const [sums] = await sql`
            SELECT (SELECT sum(total_events)::int FROM troupe.users) AS user_events,
                   (SELECT sum(count)::int FROM troupe.events) AS event_count`;
            // Exactly once: each stored record counted once in every aggregate.
            assert.equal(sums.user_events, stored.size);
            assert.equal(sums.event_count, stored.size);
            assert.equal(stats.body.stored_records, stored.size);
          } finally {
            await sql.end({ timeout: 1 });
          }
        }
      },
    );
  } finally {
    await pg.stop();
  }
});
