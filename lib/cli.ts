/**
 * @module
 * The command line: turns arguments and `TROUPE_*` environment variables
 * into a {@linkcode Command}. Pure: it reads no file and prints nothing;
 * `main.ts` loads the configuration and prints errors.
 *
 * Flags and environment variables become overrides in the configuration
 * file's raw snake_case shape (`--port 9000` gives `{ server: { port: 9000 } }`),
 * which `loadConfig` lays over the file before validating. So the
 * precedence is: flag > environment variable > configuration file > default.
 *
 * Arguments are tokenised by `parseArgs` from `node:util` (Deno and Bun
 * both have it) and checked here, so every runtime gives the same messages.
 */
import { parseArgs } from "node:util";
import { defaultConfig } from "./config.ts";

/** What the command line asks for. */
export type Command =
  | { kind: "help"; text: string }
  | { kind: "version"; text: string }
  | {
    kind: "serve";
    /** Configuration file from `--config` or `TROUPE_CONFIG`. */
    configFile?: string;
    /** Raw configuration values to lay over the file, such as `{ server: { port: 9000 } }`. */
    overrides: Record<string, unknown>;
  }
  | {
    kind: "process";
    configFile?: string;
    /** The records file to process. */
    input: string;
    /** Directory that receives the processed and failed records. */
    out: string;
    overrides: Record<string, unknown>;
  };

/** The outcome of {@linkcode parseCommand}; an error is a message for the user. */
export type CommandResult = { ok: true; value: Command } | { ok: false; error: string };

type CommandName = "serve" | "process";

interface OptionSpec {
  type: "string" | "boolean";
  short?: string;
  /** Commands that accept the option; global options have none. */
  commands?: readonly CommandName[];
}

const OPTIONS = {
  help: { type: "boolean", short: "h" },
  version: { type: "boolean", short: "V" },
  config: { type: "string", commands: ["serve", "process"] },
  "log-level": { type: "string", commands: ["serve", "process"] },
  port: { type: "string", commands: ["serve"] },
  host: { type: "string", commands: ["serve"] },
  data: { type: "string", commands: ["serve"] },
  status: { type: "boolean", commands: ["serve"] },
  input: { type: "string", commands: ["process"] },
  out: { type: "string", commands: ["process"] },
  shards: { type: "string", commands: ["process"] },
} as const satisfies Record<string, OptionSpec>;

type OptionName = keyof typeof OPTIONS;
const SPECS: Record<OptionName, OptionSpec> = OPTIONS;

const COMMANDS: readonly string[] = ["serve", "process"];

const DEFAULTS = defaultConfig();

/** Usage, commands, options with their environment variables and defaults, examples. */
export const HELP_TEXT: string =
  `troupe: receives records over HTTP, runs them through supervised actor
stages (validate, transform, aggregate, store) and stores them in SQLite.

Usage:
  troupe [serve] [options]
  troupe process --input FILE --out DIR [options]
  troupe --help | --version

Commands:
  serve     Run the HTTP service (the default command)
  process   Run the records of FILE through the pipeline once and write the
            processed and failed records as JSON lines into DIR

Options for serve:
  --port PORT         Port to listen on, 0 for any free port
                      (env TROUPE_PORT, default ${DEFAULTS.server.port})
  --host HOST         Address to listen on
                      (env TROUPE_HOST, default ${DEFAULTS.server.host})
  --data DIR          Directory of the SQLite file
                      (env TROUPE_DATA, default ${DEFAULTS.data})
  --status            Print a one-line status every second
                      (env TROUPE_STATUS=1, default off)
  --log-level LEVEL   debug, info, warning or error
                      (env TROUPE_LOG_LEVEL, default ${DEFAULTS.log_level})
  --config FILE       Configuration file, YAML (or JSON if it ends in .json)
                      (env TROUPE_CONFIG, default none)

Options for process:
  --input FILE        Records to process (required)
  --out DIR           Directory for the processed and failed records (required)
  --shards N          Worker threads to split the records over, by id
                      (default: one per 16 MiB of input, at most one per CPU and 4)
  --config FILE       Configuration file (env TROUPE_CONFIG)
  --log-level LEVEL   debug, info, warning or error (env TROUPE_LOG_LEVEL)

Global options:
  -h, --help          Show this help
  -V, --version       Show the version

A command-line flag beats its environment variable, which beats the
configuration file, which beats the default.

Examples:
  troupe
  troupe serve --port 9000 --status
  TROUPE_PORT=9000 troupe --config troupe.yaml
  troupe process --input records.jsonl --out out/`;

/**
 * Parses the command line. `args` excludes the runtime and script
 * (`process.argv.slice(2)` or `Deno.args`); `env` holds the environment
 * variables (an empty value counts as unset). `--help` and `--version` win
 * over everything else on the line. Never throws.
 *
 * @example
 * ```ts
 * const parsed = parseCommand(["--port", "9000"], { TROUPE_HOST: "0.0.0.0" }, "0.1.0");
 * // { ok: true, value: { kind: "serve", overrides: { server: { port: 9000, host: "0.0.0.0" } } } }
 * ```
 */
