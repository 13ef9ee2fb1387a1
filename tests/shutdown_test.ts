/**
 * @module
 * Graceful shutdown of `troupe serve` run as a real separate process
 * (`deno run --allow-all main.ts serve`) on a free loopback port over a
 * real SQLite file in a temporary directory.
 *
 * Six clients each post batches of 2000 records with unique ids, one after
 * another, until a request is not acknowledged; once a few are, the test
 * sends SIGTERM. Every request must then be acknowledged (200, committed),
 * refused (503 JSON) or cut off (connection error), the process must exit
 * 0, and a restart on the same data directory must hold exactly the
 * acknowledged records. SIGINT must exit 0 the same way.
 *
 * Readiness turning 503 during the drain is checked only when it is seen:
 * the server stops accepting connections in the same tick as readiness
 * drops, so a `/readyz` probe from outside usually meets a closed port
 * instead. Every probe answer must still be a 200, or a 503 naming the
 * shutdown check.
 */
import assert from "node:assert/strict";
import { type ServeProcess, startServe as startChild } from "./_child_process.ts";
import { makeRecords, SEED_RECORDS, SEED_USER } from "./_helpers.ts";

/** Records in each posted batch. */
const BATCH = 2000;
/** Clients posting at once; each keeps one request in flight, well under the 20k mailboxes. */
const CLIENTS = 6;
/** Acknowledged requests to wait for before the signal. */
const ACKS_BEFORE_SIGNAL = 4;
/** A bound on each client's requests, in case the server never stops. */
const MAX_REQUESTS_PER_CLIENT = 40;

/** Starts `deno run --allow-all main.ts serve` over `data`. */
function startServe(data: string): Promise<ServeProcess> {
  return startChild(Deno.execPath(), ["run", "--allow-all", "main.ts"], data);
}

/** What one POST came to: an HTTP answer or a connection error. */
type Outcome =
  | { prefix: string; status: number; contentType: string | null; body: unknown }
  | { prefix: string; status: "connection error"; error: string };

async function postBatch(url: string, prefix: string): Promise<Outcome> {
  try {
    const res = await fetch(`${url}/v1/records`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(makeRecords(BATCH, prefix)),
    });
    const text = await res.text();
    let body: unknown = text;
    try {
      body = JSON.parse(text);
    } catch {
      // Kept as text: the assertion on the content type reports it.
    }
    return { prefix, status: res.status, contentType: res.headers.get("content-type"), body };
  } catch (error) {
    return { prefix, status: "connection error", error: String(error) };
  }
}

// deno-lint-ignore no-explicit-any
async function getJson(url: string, path: string): Promise<{ status: number; body: any }> {
  const res = await fetch(`${url}${path}`);
  return { status: res.status, body: await res.json() };
}

/** Polls `/readyz` until the server is gone or `done()`; keeps every answer. */
async function probeReadiness(
  url: string,
  done: () => boolean,
): Promise<Array<{ status: number; body: { checks?: Array<{ name: string; ok: boolean }> } }>> {
  const answers = [];
  while (!done()) {
    try {
      const res = await fetch(`${url}/readyz`);
      answers.push({ status: res.status, body: await res.json() });
    } catch {
      break;
    }
    await new Promise((r) => setTimeout(r, 2));
  }
  return answers;
}

