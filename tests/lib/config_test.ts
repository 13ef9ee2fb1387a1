/**
 * @module
 * Tests for `lib/config.ts`: defaults, YAML and JSON files, error paths and
 * messages, overrides, and a property that parsing never throws.
 */
import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import {
  type Config,
  type ConfigError,
  type ConfigResult,
  defaultConfig,
  formatConfigErrors,
  loadConfig,
  parseConfig,
  parseConfigText,
  parseDuration,
} from "../../lib/config.ts";

const DEFAULTS: Config = {
  server: { host: "127.0.0.1", port: 8080, shutdown_timeout_ms: 5000 },
  data: "./data",
  status: false,
  log_level: "info",
  limits: {
    max_body_bytes: 10_485_760,
    max_records_per_request: 10_000,
    max_string_length: 65_536,
    max_depth: 32,
  },
  pipeline: {
    batch_size: 1000,
    max_attempts: 3,
    stages: {
      validate: { min_workers: 1, max_workers: 10, mailbox_capacity: 20_000 },
      transform: { min_workers: 1, max_workers: 4, mailbox_capacity: 20_000 },
      aggregate: { min_workers: 1, max_workers: 1, mailbox_capacity: 20_000 },
      store: { min_workers: 2, max_workers: 5, mailbox_capacity: 20_000 },
    },
  },
  autoscale: { interval_ms: 250, high_watermark: 0.5, low_watermark: 0.1, cooldown_ms: 2000 },
  supervisor: { max_restarts: 5, within_ms: 10_000, backoff_initial_ms: 50, backoff_max_ms: 5000 },
  storage: { url: null, synchronous: "full", worker: true, idle_ping_ms: 2_000 },
  queue: {
    url: null,
    partitions: 8,
    stream_prefix: "troupe:records",
    group: "troupe",
    consumer: null,
    block_ms: 1000,
    batch_count: 20,
    claim_idle_ms: 10_000,
    max_deliveries: 5,
  },
  ingest: { max_wait_ms: 1000, max_concurrent_requests: 64, max_pipeline_records: 8_000 },
  idempotency: { window_ms: 3_600_000, max_keys: 10_000, max_bytes: 67_108_864 },
  auth: { token: null, protect_metrics: false },
  process: { batch_size: 4_000, shards: null },
  faults: {
    stages: {},
    poison_ids: [],
    storage_outage_ms: 0,
    leak_bytes_per_batch: 0,
    poison_stages: ["transform"],
  },
  monitor: { enabled: true, interval_ms: 1000, retention_days: 7 },
  alerts: {
    evaluation_interval: 1000,
    alertmanager_url: null,
    webhook_url: null,
    resend_interval: 30_000,
    memory_leak: { window: 600_000, bucket: 30_000, min_growth: 0.1, for: 60_000 },
    rules: [],
  },
};

function valueOf(result: ConfigResult): Config {
  if (!result.ok) assert.fail(formatConfigErrors(undefined, result.error));
  return result.value;
}

function errorsOf(result: ConfigResult): ConfigError[] {
  assert.equal(result.ok, false, "expected the configuration to be refused");
  return result.ok ? [] : result.error;
}

/** The one error at `path`. */
function errorAt(result: ConfigResult, path: string): ConfigError {
  const errors = errorsOf(result);
  const found = errors.filter((e) => e.path === path);
  assert.equal(found.length, 1, `one error at "${path}" in ${JSON.stringify(errors)}`);
  return found[0];
}

