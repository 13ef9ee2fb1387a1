import assert from "node:assert/strict";
import { FaultInjector } from "../lib/faults.ts";
import { envOverrides } from "../main.ts";
import { startServe } from "./_child_process.ts";
import {
  getJson,
  makeRecords,
  postRecords,
  SEED_RECORDS,
  SEED_USER,
  startTestService,
  waitFor,
} from "./_helpers.ts";

Deno.test("POST /v1/records stores seed 000's records and answers after commit", async (t) => {
  const svc = await startTestService();
  try {
    await t.step("the two records give exactly the expected aggregate", async () => {
      const res = await postRecords(svc.url, SEED_RECORDS);
      assert.equal(res.status, 200);
      assert.deepEqual(res.body, { accepted: 2, duplicates: 0, rejected: 0, errors: [] });
      // Answered after commit: the records are readable at once.
      const user = await getJson(svc.url, "/v1/users/user_001");
      assert.equal(user.status, 200);
      assert.deepEqual(user.body, SEED_USER);
    });

    await t.step("posting them again changes nothing", async () => {
      const res = await postRecords(svc.url, SEED_RECORDS);
      assert.equal(res.status, 200);
      assert.deepEqual(res.body, { accepted: 0, duplicates: 2, rejected: 0, errors: [] });
      assert.deepEqual((await getJson(svc.url, "/v1/users/user_001")).body, SEED_USER);
      const stats = await getJson(svc.url, "/v1/stats");
      assert.equal(stats.body.stored_records, 2);
    });

    await t.step("the users list has seed 000's shape", async () => {
      const res = await getJson(svc.url, "/v1/users?limit=10");
      const { user_id: _, ...rest } = SEED_USER;
      assert.deepEqual(res.body, { users: { user_001: rest }, next_cursor: null });
    });

    await t.step("a rejected record is reported and stored as failed", async () => {
      const bad = { id: 3, timestamp: "yesterday", user_id: "user_002", event: "login", value: 1 };
      const res = await postRecords(svc.url, [bad, { ...SEED_RECORDS[0], id: 4 }]);
      assert.equal(res.status, 200);
      assert.equal(res.body.accepted, 1);
      assert.equal(res.body.rejected, 1);
      const [err] = res.body.errors as Array<Record<string, unknown>>;
      assert.equal(err.index, 0);
      assert.equal(err.id, 3);
      assert.equal(err.stage, "validate");
      assert.match(String(err.message), /timestamp/);
      const failed = await getJson(svc.url, "/v1/failed?limit=5");
      assert.equal(failed.body.failed[0].record_id, 3);
      assert.equal(failed.body.failed[0].stage, "validate");
      assert.deepEqual(failed.body.failed[0].raw, bad);
      assert.equal((await getJson(svc.url, "/v1/stats")).body.failed_records, 1);
    });

    await t.step("only rejected records answer 422 with the same body", async () => {
      const res = await postRecords(svc.url, { id: 5, value: "1" });
      assert.equal(res.status, 422);
      assert.equal(res.body.accepted, 0);
      assert.equal(res.body.rejected, 1);
    });

    await t.step("the stored record is transformed", async () => {
      await postRecords(svc.url, [{
        ...SEED_RECORDS[0],
        id: "t-1",
        user_id: "  u9 ",
        event: " LogIn ",
        timestamp: "2025-01-15T12:00:00+02:00",
      }]);
      const rec = await getJson(svc.url, "/v1/records/t-1");
      assert.equal(rec.status, 200);
      assert.equal(rec.body.user_id, "u9");
      assert.equal(rec.body.event, "login");
      assert.equal(rec.body.timestamp, "2025-01-15T10:00:00Z");
      assert.equal(typeof rec.body.received_at, "string");
      assert.equal(rec.body.is_anomaly, false);
      assert.equal((await getJson(svc.url, "/v1/records/nope")).status, 404);
      assert.equal((await getJson(svc.url, "/v1/users/nobody")).status, 404);
      assert.equal((await getJson(svc.url, "/v1/events/login")).body.count, 3);
    });
  } finally {
    await svc.close();
  }
});