export function parseCommand(
  args: string[],
  env: Record<string, string | undefined>,
  version: string,
): CommandResult {
  let tokens;
  try {
    ({ tokens } = parseArgs({
      args,
      options: SPECS,
      strict: false,
      allowPositionals: true,
      tokens: true,
    }));
  } catch (error) {
    return fail(error instanceof Error ? error.message : String(error));
  }

  if (tokens.some((t) => t.kind === "option" && t.name === "help")) {
    return { ok: true, value: { kind: "help", text: HELP_TEXT } };
  }
  if (tokens.some((t) => t.kind === "option" && t.name === "version")) {
    return { ok: true, value: { kind: "version", text: `troupe ${version}` } };
  }

  let command: string | undefined;
  const values = new Map<OptionName, string | true>();
  for (const token of tokens) {
    if (token.kind === "option-terminator") continue;
    if (token.kind === "positional") {
      if (command !== undefined) return fail(`Unexpected argument "${token.value}"`);
      command = token.value;
      continue;
    }
    if (!Object.hasOwn(OPTIONS, token.name)) return fail(`Unknown option "${token.rawName}"`);
    const name = token.name as OptionName;
    if (OPTIONS[name].type === "boolean") {
      if (token.value !== undefined) {
        return fail(`Option "${token.rawName}" takes no value (got "${token.value}")`);
      }
      values.set(name, true);
    } else {
      // Without "=", a value that looks like an option means the real value was forgotten.
      if (token.value === undefined || (!token.inlineValue && token.value.startsWith("--"))) {
        return fail(`Option "${token.rawName}" needs a value`);
      }
      values.set(name, token.value);
    }
  }

  if (command === "help") return { ok: true, value: { kind: "help", text: HELP_TEXT } };
  const kind = (command ?? "serve") as CommandName;
  if (!COMMANDS.includes(kind)) {
    return fail(`Unknown command "${command}" (expected "serve" or "process")`);
  }
  for (const name of values.keys()) {
    const commands = SPECS[name].commands;
    if (commands && !commands.includes(kind)) {
      return fail(`Option "--${name}" does not apply to the "${kind}" command`);
    }
  }

  const flag = (name: OptionName) => {
    const value = values.get(name);
    return typeof value === "string" ? value : undefined;
  };
  const fromEnv = (name: string) => (env[name] === "" ? undefined : env[name]);
  /** The flag's value, or else the environment variable's, with where it came from. */
  const pick = (name: OptionName, envName: string) => {
    const value = flag(name);
    if (value !== undefined) return { value, source: `--${name}` };
    const envValue = fromEnv(envName);
    return envValue === undefined ? undefined : { value: envValue, source: envName };
  };

  const overrides: Record<string, unknown> = {};
  const configFile = pick("config", "TROUPE_CONFIG")?.value;
  const logLevel = pick("log-level", "TROUPE_LOG_LEVEL");
  if (logLevel) overrides.log_level = logLevel.value;

  if (kind === "process") {
    const input = flag("input");
    const out = flag("out");
    if (input === undefined) return fail(`The "process" command needs --input FILE`);
    if (out === undefined) return fail(`The "process" command needs --out DIR`);
    const shards = flag("shards");
    if (shards !== undefined) {
      const number = toInteger(shards);
      if (number === undefined) return fail(`--shards must be a whole number (got "${shards}")`);
      overrides.process = { shards: number };
    }
    return { ok: true, value: { kind, input, out, overrides, ...optional({ configFile }) } };
  }

  const server: Record<string, unknown> = {};
  const port = pick("port", "TROUPE_PORT");
  if (port) {
    const number = toInteger(port.value);
    if (number === undefined) {
      return fail(`${port.source} must be a port number (got "${port.value}")`);
    }
    server.port = number;
  }
  const host = pick("host", "TROUPE_HOST");
  if (host) server.host = host.value;
  if (Object.keys(server).length > 0) overrides.server = server;
  const data = pick("data", "TROUPE_DATA");
  if (data) overrides.data = data.value;
  if (values.get("status") === true) {
    overrides.status = true;
  } else {
    const status = fromEnv("TROUPE_STATUS");
    if (status !== undefined) {
      const flagValue = toBoolean(status);
      if (flagValue === undefined) {
        return fail(`TROUPE_STATUS must be "1", "true", "0" or "false" (got "${status}")`);
      }
      overrides.status = flagValue;
    }
  }
  return { ok: true, value: { kind, overrides, ...optional({ configFile }) } };
}

function fail(error: string): { ok: false; error: string } {
  return { ok: false, error };
}

/** Drops `undefined` values, so an absent option leaves no key behind. */
function optional<T extends Record<string, unknown>>(fields: T): Partial<T> {
  return Object.fromEntries(Object.entries(fields).filter(([, v]) => v !== undefined)) as Partial<
    T
  >;
}

/** A whole number written in decimal, or `undefined`; range checks are the schema's. */
function toInteger(text: string): number | undefined {
  const trimmed = text.trim();
  return /^[+-]?\d+$/.test(trimmed) ? Number(trimmed) : undefined;
}

function toBoolean(text: string): boolean | undefined {
  const lower = text.trim().toLowerCase();
  if (["1", "true", "yes", "on"].includes(lower)) return true;
  if (["0", "false", "no", "off"].includes(lower)) return false;
  return undefined;
}
