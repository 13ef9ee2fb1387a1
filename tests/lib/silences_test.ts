import assert from "node:assert/strict";
import { join } from "node:path";
import fc from "fast-check";
import * as v from "valibot";
import type { Alert } from "../../lib/alerts.ts";
import {
  EXPIRED_KEEP_MS,
  markSilenced,
  newSilence,
  parseSilenceDuration,
  silenceMatches,
  SilenceRequest,
  SilenceStore,
} from "../../lib/silences.ts";

function alert(name: string, extra: Partial<Alert> = {}): Alert {
  return {
    id: `${name}-1`,
    name,
    state: "firing",
    severity: "warning",
    summary: "",
    description: "",
    labels: { alertname: name, severity: "warning", kind: "cpu" },
    value: 1,
    starts_at: new Date(0).toISOString(),
    ends_at: null,
    suggested_actions: [],
    ...extra,
  };
}

Deno.test("parseSilenceDuration reads seconds and durations with a unit", () => {
  assert.equal(parseSilenceDuration(90), 90_000);
  assert.equal(parseSilenceDuration("90s"), 90_000);
  assert.equal(parseSilenceDuration("15m"), 900_000);
  assert.equal(parseSilenceDuration("1.5h"), 5_400_000);
  assert.equal(parseSilenceDuration("7d"), 7 * 86_400_000);
  assert.equal(parseSilenceDuration("1 hour"), undefined);
  assert.equal(parseSilenceDuration(Number.NaN), undefined);
});

Deno.test("SilenceRequest accepts a name, an id or matchers with a duration, and nothing else", async (t) => {
  await t.step("valid requests", () => {
    const r = v.parse(SilenceRequest, { alertname: "CpuSpike", duration: "1h", comment: "deploy" });
    assert.deepEqual(newSilence(r), {
      matchers: { alertname: "CpuSpike" },
      alert_id: null,
      duration_ms: 3_600_000,
      comment: "deploy",
    });
    const m = v.parse(SilenceRequest, { matchers: { kind: "memory" }, duration: 60 });
    assert.deepEqual(newSilence(m).matchers, { kind: "memory" });
    assert.equal(newSilence(m).comment, "");
    assert.equal(
      v.parse(SilenceRequest, { alert_id: "X-1", duration: "90d" }).duration,
      90 * 86_400_000,
    );
  });
  await t.step("invalid requests", () => {
    for (
      const bad of [
        { duration: "1h" },
        { alertname: "X" },
        { alertname: "X", duration: "forever" },
        { alertname: "X", duration: 0 },
        { alertname: "X", duration: "91d" },
        { alertname: "X", duration: "1h", extra: true },
        { matchers: {}, duration: "1h" },
        { matchers: { "not a label": "x" }, duration: "1h" },
        { alertname: "", duration: "1h" },
        [],
        null,
      ]
    ) {
      assert.equal(v.safeParse(SilenceRequest, bad).success, false, JSON.stringify(bad));
    }
  });
  await t.step("never throws on any JSON", () => {
    fc.assert(fc.property(fc.jsonValue(), (json) => {
      v.safeParse(SilenceRequest, json);
    }));
  });
});

Deno.test("silenceMatches needs every matcher and the alert id when given", () => {
  const a = alert("CpuSpike");
  assert.ok(silenceMatches({ matchers: { alertname: "CpuSpike" }, alert_id: null }, a));
  assert.ok(silenceMatches({ matchers: { kind: "cpu", severity: "warning" }, alert_id: null }, a));
  assert.ok(
    !silenceMatches({ matchers: { kind: "cpu", severity: "critical" }, alert_id: null }, a),
  );
  assert.ok(silenceMatches({ matchers: {}, alert_id: "CpuSpike-1" }, a));
  assert.ok(!silenceMatches({ matchers: {}, alert_id: "CpuSpike-2" }, a));
  assert.ok(!silenceMatches({ matchers: { alertname: "MemoryLeak" }, alert_id: null }, a));
});

Deno.test("SilenceStore keeps silences across a reopen, expires and prunes them", async () => {
  const dir = await Deno.makeTempDir({ prefix: "troupe_silences_" });
  try {
    const path = join(dir, "troupe.db");
    let now = 1_000_000;
    const store = new SilenceStore(path, { now: () => now });
    const s = store.add({
      matchers: { alertname: "CpuSpike" },
      alert_id: null,
      duration_ms: 60_000,
      comment: "deploy",
    })!;
    assert.equal(s.state, "active");
    assert.equal(s.ends_at, new Date(now + 60_000).toISOString());
    assert.ok(store.isSilenced(alert("CpuSpike")));
    assert.ok(!store.isSilenced(alert("MemoryLeak")));
    assert.deepEqual(markSilenced([alert("CpuSpike")], store)[0].silenced_by, [s.id]);
    store.close();

    const again = new SilenceStore(path, { now: () => now });
    assert.deepEqual(again.list().map((x) => x.id), [s.id]);
    assert.ok(again.isSilenced(alert("CpuSpike")));
    now += 60_000;
    assert.ok(!again.isSilenced(alert("CpuSpike")), "a silence ends at ends_at");
    assert.equal(again.list()[0].state, "expired");
    now += EXPIRED_KEEP_MS + 1;
    assert.ok(again.add({ matchers: { a: "b" }, alert_id: null, duration_ms: 1000, comment: "" }));
    assert.equal(again.list().length, 1, "the long-expired silence was pruned");
    assert.equal(again.remove(again.list()[0].id), true);
    assert.equal(again.remove("nope"), false);
    assert.deepEqual(again.list(), []);
    again.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
