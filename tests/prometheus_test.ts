/**
 * @module
 * troupe's `/metrics` scraped by a real Prometheus (Debian `prometheus`)
 * started on loopback by the test: the target is up, and the records
 * posted show up in a query of `troupe_records_total`.
 */
import assert from "node:assert/strict";
import { type Daemon, startDaemon } from "./_child_process.ts";
import {
  postRecords,
  SEED_RECORDS,
  startTestService,
  type TestService,
  waitFor,
} from "./_helpers.ts";

const PROMETHEUS = Deno.env.get("TROUPE_PROMETHEUS_BIN") ?? "/usr/bin/prometheus";

/** Starts Prometheus scraping `target` (host:port) every second; waits for `/-/ready` (30 s). */
async function startPrometheus(dir: string, target: string): Promise<Daemon> {
  const exists = await Deno.stat(PROMETHEUS).then(() => true, () => false);
  if (!exists) {
    throw new Error(
      `Prometheus not found at "${PROMETHEUS}": install the Debian package prometheus (apt-get install -y prometheus)`,
    );
  }
  const config = `${dir}/prometheus.yml`;
  await Deno.writeTextFile(
    config,
    `global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: troupe
    metrics_path: /metrics
    static_configs:
      - targets: ["${target}"]
`,
  );
  return await startDaemon("Prometheus", PROMETHEUS, (port) => [
    `--config.file=${config}`,
    `--storage.tsdb.path=${dir}/data`,
    `--web.listen-address=127.0.0.1:${port}`,
  ], { cwd: dir });
}

// deno-lint-ignore no-explicit-any
async function api(url: string, path: string): Promise<any> {
  const res = await fetch(`${url}${path}`);
  const body = await res.json();
  assert.equal(res.status, 200, JSON.stringify(body));
  assert.equal(body.status, "success");
  return body.data;
}

Deno.test("a real Prometheus scrapes troupe's /metrics and finds troupe_records_total", async () => {
  const dir = await Deno.makeTempDir({ prefix: "troupe_prometheus_" });
  let service: TestService | undefined;
  let prometheus: Daemon | undefined;
  try {
    service = await startTestService();
    const target = `127.0.0.1:${service.server.port}`;
    prometheus = await startPrometheus(dir, target);
    const url = prometheus.url;

    // deno-lint-ignore no-explicit-any
    let targets: any[] = [];
    await waitFor(
      async () => {
        targets = (await api(url, "/api/v1/targets")).activeTargets;
        return targets.some((t) => t.labels.instance === target && t.health === "up");
      },
      30_000,
      `the target ${target} up`,
    );
    const [up] = targets.filter((t) => t.labels.instance === target);
    assert.equal(up.labels.job, "troupe");
    assert.equal(up.lastError, "");

    const posted = await postRecords(service.url, SEED_RECORDS);
    assert.equal(posted.status, 200, JSON.stringify(posted.body));

    const query = encodeURIComponent(`sum(troupe_records_total{job="troupe"})`);
    let value = 0;
    await waitFor(
      async () => {
        const data = await api(url, `/api/v1/query?query=${query}`);
        value = data.result.length > 0 ? Number(data.result[0].value[1]) : 0;
        return value >= SEED_RECORDS.length;
      },
      30_000,
      "troupe_records_total to count the posted records",
    );
    assert.ok(value >= SEED_RECORDS.length, String(value));

    const raw = await api(url, `/api/v1/query?query=troupe_records_total`);
    assert.equal(raw.resultType, "vector");
    assert.ok(raw.result.length > 0);
    for (const series of raw.result) {
      assert.equal(series.metric.__name__, "troupe_records_total");
      assert.equal(series.metric.instance, target);
    }
  } catch (error) {
    if (prometheus !== undefined) console.error(`Prometheus output:\n${prometheus.output()}`);
    throw error;
  } finally {
    await prometheus?.stop();
    await service?.close();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});
