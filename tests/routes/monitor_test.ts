import assert from "node:assert/strict";
import { join } from "node:path";
import { FaultInjector } from "../../lib/faults.ts";
import { HistoryStore } from "../../lib/history_store.ts";
import { getJson, makeRecords, postRecords, startTestService, waitFor } from "../_helpers.ts";

Deno.test("the collector fills /v1/metrics/history and custom metrics reach /metrics", async (t) => {
  const svc = await startTestService();
  try {
    await t.step("history lists series once the collector has sampled", async () => {
      await waitFor(
        async () =>
          (await getJson(svc.url, "/v1/metrics/history")).body.series.includes("rss_bytes"),
        5000,
        "a sample",
      );
      const { body } = await getJson(svc.url, "/v1/metrics/history");
      for (
        const name of [
          "rss_bytes",
          "process_cpu_user",
          "eventloop_lag_p99_seconds",
          "mailbox_depth_validate",
          "workers_store",
          "actors_stage_pool",
          "records_accepted_per_second",
        ]
      ) {
        assert.ok(body.series.includes(name), name);
      }
      const rss = await getJson(svc.url, "/v1/metrics/history?name=rss_bytes&step=1m");
      assert.equal(rss.status, 200);
      assert.equal(rss.body.step_ms, 60_000);
      assert.ok(rss.body.points.length >= 1);
      assert.ok(rss.body.points[0].max >= rss.body.points[0].min);
      assert.equal(svc.system.readings().actors_stage_pool, 4);
    });

    await t.step("bad history queries are 400 or 404 JSON", async () => {
      assert.equal((await getJson(svc.url, "/v1/metrics/history?name=nope")).status, 404);
      assert.equal(
        (await getJson(svc.url, "/v1/metrics/history?name=rss_bytes&step=abc")).status,
        400,
      );
      assert.equal(
        (await getJson(svc.url, "/v1/metrics/history?name=rss_bytes&from=yesterday")).status,
        400,
      );
      assert.equal(
        (await getJson(svc.url, "/v1/metrics/history?name=rss_bytes&from=0&step=1")).status,
        400,
      );
    });

    await t.step("a custom gauge is validated and exposed", async () => {
      const post = (body: unknown) =>
        fetch(`${svc.url}/v1/metrics/custom`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify(body),
        });
      const ok = await post({
        name: "orders_open",
        value: 12,
        labels: { shop: "eu" },
        type: "gauge",
      });
      assert.equal(ok.status, 200);
      assert.deepEqual(await ok.json(), { series: 'orders_open{shop="eu"}' });
      const text = await (await fetch(`${svc.url}/metrics`)).text();
      assert.match(text, /^orders_open\{shop="eu"\} 12$/m);
      for (
        const bad of [{ name: "1bad", value: 1 }, { name: "troupe_fake", value: 1 }, {
          name: "x",
          value: "1",
        }, { name: "x", value: 1, labels: { "a-b": "c" } }]
      ) {
        const res = await post(bad);
        assert.equal(res.status, 422, JSON.stringify(bad));
        assert.equal((await res.json()).error.code, "invalid_metric");
      }
      const conflict = await post({
        name: "orders_open",
        value: 1,
        type: "counter",
        labels: { shop: "eu" },
      });
      assert.equal(conflict.status, 422);
      assert.equal((await conflict.json()).error.code, "metric_conflict");
    });
  } finally {
    await svc.close();
  }
});

Deno.test("a crash storm fires the ActorRestarts alert on /v1/alerts and as ALERTS on /metrics", async () => {
  const faults = new FaultInjector();
  const svc = await startTestService({
    supervisor: { max_restarts: 1000, within_ms: 60_000, backoff_initial_ms: 1, backoff_max_ms: 2 },
    pipeline: { max_attempts: 100 },
  }, faults);
  try {
    const rules = await getJson(svc.url, "/v1/alerts/rules");
    const names = rules.body.rules.map((r: { name: string }) => r.name);
    for (
      const n of [
        "MemoryLeak",
        "CpuSpike",
        "ActorLeak",
        "EventLoopLag",
        "MailboxSaturated",
        "HighRejectRate",
        "ActorRestarts",
      ]
    ) {
      assert.ok(names.includes(n), n);
    }
    assert.ok(rules.body.rules.every((r: { state: string }) => r.state === "inactive"));
    // Let the collector take a baseline sample, then crash the transform stage 15 times.
    await waitFor(
      async () =>
        (await getJson(svc.url, "/v1/metrics/history")).body.series.includes(
          "actor_restarts_total",
        ),
      5000,
      "a sample",
    );
    faults.set({ stages: { transform: { throw_count: 15 } } });
    assert.equal((await postRecords(svc.url, makeRecords(20, "storm"))).status, 200);
    await waitFor(
      async () => {
        const alerts = await getJson(svc.url, "/v1/alerts");
        return alerts.body.active.some((a: { name: string; state: string }) =>
          a.name === "ActorRestarts" && a.state === "firing"
        );
      },
      10_000,
      "ActorRestarts to fire",
    );
    const { body } = await getJson(svc.url, "/v1/alerts");
    const alert = body.active.find((a: { name: string }) => a.name === "ActorRestarts");
    assert.equal(alert.severity, "critical");
    assert.ok(alert.value > 10);
    assert.ok(alert.suggested_actions.length > 0);
    assert.equal(alert.ends_at, null);
    const text = await (await fetch(`${svc.url}/metrics`)).text();
    assert.match(
      text,
      /^ALERTS\{alertname="ActorRestarts",alertstate="firing",severity="critical"\} 1$/m,
    );
    const after = await getJson(svc.url, "/v1/alerts/rules");
    assert.equal(
      after.body.rules.find((r: { name: string }) => r.name === "ActorRestarts").state,
      "firing",
    );
  } finally {
    await svc.close();
  }
});

