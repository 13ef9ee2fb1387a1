/**
 * @module
 * Custom metrics sent by clients (`POST /v1/metrics/custom`, seed 001's
 * CollectCustomMetric): validated, exposed on `/metrics` through
 * prom-client, kept in the history, and bounded in series so a client
 * cannot grow memory or `/metrics` without limit.
 */
import { Counter, Gauge, type Registry } from "prom-client";
import * as v from "valibot";
import type { History } from "./history.ts";

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;
/** Names troupe and prom-client own. */
const RESERVED = /^(troupe_|process_|nodejs_|ALERTS)/;

/** One custom metric sample. */
export const CustomMetric = v.strictObject({
  name: v.pipe(
    v.string("must be a string"),
    v.maxLength(200, "is longer than 200 characters"),
    v.regex(METRIC_NAME, "must be a Prometheus metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)"),
    v.check((n) => !RESERVED.test(n), "must not start with troupe_, process_, nodejs_ or ALERTS"),
  ),
  value: v.pipe(v.number("must be a number"), v.finite("must be finite")),
  labels: v.optional(
    v.pipe(
      v.record(
        v.pipe(
          v.string(),
          v.maxLength(100, "label name is longer than 100 characters"),
          v.regex(LABEL_NAME, "label names must match [a-zA-Z_][a-zA-Z0-9_]*"),
          v.check((n) => !n.startsWith("__"), "label names must not start with __"),
        ),
        v.pipe(
          v.string("label values must be strings"),
          v.maxLength(200, "label value is longer than 200 characters"),
        ),
      ),
      v.check((l) => Object.keys(l).length <= 10, "at most 10 labels"),
    ),
    {},
  ),
  type: v.optional(v.picklist(["gauge", "counter"], 'must be "gauge" or "counter"'), "gauge"),
});
export type CustomMetric = v.InferOutput<typeof CustomMetric>;

/** Why a valid sample was still refused. */
export type CustomMetricRefusal =
  | { code: "too_many_series"; message: string }
  | { code: "metric_conflict"; message: string };

interface Family {
  type: "gauge" | "counter";
  labelNames: string[];
  metric: Gauge<string> | Counter<string>;
}

/** Registers and updates custom metrics, at most `maxSeries` label sets in all. */
export class CustomMetrics {
  readonly maxSeries: number;
  #registry: Registry;
  #history: History | undefined;
  #families = new Map<string, Family>();
  #series = new Set<string>();

  constructor(registry: Registry, options: { maxSeries?: number; history?: History } = {}) {
    this.#registry = registry;
    this.maxSeries = options.maxSeries ?? 1000;
    this.#history = options.history;
  }

  /** Series (name and label set) known. */
  get seriesCount(): number {
    return this.#series.size;
  }

  /** Applies one sample: sets a gauge, or adds to a counter. */
  record(
    m: CustomMetric,
    now = Date.now(),
  ): { ok: true; value: { series: string } } | { ok: false; error: CustomMetricRefusal } {
    const labelNames = Object.keys(m.labels).sort();
    const key = `${m.name}{${
      labelNames.map((k) => `${k}=${JSON.stringify(m.labels[k])}`).join(",")
    }}`;
    let family = this.#families.get(m.name);
    if (family !== undefined) {
      if (family.type !== m.type) {
        return {
          ok: false,
          error: {
            code: "metric_conflict",
            message: `Metric "${m.name}" is a ${family.type}, not a ${m.type}`,
          },
        };
      }
      if (family.labelNames.join(",") !== labelNames.join(",")) {
        return {
          ok: false,
          error: {
            code: "metric_conflict",
            message: `Metric "${m.name}" has labels [${family.labelNames.join(", ")}], got [${
              labelNames.join(", ")
            }]`,
          },
        };
      }
    }
    if (m.type === "counter" && m.value < 0) {
      return {
        ok: false,
        error: {
          code: "metric_conflict",
          message: `A counter only goes up: ${m.value} is negative`,
        },
      };
    }
    if (!this.#series.has(key) && this.#series.size >= this.maxSeries) {
      return {
        ok: false,
        error: {
          code: "too_many_series",
          message: `At most ${this.maxSeries} custom series; "${key}" would be one more`,
        },
      };
    }
    if (family === undefined) {
      const options = {
        name: m.name,
        help: `Custom metric ${m.name}`,
        labelNames,
        registers: [this.#registry],
      };
      family = {
        type: m.type,
        labelNames,
        metric: m.type === "gauge" ? new Gauge(options) : new Counter(options),
      };
      this.#families.set(m.name, family);
    }
    if (family.metric instanceof Gauge) family.metric.set(m.labels, m.value);
    else family.metric.inc(m.labels, m.value);
    this.#series.add(key);
    try {
      this.#history?.record(`custom:${key}`, now, m.value);
    } catch {
      // A full history keeps the metric on /metrics; only its past is not kept.
    }
    return { ok: true, value: { series: key } };
  }
}
