/**
 * @module
 * The one {@linkcode Config} schema, and loading it from a YAML or JSON file.
 * The doc comments on its fields are the configuration reference.
 *
 * Keys are snake_case. Every field has a default, so an empty file, or no
 * file at all, gives a complete configuration; a `null` value (an empty YAML
 * section whose children are commented out) also means "the default".
 * Unknown keys are errors, so a typo never passes silently.
 *
 * Sources, strongest first: command-line flag, environment variable,
 * configuration file, default. The command line (see `lib/cli.ts`) turns flags
 * and environment variables into overrides in the file's raw shape;
 * {@linkcode loadConfig} merges them over the file before validating, so an
 * override is checked exactly like a value from the file.
 *
 * @example troupe.yaml
 * ```yaml
 * server:
 *   port: 9000
 * log_level: debug
 * pipeline:
 *   batch_size: 500
 *   stages:
 *     validate: { max_workers: 8 }
 * ```
 */
import { readFile } from "node:fs/promises";
import * as v from "valibot";
import { parse as parseYaml } from "yaml";
import { FaultPlan } from "./faults.ts";

/** Longest delay `setTimeout` honours; a longer one fires at once. */
const MAX_TIMER_MS = 2_147_483_647;

/** A sanity bound for the stages without a requirement of their own. */
const MAX_STAGE_WORKERS = 1_000;

function integer(defaultValue: number, min: number, max: number = Number.MAX_SAFE_INTEGER) {
  return v.nullish(
    v.pipe(
      v.number("must be a number"),
      v.safeInteger("must be a whole number"),
      v.minValue(min, `must be at least ${min}`),
      v.maxValue(max, `must be at most ${max}`),
    ),
    defaultValue,
  );
}

function milliseconds(defaultValue: number, min: number) {
  return integer(defaultValue, min, MAX_TIMER_MS);
}

function fraction(defaultValue: number) {
  return v.nullish(
    v.pipe(
      v.number("must be a number"),
      v.minValue(0, "must be at least 0"),
      v.maxValue(1, "must be at most 1"),
    ),
    defaultValue,
  );
}

function text(defaultValue: string) {
  return v.nullish(
    v.pipe(v.string("must be a string"), v.nonEmpty("must not be empty")),
    defaultValue,
  );
}

/** Worker pool and mailbox settings of one stage. */
function stage(
  defaults: { min_workers: number; max_workers: number; mailbox_capacity: number },
  maxWorkers: number,
) {
  return v.nullish(
    v.pipe(
      v.strictObject({
        /**
         * Workers kept even when the stage is idle. At least 1; when not
         * given, the default but no more than `max_workers`.
         */
        min_workers: v.nullish(integer(defaults.min_workers, 1, maxWorkers), null),
        /** Workers the autoscaler may grow the stage to. */
        max_workers: integer(defaults.max_workers, 1, maxWorkers),
        /**
         * Records the stage's bounded mailbox holds before upstream waits;
         * when the first stage's mailbox stays full, ingest answers 429/503.
         */
        mailbox_capacity: integer(defaults.mailbox_capacity, 1),
      }, "must be a mapping"),
      v.transform(({ min_workers, ...rest }) => ({
        min_workers: min_workers ?? Math.min(defaults.min_workers, rest.max_workers),
        ...rest,
      })),
      v.forward(
        v.partialCheck(
          [["min_workers"], ["max_workers"]],
          (s) => s.min_workers <= s.max_workers,
          (issue) =>
            `must not be greater than max_workers, which is ${
              (issue.input as { max_workers: number }).max_workers
            }`,
        ),
        ["min_workers"],
      ),
    ),
    {},
  );
}

/** A duration: ms as a number, or a string like `500ms`, `1s`, `2m`, `1h`. */
function duration(defaultValue: number) {
  return v.nullish(
    v.pipe(
      v.union([v.number(), v.string()], "must be ms or a duration like 1s, 2m, 1h"),
      v.rawTransform(({ dataset, addIssue, NEVER }) => {
        const ms = parseDuration(dataset.value);
        if (ms === undefined) {
          addIssue({ message: "must be ms or a duration like 1s, 2m, 1h" });
          return NEVER;
        }
        return ms;
      }),
    ),
    defaultValue,
  );
}

