/**
 * @module
 * Alert silences: "do not notify about this alert until then", set from the
 * dashboard or `POST /v1/alerts/silences` and honoured by the notifier.
 *
 * A silence matches an alert when every one of its `matchers` equals the
 * alert's label of that name (`alertname` and `severity` are labels of every
 * alert) and, when it names an `alert_id`, the alert is that one. It is
 * active from `starts_at` until `ends_at`. Silences live in a table of the
 * service's SQLite file, so they survive a restart, and in memory, so the
 * notifier can ask about every alert every second without touching SQLite.
 * Expired silences are kept for {@linkcode EXPIRED_KEEP_MS}, then pruned.
 *
 * @example
 * ```ts
 * const silences = new SilenceStore("data/troupe.db");
 * silences.add({ matchers: { alertname: "CpuSpike" }, alert_id: null, duration_ms: 3_600_000, comment: "deploy" });
 * silences.isSilenced(alert); // true while the hour lasts, for a CpuSpike alert
 * ```
 */
import { mkdirSync } from "node:fs";
import { dirname } from "node:path";
import { DatabaseSync } from "node:sqlite";
import * as v from "valibot";
import type { Alert } from "./alerts.ts";

/** Longest silence: 90 days. */
export const MAX_SILENCE_MS = 90 * 86_400_000;

/** How long an expired silence stays listed: 7 days. */
export const EXPIRED_KEEP_MS = 7 * 86_400_000;

/** Most silences kept, active and expired. */
export const MAX_SILENCES = 1000;

/** One silence as the API shows it. */
export interface Silence {
  id: string;
  /** Labels the alert must carry, like `{ "alertname": "CpuSpike" }`. */
  matchers: Record<string, string>;
  /** One alert only (its `id` on `GET /v1/alerts`), or any alert the matchers match. */
  alert_id: string | null;
  comment: string;
  created_at: string;
  starts_at: string;
  ends_at: string;
}

/** A silence with whether it is still in force. */
export interface SilenceStatus extends Silence {
  state: "active" | "expired";
}

/** Milliseconds of a duration: seconds as a number, or a string like `90s`, `15m`, `1h`, `7d`. */
export function parseSilenceDuration(raw: number | string): number | undefined {
  if (typeof raw === "number") return Number.isFinite(raw) ? Math.round(raw * 1000) : undefined;
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)$/.exec(raw.trim());
  if (m === null) return undefined;
  const unit = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 }[
    m[2] as "ms" | "s" | "m" | "h" | "d"
  ];
  return Math.round(Number(m[1]) * unit);
}

const LabelName = v.pipe(
  v.string("must be a string"),
  v.regex(/^[A-Za-z_][A-Za-z0-9_]*$/, "must be a label name like alertname"),
);

/** The body of `POST /v1/alerts/silences`. */
export const SilenceRequest = v.pipe(
  v.strictObject({
    /** Shorthand for `matchers: { alertname }`. */
    alertname: v.optional(
      v.pipe(v.string("must be a string"), v.nonEmpty("must not be empty"), v.maxLength(200)),
    ),
    /** One alert by its id. */
    alert_id: v.optional(
      v.pipe(v.string("must be a string"), v.nonEmpty("must not be empty"), v.maxLength(200)),
    ),
    /** Labels the alert must carry. */
    matchers: v.optional(
      v.pipe(
        v.record(LabelName, v.pipe(v.string("must be a string"), v.maxLength(1000))),
        v.check((m) => Object.keys(m).length <= 20, "must have at most 20 labels"),
      ),
    ),
    /** Seconds, or like `15m`, `1h`, `7d`; at most 90 days. */
    duration: v.pipe(
      v.union(
        [v.number(), v.string()],
        'must be seconds or a duration like "1h"',
      ),
      v.rawTransform(({ dataset, addIssue, NEVER }) => {
        const ms = parseSilenceDuration(dataset.value);
        if (ms === undefined || ms < 1000 || ms > MAX_SILENCE_MS) {
          addIssue({
            message: `must be from 1 second to 90 days, like 3600 or "1h" (got ${
              JSON.stringify(dataset.value)
            })`,
          });
          return NEVER;
        }
        return ms;
      }),
    ),
    comment: v.optional(v.pipe(v.string("must be a string"), v.maxLength(1000)), ""),
  }),
  v.check(
    (r) =>
      r.alertname !== undefined || r.alert_id !== undefined ||
      Object.keys(r.matchers ?? {}).length > 0,
    "must name an alertname, an alert_id or matchers",
  ),
);
export type SilenceRequest = v.InferOutput<typeof SilenceRequest>;

/** What {@linkcode SilenceStore.add} takes. */
export interface NewSilence {
  matchers: Record<string, string>;
  alert_id: string | null;
  duration_ms: number;
  comment: string;
}

/** The silence a request asks for. */
export function newSilence(r: SilenceRequest): NewSilence {
  const matchers = { ...(r.matchers ?? {}) };
  if (r.alertname !== undefined) matchers.alertname = r.alertname;
  return { matchers, alert_id: r.alert_id ?? null, duration_ms: r.duration, comment: r.comment };
}

/** Whether `s` matches `alert`, active or not. */
export function silenceMatches(
  s: Pick<Silence, "matchers" | "alert_id">,
  alert: Pick<Alert, "id" | "name" | "severity" | "labels">,
): boolean {
  if (s.alert_id !== null && s.alert_id !== alert.id) return false;
  const labels: Record<string, string> = {
    alertname: alert.name,
    severity: alert.severity,
    ...alert.labels,
  };
  return Object.entries(s.matchers).every(([k, value]) => labels[k] === value);
}

