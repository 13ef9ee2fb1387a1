/**
 * @module
 * The notifier: tells Alertmanager and a generic webhook about the alerts
 * in the {@linkcode AlertBook}, the way Prometheus does.
 *
 * - Alertmanager (`POST {url}/api/v2/alerts`): every firing alert, again
 *   every `intervalMs` while it fires (Prometheus's resend delay), each
 *   with `endsAt` four resend intervals ahead so Alertmanager resolves it on
 *   its own if troupe goes away; then once with its real `endsAt` when it
 *   resolves.
 * - Webhook (Alertmanager's webhook v4 payload, one group holding every
 *   alert): on every change (an alert starts firing, one resolves) and
 *   again every `webhookRepeatMs` while anything fires.
 *
 * Pending alerts are never sent. A resolved notification always follows
 * a firing one that reached a target, even when the resolved alert has
 * already left the book. A silenced alert (`silenced`, from the silences
 * set on the dashboard) is not sent as firing while the silence lasts; one
 * that was sent before its silence began is not sent again, but its
 * resolved notification still goes out. The book is polled every
 * `pollMs`, so a change goes out within about a second; the book is only
 * read.
 *
 * Each target is one region of a parallel machine; a failed POST (network
 * error, timeout, non-2xx answer) is logged, counted and retried with
 * exponential backoff and jitter, with the payload rebuilt from the book at
 * each attempt. A failure never crashes the notifier.
 *
 * ```
 * notifier (systemId "notifier")       parallel: one region per target
 * ├── alertmanager   starting ─► off (no URL)
 * │                     └─► idle ─poll, work due─► sending ──fail──► backingOff
 * │                          ▲                       │ done            │ retry.alertmanager
 * │                          └───────────────────────┘ ◄───────────────┘
 * └── webhook        (the same, with retry.webhook)
 *     sending invokes `deliver` (fromPromise: one POST, aborted when the
 *     notifier stops or after `timeoutMs`)
 * ```
 *
 * Events in: none from outside; its own delays and `deliver`'s done/error.
 */
import { enqueueActions, fromPromise, setup } from "xstate";
import type { Logger } from "@logtape/logtape";
import { type Backoff, createBackoff, nextDelay, resetBackoff } from "../lib/backoff.ts";
import type { Alert, AlertBook } from "../lib/alerts.ts";

/** Where notifications go. */
export type NotifyTarget = "alertmanager" | "webhook";

/** Input of the notifier. */
export interface NotifierInput {
  /** The alerts to tell about; only read. */
  book: AlertBook;
  /** Alertmanager's base URL, like `http://127.0.0.1:9093`. @default null (off) */
  alertmanagerUrl?: string | null;
  /** A URL that receives Alertmanager's webhook v4 payload. @default null (off) */
  webhookUrl?: string | null;
  /** How often firing alerts are sent to Alertmanager again, ms (`alerts.resend_interval`). */
  intervalMs: number;
  /**
   * How often the webhook hears again about alerts still firing, ms
   * (Alertmanager's `repeat_interval`).
   * @default 14_400_000 (4 h)
   */
  webhookRepeatMs?: number;
  /** How often the book is looked at for changes, ms. @default min(1000, intervalMs) */
  pollMs?: number;
  /** Time limit of one POST, ms. @default 10_000 */
  timeoutMs?: number;
  /** Retry delays: first and largest, ms. @default { initialMs: 1000, maxMs: 60_000 } */
  backoff?: { initialMs: number; maxMs: number };
  /** troupe's own URL, for `generatorURL` and the webhook's `externalURL`. @default "" */
  externalUrl?: string;
  /** The webhook's `receiver`. @default "troupe" */
  receiver?: string;
  /** @default globalThis.fetch */
  fetch?: typeof fetch;
  /** Wall clock, epoch ms. @default Date.now */
  now?: () => number;
  log: Logger;
  /** Told about every attempt (to count them, e.g. in a prom-client counter). */
  onAttempt?: (target: NotifyTarget, outcome: "sent" | "failed") => void;
  /** Whether an alert is silenced now (not sent as firing). @default () => false */
  silenced?: (alert: Alert) => boolean;
}