async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), "troupe-config-"));
  try {
    await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

Deno.test("parseConfig fills every default into an empty configuration", async (t) => {
  await t.step("empty object", () => assert.deepEqual(valueOf(parseConfig({})), DEFAULTS));
  await t.step("undefined and null", () => {
    assert.deepEqual(valueOf(parseConfig(undefined)), DEFAULTS);
    assert.deepEqual(valueOf(parseConfig(null)), DEFAULTS);
  });
  await t.step("defaultConfig", () => assert.deepEqual(defaultConfig(), DEFAULTS));
  await t.step("empty YAML and JSON text", () => {
    assert.deepEqual(valueOf(parseConfigText("", "troupe.yaml")), DEFAULTS);
    assert.deepEqual(valueOf(parseConfigText("# only a comment\n", "troupe.yml")), DEFAULTS);
    assert.deepEqual(valueOf(parseConfigText(" \n", "troupe.json")), DEFAULTS);
  });
  await t.step("loadConfig without a file", async () => {
    assert.deepEqual(valueOf(await loadConfig({})), DEFAULTS);
  });
});

Deno.test("parseConfig fills the defaults of an absent or partial section", async (t) => {
  await t.step("one field of a stage", () => {
    const config = valueOf(parseConfig({ pipeline: { stages: { store: { max_workers: 3 } } } }));
    assert.deepEqual(config.pipeline.stages.store, {
      min_workers: 2,
      max_workers: 3,
      mailbox_capacity: 20_000,
    });
    assert.deepEqual(config.pipeline.stages.validate, DEFAULTS.pipeline.stages.validate);
    assert.equal(config.pipeline.batch_size, 1000);
  });
  await t.step("max_workers below the default min_workers lowers the default with it", () => {
    const config = valueOf(parseConfig({ pipeline: { stages: { store: { max_workers: 1 } } } }));
    assert.deepEqual(config.pipeline.stages.store, {
      min_workers: 1,
      max_workers: 1,
      mailbox_capacity: 20_000,
    });
    const given = parseConfig({
      pipeline: { stages: { store: { min_workers: 2, max_workers: 1 } } },
    });
    assert.equal(given.ok, false, "an explicit min_workers above max_workers is still refused");
  });
  await t.step("a null section (YAML with its children commented out)", () => {
    const config = valueOf(parseConfigText("server:\n  # port: 9000\nlimits:\n", "troupe.yaml"));
    assert.deepEqual(config.server, DEFAULTS.server);
    assert.deepEqual(config.limits, DEFAULTS.limits);
  });
});

Deno.test("defaultConfig returns a fresh object each time", () => {
  const first = defaultConfig();
  first.server.port = 1;
  assert.equal(defaultConfig().server.port, 8080);
});

Deno.test("loadConfig reads a YAML file and a JSON file", async (t) => {
  await withTempDir(async (dir) => {
    await t.step("YAML", async () => {
      const file = join(dir, "troupe.yaml");
      await writeFile(
        file,
        [
          "server:",
          "  host: 0.0.0.0",
          "  port: 9000",
          "status: true",
          "log_level: debug",
          "pipeline:",
          "  batch_size: 500",
          "  stages:",
          "    validate: { min_workers: 2, max_workers: 8 }",
          "storage:",
          "  synchronous: normal",
          "",
        ].join("\n"),
      );
      const config = valueOf(await loadConfig({ file }));
      assert.deepEqual(config, {
        ...DEFAULTS,
        server: { ...DEFAULTS.server, host: "0.0.0.0", port: 9000 },
        status: true,
        log_level: "debug",
        pipeline: {
          ...DEFAULTS.pipeline,
          batch_size: 500,
          stages: {
            ...DEFAULTS.pipeline.stages,
            validate: { min_workers: 2, max_workers: 8, mailbox_capacity: 20_000 },
          },
        },
        storage: { ...DEFAULTS.storage, synchronous: "normal" },
      });
    });
    await t.step("JSON", async () => {
      const file = join(dir, "troupe.json");
      await writeFile(
        file,
        JSON.stringify({ data: "/var/lib/troupe", autoscale: { high_watermark: 0.8 } }),
      );
      const config = valueOf(await loadConfig({ file }));
      assert.equal(config.data, "/var/lib/troupe");
      assert.equal(config.autoscale.high_watermark, 0.8);
      assert.equal(config.autoscale.low_watermark, 0.1);
      assert.deepEqual(config.server, DEFAULTS.server);
    });
    await t.step("JSON with a byte order mark", async () => {
      const file = join(dir, "bom.json");
      await writeFile(file, '\uFEFF{"server": {"port": 1234}}');
      assert.equal(valueOf(await loadConfig({ file })).server.port, 1234);
    });
  });
});

Deno.test("loadConfig names a missing file", async () => {
  const result = await loadConfig({ file: "/nonexistent/troupe.yaml" });
  const error = errorAt(result, "");
  assert.match(error.message, /"\/nonexistent\/troupe\.yaml"/);
  assert.match(error.message, /no such file/);
});

Deno.test("parseConfig names the path of a bad field and quotes its value", async (t) => {
  await t.step("too many validation workers", () => {
    const error = errorAt(
      parseConfig({ pipeline: { stages: { validate: { max_workers: 12 } } } }),
      "pipeline.stages.validate.max_workers",
    );
    assert.equal(error.message, "must be at most 10 (got 12)");
  });
  await t.step("too many storage connections", () => {
    const error = errorAt(
      parseConfig({ pipeline: { stages: { store: { max_workers: 6 } } } }),
      "pipeline.stages.store.max_workers",
    );
    assert.equal(error.message, "must be at most 5 (got 6)");
  });
  await t.step("a port that is not a number", () => {
    const error = errorAt(parseConfig({ server: { port: "abc" } }), "server.port");
    assert.equal(error.message, 'must be a number (got "abc")');
  });
  await t.step("a port out of range and a fractional port", () => {
    assert.equal(
      errorAt(parseConfig({ server: { port: 70000 } }), "server.port").message,
      "must be at most 65535 (got 70000)",
    );
    assert.equal(
      errorAt(parseConfig({ server: { port: 80.5 } }), "server.port").message,
      "must be a whole number (got 80.5)",
    );
  });
  await t.step("min_workers above max_workers", () => {
    const error = errorAt(
      parseConfig({ pipeline: { stages: { transform: { min_workers: 3, max_workers: 2 } } } }),
      "pipeline.stages.transform.min_workers",
    );
    assert.equal(error.message, "must not be greater than max_workers, which is 2 (got 3)");
  });
  await t.step("min_workers below 1", () => {
    assert.equal(
      errorAt(
        parseConfig({ pipeline: { stages: { aggregate: { min_workers: 0 } } } }),
        "pipeline.stages.aggregate.min_workers",
      ).message,
      "must be at least 1 (got 0)",
    );
  });
  await t.step("batch_size out of range", () => {
    assert.equal(
      errorAt(parseConfig({ pipeline: { batch_size: 0 } }), "pipeline.batch_size").message,
      "must be at least 1 (got 0)",
    );
    assert.equal(
      errorAt(parseConfig({ pipeline: { batch_size: 100_001 } }), "pipeline.batch_size").message,
      "must be at most 100000 (got 100001)",
    );
  });
  await t.step("watermarks in the wrong order", () => {
    const error = errorAt(
      parseConfig({ autoscale: { low_watermark: 0.6, high_watermark: 0.5 } }),
      "autoscale.low_watermark",
    );
    assert.equal(error.message, "must be below high_watermark, which is 0.5 (got 0.6)");
  });
  await t.step("backoff that starts above its maximum", () => {
    const error = errorAt(
      parseConfig({ supervisor: { backoff_initial_ms: 9000 } }),
      "supervisor.backoff_initial_ms",
    );
    assert.equal(
      error.message,
      "must not be greater than backoff_max_ms, which is 5000 (got 9000)",
    );
  });
  await t.step("a log level outside the list", () => {
    assert.equal(
      errorAt(parseConfig({ log_level: "verbose" }), "log_level").message,
      'must be one of "debug", "info", "warning", "error" (got "verbose")',
    );
  });
  await t.step("a status that is not a boolean (YAML 1.2 reads yes as a string)", () => {
    assert.equal(
      errorAt(parseConfigText("status: yes", "troupe.yaml"), "status").message,
      'must be true or false (got "yes")',
    );
  });
  await t.step("a section that is not a mapping", () => {
    assert.equal(
      errorAt(parseConfig({ limits: 5 }), "limits").message,
      "must be a mapping (got 5)",
    );
    assert.equal(
      errorAt(parseConfig({ server: [{ port: 1 }] }), "server").message,
      'must be a mapping (got [{"port":1}])',
    );
    assert.equal(errorAt(parseConfig("text"), "").message, 'must be a mapping (got "text")');
    assert.equal(errorAt(parseConfig([1, 2]), "").message, "must be a mapping (got [1,2])");
  });
  await t.step("every bad field at once", () => {
    const errors = errorsOf(
      parseConfig({ server: { port: "abc", host: "" }, limits: { max_depth: -1 } }),
    );
    assert.deepEqual(errors.map((e) => e.path).sort(), [
      "limits.max_depth",
      "server.host",
      "server.port",
    ]);
  });
});

Deno.test("parseConfig refuses an unknown key and names it", async (t) => {
  await t.step("a typo of a section gets a suggestion", () => {
    const error = errorAt(parseConfig({ pipline: { batch_size: 10 } }), "pipline");
    assert.equal(error.message, 'unknown key "pipline" (did you mean "pipeline"?)');
  });
  await t.step("a nested typo", () => {
    const error = errorAt(
      parseConfig({ pipeline: { stages: { validate: { max_worker: 3 } } } }),
      "pipeline.stages.validate.max_worker",
    );
    assert.equal(error.message, 'unknown key "max_worker" (did you mean "max_workers"?)');
  });
  await t.step("a key far from any lists the known keys", () => {
    const error = errorAt(parseConfig({ server: { colour: "red" } }), "server.colour");
    assert.equal(
      error.message,
      'unknown key "colour" (known keys: host, port, shutdown_timeout_ms)',
    );
  });
  await t.step("a camelCase key", () => {
    const error = errorAt(parseConfig({ logLevel: "debug" }), "logLevel");
    assert.match(error.message, /^unknown key "logLevel"/);
  });
  await t.step("__proto__ in JSON is a key like any other", () => {
    const error = errorAt(parseConfigText('{"__proto__": {"x": 1}}', "troupe.json"), "__proto__");
    assert.match(error.message, /^unknown key "__proto__"/);
  });
});

Deno.test("parseConfigText names the file in a syntax error", async (t) => {
  await t.step("YAML", () => {
    const error = errorAt(parseConfigText("server:\n  port: [9000\n", "troupe.yaml"), "");
    assert.match(error.message, /^cannot parse "troupe\.yaml" as YAML: \S/);
  });
  await t.step("JSON", () => {
    const error = errorAt(parseConfigText('{"server": ', "troupe.json"), "");
    assert.match(error.message, /^cannot parse "troupe\.json" as JSON: \S/);
  });
  await t.step("duplicate YAML keys", () => {
    const error = errorAt(parseConfigText("data: a\ndata: b\n", "troupe.yml"), "");
    assert.match(error.message, /^cannot parse "troupe\.yml" as YAML: /);
  });
  await t.step("through loadConfig", async () => {
    await withTempDir(async (dir) => {
      const file = join(dir, "broken.yaml");
      await writeFile(file, "server: port: 1\n");
      const error = errorAt(await loadConfig({ file }), "");
      assert.ok(error.message.includes(`"${file}"`), error.message);
    });
  });
});

Deno.test("loadConfig lays overrides over the file and validates them", async (t) => {
  await withTempDir(async (dir) => {
    const file = join(dir, "troupe.yaml");
    await writeFile(file, "server:\n  host: 0.0.0.0\n  port: 9000\nlog_level: debug\n");

    await t.step("an override wins over the file, the rest of the file stays", async () => {
      const config = valueOf(await loadConfig({ file, overrides: { server: { port: 9100 } } }));
      assert.equal(config.server.port, 9100);
      assert.equal(config.server.host, "0.0.0.0");
      assert.equal(config.log_level, "debug");
    });
    await t.step("undefined override values are skipped", async () => {
      const config = valueOf(
        await loadConfig({ file, overrides: { server: { port: undefined }, data: undefined } }),
      );
      assert.equal(config.server.port, 9000);
      assert.equal(config.data, "./data");
    });
    await t.step("overrides without a file go over the defaults", async () => {
      const config = valueOf(await loadConfig({ overrides: { status: true } }));
      assert.deepEqual(config, { ...DEFAULTS, status: true });
    });
    await t.step("a bad override is reported with its path", async () => {
      const result = await loadConfig({ file, overrides: { server: { port: 70000 } } });
      assert.equal(errorAt(result, "server.port").message, "must be at most 65535 (got 70000)");
      const typo = await loadConfig({ file, overrides: { log_level: "loud" } });
      assert.equal(
        errorAt(typo, "log_level").message,
        'must be one of "debug", "info", "warning", "error" (got "loud")',
      );
    });
    await t.step("an override does not hide a bad section in the file", async () => {
      const bad = join(dir, "bad.yaml");
      await writeFile(bad, "server: 5\n");
      const result = await loadConfig({ file: bad, overrides: { server: { port: 9100 } } });
      assert.equal(errorAt(result, "server").message, "must be a mapping (got 5)");
    });
  });
});

Deno.test("formatConfigErrors writes one line for one error and a list for several", async (t) => {
  await t.step("one error with a file", () => {
    assert.equal(
      formatConfigErrors("troupe.yaml", [
        { path: "pipeline.stages.validate.max_workers", message: "must be at most 10 (got 12)" },
      ]),
      'Invalid configuration in "troupe.yaml": pipeline.stages.validate.max_workers: must be at most 10 (got 12)',
    );
  });
  await t.step("one whole-file error without a file", () => {
    assert.equal(
      formatConfigErrors(undefined, [{ path: "", message: "must be a mapping (got 5)" }]),
      "Invalid configuration: must be a mapping (got 5)",
    );
  });
  await t.step("several errors", () => {
    const result = parseConfig({ server: { port: "abc" }, pipline: {} });
    assert.equal(
      formatConfigErrors("troupe.yaml", errorsOf(result)),
      [
        'Invalid configuration in "troupe.yaml":',
        '  server.port: must be a number (got "abc")',
        '  pipline: unknown key "pipline" (did you mean "pipeline"?)',
      ].join("\n"),
    );
  });
});

Deno.test("parseConfig quotes long and odd values briefly", () => {
  const long = "x".repeat(500);
  const message = errorAt(parseConfig({ data: { long } }), "data").message;
  assert.ok(message.length < 120, message);
  assert.equal(
    errorAt(parseConfig({ server: { port: 10n } }), "server.port").message,
    "must be a number (got 10n)",
  );
  const cyclic: Record<string, unknown> = {};
  cyclic.self = cyclic;
  assert.equal(
    errorAt(parseConfig({ data: cyclic }), "data").message,
    "must be a string (got a mapping)",
  );
});

const KEYS = [
  "server",
  "host",
  "port",
  "shutdown_timeout_ms",
  "data",
  "status",
  "log_level",
  "limits",
  "max_depth",
  "pipeline",
  "batch_size",
  "max_attempts",
  "stages",
  "validate",
  "store",
  "min_workers",
  "max_workers",
  "mailbox_capacity",
  "autoscale",
  "low_watermark",
  "high_watermark",
  "supervisor",
  "backoff_initial_ms",
  "backoff_max_ms",
  "storage",
  "synchronous",
  "ingest",
  "pipline",
  "__proto__",
  "constructor",
  "toString",
  "0",
];

/** Objects shaped like a configuration, with anything at the leaves. */
const configLike = fc.letrec((tie) => ({
  node: fc.oneof(
    { depthSize: "small" },
    fc.anything({ withBigInt: true, withNullPrototype: true, withObjectString: true }),
    fc.integer({ min: -1, max: 70_000 }),
    fc.dictionary(fc.constantFrom(...KEYS), tie("node"), { maxKeys: 6 }),
  ),
})).node;

Deno.test("parseConfig never throws and reports errors with a path and a message", () => {
  fc.assert(
    fc.property(fc.oneof(configLike, fc.anything()), (input) => {
      const result = parseConfig(input);
      if (result.ok) {
        // A valid configuration parses to itself.
        assert.deepEqual(parseConfig(result.value), result);
        return;
      }
      assert.ok(result.error.length > 0);
      for (const error of result.error) {
        assert.equal(typeof error.path, "string");
        assert.ok(error.message.length > 0);
        assert.ok(!error.message.endsWith("."), error.message);
      }
    }),
    { numRuns: 500 },
  );
});

Deno.test("parseConfigText never throws on any text", () => {
  fc.assert(
    fc.property(
      fc.string({ unit: "grapheme-ascii", maxLength: 200 }),
      fc.boolean(),
      (text, json) => {
        const result = parseConfigText(text, json ? "x.json" : "x.yaml");
        assert.equal(typeof result.ok, "boolean");
      },
    ),
    { numRuns: 300 },
  );
});

Deno.test("parseConfig keeps every valid value it is given", () => {
  const stage = (cap: number) =>
    fc.integer({ min: 1, max: cap }).chain((max) =>
      fc.record({
        min_workers: fc.integer({ min: 1, max }),
        max_workers: fc.constant(max),
        mailbox_capacity: fc.integer({ min: 1, max: 1_000_000 }),
      }, { noNullPrototype: true })
    );
  const valid = fc.record({
    server: fc.record({
      host: fc.string({ minLength: 1 }),
      port: fc.integer({ min: 0, max: 65_535 }),
    }, { requiredKeys: [], noNullPrototype: true }),
    status: fc.boolean(),
    log_level: fc.constantFrom("debug", "info", "warning", "error"),
    pipeline: fc.record({
      batch_size: fc.integer({ min: 1, max: 100_000 }),
      stages: fc.record({ validate: stage(10), store: stage(5) }, {
        requiredKeys: [],
        noNullPrototype: true,
      }),
    }, { requiredKeys: [], noNullPrototype: true }),
    autoscale: fc.tuple(
      fc.double({ min: 0, max: 1, noNaN: true }),
      fc.double({ min: 0, max: 1, noNaN: true }),
    )
      .filter(([a, b]) => a !== b)
      .map(([a, b]) => ({ low_watermark: Math.min(a, b), high_watermark: Math.max(a, b) })),
  }, { requiredKeys: [], noNullPrototype: true });
  fc.assert(
    fc.property(valid, (input) => {
      const config = valueOf(parseConfig(input));
      assert.deepEqual(config.server, { ...DEFAULTS.server, ...input.server });
      assert.equal(config.status, input.status ?? false);
      assert.equal(config.log_level, input.log_level ?? "info");
      assert.equal(config.pipeline.batch_size, input.pipeline?.batch_size ?? 1000);
      assert.deepEqual(
        config.pipeline.stages.validate,
        input.pipeline?.stages?.validate ?? DEFAULTS.pipeline.stages.validate,
      );
      assert.deepEqual(
        config.pipeline.stages.store,
        input.pipeline?.stages?.store ?? DEFAULTS.pipeline.stages.store,
      );
      assert.deepEqual(config.autoscale, { ...DEFAULTS.autoscale, ...input.autoscale });
    }),
    { numRuns: 300 },
  );
});

Deno.test("parseDuration reads ms and durations like 1s, 2m, 1h", () => {
  assert.equal(parseDuration(500), 500);
  assert.equal(parseDuration("500ms"), 500);
  assert.equal(parseDuration("1s"), 1000);
  assert.equal(parseDuration("1.5s"), 1500);
  assert.equal(parseDuration("2m"), 120_000);
  assert.equal(parseDuration("1h"), 3_600_000);
  for (const bad of ["soon", "1d", "-1s", "", -5, 1.5]) {
    assert.equal(parseDuration(bad), undefined, String(bad));
  }
});

Deno.test("the alerts section takes issue 5's example rule", () => {
  const r = parseConfigText(
    [
      "alerts:",
      "  evaluation_interval: 1s",
      "  alertmanager_url: http://127.0.0.1:9093",
      "  rules:",
      "    - name: IngestStalled",
      "      metric: troupe_records_total",
      "      labels: { outcome: accepted }",
      "      function: rate",
      "      window: 1m",
      '      op: "<"',
      "      threshold: 1",
      "      for: 2m",
      "      keep_firing_for: 1m",
      "      severity: warning",
      '      summary: "No records accepted for 2 minutes"',
    ].join("\n"),
    "troupe.yaml",
  );
  const cfg = valueOf(r);
  assert.equal(cfg.alerts.evaluation_interval, 1000);
  assert.equal(cfg.alerts.alertmanager_url, "http://127.0.0.1:9093");
  const [rule] = cfg.alerts.rules;
  assert.deepEqual(
    {
      fn: rule.function,
      window: rule.window,
      for: rule.for,
      keep: rule.keep_firing_for,
      labels: rule.labels,
    },
    { fn: "rate", window: 60_000, for: 120_000, keep: 60_000, labels: { outcome: "accepted" } },
  );
  const bad = parseConfig({
    alerts: { rules: [{ name: "X", metric: "m", op: "!=", threshold: 1 }] },
  });
  assert.equal(errorAt(bad, "alerts.rules.0.op").path, "alerts.rules.0.op");
  assert.match(
    errorAt(parseConfig({ monitor: { interval_ms: 10_000 } }), "monitor.interval_ms").message,
    /at most 5000/,
  );
});

Deno.test("parseConfig reads the queue section and refuses a URL that is not Redis", () => {
  const cfg = valueOf(
    parseConfig({
      queue: { url: "redis://:pw@127.0.0.1:6379/0", partitions: 4, claim_idle_ms: 500 },
    }),
  );
  assert.equal(cfg.queue.url, "redis://:pw@127.0.0.1:6379/0");
  assert.equal(cfg.queue.partitions, 4);
  assert.equal(cfg.queue.claim_idle_ms, 500);
  assert.equal(cfg.queue.max_deliveries, 5);
  assert.match(
    errorAt(parseConfig({ queue: { url: "http://127.0.0.1:6379" } }), "queue.url").message,
    /must be a redis:\/\/ or rediss:\/\/ URL/,
  );
  assert.match(
    errorAt(parseConfig({ queue: { partitions: 0 } }), "queue.partitions").message,
    /at least 1/,
  );
  assert.match(
    errorAt(parseConfig({ queue: { batch_cnt: 5 } }), "queue.batch_cnt").message,
    /did you mean "batch_count"/,
  );
});
