/**
 * @module
 * Tests of the Prometheus metrics: names, buckets, default runtime metrics,
 * and the exposition checked by `promtool check metrics` (a hard
 * requirement: CI installs promtool, so a missing one fails the test).
 */
import assert from "node:assert/strict";
import { Registry } from "prom-client";
import {
  createMetrics,
  HTTP_DURATION_BUCKETS,
  type Metrics,
  PROMETHEUS_CONTENT_TYPE,
  RECORD_OUTCOMES,
  STAGE_DURATION_BUCKETS,
} from "../../lib/metrics.ts";

const TROUPE_METRICS = [
  "troupe_records_total",
  "troupe_mailbox_depth",
  "troupe_mailbox_capacity",
  "troupe_stage_workers",
  "troupe_scale_decisions_total",
  "troupe_actor_restarts_total",
  "troupe_stage_duration_seconds",
  "troupe_stage_batches_total",
  "troupe_http_request_duration_seconds",
  "troupe_ready",
  "troupe_stored_records",
];

function useEveryMetric(metrics: Metrics): void {
  metrics.recordsTotal.inc({ outcome: "accepted" }, 100);
  metrics.recordsTotal.inc({ outcome: "duplicate" }, 2);
  metrics.recordsTotal.inc({ outcome: "rejected" });
  metrics.mailboxDepth.set({ stage: "validate" }, 250);
  metrics.mailboxCapacity.set({ stage: "validate" }, 10_000);
  metrics.stageWorkers.set({ stage: "validate" }, 4);
  metrics.scaleDecisionsTotal.inc({ stage: "validate", direction: "up" });
  metrics.actorRestartsTotal.inc({ actor: "storage_connection" });
  metrics.stageDuration.observe({ stage: "validate" }, 0.0032);
  metrics.stageBatchesTotal.inc({ stage: "validate", outcome: "ok" });
  metrics.stageBatchesTotal.inc({ stage: "store", outcome: "error" });
  metrics.httpDuration.observe(
    { method: "GET", route: "/v1/users/:user_id", status: "200" },
    0.012,
  );
  metrics.ready.set(1);
  metrics.storedRecords.set(12_345);
}

/** The `le` values of one histogram series, in exposition order. */
function bucketBounds(text: string, name: string): string[] {
  const pattern = new RegExp(`^${name}_bucket\\{[^}]*le="([^"]+)"`, "gm");
  return [...text.matchAll(pattern)].map((match) => match[1]);
}

interface PromtoolResult {
  code: number;
  output: string;
}

async function promtoolCheckMetrics(text: string): Promise<PromtoolResult> {
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command("promtool", {
      args: ["check", "metrics"],
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) {
      assert.fail(
        'Cannot run "promtool": not found on PATH; install it (Debian package "prometheus", ' +
          "/usr/bin/promtool), as CI does",
      );
    }
    throw error;
  }
  const writer = child.stdin.getWriter();
  await writer.write(new TextEncoder().encode(text));
  await writer.close();
  const { code, stdout, stderr } = await child.output();
  const decoder = new TextDecoder();
  return { code, output: decoder.decode(stdout) + decoder.decode(stderr) };
}

Deno.test("createMetrics exposes every troupe_ metric after use", async () => {
  const metrics = createMetrics({ defaultMetrics: false });
  useEveryMetric(metrics);

  const text = await metrics.registry.metrics();

  for (const name of TROUPE_METRICS) {
    assert.match(text, new RegExp(`^# HELP ${name} \\S`, "m"), `HELP of ${name}`);
    assert.match(text, new RegExp(`^# TYPE ${name} `, "m"), `TYPE of ${name}`);
    assert.match(
      text,
      new RegExp(`^${name}(_bucket|_sum|_count)?(\\{| )`, "m"),
      `sample of ${name}`,
    );
  }
  assert.match(text, /^troupe_records_total\{outcome="accepted"\} 100$/m);
  assert.match(text, /^troupe_mailbox_depth\{stage="validate"\} 250$/m);
  assert.match(text, /^troupe_scale_decisions_total\{stage="validate",direction="up"\} 1$/m);
  assert.match(text, /^troupe_ready 1$/m);
  assert.match(text, /^troupe_stored_records 12345$/m);
});

Deno.test("createMetrics exposes record outcomes and readiness at 0 before use", async () => {
  const metrics = createMetrics({ defaultMetrics: false });

  const text = await metrics.registry.metrics();

  for (const outcome of RECORD_OUTCOMES) {
    assert.match(text, new RegExp(`^troupe_records_total\\{outcome="${outcome}"\\} 0$`, "m"));
  }
  assert.match(text, /^troupe_ready 0$/m);
});