/** An alert as it was when sent. */
export type AlertSnapshot = Readonly<Alert>;

/** What one target last heard about one alert. */
export interface Notified {
  alert: AlertSnapshot;
  /** When it was last sent as firing, epoch ms. */
  sentAt: number;
}

/** One POST's worth of alerts for a target. */
export interface Delivery {
  target: NotifyTarget;
  /** When it was planned, epoch ms. */
  at: number;
  firing: AlertSnapshot[];
  resolved: AlertSnapshot[];
}

/** One target's state. */
export interface TargetState {
  url: string | null;
  /** Alerts this target was told are firing, by alert id. */
  notified: ReadonlyMap<string, Notified>;
  backoff: Backoff;
  /** Wait before the next retry, ms. */
  retryMs: number;
  /** Failed attempts in a row. */
  failures: number;
  sent: number;
  failed: number;
}

/** The notifier's context. */
export interface NotifierContext {
  input: NotifierInput;
  pollMs: number;
  targets: Record<NotifyTarget, TargetState>;
}

/** Inputs of {@linkcode deliverAlerts}. */
export interface DeliverInput {
  delivery: Delivery | null;
  url: string;
  body: unknown;
  timeoutMs: number;
  fetch: typeof fetch;
}

const NO_END = "0001-01-01T00:00:00Z";

function snapshot(a: Alert): AlertSnapshot {
  return { ...a, labels: { ...a.labels }, suggested_actions: [...a.suggested_actions] };
}

/**
 * What `notified` must hear now: the firing alerts it has not heard about
 * or not for `resendMs` (all firing ones in `"group"` mode, when anything
 * is due), and every alert it heard firing that no longer fires. Silenced
 * alerts are left out of the firing ones, but still count as firing (no
 * resolved notification while they fire). `null` when nothing is due.
 */
export function planDelivery(
  target: NotifyTarget,
  book: { active(): Alert[]; resolved(): Alert[] },
  notified: ReadonlyMap<string, Notified>,
  now: number,
  resendMs: number,
  mode: "each" | "group",
  silenced: (alert: Alert) => boolean = () => false,
): Delivery | null {
  const all = book.active().filter((a) => a.state === "firing");
  const firing = all.filter((a) => !silenced(a));
  const due = firing.filter((a) => {
    const n = notified.get(a.id);
    return n === undefined || now - n.sentAt >= resendMs;
  });
  const firingIds = new Set(all.map((a) => a.id));
  const resolvedById = new Map(book.resolved().map((a) => [a.id, a]));
  const resolved: AlertSnapshot[] = [];
  for (const [id, n] of notified) {
    if (firingIds.has(id)) continue;
    const done = resolvedById.get(id);
    // Gone from the book (or back to pending): it ended now, as far as anyone can tell.
    resolved.push(
      done !== undefined && done.ends_at !== null
        ? snapshot(done)
        : { ...n.alert, state: "resolved", ends_at: new Date(now).toISOString() },
    );
  }
  if (due.length === 0 && resolved.length === 0) return null;
  return {
    target,
    at: now,
    firing: (mode === "group" ? firing : due).map(snapshot),
    resolved,
  };
}

/** The labels of an alert as sent: empty values dropped, as Prometheus does. */
function sentLabels(a: AlertSnapshot): Record<string, string> {
  return Object.fromEntries(Object.entries(a.labels).filter(([, v]) => v !== ""));
}

function annotations(a: AlertSnapshot): Record<string, string> {
  return {
    summary: a.summary,
    description: a.description,
    suggested_actions: a.suggested_actions.join("\n"),
  };
}

function generatorUrl(externalUrl: string, a: AlertSnapshot): string {
  return externalUrl === ""
    ? ""
    : `${externalUrl.replace(/\/+$/, "")}/v1/alerts?name=${encodeURIComponent(a.name)}`;
}

/** One alert in Alertmanager's `POST /api/v2/alerts` body. */
export interface PostableAlert {
  labels: Record<string, string>;
  annotations: Record<string, string>;
  startsAt: string;
  endsAt?: string;
  generatorURL?: string;
}