Deno.test("an acknowledged record is there after a restart", async () => {
  const dir = await Deno.makeTempDir({ prefix: "troupe_restart_" });
  try {
    const first = await startTestService({}, undefined, dir);
    assert.equal((await postRecords(first.url, makeRecords(300, "keep"))).body.accepted, 300);
    await first.close();
    const second = await startTestService({}, undefined, dir);
    try {
      const stats = await getJson(second.url, "/v1/stats");
      assert.equal(stats.body.stored_records, 300);
      assert.equal((await postRecords(second.url, makeRecords(300, "keep"))).body.duplicates, 300);
    } finally {
      await second.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a stage actor that throws is restarted and its batch is committed once", async () => {
  const faults = new FaultInjector();
  const svc = await startTestService(
    { supervisor: { backoff_initial_ms: 5, backoff_max_ms: 20 } },
    faults,
  );
  try {
    faults.set({
      stages: { transform: { throw_count: 2, throw_rate: 0, latency_ms: 0 } },
      poison_ids: [],
      poison_stages: ["transform"],
    });
    const res = await postRecords(svc.url, makeRecords(50, "crash"));
    assert.equal(res.status, 200);
    assert.equal(res.body.accepted, 50);
    assert.equal(svc.system.runtimes.transform.workerRestarts, 2);
    const stats = await getJson(svc.url, "/v1/stats");
    assert.equal(stats.body.stored_records, 50);
    const users = await getJson(svc.url, "/v1/users?limit=100");
    const total = Object.values(users.body.users as Record<string, { total_events: number }>)
      .reduce((n, u) => n + u.total_events, 0);
    assert.equal(total, 50, "no record counted twice");
    const metrics = await (await fetch(`${svc.url}/metrics`)).text();
    assert.match(metrics, /troupe_actor_restarts_total\{actor="worker\.transform"\} 2/);
  } finally {
    await svc.close();
  }
});

Deno.test("a poison record is isolated to the failed store and the rest of its batch commits once", async () => {
  const faults = new FaultInjector();
  const svc = await startTestService({
    supervisor: { backoff_initial_ms: 1, backoff_max_ms: 5, max_restarts: 100, within_ms: 10000 },
    pipeline: { max_attempts: 2 },
  }, faults);
  try {
    faults.set({ stages: {}, poison_ids: ["p-13"], poison_stages: ["transform"] });
    const res = await postRecords(svc.url, makeRecords(40, "p"));
    assert.equal(res.status, 200);
    assert.equal(res.body.accepted, 39);
    assert.equal(res.body.rejected, 1);
    const [err] = res.body.errors as Array<Record<string, unknown>>;
    assert.equal(err.id, "p-13");
    assert.equal(err.index, 13);
    assert.equal(err.stage, "transform");
    assert.match(String(err.message), /Poison record/);
    const failed = await getJson(svc.url, "/v1/failed?stage=transform");
    assert.equal(failed.body.failed.length, 1);
    assert.equal((await getJson(svc.url, "/v1/stats")).body.stored_records, 39);
    assert.equal((await getJson(svc.url, "/readyz")).status, 200);
  } finally {
    await svc.close();
  }
});

Deno.test("when the root supervisor gives up, /readyz answers 503 and /healthz still answers", async () => {
  const faults = new FaultInjector();
  const svc = await startTestService({
    supervisor: { max_restarts: 1, within_ms: 60000, backoff_initial_ms: 1, backoff_max_ms: 2 },
    pipeline: { max_attempts: 100 },
  }, faults);
  try {
    faults.set({
      stages: { validate: { throw_rate: 1, throw_count: 0, latency_ms: 0 } },
      poison_ids: [],
      poison_stages: [],
    });
    // The request is never acknowledged: it fails with 503 once the root gives up.
    const pending = postRecords(svc.url, makeRecords(5, "doomed"));
    const gaveUp = async () => {
      const r = await getJson(svc.url, "/readyz");
      return r.status === 503 && /gave up/.test(JSON.stringify(r.body.checks));
    };
    await waitFor(gaveUp, 10000, "the root supervisor to give up");
    const ready = await getJson(svc.url, "/readyz");
    assert.equal(ready.status, 503);
    assert.equal(
      ready.body.checks.find((c: { name: string }) => c.name === "supervisors").ok,
      false,
    );
    assert.equal((await getJson(svc.url, "/healthz")).status, 200);
    const late = await postRecords(svc.url, makeRecords(1, "late"));
    assert.equal(late.status, 503);
    assert.ok(late.headers.get("retry-after"));
    const res = await pending;
    assert.equal(res.status, 503);
  } finally {
    await svc.close();
  }
});

Deno.test("a token guards every /v1 route and enables the admin routes", async (t) => {
  const token = "s3cret-token-0123456789";
  const svc = await startTestService({ auth: { token } });
  const auth = { authorization: `Bearer ${token}` };
  try {
    await t.step("without the token: 401 JSON", async () => {
      for (const path of ["/v1/stats", "/v1/users/user_001", "/v1/admin/faults"]) {
        const res = await fetch(`${svc.url}${path}`);
        assert.equal(res.status, 401, path);
        assert.match(res.headers.get("content-type") ?? "", /application\/json/);
        assert.equal((await res.json()).error.code, "unauthorized");
      }
      const post = await postRecords(svc.url, SEED_RECORDS);
      assert.equal(post.status, 401);
      const wrong = await postRecords(svc.url, SEED_RECORDS, {
        authorization: "Bearer wrong-token-xxxxxxxx",
      });
      assert.equal(wrong.status, 401);
      assert.equal((await getJson(svc.url, "/v1/stats")).status, 401);
    });

    await t.step("health, readiness and metrics stay open", async () => {
      for (const path of ["/healthz", "/readyz", "/metrics"]) {
        const res = await fetch(`${svc.url}${path}`);
        await res.body?.cancel();
        assert.equal(res.status, 200, path);
      }
    });

    await t.step("with the token: records go in and faults can be set at run time", async () => {
      const post = await postRecords(svc.url, SEED_RECORDS, auth);
      assert.equal(post.status, 200);
      assert.equal(post.body.accepted, 2);
      const put = await fetch(`${svc.url}/v1/admin/faults`, {
        method: "PUT",
        headers: { ...auth, "content-type": "application/json" },
        body: JSON.stringify({ poison_ids: ["x-1"] }),
      });
      assert.equal(put.status, 200);
      assert.deepEqual((await put.json()).poison_ids, ["x-1"]);
      const bad = await fetch(`${svc.url}/v1/admin/faults`, {
        method: "PUT",
        headers: { ...auth, "content-type": "application/json" },
        body: JSON.stringify({ stages: { validate: { throw_rate: 7 } } }),
      });
      assert.equal(bad.status, 422);
      assert.equal((await bad.json()).error.code, "invalid_fault_plan");
    });
  } finally {
    await svc.close();
  }
});

Deno.test("PUT /v1/admin/monitor stops and restarts the monitor at run time", async () => {
  const token = "s3cret-token-0123456789";
  const auth = { authorization: `Bearer ${token}` };
  const put = (body: unknown, url: string) =>
    fetch(`${url}/v1/admin/monitor`, {
      method: "PUT",
      headers: { ...auth, "content-type": "application/json" },
      body: JSON.stringify(body),
    });
  const actorIds = async (url: string) => {
    const tree = (await getJson(url, "/v1/actors", auth)).body as { children: { id: string }[] };
    return tree.children.map((c) => c.id);
  };
  const svc = await startTestService({ auth: { token }, monitor: { interval_ms: 1000 } });
  try {
    assert.deepEqual((await getJson(svc.url, "/v1/admin/monitor", auth)).body, { enabled: true });
    assert.ok((await actorIds(svc.url)).includes("monitor"));

    const off = await put({ enabled: false }, svc.url);
    assert.equal(off.status, 200);
    assert.deepEqual(await off.json(), { enabled: false });
    assert.ok(!(await actorIds(svc.url)).includes("monitor"));
    assert.equal(svc.system.alertRules([]).length, 0);
    // The pipeline does not notice.
    assert.equal((await postRecords(svc.url, SEED_RECORDS, auth)).status, 200);

    const on = await put({ enabled: true }, svc.url);
    assert.deepEqual(await on.json(), { enabled: true });
    assert.ok((await actorIds(svc.url)).includes("monitor"));
    // Twice on is still one monitor.
    assert.equal((await put({ enabled: true }, svc.url)).status, 200);
    assert.equal((await actorIds(svc.url)).filter((id) => id === "monitor").length, 1);

    const bad = await put({ enabled: "yes" }, svc.url);
    assert.equal(bad.status, 422);
    assert.equal((await bad.json()).error.code, "invalid_body");
    const notJson = await fetch(`${svc.url}/v1/admin/monitor`, {
      method: "PUT",
      headers: { ...auth, "content-type": "application/json" },
      body: "{",
    });
    assert.equal(notJson.status, 400);
    assert.equal((await notJson.json()).error.code, "invalid_json");
  } finally {
    await svc.close();
  }
  const disabled = await startTestService({ auth: { token }, monitor: { enabled: false } });
  try {
    const res = await put({ enabled: true }, disabled.url);
    assert.equal(res.status, 409);
    assert.equal((await res.json()).error.code, "monitor_disabled");
    assert.ok(!(await actorIds(disabled.url)).includes("monitor"));
  } finally {
    await disabled.close();
  }
});

Deno.test("admin routes do not exist without a token", async () => {
  const svc = await startTestService();
  try {
    const res = await fetch(`${svc.url}/v1/admin/faults`);
    assert.equal(res.status, 404);
    assert.equal((await res.json()).error.code, "not_found");
  } finally {
    await svc.close();
  }
});

Deno.test("envOverrides reads TROUPE_TOKEN and TROUPE_FAULTS", () => {
  const ok = envOverrides({
    TROUPE_TOKEN: "abcdefghijklmnopq",
    TROUPE_FAULTS: '{"poison_ids":[1]}',
  });
  assert.deepEqual(ok, {
    ok: true,
    value: { auth: { token: "abcdefghijklmnopq" }, faults: { poison_ids: [1] } },
  });
  const bad = envOverrides({ TROUPE_FAULTS: "{nope" });
  assert.equal(bad.ok, false);
  assert.deepEqual(envOverrides({}), { ok: true, value: {} });
  assert.deepEqual(envOverrides({ TROUPE_QUEUE: "redis://127.0.0.1:6379" }), {
    ok: true,
    value: { queue: { url: "redis://127.0.0.1:6379" } },
  });
});

Deno.test("GET /metrics of a live service passes promtool check metrics", async () => {
  const svc = await startTestService();
  try {
    await postRecords(svc.url, SEED_RECORDS);
    const res = await fetch(`${svc.url}/metrics`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get("content-type") ?? "", /^text\/plain; version=0\.0\.4/);
    const text = await res.text();
    for (
      const name of [
        'troupe_records_total{outcome="accepted"} 2',
        'troupe_mailbox_depth{stage="validate"}',
        'troupe_stage_workers{stage="store"}',
        "troupe_stage_duration_seconds_bucket",
        "troupe_http_request_duration_seconds_bucket",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
      ]
    ) assert.ok(text.includes(name), name);
    const promtool = new Deno.Command("promtool", {
      args: ["check", "metrics"],
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const writer = promtool.stdin.getWriter();
    await writer.write(new TextEncoder().encode(text));
    await writer.close();
    const out = await promtool.output();
    const said = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
    assert.equal(out.code, 0, said);
  } finally {
    await svc.close();
  }
});

Deno.test("serve --status prints a one-line status every second and SIGTERM exits 0", async () => {
  const dir = await Deno.makeTempDir({ prefix: "troupe_status_" });
  const STATUS_LINE =
    /records\/s +\d+ \| latency [\d.]+ ms \| errors [\d.]+% \| actors \d+ \| in flight \d+ \| rss \d+ MiB\n/;
  try {
    const server = await startServe(Deno.execPath(), ["run", "--allow-all", "main.ts"], dir, [
      "--status",
    ]);
    await waitFor(() => STATUS_LINE.test(server.output()), 15_000, "a status line");
    assert.equal((await server.stop("SIGTERM")).code, 0);
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});

Deno.test("ingest refuses requests past ingest.max_concurrent_requests with 429 before reading them", async () => {
  const faults = new FaultInjector({ stages: { store: { latency_ms: 400 } } });
  const svc = await startTestService({ ingest: { max_concurrent_requests: 1 } }, faults);
  try {
    const first = postRecords(svc.url, makeRecords(10, "slow"));
    await waitFor(() => svc.system.load > 0, 5000, "the first request in the pipeline");
    const second = await postRecords(svc.url, makeRecords(10, "second"));
    assert.equal(second.status, 429);
    assert.equal((second.body.error as { code: string }).code, "too_many_requests");
    assert.ok(Number(second.headers.get("retry-after")) >= 1);
    assert.equal((await first).status, 200);
    assert.equal((await postRecords(svc.url, makeRecords(10, "second"))).status, 200, "room again");
  } finally {
    await svc.close();
  }
});

Deno.test("ingest holds a request unread while the pipeline is full, and answers 429 past max_wait_ms", async (t) => {
  const faults = new FaultInjector({ stages: { store: { latency_ms: 400 } } });
  await t.step(
    "the second request waits for the first one's commit, then goes through",
    async () => {
      const svc = await startTestService(
        { ingest: { max_pipeline_records: 5, max_wait_ms: 5000 } },
        faults,
      );
      try {
        const first = postRecords(svc.url, makeRecords(10, "first"));
        await waitFor(() => svc.system.load > 0, 5000, "the first request in the pipeline");
        const started = performance.now();
        const second = postRecords(svc.url, makeRecords(10, "second"));
        const [a, b] = await Promise.all([first, second]);
        assert.equal(a.status, 200);
        assert.equal(b.status, 200);
        assert.equal(b.body.accepted, 10);
        assert.ok(performance.now() - started >= 300, "the second one waited for the first commit");
      } finally {
        await svc.close();
      }
    },
  );
  await t.step(
    "a request that waits longer than max_wait_ms gets 429 with Retry-After",
    async () => {
      const svc = await startTestService(
        { ingest: { max_pipeline_records: 5, max_wait_ms: 50 } },
        faults,
      );
      try {
        const first = postRecords(svc.url, makeRecords(10, "slow"));
        await waitFor(() => svc.system.load > 0, 5000, "the first request in the pipeline");
        const second = await postRecords(svc.url, makeRecords(10, "late"));
        assert.equal(second.status, 429);
        const error = second.body.error as { code: string; message: string };
        assert.equal(error.code, "too_many_requests");
        assert.match(error.message, /pipeline is full/);
        assert.ok(Number(second.headers.get("retry-after")) >= 1);
        assert.equal((await first).status, 200);
        const counts = await (await fetch(`${svc.url}/v1/stats`)).json();
        assert.equal(counts.stored_records, 10, "nothing of the refused request was stored");
      } finally {
        await svc.close();
      }
    },
  );
});

Deno.test("a crashed monitor is stopped and started again after backoff_max_ms", async () => {
  const svc = await startTestService({
    monitor: { interval_ms: 1000 },
    supervisor: { backoff_initial_ms: 10, backoff_max_ms: 100 },
  });
  try {
    const hasMonitor = () => svc.system.root.getSnapshot().children.monitor !== undefined;
    assert.ok(hasMonitor());
    svc.system.root.send({ type: "xstate.error.actor.monitor", error: new Error("boom") });
    assert.ok(!hasMonitor(), "the crashed monitor is stopped at once");
    await waitFor(hasMonitor, 2000, "monitor restarted");
    assert.equal(svc.system.monitorEnabled, true);
    const metrics = await (await fetch(`${svc.url}/metrics`)).text();
    assert.match(metrics, /troupe_actor_restarts_total\{actor="monitor"\} 1/);
  } finally {
    await svc.close();
  }
});