/** Milliseconds of `500`, `"500ms"`, `"1s"`, `"2m"`, `"1h"`; `undefined` otherwise. */
export function parseDuration(raw: number | string): number | undefined {
  if (typeof raw === "number") return Number.isSafeInteger(raw) && raw >= 0 ? raw : undefined;
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)$/.exec(raw.trim());
  if (m === null) return undefined;
  const ms = Number(m[1]) *
    { ms: 1, s: 1_000, m: 60_000, h: 3_600_000 }[m[2] as "ms" | "s" | "m" | "h"];
  return Number.isSafeInteger(Math.round(ms)) ? Math.round(ms) : undefined;
}

/** One custom threshold rule (`alerts.rules[]`). */
export const AlertRuleConfig = v.strictObject({
  /** Alert name, like `IngestStalled`. */
  name: v.pipe(
    v.string("must be a string"),
    v.regex(/^[A-Za-z_][A-Za-z0-9_]*$/, "must be a name like IngestStalled"),
  ),
  /** A series of the history, e.g. `troupe_records_total` or `rss_bytes`. */
  metric: v.pipe(v.string("must be a string"), v.nonEmpty("must not be empty")),
  /** Labels of the series, e.g. `{ outcome: accepted }`. @default {} */
  labels: v.nullish(v.record(v.string(), v.string()), {}),
  /** `value` (latest), `mean`, `rate` (per second) or `increase` over the window. @default "value" */
  function: v.nullish(
    v.picklist(["value", "mean", "rate", "increase"], "must be value, mean, rate or increase"),
    "value",
  ),
  /** Window of `mean`, `rate` and `increase`. @default 60000 */
  window: duration(60_000),
  /** Comparison. */
  op: v.picklist([">", ">=", "<", "<="], 'must be ">", ">=", "<" or "<="'),
  threshold: v.pipe(v.number("must be a number"), v.finite("must be finite")),
  /** Where the alert clears (hysteresis); defaults to the threshold. @default null */
  resolve_threshold: v.nullish(
    v.pipe(v.number("must be a number"), v.finite("must be finite")),
    null,
  ),
  /** How long the condition must hold before firing. @default 0 */
  for: duration(0),
  /** How long a fired alert keeps firing after the condition cleared. @default 0 */
  keep_firing_for: duration(0),
  /** @default "warning" */
  severity: v.nullish(
    v.picklist(["info", "warning", "critical"], "must be info, warning or critical"),
    "warning",
  ),
  summary: v.nullish(v.string("must be a string"), ""),
  /** @default [] */
  suggested_actions: v.nullish(v.array(v.string("must be a string")), []),
});
export type AlertRuleConfig = v.InferOutput<typeof AlertRuleConfig>;

/**
 * The troupe configuration. Parse it with {@linkcode parseConfig}, or load a
 * file with {@linkcode loadConfig}; both fill in every default.
 */
