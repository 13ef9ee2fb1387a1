import assert from "node:assert/strict";
import { getJson, startTestService, waitFor } from "../_helpers.ts";

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