Deno.test("createMetrics gives histograms their buckets", async (t) => {
  const metrics = createMetrics({ defaultMetrics: false });
  useEveryMetric(metrics);
  const text = await metrics.registry.metrics();

  await t.step("stage duration from 100 µs to 5 s", () => {
    assert.deepEqual(bucketBounds(text, "troupe_stage_duration_seconds"), [
      ...STAGE_DURATION_BUCKETS.map(String),
      "+Inf",
    ]);
    assert.equal(STAGE_DURATION_BUCKETS[0], 0.0001);
    assert.equal(STAGE_DURATION_BUCKETS.at(-1), 5);
    assert.match(text, /^troupe_stage_duration_seconds_bucket\{le="0.005",stage="validate"\} 1$/m);
    assert.match(text, /^troupe_stage_duration_seconds_bucket\{le="0.0025",stage="validate"\} 0$/m);
  });

  await t.step("HTTP duration from 0.5 ms to 10 s", () => {
    assert.deepEqual(bucketBounds(text, "troupe_http_request_duration_seconds"), [
      ...HTTP_DURATION_BUCKETS.map(String),
      "+Inf",
    ]);
    assert.equal(HTTP_DURATION_BUCKETS[0], 0.0005);
    assert.equal(HTTP_DURATION_BUCKETS.at(-1), 10);
  });

  await t.step("buckets increase strictly", () => {
    for (const buckets of [STAGE_DURATION_BUCKETS, HTTP_DURATION_BUCKETS]) {
      for (let i = 1; i < buckets.length; i++) assert.ok(buckets[i - 1] < buckets[i]);
    }
  });
});

Deno.test("createMetrics registers the default process_ and nodejs_ metrics", async (t) => {
  await t.step("by default", async () => {
    const metrics = createMetrics();

    const text = await metrics.registry.metrics();

    for (
      const name of [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_start_time_seconds",
        "nodejs_heap_size_used_bytes",
        "nodejs_eventloop_lag_seconds",
      ]
    ) {
      assert.match(text, new RegExp(`^${name} \\d`, "m"), name);
    }
  });

  await t.step("not with defaultMetrics: false", async () => {
    const metrics = createMetrics({ defaultMetrics: false });

    const text = await metrics.registry.metrics();

    assert.doesNotMatch(text, /^(# \w+ )?(process|nodejs)_/m);
  });
});

Deno.test("createMetrics gives each call a registry of its own", async () => {
  const first = createMetrics();
  const second = createMetrics();

  first.recordsTotal.inc({ outcome: "accepted" }, 7);

  assert.notEqual(first.registry, second.registry);
  assert.match(await first.registry.metrics(), /^troupe_records_total\{outcome="accepted"\} 7$/m);
  assert.match(await second.registry.metrics(), /^troupe_records_total\{outcome="accepted"\} 0$/m);
});

Deno.test("PROMETHEUS_CONTENT_TYPE is the text format 0.0.4 of the registry", () => {
  const metrics = createMetrics({ defaultMetrics: false });

  assert.equal(PROMETHEUS_CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8");
  assert.equal(metrics.registry.contentType, PROMETHEUS_CONTENT_TYPE);
  assert.equal(Registry.PROMETHEUS_CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE);
});

Deno.test("createMetrics output passes promtool check metrics", async (t) => {
  await t.step("troupe_ metrics alone, without any lint problem", async () => {
    const metrics = createMetrics({ defaultMetrics: false });
    useEveryMetric(metrics);

    const result = await promtoolCheckMetrics(await metrics.registry.metrics());

    assert.equal(result.code, 0, result.output);
    assert.equal(result.output.trim(), "");
  });

  await t.step("with prom-client's default metrics, without any lint problem", async () => {
    const metrics = createMetrics();
    useEveryMetric(metrics);
    const text = await metrics.registry.metrics();

    const result = await promtoolCheckMetrics(text);

    assert.equal(result.code, 0, result.output);
    assert.equal(result.output.trim(), "");
    for (
      const name of [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "nodejs_heap_size_used_bytes",
        "nodejs_eventloop_lag_seconds",
        "nodejs_active_handles",
      ]
    ) {
      assert.match(text, new RegExp(`^# TYPE ${name} `, "m"));
    }
  });
});