export const Config = v.strictObject({
  /** The HTTP server. */
  server: v.nullish(
    v.strictObject({
      /**
       * Address to listen on. Loopback by default; use `0.0.0.0` to accept
       * connections from other machines.
       * @default "127.0.0.1"
       */
      host: text("127.0.0.1"),
      /**
       * TCP port to listen on; `0` picks a free port.
       * @default 8080
       */
      port: integer(8080, 0, 65_535),
      /**
       * How long a graceful shutdown may take: readiness drops, the server
       * stops accepting, in-flight batches commit. Past it, troupe exits.
       * @default 5000
       */
      shutdown_timeout_ms: milliseconds(5_000, 0),
    }, "must be a mapping"),
    {},
  ),
  /**
   * Directory that holds the SQLite file; created if missing.
   * @default "./data"
   */
  data: text("./data"),
  /**
   * Print a one-line status (throughput, queue depths, workers) every second.
   * @default false
   */
  status: v.nullish(v.boolean("must be true or false"), false),
  /**
   * Least severe log level written.
   * @default "info"
   */
  log_level: v.nullish(
    v.picklist(
      ["debug", "info", "warning", "error"],
      'must be one of "debug", "info", "warning", "error"',
    ),
    "info",
  ),
  /** Limits on what a client may send. */
  limits: v.nullish(
    v.strictObject({
      /**
       * Largest request body accepted, in bytes; a larger one gets 413.
       * @default 10485760
       */
      max_body_bytes: integer(10_485_760, 1),
      /**
       * Most records accepted in one request.
       * @default 10000
       */
      max_records_per_request: integer(10_000, 1),
      /**
       * Longest string allowed anywhere in a record, in UTF-16 code units.
       * @default 65536
       */
      max_string_length: integer(65_536, 1),
      /**
       * Deepest nesting allowed inside a record's `metadata`.
       * @default 32
       */
      max_depth: integer(32, 1),
    }, "must be a mapping"),
    {},
  ),
  /** The stages records go through: validate, transform, aggregate, store. */
  pipeline: v.nullish(
    v.strictObject({
      /**
       * Records per batch passed between stages. Batches amortise the cost of
       * an actor message over many records.
       * @default 1000
       */
      batch_size: integer(1_000, 1, 100_000),
      /**
       * Attempts at a batch before it is split in halves to isolate a record
       * that keeps failing it (a poison record), which then goes to the
       * failed store alone.
       * @default 3
       */
      max_attempts: integer(3, 1, 100),
      /** Worker pool and mailbox of each stage. */
      stages: v.nullish(
        v.strictObject({
          /**
           * Validation workers; at most 10 (seed requirement).
           * @default { min_workers: 1, max_workers: 10, mailbox_capacity: 20000 }
           */
          validate: stage({ min_workers: 1, max_workers: 10, mailbox_capacity: 20_000 }, 10),
          /**
           * Transform workers (anomaly scoring).
           * @default { min_workers: 1, max_workers: 4, mailbox_capacity: 20000 }
           */
          transform: stage(
            { min_workers: 1, max_workers: 4, mailbox_capacity: 20_000 },
            MAX_STAGE_WORKERS,
          ),
          /**
           * Aggregators; one keeps per-key sums in a single place.
           * @default { min_workers: 1, max_workers: 1, mailbox_capacity: 20000 }
           */
          aggregate: stage(
            { min_workers: 1, max_workers: 1, mailbox_capacity: 20_000 },
            MAX_STAGE_WORKERS,
          ),
          /**
           * Storage connections; at most 5 (seed requirement). Two by
           * default so that one commit is already waiting at the writer
           * while the other is written: with one, the SQLite thread sat
           * idle between commits for the answer's round trip and the next
           * hand-off (docs/PERFORMANCE.md, "What changed in this round").
           * @default { min_workers: 2, max_workers: 5, mailbox_capacity: 20000 }
           */
          store: stage({ min_workers: 2, max_workers: 5, mailbox_capacity: 20_000 }, 5),
        }, "must be a mapping"),
        {},
      ),
    }, "must be a mapping"),
    {},
  ),
  /** How worker pools grow and shrink between `min_workers` and `max_workers`. */
  autoscale: v.nullish(
    v.pipe(
      v.strictObject({
        /**
         * How often each pool's mailbox is sampled.
         * @default 250
         */
        interval_ms: milliseconds(250, 1),
        /**
         * Fill of the mailbox, as a fraction of its capacity, above which a
         * pool adds a worker.
         * @default 0.5
         */
        high_watermark: fraction(0.5),
        /**
         * Fill below which a pool removes a worker. Below `high_watermark`.
         * @default 0.1
         */
        low_watermark: fraction(0.1),
        /**
         * Least time between two changes to the same pool, so it does not
         * flap.
         * @default 2000
         */
        cooldown_ms: milliseconds(2_000, 0),
      }, "must be a mapping"),
      v.forward(
        v.partialCheck(
          [["low_watermark"], ["high_watermark"]],
          (a) => a.low_watermark < a.high_watermark,
          (issue) =>
            `must be below high_watermark, which is ${
              (issue.input as { high_watermark: number }).high_watermark
            }`,
        ),
        ["low_watermark"],
      ),
    ),
    {},
  ),
  /** Restart intensity and backoff of supervised children. */
  supervisor: v.nullish(
    v.pipe(
      v.strictObject({
        /**
         * Restarts of one child allowed within `within_ms`; one more and the
         * supervisor gives up and fails to its own parent.
         * @default 5
         */
        max_restarts: integer(5, 0),
        /**
         * The window `max_restarts` is counted over.
         * @default 10000
         */
        within_ms: milliseconds(10_000, 1),
        /**
         * Delay before the first restart; it doubles after each, up to
         * `backoff_max_ms`.
         * @default 50
         */
        backoff_initial_ms: milliseconds(50, 0),
        /**
         * Longest delay between restarts.
         * @default 5000
         */
        backoff_max_ms: milliseconds(5_000, 0),
      }, "must be a mapping"),
      v.forward(
        v.partialCheck(
          [["backoff_initial_ms"], ["backoff_max_ms"]],
          (s) => s.backoff_initial_ms <= s.backoff_max_ms,
          (issue) =>
            `must not be greater than backoff_max_ms, which is ${
              (issue.input as { backoff_max_ms: number }).backoff_max_ms
            }`,
        ),
        ["backoff_initial_ms"],
      ),
    ),
    {},
  ),
  /** Where records are stored: SQLite in `data` by default, or PostgreSQL with `url`. */
  storage: v.nullish(
    v.strictObject({
      /**
       * PostgreSQL to store records, aggregates and failed records in,
       * instead of the SQLite file in `data`, such as
       * `postgres://troupe:secret@127.0.0.1:5432/troupe` (`postgresql://`
       * too; what the URL leaves out comes from the `PG*` environment
       * variables). Several instances may share one database: records stay
       * idempotent by id across them. The schema (`troupe`) is created on
       * start. Also `TROUPE_STORE`. Passwords are masked in logs and errors.
       * `synchronous` and `worker` apply to SQLite only.
       * @default null
       */
      url: v.nullish(
        v.pipe(
          v.string("must be a string"),
          v.regex(/^postgres(ql)?:\/\/\S+$/i, "must be a postgres:// or postgresql:// URL"),
          v.check((url) => URL.canParse(url), "must be a valid URL"),
        ),
        null,
      ),
      /**
       * SQLite `PRAGMA synchronous` in WAL mode. `full` syncs every commit, so
       * an acknowledged record survives a power cut; `normal` may lose the
       * last commits on power loss (never on a process crash) and is faster.
       * @default "full"
       */
      synchronous: v.nullish(v.picklist(["full", "normal"], 'must be "full" or "normal"'), "full"),
      /**
       * Run the SQLite writes on a Worker thread (one per data file, shared
       * by the storage connections), so commits use the second core while
       * the main thread serves HTTP; the answer still waits for the commit.
       * On 2 cores this took 13 % to 80 % more records/s end to end, for
       * 30 to 110 MB more memory (docs/PERFORMANCE.md); `false` keeps everything on one thread.
       * @default true
       */
      worker: v.nullish(v.boolean("must be true or false"), true),
      /**
       * Milliseconds a storage connection may sit idle before it pings
       * storage, so `/readyz` notices storage going away (and coming back)
       * without waiting for the next commit.
       * @default 2000
       */
      idle_ping_ms: integer(2_000, 50, 3_600_000),
    }, "must be a mapping"),
    {},
  ),
  /**
   * Queue mode, to scale out over several troupe processes: ingest appends
   * each request's records to Redis Streams and answers 202 once Redis has
   * them; consumer actors in every instance read them in one consumer group
   * and commit them through the pipeline (see `lib/queue.ts` and
   * `actors/queue_supervisor.ts`). Off without `url`.
   */
  queue: v.nullish(
    v.strictObject({
      /**
       * Redis to use, such as `redis://127.0.0.1:6379` or
       * `redis://:password@host:6379/0` (`rediss://` for TLS). Also
       * `TROUPE_QUEUE`. Passwords are masked in logs.
       * @default null
       */
      url: v.nullish(
        v.pipe(
          v.string("must be a string"),
          v.regex(/^rediss?:\/\/\S+$/, "must be a redis:// or rediss:// URL"),
        ),
        null,
      ),
      /**
       * Streams the records are spread over by a hash of `user_id` (one
       * user's records stay in one stream, in order). Every instance must
       * use the same number; changing it while entries wait reorders users.
       * @default 8
       */
      partitions: integer(8, 1, 1024),
      /**
       * Stream keys are `<stream_prefix>:<partition>`.
       * @default "troupe:records"
       */
      stream_prefix: text("troupe:records"),
      /**
       * Consumer group shared by every instance.
       * @default "troupe"
       */
      group: text("troupe"),
      /**
       * This instance's consumer name in the group; unique per process.
       * @default "<hostname>-<pid>"
       */
      consumer: v.nullish(
        v.pipe(v.string("must be a string"), v.nonEmpty("must not be empty")),
        null,
      ),
      /**
       * How long one `XREADGROUP` waits for entries. A graceful shutdown
       * waits for reads in progress, so keep it well below
       * `server.shutdown_timeout_ms`.
       * @default 1000
       */
      block_ms: integer(1_000, 1, 60_000),
      /**
       * Entries one consumer reads (or reclaims) at a time.
       * @default 20
       */
      batch_count: integer(20, 1, 10_000),
      /**
       * An entry delivered but not acknowledged for this long belongs to a
       * consumer taken for dead: another consumer takes it over
       * (`XAUTOCLAIM`). Consumers keep the entries they work on fresh, so a
       * slow commit is not taken over.
       * @default 10000
       */
      claim_idle_ms: milliseconds(10_000, 100),
      /**
       * Deliveries of one entry before it is given up: past it the entry's
       * records go to the failed store with stage `queue`, and the entry is
       * acknowledged.
       * @default 5
       */
      max_deliveries: integer(5, 1, 1_000),
    }, "must be a mapping"),
    {},
  ),
  /** The HTTP ingest endpoint. */
  ingest: v.nullish(
    v.strictObject({
      /**
       * How long a request waits for room in the first stage's mailbox
       * before it is answered 429 (or 503 when the pipeline is down) with
       * `Retry-After`.
       * @default 1000
       */
      max_wait_ms: milliseconds(1_000, 0),
      /**
       * Ingest requests handled at once. More are answered 429 with
       * `Retry-After` before their body is read, so bodies waiting to be
       * parsed cannot grow memory without bound.
       * @default 64
       */
      max_concurrent_requests: integer(64, 1, 100_000),
      /**
       * Records in the pipeline (every stage's mailbox and workers) above
       * which a request waits, its body unread, until commits make room;
       * after `max_wait_ms` it is answered 429. Bounds the records parsed
       * ahead of the store, and with them the heap, whatever the number of
       * clients. A request is always let in when the pipeline is empty.
       * @default 8000
       */
      max_pipeline_records: integer(8_000, 1),
    }, "must be a mapping"),
    {},
  ),
  /**
   * `Idempotency-Key` on `POST /v1/records`: the same key with the same body
   * gets the first answer again; with another body, 422. Kept in memory.
   */
  idempotency: v.nullish(
    v.strictObject({
      /**
       * How long a key's answer is remembered, from when the key was first
       * seen.
       * @default 3600000
       */
      window_ms: milliseconds(3_600_000, 1),
      /**
       * Most keys remembered at once; past it the oldest is forgotten.
       * @default 10000
       */
      max_keys: integer(10_000, 1),
      /**
       * Most bytes of keys and remembered answers; past it the oldest keys
       * are forgotten, and a larger answer is not remembered.
       * @default 67108864
       */
      max_bytes: integer(67_108_864, 1),
    }, "must be a mapping"),
    {},
  ),
  /** Who may call the API. */
  auth: v.nullish(
    v.strictObject({
      /**
       * When set, every `/v1/*` route needs `Authorization: Bearer <token>`
       * (compared in constant time), and the admin routes exist. Also
       * `TROUPE_TOKEN`. At least 16 characters.
       * @default null
       */
      token: v.nullish(
        v.pipe(v.string("must be a string"), v.minLength(16, "must be at least 16 characters")),
        null,
      ),
      /**
       * Also require the token on `/metrics`.
       * @default false
       */
      protect_metrics: v.nullish(v.boolean("must be true or false"), false),
    }, "must be a mapping"),
    {},
  ),
  /** The monitor: the collector's sampling of the process and the pipeline. */
  monitor: v.nullish(
    v.strictObject({
      /**
       * Run the monitor supervisor (collector and alert rules).
       * @default true
       */
      enabled: v.nullish(v.boolean("must be true or false"), true),
      /**
       * Sampling period of the collector, 1 to 5 s.
       * @default 1000
       */
      interval_ms: integer(1_000, 1_000, 5_000),
      /**
       * Days of downsampled history (1-minute min/mean/max) kept in SQLite.
       * @default 7
       */
      retention_days: integer(7, 1, 3650),
    }, "must be a mapping"),
    {},
  ),
  /** Alert rules and where their alerts go. */
  alerts: v.nullish(
    v.strictObject({
      /**
       * How often every rule is evaluated: ms, or a duration like `1s`.
       * @default 1000
       */
      evaluation_interval: duration(1_000),
      /**
       * Alertmanager to notify (`POST /api/v2/alerts`), e.g. `http://127.0.0.1:9093`.
       * @default null
       */
      alertmanager_url: v.nullish(
        v.pipe(v.string("must be a string"), v.url("must be a URL")),
        null,
      ),
      /**
       * A webhook that receives Alertmanager's webhook v4 payload.
       * @default null
       */
      webhook_url: v.nullish(v.pipe(v.string("must be a string"), v.url("must be a URL")), null),
      /**
       * How often firing alerts are sent again.
       * @default 30000
       */
      resend_interval: duration(30_000),
      /** The built-in memory leak rule. */
      memory_leak: v.nullish(
        v.strictObject({
          /**
           * Window the heap floor is fitted over.
           * @default 600000 (10 min)
           */
          window: duration(600_000),
          /**
           * Bucket whose lowest heap sample is its floor.
           * @default 30000
           */
          bucket: duration(30_000),
          /**
           * Growth of the floor over the window that counts, as a fraction.
           * @default 0.1
           */
          min_growth: v.nullish(
            v.pipe(v.number("must be a number"), v.minValue(0, "must be at least 0")),
            0.1,
          ),
          /**
           * How long the leak must be seen before firing.
           * @default 60000
           */
          for: duration(60_000),
        }, "must be a mapping"),
        {},
      ),
      /** Threshold rules on any series of `GET /v1/metrics/history`. @default [] */
      rules: v.nullish(v.array(AlertRuleConfig, "must be a list"), []),
    }, "must be a mapping"),
    {},
  ),
  /** The `process` command (file mode). */
  process: v.nullish(
    v.strictObject({
      /**
       * Records per batch in file mode, in place of `pipeline.batch_size`:
       * no request waits for a batch there, so larger ones cost less per
       * record (each batch is a few actor messages per stage). 4000 ran
       * 369k to 372k records/s on a 1M-record file with two shards, 1000
       * ran 294k to 364k (docs/PERFORMANCE.md, "Process mode").
       * @default 4000
       */
      batch_size: integer(4_000, 1, 100_000),
      /**
       * Worker threads (shards) the records of a file are split over, by
       * record id (see `lib/process_shards.ts`); 1 keeps the whole run on
       * one thread. `null` picks: one shard per 16 MiB of input, at most
       * one per CPU and at most 4. Also `--shards N`.
       * @default null
       */
      shards: v.nullish(
        v.pipe(
          v.number("must be a number"),
          v.safeInteger("must be a whole number"),
          v.minValue(1, "must be at least 1"),
          v.maxValue(64, "must be at most 64"),
        ),
        null,
      ),
    }, "must be a mapping"),
    {},
  ),
  /**
   * Fault injection for tests and drills; off unless set. Also
   * `TROUPE_FAULTS` (JSON). See `lib/faults.ts`.
   * @default {}
   */
  faults: v.nullish(FaultPlan, {}),
}, "must be a mapping");

