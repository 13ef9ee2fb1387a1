/**
 * @module
 * The notifier against a real Alertmanager (Debian `prometheus-alertmanager`)
 * started on loopback by the test: an alert posted firing is read back from
 * Alertmanager's API, and once resolved it leaves the active alerts.
 */
import assert from "node:assert/strict";
import { createActor } from "xstate";
import { fingerprint, notifierMachine } from "../actors/notifier.ts";
import { AlertBook } from "../lib/alerts.ts";
import { getLog } from "../lib/log.ts";
import { type Daemon, startDaemon } from "./_child_process.ts";
import { quietLogs, waitFor } from "./_helpers.ts";

const ALERTMANAGER = Deno.env.get("TROUPE_ALERTMANAGER_BIN") ?? "/usr/bin/prometheus-alertmanager";

const CONFIG = `route:
  receiver: "null"
  group_wait: 1s
receivers:
  - name: "null"
`;

/** Starts Alertmanager on a free loopback port and waits for `/-/ready` (30 s). */
async function startAlertmanager(dir: string): Promise<Daemon> {
  const exists = await Deno.stat(ALERTMANAGER).then(() => true, () => false);
  if (!exists) {
    throw new Error(
      `Alertmanager not found at "${ALERTMANAGER}": install the Debian package prometheus-alertmanager (apt-get install -y prometheus-alertmanager)`,
    );
  }
  const config = `${dir}/alertmanager.yml`;
  await Deno.writeTextFile(config, CONFIG);
  return await startDaemon("Alertmanager", ALERTMANAGER, (port) => [
    `--config.file=${config}`,
    `--storage.path=${dir}/data`,
    `--web.listen-address=127.0.0.1:${port}`,
    "--cluster.listen-address=",
  ]);
}

interface GettableAlert {
  labels: Record<string, string>;
  annotations: Record<string, string>;
  startsAt: string;
  endsAt: string;
  fingerprint: string;
  status: { state: string };
}

async function alertsNamed(url: string, name: string): Promise<GettableAlert[]> {
  const filter = encodeURIComponent(`alertname="${name}"`);
  const res = await fetch(`${url}/api/v2/alerts?active=true&filter=${filter}`);
  assert.equal(res.status, 200);
  return await res.json();
}

Deno.test("notifierMachine posts firing and resolved alerts to a real Alertmanager", async () => {
  await quietLogs();
  const dir = await Deno.makeTempDir({ prefix: "troupe_alertmanager_" });
  let am: Daemon | undefined;
  let actor: ReturnType<typeof createActor<typeof notifierMachine>> | undefined;
  try {
    am = await startAlertmanager(dir);
    const book = new AlertBook();
    actor = createActor(notifierMachine, {
      input: {
        book,
        alertmanagerUrl: am.url,
        intervalMs: 60_000,
        pollMs: 50,
        backoff: { initialMs: 50, maxMs: 1000 },
        externalUrl: "http://127.0.0.1:8080",
        log: getLog("notifier"),
      },
    }).start();

    const alert = book.open({
      name: "TroupeNotifierTest",
      severity: "critical",
      summary: "Heap grows without bound",
      description: "heap floor rises 1.2 MB/min, R² 0.97",
      labels: { alertname: "TroupeNotifierTest", severity: "critical", kind: "memory" },
      value: 1.2,
      starts_at: new Date().toISOString(),
      suggested_actions: ["take a heap snapshot", "restart the service"],
    });
    book.update("TroupeNotifierTest", { state: "firing" });

    let found: GettableAlert[] = [];
    await waitFor(
      async () => {
        found = await alertsNamed(am!.url, "TroupeNotifierTest");
        return found.length === 1;
      },
      30_000,
      "Alertmanager to list the firing alert",
    );
    const [got] = found;
    assert.deepEqual(got.labels, {
      alertname: "TroupeNotifierTest",
      severity: "critical",
      kind: "memory",
    });
    assert.equal(got.annotations.summary, "Heap grows without bound");
    assert.equal(got.annotations.description, "heap floor rises 1.2 MB/min, R² 0.97");
    assert.equal(
      got.annotations.suggested_actions,
      "take a heap snapshot\nrestart the service",
    );
    assert.equal(Date.parse(got.startsAt), Date.parse(alert.starts_at));
    assert.ok(Date.parse(got.endsAt) > Date.now(), "a firing alert ends in the future");
    assert.ok(["active", "unprocessed"].includes(got.status.state), got.status.state);
    assert.equal(got.fingerprint, fingerprint(got.labels), "the same fingerprint as ours");

    book.resolve("TroupeNotifierTest", new Date().toISOString());
    await waitFor(
      async () => (await alertsNamed(am!.url, "TroupeNotifierTest")).length === 0,
      30_000,
      "Alertmanager to drop the resolved alert from its active alerts",
    );
    await waitFor(
      () => actor!.getSnapshot().context.targets.alertmanager.notified.size === 0,
      10_000,
      "the notifier to forget the resolved alert",
    );
    assert.equal(actor.getSnapshot().context.targets.alertmanager.failed, 0);
  } catch (error) {
    if (am !== undefined) console.error(`Alertmanager output:\n${am.output()}`);
    throw error;
  } finally {
    actor?.stop();
    await am?.stop();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});
