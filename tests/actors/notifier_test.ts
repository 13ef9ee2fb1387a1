import assert from "node:assert/strict";
import { createActor } from "xstate";
import {
  alertmanagerBody,
  fingerprint,
  type NotifierInput,
  notifierMachine,
  planDelivery,
  type WebhookPayload,
} from "../../actors/notifier.ts";
import { join } from "node:path";
import { AlertBook } from "../../lib/alerts.ts";
import { SilenceStore } from "../../lib/silences.ts";
import { getLog } from "../../lib/log.ts";
import { quietLogs, waitFor } from "../_helpers.ts";

/** A real HTTP receiver on loopback that answers `statusOf(n)` to its n-th request (from 1). */
function startReceiver(statusOf: (n: number) => number = () => 200) {
  const received: { path: string; body: unknown }[] = [];
  let requests = 0;
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    async (req) => {
      const body = await req.json();
      const status = statusOf(++requests);
      if (status < 300) received.push({ path: new URL(req.url).pathname, body });
      return new Response(status < 300 ? "" : "boom", { status });
    },
  );
  return {
    url: `http://127.0.0.1:${server.addr.port}`,
    received,
    requests: () => requests,
    close: () => server.shutdown(),
  };
}

function openAlert(book: AlertBook, name: string) {
  return book.open({
    name,
    severity: "warning",
    summary: `${name} summary`,
    description: `${name} description`,
    labels: { alertname: name, severity: "warning", kind: "test" },
    value: 42,
    starts_at: new Date().toISOString(),
    suggested_actions: ["look at the dashboard", "restart"],
  });
}

/** The notifier with short intervals; `polls()` counts how often it looked at the book. */
function startNotifier(overrides: Partial<NotifierInput> & { book: AlertBook }) {
  let polls = 0;
  const actor = createActor(notifierMachine, {
    input: {
      intervalMs: 60_000,
      pollMs: 20,
      backoff: { initialMs: 20, maxMs: 100 },
      log: getLog("notifier"),
      now: () => (polls++, Date.now()),
      ...overrides,
    },
  });
  actor.subscribe({ error: (error) => assert.fail(`notifier crashed: ${error}`) });
  actor.start();
  return { actor, polls: () => polls };
}

function webhooks(received: { body: unknown }[]): WebhookPayload[] {
  return received.map((r) => r.body as WebhookPayload);
}

Deno.test("notifierMachine sends a firing then a resolved webhook v4 payload", async () => {
  await quietLogs();
  const receiver = startReceiver();
  const book = new AlertBook();
  const { actor } = startNotifier({
    book,
    webhookUrl: `${receiver.url}/hook`,
    externalUrl: "http://127.0.0.1:8080",
  });
  try {
    const alert = openAlert(book, "LagHigh");
    book.update("LagHigh", { state: "firing" });
    await waitFor(() => receiver.received.length >= 1, 10_000, "the firing webhook");
    book.resolve("LagHigh", new Date().toISOString());
    await waitFor(() => receiver.received.length >= 2, 10_000, "the resolved webhook");

    const [firing, resolved] = webhooks(receiver.received);
    assert.equal(receiver.received[0].path, "/hook");
    assert.equal(firing.version, "4");
    assert.equal(firing.status, "firing");
    assert.equal(firing.receiver, "troupe");
    assert.equal(firing.externalURL, "http://127.0.0.1:8080");
    assert.equal(typeof firing.groupKey, "string");
    assert.deepEqual(firing.groupLabels, {});
    assert.deepEqual(firing.commonLabels, {
      alertname: "LagHigh",
      severity: "warning",
      kind: "test",
    });
    assert.equal(firing.commonAnnotations.summary, "LagHigh summary");
    assert.equal(firing.alerts.length, 1);
    assert.equal(firing.alerts[0].status, "firing");
    assert.equal(firing.alerts[0].startsAt, alert.starts_at);
    assert.equal(firing.alerts[0].endsAt, "0001-01-01T00:00:00Z");
    assert.deepEqual(firing.alerts[0].annotations, {
      summary: "LagHigh summary",
      description: "LagHigh description",
      suggested_actions: "look at the dashboard\nrestart",
    });
    assert.match(firing.alerts[0].generatorURL, /^http:\/\/127\.0\.0\.1:8080\/v1\/alerts/);
    assert.match(firing.alerts[0].fingerprint, /^[0-9a-f]{16}$/);

    assert.equal(resolved.status, "resolved");
    assert.equal(resolved.alerts.length, 1);
    assert.equal(resolved.alerts[0].status, "resolved");
    assert.equal(resolved.alerts[0].endsAt, alert.ends_at);
    assert.equal(resolved.alerts[0].fingerprint, firing.alerts[0].fingerprint);
  } finally {
    actor.stop();
    await receiver.close();
  }
});