/** A complete configuration: every field present. */
export type Config = v.InferOutput<typeof Config>;

/** A configuration as written in a file: every field optional, snake_case keys. */
export type ConfigInput = v.InferInput<typeof Config>;

/**
 * Values laid over the file before validation, in the file's raw shape, such
 * as `{ server: { port: 9000 } }`. `undefined` values are skipped.
 */
export type ConfigOverrides = ConfigInput | Record<string, unknown>;

/** One problem with a configuration. */
export type ConfigError = {
  /** Dotted path of the field, such as `"server.port"`; `""` for the whole file. */
  path: string;
  /** What is wrong, quoting the value, such as `must be at most 10 (got 12)`. */
  message: string;
};

/** The outcome of parsing or loading a configuration. */
export type ConfigResult = { ok: true; value: Config } | { ok: false; error: ConfigError[] };

/** Returns a fresh configuration holding every default. */
export function defaultConfig(): Config {
  return v.parse(Config, {});
}

/**
 * Validates a raw configuration (as parsed from YAML or JSON) and fills in
 * the defaults. `undefined` and `null` stand for an empty file. Never throws
 * for any data a parser can produce.
 *
 * @example
 * ```ts
 * const result = parseConfig({ server: { port: 9000 } });
 * if (result.ok) console.log(result.value.server.port, result.value.server.host); // 9000 127.0.0.1
 * ```
 */
