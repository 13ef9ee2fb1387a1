/**
 * @module
 * What the monitor knows, over HTTP.
 *
 * | route | answer |
 * |---|---|
 * | `GET /v1/metrics/history` | `{"series":[names]}` |
 * | `GET /v1/metrics/history?name=&from=&to=&step=` | `{"name","from","to","step_ms","points":[{"t","min","mean","max","count"}]}`; `from`/`to` are epoch ms or ISO 8601 (default: the last 15 minutes), `step` in ms or like `1s`, `1m` (default 1 s). Steps of a minute or more also read the 1-minute history kept in SQLite (7 days) |
 * | `GET /v1/alerts` | `{"active":[alerts],"resolved":[alerts]}`; an alert has `id`, `name`, `state`, `severity`, `summary`, `description`, `labels`, `value`, `starts_at`, `ends_at`, `suggested_actions`, and `silenced`, `silenced_by` (the ids of the active silences that match it) |
 * | `GET /v1/alerts/rules` | `{"rules":[{"name","state","severity","summary","for_ms","keep_firing_for_ms","value","description"}]}` |
 * | `POST /v1/metrics/custom` | `{"name","value","labels","type":"gauge|counter"}` → 200 `{"series"}`; 422 past the series bound |
 */
import { Hono } from "hono";
import { CustomMetric, type CustomMetrics } from "../lib/custom_metrics.ts";
import type { RuleStatus } from "../actors/mod.ts";
import type { AlertBook } from "../lib/alerts.ts";
import type { History } from "../lib/history.ts";
import { type HistoryStore, mergeSteps } from "../lib/history_store.ts";
import { markSilenced, type SilenceStore } from "../lib/silences.ts";
import { ApiError } from "./_errors.ts";
import { jsonBody } from "./_json.ts";
import type { AppEnv } from "./_middleware.ts";

/** Most points one history query returns. */
export const MAX_POINTS = 10_000;

/** Parses a time: epoch ms or ISO 8601. */
export function parseTime(raw: string | undefined, fallback: number, name: string): number {
  if (raw === undefined || raw === "") return fallback;
  const n = /^\d+$/.test(raw) ? Number(raw) : Date.parse(raw);
  if (!Number.isFinite(n)) {
    throw new ApiError(
      400,
      "invalid_query",
      `${name} must be epoch milliseconds or ISO 8601, got "${raw}"`,
      {
        details: { parameter: name, value: raw },
      },
    );
  }
  return n;
}

/** Parses a step: ms, or a number with `ms`, `s`, `m` or `h`. */
export function parseStep(raw: string | undefined, fallback: number): number {
  if (raw === undefined || raw === "") return fallback;
  const m = /^(\d+)(ms|s|m|h)?$/.exec(raw);
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[m?.[2] ?? "ms"] ?? 1;
  const ms = m ? Number(m[1]) * unit : NaN;
  if (!(ms >= 1)) {
    throw new ApiError(400, "invalid_query", `step must be like 1000, 1s, 1m or 1h, got "${raw}"`, {
      details: { parameter: "step", value: raw },
    });
  }
  return ms;
}

/** What the monitor routes read. */
export interface MonitorRouteDeps {
  history: History;
  custom: CustomMetrics;
  book: AlertBook;
  /** The rules with their state. */
  rules: () => RuleStatus[];
  /** The downsampled history in SQLite, for ranges past the in-memory 15 minutes. */
  store?: HistoryStore;
  /** Silences, to mark the alerts they match. */
  silences?: SilenceStore;
}

/** History, alert and custom metric routes. */
export function createMonitorRoutes(deps: MonitorRouteDeps): Hono<AppEnv> {
  const { history, custom, book, rules, store, silences } = deps;
  const app = new Hono<AppEnv>();

  app.get("/v1/alerts", (c) =>
    c.json({
      active: markSilenced(book.active(), silences),
      resolved: markSilenced(book.resolved(), silences),
    }));

  app.get("/v1/alerts/rules", (c) => c.json({ rules: rules() }));

  app.get("/v1/metrics/history", (c) => {
    const name = c.req.query("name");
    if (name === undefined || name === "") return c.json({ series: history.names() });
    if (!history.has(name) && !(store?.names().includes(name) ?? false)) {
      throw new ApiError(404, "not_found", `No series "${name}"`);
    }
    const now = Date.now();
    const to = parseTime(c.req.query("to"), now, "to");
    const from = parseTime(c.req.query("from"), to - 15 * 60_000, "from");
    if (from > to) throw new ApiError(400, "invalid_query", `from (${from}) is after to (${to})`);
    const step = parseStep(c.req.query("step"), 1000);
    if ((to - from) / step > MAX_POINTS) {
      throw new ApiError(400, "invalid_query", `At most ${MAX_POINTS} points: use a larger step`, {
        details: { points: Math.ceil((to - from) / step) },
      });
    }
    if (store === undefined || step < 60_000) {
      return c.json({ name, from, to, step_ms: step, points: history.query(name, from, to, step) });
    }
    // Minutes from SQLite, then the minutes not flushed yet from memory.
    const stored = store.query(name, from, to);
    const memoryFrom = stored.length > 0 ? stored[stored.length - 1].t + 60_000 : from;
    const recent = history.query(name, memoryFrom, to, 60_000).filter((p) => p.t >= memoryFrom);
    return c.json({
      name,
      from,
      to,
      step_ms: step,
      points: mergeSteps([...stored, ...recent], from, step),
    });
  });

  app.post("/v1/metrics/custom", async (c) => {
    const metric = await jsonBody(c, CustomMetric, "invalid_metric", "Invalid custom metric");
    const result = custom.record(metric);
    if (!result.ok) throw new ApiError(422, result.error.code, result.error.message);
    return c.json(result.value);
  });

  return app;
}