Deno.test("notifierMachine retries a failing webhook until it is delivered", async () => {
  await quietLogs();
  const receiver = startReceiver((n) => (n <= 2 ? 500 : 200));
  const book = new AlertBook();
  const attempts: string[] = [];
  const { actor } = startNotifier({
    book,
    webhookUrl: `${receiver.url}/hook`,
    onAttempt: (target, outcome) => attempts.push(`${target}:${outcome}`),
  });
  try {
    openAlert(book, "CpuSpike");
    book.update("CpuSpike", { state: "firing" });
    await waitFor(
      () => actor.getSnapshot().context.targets.webhook.sent >= 1,
      10_000,
      "the delivered webhook",
    );

    assert.equal(receiver.requests(), 3);
    assert.deepEqual(attempts, ["webhook:failed", "webhook:failed", "webhook:sent"]);
    const [payload] = webhooks(receiver.received);
    assert.equal(payload.status, "firing");
    assert.equal(payload.alerts[0].labels.alertname, "CpuSpike");
    const t = actor.getSnapshot().context.targets.webhook;
    assert.equal(t.failed, 2);
    assert.equal(t.failures, 0, "the backoff starts over after a delivery");
    assert.equal(t.sent, 1);
    assert.ok(actor.getSnapshot().status === "active");
  } finally {
    actor.stop();
    await receiver.close();
  }
});

Deno.test("notifierMachine keeps retrying when the receiver is down", async () => {
  await quietLogs();
  // A port nobody listens on: bind one, then close it.
  const probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (probe.addr as Deno.NetAddr).port;
  probe.close();
  const book = new AlertBook();
  const { actor } = startNotifier({ book, webhookUrl: `http://127.0.0.1:${port}/hook` });
  try {
    openAlert(book, "Down");
    book.update("Down", { state: "firing" });
    await waitFor(
      () => actor.getSnapshot().context.targets.webhook.failed >= 3,
      10_000,
      "three failed attempts",
    );
    assert.equal(actor.getSnapshot().status, "active");
    assert.equal(actor.getSnapshot().context.targets.webhook.notified.size, 0);
  } finally {
    actor.stop();
  }
});

Deno.test("notifierMachine does not send pending alerts", async () => {
  await quietLogs();
  const receiver = startReceiver();
  const book = new AlertBook();
  const { actor, polls } = startNotifier({
    book,
    webhookUrl: `${receiver.url}/hook`,
    alertmanagerUrl: receiver.url,
  });
  try {
    openAlert(book, "Pending");
    const start = polls();
    await waitFor(() => polls() >= start + 20, 10_000, "twenty looks at the book");
    assert.equal(receiver.requests(), 0, "nothing sent for a pending alert");

    openAlert(book, "Firing");
    book.update("Firing", { state: "firing" });
    await waitFor(() => receiver.received.length >= 2, 10_000, "both targets told");
    const more = polls();
    await waitFor(() => polls() >= more + 20, 10_000, "twenty more looks at the book");
    for (const { path, body } of receiver.received) {
      const names = path === "/api/v2/alerts"
        ? (body as { labels: Record<string, string> }[]).map((a) => a.labels.alertname)
        : (body as WebhookPayload).alerts.map((a) => a.labels.alertname);
      assert.deepEqual(names, ["Firing"], path);
    }
    assert.equal(receiver.received.length, 2, "no repeat before the resend interval");
  } finally {
    actor.stop();
    await receiver.close();
  }
});

Deno.test("notifierMachine re-sends firing alerts to Alertmanager and then their end", async () => {
  await quietLogs();
  const receiver = startReceiver();
  const book = new AlertBook();
  const { actor } = startNotifier({ book, alertmanagerUrl: `${receiver.url}/`, intervalMs: 50 });
  try {
    openAlert(book, "LeakSuspected");
    book.update("LeakSuspected", { state: "firing" });
    await waitFor(() => receiver.received.length >= 3, 10_000, "three firing posts");
    const ends = book.resolve("LeakSuspected", new Date().toISOString())!.ends_at;
    await waitFor(
      () =>
        receiver.received.some((r) =>
          (r.body as { endsAt: string }[]).some((a) => a.endsAt === ends)
        ),
      10_000,
      "the resolved post",
    );
    for (const { path, body } of receiver.received) {
      assert.equal(path, "/api/v2/alerts");
      const [a] = body as { labels: Record<string, string>; annotations: Record<string, string> }[];
      assert.equal(a.labels.alertname, "LeakSuspected");
      assert.equal(a.annotations.summary, "LeakSuspected summary");
    }
    await waitFor(
      () => actor.getSnapshot().context.targets.alertmanager.notified.size === 0,
      10_000,
      "the notifier to forget the resolved alert",
    );
  } finally {
    actor.stop();
    await receiver.close();
  }
});

