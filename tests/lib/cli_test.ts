/**
 * @module
 * Tests for `lib/cli.ts`: commands, flags, environment variables, their
 * precedence over the configuration file, and errors for bad input.
 */
import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import { type Command, HELP_TEXT, parseCommand } from "../../lib/cli.ts";
import { formatConfigErrors, loadConfig } from "../../lib/config.ts";

const VERSION = "0.1.0";

function commandOf(args: string[], env: Record<string, string | undefined> = {}): Command {
  const result = parseCommand(args, env, VERSION);
  if (!result.ok) assert.fail(result.error);
  return result.value;
}

function errorOf(args: string[], env: Record<string, string | undefined> = {}): string {
  const result = parseCommand(args, env, VERSION);
  if (result.ok) assert.fail(`expected an error, got ${JSON.stringify(result.value)}`);
  return result.error;
}

Deno.test("parseCommand returns the help text for --help, -h and help", async (t) => {
  for (const args of [["--help"], ["-h"], ["help"], ["serve", "--help"], ["process", "-h"]]) {
    await t.step(args.join(" "), () => {
      assert.deepEqual(commandOf(args), { kind: "help", text: HELP_TEXT });
    });
  }
  await t.step("help wins over an unknown option", () => {
    assert.equal(commandOf(["--frobnicate", "--help"]).kind, "help");
  });
});

Deno.test("parseCommand returns the version for --version and -V", () => {
  assert.deepEqual(commandOf(["--version"]), { kind: "version", text: "troupe 0.1.0" });
  assert.deepEqual(commandOf(["-V"]), { kind: "version", text: "troupe 0.1.0" });
});

Deno.test("HELP_TEXT lists the commands, options, environment variables and defaults", () => {
  for (
    const word of [
      "serve",
      "process",
      "--port",
      "--host",
      "--data",
      "--status",
      "--log-level",
      "--config",
      "--input",
      "--out",
      "--help",
      "--version",
      "TROUPE_PORT",
      "TROUPE_HOST",
      "TROUPE_DATA",
      "TROUPE_STATUS",
      "TROUPE_LOG_LEVEL",
      "TROUPE_CONFIG",
      "default 8080",
      "default 127.0.0.1",
      "default ./data",
      "default info",
      "Examples:",
    ]
  ) {
    assert.ok(HELP_TEXT.includes(word), `help mentions ${word}`);
  }
});

Deno.test("parseCommand serves by default with no overrides", () => {
  assert.deepEqual(commandOf([]), { kind: "serve", overrides: {} });
  assert.deepEqual(commandOf(["serve"]), { kind: "serve", overrides: {} });
});

Deno.test("parseCommand turns serve flags into raw configuration overrides", async (t) => {
  await t.step("every flag", () => {
    assert.deepEqual(
      commandOf([
        "serve",
        "--port",
        "9000",
        "--host=0.0.0.0",
        "--data",
        "/tmp/troupe",
        "--status",
        "--log-level",
        "debug",
        "--config",
        "troupe.yaml",
      ]),
      {
        kind: "serve",
        configFile: "troupe.yaml",
        overrides: {
          server: { port: 9000, host: "0.0.0.0" },
          data: "/tmp/troupe",
          status: true,
          log_level: "debug",
        },
      },
    );
  });
  await t.step("options before the command", () => {
    assert.deepEqual(commandOf(["--port", "9000", "serve"]), {
      kind: "serve",
      overrides: { server: { port: 9000 } },
    });
  });
  await t.step("the last of a repeated flag wins", () => {
    const command = commandOf(["--port", "1", "--port", "2"]);
    assert.deepEqual(command.kind === "serve" && command.overrides, { server: { port: 2 } });
  });
});