/**
 * The body of `POST /api/v2/alerts`: firing alerts end `validForMs` from
 * `delivery.at` unless sent again (Prometheus sends four resend intervals),
 * resolved ones carry their end.
 */
export function alertmanagerBody(
  delivery: Delivery,
  validForMs: number,
  externalUrl = "",
): PostableAlert[] {
  const out = (a: AlertSnapshot, endsAt: string): PostableAlert => {
    const url = generatorUrl(externalUrl, a);
    return {
      labels: sentLabels(a),
      annotations: annotations(a),
      startsAt: a.starts_at,
      endsAt,
      ...(url === "" ? {} : { generatorURL: url }),
    };
  };
  const until = new Date(delivery.at + validForMs).toISOString();
  return [
    ...delivery.firing.map((a) => out(a, until)),
    ...delivery.resolved.map((a) => out(a, a.ends_at ?? new Date(delivery.at).toISOString())),
  ];
}

/**
 * Alertmanager's fingerprint of a label set: FNV-1a 64 over the labels
 * sorted by name, each name and value followed by a 0xff byte, as 16 hex
 * digits (Prometheus's `LabelSet.Fingerprint`).
 */
export function fingerprint(labels: Record<string, string>): string {
  const prime = 1099511628211n;
  const mask = 0xffffffffffffffffn;
  let h = 14695981039346656037n;
  const encoder = new TextEncoder();
  const add = (bytes: Iterable<number>) => {
    for (const b of bytes) h = ((h ^ BigInt(b)) * prime) & mask;
  };
  for (const name of Object.keys(labels).sort()) {
    add(encoder.encode(name));
    add([0xff]);
    add(encoder.encode(labels[name]));
    add([0xff]);
  }
  return h.toString(16).padStart(16, "0");
}

/** Alertmanager's webhook v4 payload. */
export interface WebhookPayload {
  version: "4";
  groupKey: string;
  truncatedAlerts: number;
  status: "firing" | "resolved";
  receiver: string;
  groupLabels: Record<string, string>;
  commonLabels: Record<string, string>;
  commonAnnotations: Record<string, string>;
  externalURL: string;
  alerts: {
    status: "firing" | "resolved";
    labels: Record<string, string>;
    annotations: Record<string, string>;
    startsAt: string;
    endsAt: string;
    generatorURL: string;
    fingerprint: string;
  }[];
}

function common(maps: Record<string, string>[]): Record<string, string> {
  if (maps.length === 0) return {};
  return Object.fromEntries(
    Object.entries(maps[0]).filter(([k, v]) => maps.every((m) => m[k] === v)),
  );
}

/**
 * The webhook v4 payload of a delivery: one group holding all its alerts
 * (Alertmanager's `group_by: []`), `firing` while any alert fires.
 */
export function webhookBody(
  delivery: Delivery,
  receiver = "troupe",
  externalUrl = "",
): WebhookPayload {
  const item = (a: AlertSnapshot, status: "firing" | "resolved") => {
    const labels = sentLabels(a);
    return {
      status,
      labels,
      annotations: annotations(a),
      startsAt: a.starts_at,
      endsAt: status === "firing" ? NO_END : a.ends_at ?? new Date(delivery.at).toISOString(),
      generatorURL: generatorUrl(externalUrl, a),
      fingerprint: fingerprint(labels),
    };
  };
  const alerts = [
    ...delivery.firing.map((a) => item(a, "firing")),
    ...delivery.resolved.map((a) => item(a, "resolved")),
  ];
  return {
    version: "4",
    groupKey: "{}:{}",
    truncatedAlerts: 0,
    status: delivery.firing.length > 0 ? "firing" : "resolved",
    receiver,
    groupLabels: {},
    commonLabels: common(alerts.map((a) => a.labels)),
    commonAnnotations: common(alerts.map((a) => a.annotations)),
    externalURL: externalUrl,
    alerts,
  };
}