Deno.test("planDelivery sends a resolution for a notified alert gone from the book", () => {
  const book = new AlertBook();
  const alert = openAlert(book, "Gone");
  book.update("Gone", { state: "firing" });
  const first = planDelivery("alertmanager", book, new Map(), 1000, 30_000, "each");
  assert.equal(first?.firing.length, 1);
  const notified = new Map([[alert.id, { alert: first!.firing[0], sentAt: 1000 }]]);
  assert.equal(planDelivery("alertmanager", book, notified, 2000, 30_000, "each"), null);
  book.drop("Gone");
  const second = planDelivery("alertmanager", book, notified, 3000, 30_000, "each");
  assert.equal(second?.resolved.length, 1);
  assert.equal(second?.resolved[0].ends_at, new Date(3000).toISOString());
  const body = alertmanagerBody(second!, 120_000);
  assert.equal(body[0].endsAt, new Date(3000).toISOString());
});

Deno.test("fingerprint matches Prometheus's label set fingerprint", () => {
  // Empty label set: FNV-1a 64 offset basis (Prometheus's emptyLabelSignature).
  assert.equal(fingerprint({}), "cbf29ce484222325");
  assert.equal(fingerprint({ b: "2", a: "1" }), fingerprint({ a: "1", b: "2" }));
  assert.notEqual(fingerprint({ a: "1" }), fingerprint({ a: "2" }));
});

Deno.test("planDelivery leaves silenced alerts out, but still resolves one notified before", () => {
  const book = new AlertBook();
  const loud = openAlert(book, "Loud");
  const quiet = openAlert(book, "Quiet");
  book.update("Loud", { state: "firing" });
  book.update("Quiet", { state: "firing" });
  let silenced = new Set(["Quiet"]);
  const isSilenced = (a: { name: string }) => silenced.has(a.name);

  const first = planDelivery("alertmanager", book, new Map(), 1000, 30_000, "each", isSilenced);
  assert.deepEqual(first?.firing.map((a) => a.name), ["Loud"]);
  const group = planDelivery("webhook", book, new Map(), 1000, 30_000, "group", isSilenced);
  assert.deepEqual(group?.firing.map((a) => a.name), ["Loud"]);
  const notified = new Map([[loud.id, { alert: first!.firing[0], sentAt: 1000 }]]);
  assert.equal(
    planDelivery("alertmanager", book, notified, 2000, 30_000, "each", isSilenced),
    null,
  );

  // Loud is silenced after it was sent: nothing more while it fires ...
  silenced = new Set(["Loud", "Quiet"]);
  assert.equal(
    planDelivery("alertmanager", book, notified, 40_000, 30_000, "each", isSilenced),
    null,
  );
  // ... and its resolution still goes out; Quiet, never sent, never resolves anywhere.
  book.resolve("Loud", new Date(50_000).toISOString());
  book.resolve("Quiet", new Date(50_000).toISOString());
  const last = planDelivery("alertmanager", book, notified, 50_000, 30_000, "each", isSilenced);
  assert.deepEqual(last?.resolved.map((a) => a.name), ["Loud"]);
  assert.deepEqual(last?.firing, []);
  assert.ok(quiet.id !== loud.id);
});

Deno.test("notifierMachine does not send an alert a SilenceStore silences, until the silence is lifted", async () => {
  await quietLogs();
  const dir = await Deno.makeTempDir({ prefix: "troupe_notifier_" });
  const silences = new SilenceStore(join(dir, "troupe.db"));
  const receiver = startReceiver();
  const book = new AlertBook();
  const { actor, polls } = startNotifier({
    book,
    alertmanagerUrl: receiver.url,
    silenced: (a) => silences.isSilenced(a),
  });
  try {
    const silence = silences.add({
      matchers: { alertname: "Quiet" },
      alert_id: null,
      duration_ms: 3_600_000,
      comment: "",
    })!;
    openAlert(book, "Quiet");
    openAlert(book, "Loud");
    book.update("Quiet", { state: "firing" });
    book.update("Loud", { state: "firing" });
    await waitFor(() => receiver.received.length >= 1, 10_000, "the Loud alert");
    const seen = polls();
    await waitFor(() => polls() >= seen + 10, 10_000, "ten more polls");
    const names = () =>
      receiver.received.flatMap((r) =>
        (r.body as { labels: { alertname: string } }[]).map((a) => a.labels.alertname)
      );
    assert.deepEqual(names(), ["Loud"]);

    silences.remove(silence.id);
    await waitFor(() => names().includes("Quiet"), 10_000, "the Quiet alert once unsilenced");
  } finally {
    actor.stop();
    await receiver.close();
    silences.close();
    await Deno.remove(dir, { recursive: true });
  }
});