export function parseConfig(input: unknown): ConfigResult {
  const result = v.safeParse(Config, input ?? {});
  if (result.success) return { ok: true, value: result.output };
  const errors = result.issues.map(toConfigError);
  const seen = new Set<string>();
  return {
    ok: false,
    error: errors.filter((e) => {
      const key = `${e.path}\0${e.message}`;
      return seen.has(key) ? false : (seen.add(key), true);
    }),
  };
}

/**
 * Parses the text of a configuration file, then validates it. `fileName`
 * picks the syntax (`.json` is JSON, anything else YAML) and is named in a
 * syntax error.
 */
export function parseConfigText(text: string, fileName: string): ConfigResult {
  const raw = parseRaw(text, fileName);
  return raw.ok ? parseConfig(raw.value) : raw;
}

/**
 * Reads the configuration file, if any, lays `overrides` over its raw values
 * and validates the result. Without a file, the overrides are laid over the
 * defaults.
 *
 * @example
 * ```ts
 * const loaded = await loadConfig({ file: "troupe.yaml", overrides: { server: { port: 9000 } } });
 * if (!loaded.ok) console.error(formatConfigErrors("troupe.yaml", loaded.error));
 * ```
 */
export async function loadConfig(
  options: { file?: string; overrides?: ConfigOverrides },
): Promise<ConfigResult> {
  let raw: unknown = {};
  if (options.file !== undefined) {
    let text: string;
    try {
      text = await readFile(options.file, "utf8");
    } catch (error) {
      return failure("", `cannot read "${options.file}": ${describeReadError(error)}`);
    }
    const parsed = parseRaw(text, options.file);
    if (!parsed.ok) return parsed;
    raw = parsed.value ?? {};
  }
  return parseConfig(options.overrides === undefined ? raw : merge(raw, options.overrides));
}