/** One POST of a delivery; rejects on a network error, a timeout or a non-2xx answer. */
export const deliverAlerts = fromPromise<Delivery | null, DeliverInput>(
  async ({ input, signal }) => {
    if (input.delivery === null) return null;
    const res = await input.fetch(input.url, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(input.body),
      signal: AbortSignal.any([signal, AbortSignal.timeout(input.timeoutMs)]),
    });
    const text = await res.text().catch(() => "");
    if (!res.ok) {
      throw new Error(
        `POST "${input.url}" answered ${res.status}: ${JSON.stringify(text.slice(0, 200))}`,
      );
    }
    return input.delivery;
  },
);

function targetUrl(target: NotifyTarget, base: string): string {
  return target === "alertmanager" ? `${base.replace(/\/+$/, "")}/api/v2/alerts` : base;
}

function plan(context: NotifierContext, target: NotifyTarget): Delivery | null {
  const { input } = context;
  const now = (input.now ?? Date.now)();
  return target === "alertmanager"
    ? planDelivery(
      target,
      input.book,
      context.targets[target].notified,
      now,
      input.intervalMs,
      "each",
      input.silenced,
    )
    : planDelivery(
      target,
      input.book,
      context.targets[target].notified,
      now,
      input.webhookRepeatMs ?? 14_400_000,
      "group",
      input.silenced,
    );
}

function deliverInput(context: NotifierContext, target: NotifyTarget): DeliverInput {
  const { input } = context;
  const delivery = plan(context, target);
  const url = targetUrl(target, context.targets[target].url ?? "");
  const externalUrl = input.externalUrl ?? "";
  return {
    delivery,
    url,
    body: delivery === null
      ? null
      : target === "alertmanager"
      ? alertmanagerBody(delivery, 4 * input.intervalMs, externalUrl)
      : webhookBody(delivery, input.receiver ?? "troupe", externalUrl),
    timeoutMs: input.timeoutMs ?? 10_000,
    fetch: input.fetch ?? globalThis.fetch,
  };
}

/** Events of the notifier: only those of its `deliver` children. */
export type NotifierEvent =
  | { type: "xstate.done.actor.deliver.alertmanager"; output: Delivery | null }
  | { type: "xstate.done.actor.deliver.webhook"; output: Delivery | null }
  | { type: "xstate.error.actor.deliver.alertmanager"; error: unknown }
  | { type: "xstate.error.actor.deliver.webhook"; error: unknown };

function freshTarget(url: string | null | undefined, b: NotifierInput["backoff"]): TargetState {
  return {
    url: url ?? null,
    notified: new Map(),
    backoff: createBackoff(b?.initialMs ?? 1000, b?.maxMs ?? 60_000, 0.5),
    retryMs: 0,
    failures: 0,
    sent: 0,
    failed: 0,
  };
}

