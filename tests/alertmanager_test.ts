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
import { freePort } from "./_child_process.ts";
import { quietLogs, waitFor } from "./_helpers.ts";

const ALERTMANAGER = Deno.env.get("TROUPE_ALERTMANAGER_BIN") ?? "/usr/bin/prometheus-alertmanager";

const CONFIG = `route:
  receiver: "null"
  group_wait: 1s
receivers:
  - name: "null"
`;

/** A running Alertmanager. */
interface Alertmanager {
  url: string;
  output(): string;
  stop(): Promise<void>;
}

async function drainInto(stream: ReadableStream<Uint8Array>, chunks: string[]): Promise<void> {
  for await (const text of stream.pipeThrough(new TextDecoderStream())) chunks.push(text);
}

/** Starts Alertmanager on a free loopback port and waits for `/-/ready` (30 s). */
async function startAlertmanager(dir: string, attempt = 1): Promise<Alertmanager> {
  const exists = await Deno.stat(ALERTMANAGER).then(() => true, () => false);
  if (!exists) {
    throw new Error(
      `Alertmanager not found at "${ALERTMANAGER}": install the Debian package prometheus-alertmanager (apt-get install -y prometheus-alertmanager)`,
    );
  }
  const config = `${dir}/alertmanager.yml`;
  await Deno.writeTextFile(config, CONFIG);
  const port = freePort();
  const url = `http://127.0.0.1:${port}`;
  const child = new Deno.Command(ALERTMANAGER, {
    args: [
      `--config.file=${config}`,
      `--storage.path=${dir}/data`,
      `--web.listen-address=127.0.0.1:${port}`,
      "--cluster.listen-address=",
    ],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const chunks: string[] = [];
  const drained = Promise.all([drainInto(child.stdout, chunks), drainInto(child.stderr, chunks)]);
  const output = () => chunks.join("");
  let exited = false;
  const status = child.status.then(async (s) => {
    exited = true;
    await drained;
    return s;
  });
  const stop = async () => {
    if (!exited) child.kill("SIGTERM");
    const timer = setTimeout(() => exited || child.kill("SIGKILL"), 10_000);
    await status;
    clearTimeout(timer);
  };
  const deadline = Date.now() + 30_000;
  while (true) {
    if (exited) {
      const s = await status;
      // The free port may have been taken meanwhile: try another one.
      if (attempt < 3) return startAlertmanager(dir, attempt + 1);
      throw new Error(`Alertmanager exited with code ${s.code} before it was ready:\n${output()}`);
    }
    const ready = await fetch(`${url}/-/ready`).then(async (res) => {
      await res.body?.cancel();
      return res.ok;
    }, () => false);
    if (ready) return { url, output, stop };
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`Alertmanager was not ready on ${url} after 30 s:\n${output()}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
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
  let am: Alertmanager | undefined;
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