/**
 * Formats configuration errors for a person: one line for one error, an
 * indented list for several.
 *
 * @example
 * ```ts
 * formatConfigErrors("troupe.yaml", [{ path: "server.port", message: 'must be a number (got "abc")' }]);
 * // Invalid configuration in "troupe.yaml": server.port: must be a number (got "abc")
 * ```
 */
export function formatConfigErrors(file: string | undefined, errors: ConfigError[]): string {
  const head = file === undefined ? "Invalid configuration" : `Invalid configuration in "${file}"`;
  const lines = errors.map((e) => (e.path === "" ? e.message : `${e.path}: ${e.message}`));
  if (lines.length === 0) return head;
  if (lines.length === 1) return `${head}: ${lines[0]}`;
  return `${head}:\n${lines.map((line) => `  ${line}`).join("\n")}`;
}

function failure(path: string, message: string): { ok: false; error: ConfigError[] } {
  return { ok: false, error: [{ path, message }] };
}

function parseRaw(
  text: string,
  fileName: string,
): { ok: true; value: unknown } | { ok: false; error: ConfigError[] } {
  const source = text.startsWith("\uFEFF") ? text.slice(1) : text;
  const json = fileName.toLowerCase().endsWith(".json");
  try {
    if (json) return { ok: true, value: source.trim() === "" ? {} : JSON.parse(source) };
    // "error" throws on errors and keeps warnings (such as unknown tags) off the console.
    return { ok: true, value: parseYaml(source, { logLevel: "error" }) ?? {} };
  } catch (error) {
    const reason = error instanceof Error ? error.message.trimEnd() : String(error);
    return failure("", `cannot parse "${fileName}" as ${json ? "JSON" : "YAML"}: ${reason}`);
  }
}