/** The notifier machine. */
export const notifierMachine = setup({
  types: {
    context: {} as NotifierContext,
    input: {} as NotifierInput,
    events: {} as NotifierEvent,
  },
  actors: { deliver: deliverAlerts },
  delays: {
    poll: ({ context }) => context.pollMs,
    "retry.alertmanager": ({ context }) => context.targets.alertmanager.retryMs,
    "retry.webhook": ({ context }) => context.targets.webhook.retryMs,
  },
  guards: {
    enabled: ({ context }, p: { target: NotifyTarget }) => context.targets[p.target].url !== null,
    due: ({ context }, p: { target: NotifyTarget }) => plan(context, p.target) !== null,
  },
  actions: {
    delivered: enqueueActions(
      ({ context, enqueue }, p: { target: NotifyTarget; delivery: Delivery | null }) => {
        const t = context.targets[p.target];
        const { delivery } = p;
        if (t.failures > 0) {
          context.input.log.info("Notified {target} after {failures} failed attempts", {
            target: p.target,
            failures: t.failures,
          });
        }
        const notified = new Map(t.notified);
        if (delivery !== null) {
          for (const a of delivery.firing) notified.set(a.id, { alert: a, sentAt: delivery.at });
          for (const a of delivery.resolved) notified.delete(a.id);
          context.input.onAttempt?.(p.target, "sent");
          context.input.log.debug("Notified {target}: {firing} firing, {resolved} resolved", {
            target: p.target,
            firing: delivery.firing.length,
            resolved: delivery.resolved.length,
          });
        }
        enqueue.assign({
          targets: {
            ...context.targets,
            [p.target]: {
              ...t,
              notified,
              backoff: resetBackoff(t.backoff),
              failures: 0,
              sent: t.sent + (delivery === null ? 0 : 1),
            },
          },
        });
      },
    ),
    failed: enqueueActions(({ context, enqueue }, p: { target: NotifyTarget; error: unknown }) => {
      const t = context.targets[p.target];
      const { delayMs, backoff } = nextDelay(t.backoff);
      const reason = p.error instanceof Error ? p.error.message : String(p.error);
      context.input.onAttempt?.(p.target, "failed");
      context.input.log.warn(
        "Notifying {target} failed (attempt {attempt}): {reason}; retrying in {delayMs} ms",
        { target: p.target, attempt: t.failures + 1, reason, delayMs },
      );
      enqueue.assign({
        targets: {
          ...context.targets,
          [p.target]: {
            ...t,
            backoff,
            retryMs: delayMs,
            failures: t.failures + 1,
            failed: t.failed + 1,
          },
        },
      });
    }),
  },
}).createMachine({
  id: "notifier",
  context: ({ input }) => ({
    input,
    pollMs: input.pollMs ?? Math.min(1000, input.intervalMs),
    targets: {
      alertmanager: freshTarget(input.alertmanagerUrl, input.backoff),
      webhook: freshTarget(input.webhookUrl, input.backoff),
    },
  }),
  type: "parallel",
  states: {
    alertmanager: {
      initial: "starting",
      states: {
        starting: {
          always: [
            { guard: { type: "enabled", params: { target: "alertmanager" } }, target: "idle" },
            { target: "off" },
          ],
        },
        off: {},
        idle: {
          after: {
            poll: [
              { guard: { type: "due", params: { target: "alertmanager" } }, target: "sending" },
              { target: "idle", reenter: true },
            ],
          },
        },
        sending: {
          invoke: {
            id: "deliver.alertmanager",
            src: "deliver",
            input: ({ context }) => deliverInput(context, "alertmanager"),
            onDone: {
              target: "idle",
              actions: {
                type: "delivered",
                params: ({ event }) => ({ target: "alertmanager", delivery: event.output }),
              },
            },
            onError: {
              target: "backingOff",
              actions: {
                type: "failed",
                params: ({ event }) => ({ target: "alertmanager", error: event.error }),
              },
            },
          },
        },
        backingOff: { after: { "retry.alertmanager": "sending" } },
      },
    },
    webhook: {
      initial: "starting",
      states: {
        starting: {
          always: [
            { guard: { type: "enabled", params: { target: "webhook" } }, target: "idle" },
            { target: "off" },
          ],
        },
        off: {},
        idle: {
          after: {
            poll: [
              { guard: { type: "due", params: { target: "webhook" } }, target: "sending" },
              { target: "idle", reenter: true },
            ],
          },
        },
        sending: {
          invoke: {
            id: "deliver.webhook",
            src: "deliver",
            input: ({ context }) => deliverInput(context, "webhook"),
            onDone: {
              target: "idle",
              actions: {
                type: "delivered",
                params: ({ event }) => ({ target: "webhook", delivery: event.output }),
              },
            },
            onError: {
              target: "backingOff",
              actions: {
                type: "failed",
                params: ({ event }) => ({ target: "webhook", error: event.error }),
              },
            },
          },
        },
        backingOff: { after: { "retry.webhook": "sending" } },
      },
    },
  },
});

/** What the notifier has done so far, per target (for tests and status). */
export function notifierStats(
  context: NotifierContext,
): Record<NotifyTarget, { sent: number; failed: number; failures: number; notified: number }> {
  const one = (t: TargetState) => ({
    sent: t.sent,
    failed: t.failed,
    failures: t.failures,
    notified: t.notified.size,
  });
  return { alertmanager: one(context.targets.alertmanager), webhook: one(context.targets.webhook) };
}