interface Row {
  id: string;
  matchers: string;
  alert_id: string | null;
  comment: string;
  created_at: number;
  starts_at: number;
  ends_at: number;
}

interface Held {
  id: string;
  matchers: Record<string, string>;
  alert_id: string | null;
  comment: string;
  created_at: number;
  starts_at: number;
  ends_at: number;
}

const iso = (ms: number) => new Date(ms).toISOString();

function shown(s: Held, now: number): SilenceStatus {
  return {
    id: s.id,
    matchers: { ...s.matchers },
    alert_id: s.alert_id,
    comment: s.comment,
    created_at: iso(s.created_at),
    starts_at: iso(s.starts_at),
    ends_at: iso(s.ends_at),
    state: now < s.ends_at ? "active" : "expired",
  };
}

/** Silences in the `alert_silences` table, held in memory too. */
export class SilenceStore {
  #db: DatabaseSync;
  #open = true;
  #now: () => number;
  #silences = new Map<string, Held>();

  /** Opens (and creates) the table in the SQLite file at `path`. */
  constructor(path: string, options: { now?: () => number } = {}) {
    this.#now = options.now ?? Date.now;
    mkdirSync(dirname(path), { recursive: true });
    this.#db = new DatabaseSync(path);
    this.#db.exec("PRAGMA busy_timeout = 5000");
    this.#db.exec(`CREATE TABLE IF NOT EXISTS alert_silences (
      id TEXT PRIMARY KEY,
      matchers TEXT NOT NULL,
      alert_id TEXT,
      comment TEXT NOT NULL,
      created_at INTEGER NOT NULL,
      starts_at INTEGER NOT NULL,
      ends_at INTEGER NOT NULL
    )`);
    this.#prune();
    const rows = this.#db.prepare("SELECT * FROM alert_silences ORDER BY created_at")
      .all() as unknown as Row[];
    for (const r of rows) this.#silences.set(r.id, { ...r, matchers: JSON.parse(r.matchers) });
  }

  /** Stores a silence starting now; `undefined` when {@linkcode MAX_SILENCES} are kept. */
  add(s: NewSilence): SilenceStatus | undefined {
    const now = this.#now();
    this.#prune();
    if (this.#silences.size >= MAX_SILENCES) return undefined;
    const held: Held = {
      id: crypto.randomUUID(),
      matchers: { ...s.matchers },
      alert_id: s.alert_id,
      comment: s.comment,
      created_at: now,
      starts_at: now,
      ends_at: now + s.duration_ms,
    };
    this.#db.prepare(
      "INSERT INTO alert_silences (id, matchers, alert_id, comment, created_at, starts_at, ends_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
    ).run(
      held.id,
      JSON.stringify(held.matchers),
      held.alert_id,
      held.comment,
      held.created_at,
      held.starts_at,
      held.ends_at,
    );
    this.#silences.set(held.id, held);
    return shown(held, now);
  }

  /** Deletes a silence; `false` when there is none with that id. */
  remove(id: string): boolean {
    if (!this.#silences.has(id)) return false;
    this.#db.prepare("DELETE FROM alert_silences WHERE id = ?").run(id);
    this.#silences.delete(id);
    return true;
  }

  /** Every silence kept: active ones first (soonest end first), then expired (latest first). */
  list(): SilenceStatus[] {
    const now = this.#now();
    const all = [...this.#silences.values()].map((s) => shown(s, now));
    const active = all.filter((s) => s.state === "active")
      .sort((a, b) => a.ends_at.localeCompare(b.ends_at));
    const expired = all.filter((s) => s.state === "expired")
      .sort((a, b) => b.ends_at.localeCompare(a.ends_at));
    return [...active, ...expired];
  }

  /** Ids of the active silences that match `alert`. */
  silencing(alert: Pick<Alert, "id" | "name" | "severity" | "labels">): string[] {
    const now = this.#now();
    const out: string[] = [];
    for (const s of this.#silences.values()) {
      if (s.starts_at <= now && now < s.ends_at && silenceMatches(s, alert)) out.push(s.id);
    }
    return out;
  }

  /** Whether an active silence matches `alert`. */
  isSilenced(alert: Pick<Alert, "id" | "name" | "severity" | "labels">): boolean {
    return this.silencing(alert).length > 0;
  }

  close(): void {
    if (!this.#open) return;
    this.#open = false;
    this.#db.close();
  }

  #prune(): void {
    const before = this.#now() - EXPIRED_KEEP_MS;
    this.#db.prepare("DELETE FROM alert_silences WHERE ends_at < ?").run(before);
    for (const [id, s] of this.#silences) if (s.ends_at < before) this.#silences.delete(id);
  }
}

/** An alert as `GET /v1/alerts` shows it: with the active silences that match it. */
export type ShownAlert = Alert & { silenced: boolean; silenced_by: string[] };

/** Marks each alert with the active silences that match it (none without `silences`). */
export function markSilenced(
  alerts: readonly Alert[],
  silences?: Pick<SilenceStore, "silencing">,
): ShownAlert[] {
  return alerts.map((a) => {
    const by = silences?.silencing(a) ?? [];
    return { ...a, silenced: by.length > 0, silenced_by: by };
  });
}