function describeReadError(error: unknown): string {
  const code = (error as { code?: unknown } | null)?.code;
  if (code === "ENOENT") return "no such file";
  if (code === "EACCES") return "permission denied";
  if (code === "EISDIR") return "is a directory";
  return error instanceof Error ? error.message : String(error);
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/**
 * Lays `over` onto `base`. A mapping merges into a mapping key by key; any
 * other override value replaces. An override mapping never replaces a base
 * value that is neither a mapping nor absent, so the file's error still shows.
 */
function merge(base: unknown, over: unknown): unknown {
  if (over === undefined) return base;
  if (!isPlainObject(over)) return over;
  if (base !== undefined && base !== null && !isPlainObject(base)) return base;
  const out: Record<string, unknown> = {};
  const define = (key: string, value: unknown) =>
    // defineProperty: a "__proto__" key stays a plain key, not the prototype.
    Object.defineProperty(out, key, {
      value,
      enumerable: true,
      writable: true,
      configurable: true,
    });
  if (isPlainObject(base)) { for (const key of Object.keys(base)) define(key, base[key]); }
  for (const key of Object.keys(over)) {
    if (over[key] === undefined) continue;
    define(key, merge(Object.hasOwn(out, key) ? out[key] : undefined, over[key]));
  }
  return out;
}

function toConfigError(issue: v.BaseIssue<unknown>): ConfigError {
  const path = v.getDotPath(issue) ?? "";
  const last = issue.path?.at(-1);
  if (issue.type === "strict_object" && issue.expected === "never" && last) {
    if (Array.isArray(last.input)) {
      // valibot takes a list for an object whose keys are indices: report the list itself.
      const parent = issue.path!.slice(0, -1).map((item) => String(item.key)).join(".");
      return { path: parent, message: `${issue.message} (got ${show(last.input)})` };
    }
    return { path, message: unknownKeyMessage(String(last.key), issue.path!) };
  }
  // A forwarded check's input is the whole object; its path ends at the field.
  const got = last ? last.value : issue.input;
  return { path, message: `${issue.message} (got ${show(got)})` };
}

function unknownKeyMessage(key: string, path: readonly { key: unknown }[]): string {
  const known = knownKeys(path.slice(0, -1).map((item) => String(item.key)));
  const near = known
    .map((name) => ({ name, distance: editDistance(key.toLowerCase(), name) }))
    .filter((c) => c.distance <= Math.max(1, Math.floor(c.name.length / 3)))
    .sort((a, b) => a.distance - b.distance)[0];
  if (near) return `unknown key ${show(key)} (did you mean "${near.name}"?)`;
  return `unknown key ${show(key)} (known keys: ${known.join(", ")})`;
}

type SchemaNode = { type: string; wrapped?: SchemaNode; entries?: Record<string, SchemaNode> };

/** The keys the schema allows in the mapping at `path`. */
function knownKeys(path: readonly string[]): string[] {
  const unwrap = (node: SchemaNode | undefined) => {
    while (node && (node.type === "nullish" || node.type === "optional")) node = node.wrapped;
    return node;
  };
  let node: SchemaNode | undefined = Config as unknown as SchemaNode;
  for (const key of path) node = unwrap(unwrap(node)?.entries?.[key]);
  return Object.keys(unwrap(node)?.entries ?? {});
}

function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      current[j] = Math.min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost);
    }
    previous = current;
  }
  return previous[b.length];
}

