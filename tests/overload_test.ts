/**
 * @module
 * Overload of a real `troupe serve` process (`deno run --allow-all main.ts
 * serve`, free loopback port, real SQLite file in a temporary directory)
 * configured with small mailboxes and `ingest.max_concurrent_requests` of 4,
 * then about 3 s of far more concurrent `POST /v1/records` than that. Every
 * answer must be a 200 or a 429 (never a 5xx, never a hang past the
 * client's timeout), every 429 must carry a numeric `Retry-After`, some
 * requests must be refused and some accepted, `/readyz` must stay 200
 * throughout, and afterwards the store must hold exactly the records
 * acknowledged. No RSS or timing assertions: those are
 * `bench/overload_drill.ts`'s job.
 *
 * The server runs in its own process because a client in the same event
 * loop cannot offer requests faster than the server takes them.
 */
import assert from "node:assert/strict";
import { startServe } from "./_child_process.ts";
import { getJson, makeRecords } from "./_helpers.ts";

/** Concurrent clients, each keeping one request in flight: far above the cap of 4. */
const CLIENTS = 48;
/** Records per request. */
const BATCH = 500;
/** Stands for a request's unique id prefix in the body template. */
const PLACEHOLDER = "__request__";
/** How long the clients keep posting. */
const BLAST_MS = 3_000;
/** A request not answered in this long counts as a hang. */
const REQUEST_TIMEOUT_MS = 20_000;

/** The server's configuration: small capacities so that overload is cheap to reach. */
const CONFIG = `
ingest: { max_concurrent_requests: 4, max_wait_ms: 50 }
pipeline:
  stages:
    validate: { mailbox_capacity: 500 }
    transform: { mailbox_capacity: 500 }
    aggregate: { mailbox_capacity: 500 }
    store: { mailbox_capacity: 500 }
`;

Deno.test("POST /v1/records under overload answers only 200 or 429 with Retry-After and stays ready", async () => {
  const dir = await Deno.makeTempDir({ prefix: "troupe_overload_" });
  const config = `${dir}/troupe.yaml`;
  await Deno.writeTextFile(config, CONFIG);
  const server = await startServe(
    Deno.execPath(),
    ["run", "--allow-all", "main.ts"],
    `${dir}/data`,
    ["--config", config, "--log-level", "error"],
  );
  const { url } = server;
  // Bodies are made by replacing a placeholder in ready NDJSON so that the
  // client spends its time sending rather than serializing.
  const template = makeRecords(BATCH, PLACEHOLDER).map((r) => JSON.stringify(r)).join("\n");
  const statuses = new Map<number, number>();
  const problems: string[] = [];
  let acknowledged = 0;
  let sequence = 0;
  try {
    const deadline = Date.now() + BLAST_MS;
    const client = async (n: number) => {
      while (Date.now() < deadline) {
        let res: Response;
        try {
          res = await fetch(`${url}/v1/records`, {
            method: "POST",
            headers: { "content-type": "application/x-ndjson" },
            body: template.replaceAll(PLACEHOLDER, `c${n}-${sequence++}`),
            signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
          });
        } catch (error) {
          problems.push(`client ${n}: no answer: ${error}`);
          return;
        }
        const body = await res.json();
        statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1);
        if (res.status === 200) {
          assert.equal(body.accepted, BATCH);
          acknowledged += body.accepted;
        } else if (res.status === 429) {
          const retry = res.headers.get("retry-after");
          if (retry === null || !/^\d+$/.test(retry)) {
            problems.push(`429 with Retry-After ${JSON.stringify(retry)}`);
          }
          // Yield so refusals cannot starve the event loop of a busy-looping client.
          await new Promise((r) => setTimeout(r, 1));
        } else {
          problems.push(`status ${res.status}: ${JSON.stringify(body)}`);
        }
      }
    };
    const probe = async () => {
      const seen: number[] = [];
      while (Date.now() < deadline) {
        const res = await fetch(`${url}/readyz`, {
          signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
        });
        await res.body?.cancel();
        seen.push(res.status);
        await new Promise((r) => setTimeout(r, 100));
      }
      return seen;
    };
    const [probes] = await Promise.all([
      probe(),
      ...Array.from({ length: CLIENTS }, (_, n) => client(n)),
    ]);

    assert.deepEqual(problems, []);
    assert.deepEqual([...statuses.keys()].sort(), [200, 429]);
    assert.ok(probes.length > 0);
    assert.deepEqual(probes.filter((s) => s !== 200), []);
    const after = await getJson(url, "/readyz");
    assert.equal(after.status, 200);
    const status = await getJson(url, "/v1/stats");
    assert.equal(status.status, 200);
    assert.equal(status.body.stored_records, acknowledged);
  } finally {
    const { code } = await server.stop("SIGTERM");
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    assert.equal(code, 0, `exit code ${code}; output:\n${server.output()}`);
  }
});