Deno.test("a threshold rule from the alerts config fires on troupe_records_total", async () => {
  const svc = await startTestService({
    alerts: {
      rules: [{
        name: "BurstOfRecords",
        metric: "troupe_records_total",
        labels: { outcome: "accepted" },
        function: "increase",
        window: "10s",
        op: ">",
        threshold: 50,
        severity: "info",
        summary: "More than 50 records in 10 s",
      }],
    },
  });
  try {
    assert.equal((await postRecords(svc.url, makeRecords(20, "few"))).status, 200);
    await new Promise((r) => setTimeout(r, 2200));
    assert.equal(
      (await getJson(svc.url, "/v1/alerts")).body.active.length,
      0,
      "20 records stay under the threshold",
    );
    assert.equal((await postRecords(svc.url, makeRecords(100, "many"))).status, 200);
    await waitFor(
      async () => {
        const { body } = await getJson(svc.url, "/v1/alerts");
        return body.active.some((a: { name: string; state: string }) =>
          a.name === "BurstOfRecords" && a.state === "firing"
        );
      },
      10_000,
      "BurstOfRecords to fire",
    );
    const { body } = await getJson(svc.url, "/v1/alerts");
    const alert = body.active.find((a: { name: string }) => a.name === "BurstOfRecords");
    assert.equal(alert.severity, "info");
    assert.deepEqual(alert.labels, {
      alertname: "BurstOfRecords",
      severity: "info",
      outcome: "accepted",
    });
    assert.match(
      alert.description,
      /increase\(troupe_records_total\{outcome="accepted"\}\) = \d+ > 50/,
    );
  } finally {
    await svc.close();
  }
});

Deno.test("GET /v1/metrics/history reads the SQLite minutes for ranges past the last 15 minutes", async () => {
  const svc = await startTestService();
  try {
    const twoHoursAgo = Math.floor((Date.now() - 2 * 3_600_000) / 60_000) * 60_000;
    const store = new HistoryStore(join(svc.dir, "troupe.db"));
    store.append([
      { name: "rss_bytes", t: twoHoursAgo, min: 10, mean: 15, max: 20, count: 60 },
      { name: "rss_bytes", t: twoHoursAgo + 60_000, min: 30, mean: 35, max: 40, count: 60 },
    ]);
    store.close();
    const res = await getJson(
      svc.url,
      `/v1/metrics/history?name=rss_bytes&from=${twoHoursAgo}&to=${
        twoHoursAgo + 3_600_000
      }&step=1h`,
    );
    assert.equal(res.status, 200);
    assert.deepEqual(res.body.points, [{ t: twoHoursAgo, min: 10, mean: 25, max: 40, count: 120 }]);
  } finally {
    await svc.close();
  }
});

Deno.test("a real leak (the transform stage keeps heap per batch) fires the MemoryLeak alert", async () => {
  const faults = new FaultInjector();
  const svc = await startTestService({
    alerts: { memory_leak: { window: "24s", bucket: "2s", for: 0, min_growth: 0.1 } },
  }, faults);
  try {
    faults.set({ leak_bytes_per_batch: 400_000 });
    const deadline = Date.now() + 40_000;
    let fired: { description: string; severity: string } | undefined;
    for (let i = 0; fired === undefined && Date.now() < deadline; i++) {
      assert.equal((await postRecords(svc.url, makeRecords(5, `leak-${i}`))).status, 200);
      await new Promise((r) => setTimeout(r, 150));
      if (i % 5 === 0) {
        const { body } = await getJson(svc.url, "/v1/alerts");
        fired = body.active.find((a: { name: string; state: string }) =>
          a.name === "MemoryLeak" && a.state === "firing"
        );
      }
    }
    assert.ok(fired, "MemoryLeak fired within 40 s of a steady leak");
    assert.match(fired.description, /heap floor rising [\d.]+ MiB\/min/);
    assert.match(fired.description, /heap limit in about \d+ min/);
  } finally {
    await svc.close();
  }
});