Deno.test("parseCommand reads TROUPE_* environment variables", async (t) => {
  await t.step("every variable", () => {
    assert.deepEqual(
      commandOf([], {
        TROUPE_PORT: "9001",
        TROUPE_HOST: "::1",
        TROUPE_DATA: "/srv/troupe",
        TROUPE_STATUS: "1",
        TROUPE_LOG_LEVEL: "warning",
        TROUPE_CONFIG: "/etc/troupe.yaml",
        HOME: "/root",
      }),
      {
        kind: "serve",
        configFile: "/etc/troupe.yaml",
        overrides: {
          server: { port: 9001, host: "::1" },
          data: "/srv/troupe",
          status: true,
          log_level: "warning",
        },
      },
    );
  });
  await t.step("TROUPE_STATUS spellings", () => {
    for (const [text, value] of [["true", true], ["TRUE", true], ["0", false], ["false", false]]) {
      const command = commandOf([], { TROUPE_STATUS: text as string });
      assert.deepEqual(
        command.kind === "serve" && command.overrides,
        { status: value },
        text as string,
      );
    }
  });
  await t.step("an empty variable counts as unset", () => {
    assert.deepEqual(commandOf([], { TROUPE_PORT: "", TROUPE_STATUS: "", TROUPE_CONFIG: "" }), {
      kind: "serve",
      overrides: {},
    });
  });
});

Deno.test("parseCommand prefers a flag to its environment variable", () => {
  assert.deepEqual(
    commandOf(["--port", "9000", "--config", "cli.yaml", "--log-level", "error"], {
      TROUPE_PORT: "9001",
      TROUPE_HOST: "0.0.0.0",
      TROUPE_CONFIG: "env.yaml",
      TROUPE_LOG_LEVEL: "debug",
    }),
    {
      kind: "serve",
      configFile: "cli.yaml",
      overrides: { server: { port: 9000, host: "0.0.0.0" }, log_level: "error" },
    },
  );
  // The variable is not read at all, so its bad value does not matter.
  assert.equal(commandOf(["--port", "9000"], { TROUPE_PORT: "abc" }).kind, "serve");
  assert.equal(commandOf(["--status"], { TROUPE_STATUS: "maybe" }).kind, "serve");
});

