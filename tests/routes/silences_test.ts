import assert from "node:assert/strict";
import { makeRecords, postRecords, startTestService, waitFor } from "../_helpers.ts";

/** A rule that fires once any record is accepted. */
const RULE = {
  name: "AnyRecord",
  metric: "troupe_records_total",
  labels: { outcome: "accepted" },
  op: ">",
  threshold: 0,
  severity: "info",
  summary: "A record was accepted",
};

async function call(url: string, method: string, path: string, body?: unknown) {
  const res = await fetch(`${url}${path}`, {
    method,
    headers: body === undefined ? {} : { "content-type": "application/json" },
    body: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body),
  });
  const text = await res.text();
  return {
    status: res.status,
    type: res.headers.get("content-type"),
    body: text ? JSON.parse(text) : null,
  };
}

Deno.test("silences: created, listed, marked on /v1/alerts, kept across a restart and deleted", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "troupe_silences_" });
  let svc = await startTestService({ alerts: { rules: [RULE] } }, undefined, dir);
  try {
    let id = "";
    await t.step("POST makes a silence", async () => {
      const res = await call(svc.url, "POST", "/v1/alerts/silences", {
        alertname: "AnyRecord",
        duration: "2h",
        comment: "testing",
      });
      assert.equal(res.status, 201);
      assert.equal(res.body.state, "active");
      assert.deepEqual(res.body.matchers, { alertname: "AnyRecord" });
      assert.equal(Date.parse(res.body.ends_at) - Date.parse(res.body.starts_at), 7_200_000);
      id = res.body.id;
    });

    await t.step("/v1/alerts marks the alert it matches", async () => {
      assert.equal((await postRecords(svc.url, makeRecords(3, "s"))).status, 200);
      await waitFor(
        async () => {
          const { body } = await call(svc.url, "GET", "/v1/alerts");
          return body.active.some((a: { name: string; state: string }) =>
            a.name === "AnyRecord" && a.state === "firing"
          );
        },
        10_000,
        "AnyRecord to fire",
      );
      const { body } = await call(svc.url, "GET", "/v1/alerts");
      const alert = body.active.find((a: { name: string }) => a.name === "AnyRecord");
      assert.equal(alert.silenced, true);
      assert.deepEqual(alert.silenced_by, [id]);
    });

    await t.step("bad requests are 400 or 422 JSON", async () => {
      const notJson = await call(svc.url, "POST", "/v1/alerts/silences", "{nope");
      assert.equal(notJson.status, 400);
      assert.equal(notJson.body.error.code, "invalid_json");
      const bad = await call(svc.url, "POST", "/v1/alerts/silences", {
        alertname: "AnyRecord",
        duration: "forever",
      });
      assert.equal(bad.status, 422);
      assert.equal(bad.type, "application/json");
      assert.equal(bad.body.error.code, "invalid_silence");
      assert.equal(bad.body.error.details.issues[0].path, "duration");
      const empty = await call(svc.url, "POST", "/v1/alerts/silences", { duration: 60 });
      assert.equal(empty.status, 422);
      assert.equal((await call(svc.url, "DELETE", "/v1/alerts/silences/nope")).status, 404);
    });

    await t.step("silences survive a restart", async () => {
      await svc.close();
      svc = await startTestService({ alerts: { rules: [RULE] } }, undefined, dir);
      const { body } = await call(svc.url, "GET", "/v1/alerts/silences");
      assert.deepEqual(body.silences.map((s: { id: string }) => s.id), [id]);
    });

    await t.step("DELETE removes it", async () => {
      const res = await call(svc.url, "DELETE", `/v1/alerts/silences/${id}`);
      assert.equal(res.status, 204);
      assert.deepEqual((await call(svc.url, "GET", "/v1/alerts/silences")).body, { silences: [] });
    });
  } finally {
    await svc.close();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});