const SHOW_LIMIT = 60;

/**
 * `text` with the password of every `scheme://user:password@` in it
 * replaced by `***`, for messages and logs.
 *
 * @example
 * ```ts
 * maskPassword("postgres://troupe:s3cret@db:5432/troupe"); // "postgres://troupe:***@db:5432/troupe"
 * ```
 */
export function maskPassword(text: string): string {
  // The user info ends at the last "@" before the host, and a password may hold "@", ":" or
  // (unencoded) "/": mask up to the last "@" of the word, which may mask too much, never too little.
  return text.replace(/([a-z][a-z0-9+.-]*:\/\/[^\s/?#@:]*):\S*@/gi, "$1:***@");
}

/** Renders a value for a message: strings quoted, long values cut. Never throws. */
function show(value: unknown): string {
  const cut = (s: string) => (s.length > SHOW_LIMIT ? `${s.slice(0, SHOW_LIMIT)}…` : s);
  if (typeof value === "string") value = maskPassword(value);
  switch (typeof value) {
    case "string":
      return value.length > SHOW_LIMIT
        ? `${JSON.stringify(value.slice(0, SHOW_LIMIT))}…`
        : JSON.stringify(value);
    case "number":
      return Object.is(value, -0) ? "-0" : String(value);
    case "bigint":
      return `${value}n`;
    case "boolean":
    case "undefined":
      return String(value);
    case "symbol":
      return "a symbol";
    case "function":
      return "a function";
  }
  if (value === null) return "null";
  try {
    const json = JSON.stringify(value);
    if (json !== undefined) return cut(json);
  } catch {
    // A cycle or a bigint inside: fall through to the kind.
  }
  return Array.isArray(value) ? "a list" : "a mapping";
}