Deno.test("parseCommand applies flag > environment > file > default with loadConfig", async () => {
  const dir = await mkdtemp(join(tmpdir(), "troupe-cli-"));
  try {
    const file = join(dir, "troupe.yaml");
    await writeFile(
      file,
      "server:\n  port: 7000\n  host: 10.0.0.1\ndata: /from/file\nstatus: true\n",
    );
    const command = commandOf(["--port", "9000"], {
      TROUPE_CONFIG: file,
      TROUPE_PORT: "8000",
      TROUPE_HOST: "0.0.0.0",
    });
    assert.equal(command.kind, "serve");
    if (command.kind !== "serve") return;
    const loaded = await loadConfig({ file: command.configFile, overrides: command.overrides });
    if (!loaded.ok) assert.fail(formatConfigErrors(command.configFile, loaded.error));
    assert.equal(loaded.value.server.port, 9000, "flag beats environment and file");
    assert.equal(loaded.value.server.host, "0.0.0.0", "environment beats file");
    assert.equal(loaded.value.data, "/from/file", "file beats default");
    assert.equal(loaded.value.status, true, "file beats default");
    assert.equal(loaded.value.log_level, "info", "default when nothing sets it");
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

Deno.test("parseCommand leaves range checks of overrides to the Config schema", async () => {
  const command = commandOf(["--port", "70000", "--log-level", "loud"]);
  assert.equal(command.kind, "serve");
  if (command.kind !== "serve") return;
  const loaded = await loadConfig({ overrides: command.overrides });
  assert.equal(loaded.ok, false);
  if (loaded.ok) return;
  assert.deepEqual(loaded.error, [
    { path: "server.port", message: "must be at most 65535 (got 70000)" },
    {
      path: "log_level",
      message: 'must be one of "debug", "info", "warning", "error" (got "loud")',
    },
  ]);
});

Deno.test("parseCommand parses process with --input and --out", () => {
  assert.deepEqual(
    commandOf(["process", "--input", "records.jsonl", "--out", "out/", "--config", "t.yaml"]),
    { kind: "process", input: "records.jsonl", out: "out/", configFile: "t.yaml", overrides: {} },
  );
  assert.deepEqual(
    commandOf(["process", "--input=-", "--out", "o", "--log-level", "debug"], {
      TROUPE_CONFIG: "env.yaml",
      TROUPE_PORT: "abc",
    }),
    {
      kind: "process",
      input: "-",
      out: "o",
      configFile: "env.yaml",
      overrides: { log_level: "debug" },
    },
  );
});

Deno.test("parseCommand turns process --shards into a config override", () => {
  assert.deepEqual(commandOf(["process", "--input", "i", "--out", "o", "--shards", "2"]), {
    kind: "process",
    input: "i",
    out: "o",
    overrides: { process: { shards: 2 } },
  });
  assert.equal(
    errorOf(["process", "--input", "i", "--out", "o", "--shards", "two"]),
    '--shards must be a whole number (got "two")',
  );
  assert.equal(
    errorOf(["serve", "--shards", "2"]),
    'Option "--shards" does not apply to the "serve" command',
  );
});

Deno.test("parseCommand refuses process without --input or --out", () => {
  assert.equal(errorOf(["process", "--out", "o"]), 'The "process" command needs --input FILE');
  assert.equal(errorOf(["process", "--input", "i"]), 'The "process" command needs --out DIR');
  assert.equal(errorOf(["process"]), 'The "process" command needs --input FILE');
});

Deno.test("parseCommand refuses bad input with a message quoting it", async (t) => {
  await t.step("unknown option", () => {
    assert.equal(errorOf(["--prot", "9000"]), 'Unknown option "--prot"');
    assert.equal(errorOf(["-x"]), 'Unknown option "-x"');
  });
  await t.step("non-numeric port from a flag or the environment", () => {
    assert.equal(errorOf(["--port", "abc"]), '--port must be a port number (got "abc")');
    assert.equal(errorOf(["--port="]), '--port must be a port number (got "")');
    assert.equal(
      errorOf([], { TROUPE_PORT: "80a" }),
      'TROUPE_PORT must be a port number (got "80a")',
    );
  });
  await t.step("bad TROUPE_STATUS", () => {
    assert.equal(
      errorOf([], { TROUPE_STATUS: "maybe" }),
      'TROUPE_STATUS must be "1", "true", "0" or "false" (got "maybe")',
    );
  });
  await t.step("a missing option value", () => {
    assert.equal(errorOf(["--port"]), 'Option "--port" needs a value');
    assert.equal(errorOf(["--config", "--status"]), 'Option "--config" needs a value');
  });
  await t.step("a value for a flag", () => {
    assert.equal(errorOf(["--status=yes"]), 'Option "--status" takes no value (got "yes")');
  });
  await t.step("an option of the other command", () => {
    assert.equal(
      errorOf(["process", "--input", "i", "--out", "o", "--port", "1"]),
      'Option "--port" does not apply to the "process" command',
    );
    assert.equal(
      errorOf(["serve", "--input", "i"]),
      'Option "--input" does not apply to the "serve" command',
    );
  });
  await t.step("unknown command and extra arguments", () => {
    assert.equal(errorOf(["run"]), 'Unknown command "run" (expected "serve" or "process")');
    assert.equal(errorOf(["serve", "now"]), 'Unexpected argument "now"');
  });
});

Deno.test("parseCommand never throws on any arguments", () => {
  const arg = fc.oneof(
    fc.constantFrom(
      "serve",
      "process",
      "help",
      "--port",
      "--port=",
      "--status",
      "--status=1",
      "--input",
      "--out",
      "--config",
      "--log-level",
      "--",
      "-",
      "-hV",
      "-x",
    ),
    fc.string({ maxLength: 12 }),
  );
  const env = fc.record({
    TROUPE_PORT: fc.string({ maxLength: 6 }),
    TROUPE_STATUS: fc.string({ maxLength: 6 }),
  }, { requiredKeys: [] });
  fc.assert(
    fc.property(fc.array(arg, { maxLength: 8 }), env, (args, environment) => {
      const result = parseCommand(args, environment, VERSION);
      if (!result.ok) {
        assert.ok(result.error.length > 0);
        assert.ok(!result.error.endsWith("."), result.error);
      }
    }),
    { numRuns: 500 },
  );
});