Deno.test("troupe serve on SIGTERM commits every acknowledged request, refuses the rest and exits 0", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "troupe_shutdown_" });
  try {
    const server = await startServe(dir);
    const outcomes: Outcome[] = [];
    let acknowledged = 0;
    const enough = Promise.withResolvers<void>();
    const client = async (c: number) => {
      for (let seq = 0; seq < MAX_REQUESTS_PER_CLIENT; seq++) {
        const outcome = await postBatch(server.url, `c${c}-${seq}`);
        outcomes.push(outcome);
        if (outcome.status !== 200) return;
        if (++acknowledged >= ACKS_BEFORE_SIGNAL) enough.resolve();
      }
    };
    let exited = false;
    const probe = probeReadiness(server.url, () => exited);
    const clients = Promise.all(Array.from({ length: CLIENTS }, (_, c) => client(c)));
    await Promise.race([enough.promise, clients]);
    assert.ok(acknowledged > 0, `no request acknowledged before the signal:\n${server.output()}`);

    const { code, ms } = await server.stop("SIGTERM");
    exited = true;
    await clients;
    const probes = await probe;

    await t.step("the process exits 0 after SIGTERM", () => {
      assert.equal(code, 0, `exit code ${code}; output:\n${server.output()}`);
    });

    const accepted = outcomes.filter((o) => o.status === 200);
    const refused = outcomes.filter((o) => o.status === 503);
    const cut = outcomes.filter((o) => o.status === "connection error");
    await t.step("every request is acknowledged, refused with 503 JSON or cut off", () => {
      for (const o of outcomes) {
        if (o.status === "connection error") continue;
        assert.ok(
          o.status === 200 || o.status === 503,
          `${o.prefix}: status ${o.status}: ${JSON.stringify(o.body)}`,
        );
        assert.match(String(o.contentType), /^application\/json/, `${o.prefix}: content type`);
        if (o.status === 200) {
          assert.deepEqual(o.body, { accepted: BATCH, duplicates: 0, rejected: 0, errors: [] });
        } else {
          assert.equal(
            (o.body as { error: { code: string } }).error.code,
            "unavailable",
            `${o.prefix}: 503 body`,
          );
        }
      }
      assert.equal(accepted.length + refused.length + cut.length, outcomes.length);
    });

    const saw503 = probes.some((p) => p.status === 503);
    await t.step(
      "/readyz answers 200, or 503 naming the shutdown, until the server is gone",
      () => {
        for (const p of probes) {
          assert.ok(p.status === 200 || p.status === 503, `/readyz status ${p.status}`);
          if (p.status === 503) {
            const shutdown = p.body.checks?.find((c) => c.name === "shutdown");
            assert.equal(
              shutdown?.ok,
              false,
              `a 503 /readyz names the shutdown: ${JSON.stringify(p.body)}`,
            );
          }
        }
      },
    );

    console.log(
      `SIGTERM to exit: ${
        ms.toFixed(0)
      } ms; ${accepted.length} acknowledged, ${refused.length} refused with 503, ` +
        `${cut.length} cut off; /readyz 503 during the drain ${
          saw503 ? "seen" : "not seen"
        } (${probes.length} probes)`,
    );

    await t.step("a restart on the same data holds exactly the acknowledged records", async () => {
      const again = await startServe(dir);
      try {
        const stats = await getJson(again.url, "/v1/stats");
        assert.equal(stats.body.stored_records, accepted.length * BATCH);
        for (const { prefix } of accepted) {
          for (const i of [0, BATCH / 2, BATCH - 1]) {
            const rec = await getJson(again.url, `/v1/records/${prefix}-${i}`);
            assert.equal(rec.status, 200, `${prefix}-${i} was acknowledged but is missing`);
            assert.equal(rec.body.id, `${prefix}-${i}`);
          }
        }
        for (const { prefix } of refused) {
          assert.equal(
            (await getJson(again.url, `/v1/records/${prefix}-0`)).status,
            404,
            `${prefix} was refused`,
          );
        }
        const repeat = await postBatch(again.url, accepted[0].prefix);
        assert.equal(repeat.status, 200);
        assert.deepEqual(repeat.status === 200 && repeat.body, {
          accepted: 0,
          duplicates: BATCH,
          rejected: 0,
          errors: [],
        });
      } finally {
        const stopped = await again.stop("SIGTERM");
        assert.equal(
          stopped.code,
          0,
          `restarted server exit code ${stopped.code}:\n${again.output()}`,
        );
      }
    });
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});

Deno.test("troupe serve exits 0 on SIGINT and keeps what it acknowledged", async () => {
  const dir = await Deno.makeTempDir({ prefix: "troupe_sigint_" });
  try {
    const server = await startServe(dir);
    const res = await fetch(`${server.url}/v1/records`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(SEED_RECORDS),
    });
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), { accepted: 2, duplicates: 0, rejected: 0, errors: [] });
    const { code } = await server.stop("SIGINT");
    assert.equal(code, 0, `exit code ${code}; output:\n${server.output()}`);

    const again = await startServe(dir);
    try {
      const user = await getJson(again.url, "/v1/users/user_001");
      assert.equal(user.status, 200);
      assert.deepEqual(user.body, SEED_USER);
    } finally {
      const stopped = await again.stop("SIGINT");
      assert.equal(
        stopped.code,
        0,
        `restarted server exit code ${stopped.code}:\n${again.output()}`,
      );
    }
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});
