/**
 * @module
 * Structured logs: one JSON object per line on stderr, through LogTape.
 *
 * ```json
 * {"@timestamp":"2026-01-01T00:00:00.000Z","level":"INFO","message":"HTTP request","logger":"troupe.http","method":"GET","status":200}
 * ```
 *
 * Lines come from LogTape's JSON Lines formatter with the properties of the
 * record flattened into the object (`level` is `DEBUG`, `INFO`, `WARN` or
 * `ERROR`; `logger` is the category joined with dots). Errors among the
 * properties are written as `{ name, message, stack, cause }`.
 *
 * A log call never waits on stderr: by default records go to LogTape's
 * stream sink in non-blocking mode, which buffers them and writes them later,
 * every 100 ms or as soon as 200 records wait. A log call costs about 4 to 8
 * µs; writing costs about 7 to 20 µs per record, paid in the flush, which
 * runs as one chain of microtasks, so a flush of 200 records holds the event
 * loop for 2 to 4 ms (measured on Deno and Bun, 2 cores; a buffer of 1000
 * held it for 10 to 20 ms, hence the small buffer).
 *
 * When more than 400 records wait (stderr cannot keep up, or one synchronous
 * burst logs that many), the oldest are dropped and one line says how many:
 * logs never grow memory without bound.
 *
 * The flush timer runs from the first log line until {@linkcode closeLogging},
 * which `main.ts` awaits on shutdown so the last lines are written (LogTape's
 * own exit hook cannot wait for asynchronous writes).
 */
import { Writable } from "node:stream";
import process from "node:process";
import {
  configure,
  getJsonLinesFormatter,
  getLogger,
  getStreamSink,
  type Logger,
  type LogRecord,
  reset,
  type Sink,
} from "@logtape/logtape";

/** Log levels troupe can be configured with, lowest first. */
export type LogLevel = "debug" | "info" | "warning" | "error";

/** Options of {@linkcode setupLogging}. */
export interface SetupLoggingOptions {
  /** The lowest level written; records below it are discarded. */
  level: LogLevel;
  /**
   * Receives each formatted line, without its trailing newline, as soon as
   * it is logged (tests capture lines with it).
   *
   * @default a non-blocking writer of `line + "\n"` to stderr
   */
  sink?: (line: string) => void;
}

/** Records waiting for stderr before a background flush starts. */
const BUFFER_SIZE = 200;
/** Milliseconds between background flushes of a partly filled buffer. */
const FLUSH_INTERVAL_MS = 100;

/**
 * Configures logging for the whole process, replacing any earlier
 * configuration. Loggers from {@linkcode getLog} may be taken before or
 * after; they write nothing until this has run.
 *
 * @example
 * ```ts
 * await setupLogging({ level: "info" });
 * getLog("http").info("Listening on {url}", { url: "http://127.0.0.1:8080" });
 * ```
 */
export async function setupLogging(options: SetupLoggingOptions): Promise<void> {
  const formatter = getJsonLinesFormatter({ properties: "flatten", categorySeparator: "." });
  const sink = options.sink === undefined
    ? stderrSink(formatter)
    : lineSink(options.sink, formatter);
  await configure({
    reset: true,
    sinks: { main: sink },
    loggers: [
      { category: ["troupe"], lowestLevel: options.level, sinks: ["main"] },
      // LogTape reports its own sink failures here; without this entry it
      // would also print an informational notice on the console.
      { category: ["logtape", "meta"], lowestLevel: "warning", sinks: ["main"] },
    ],
  });
}

/**
 * Writes the buffered log lines, stops the flush timer and removes the
 * configuration: loggers write nothing until the next
 * {@linkcode setupLogging}.
 */
export async function closeLogging(): Promise<void> {
  await reset();
}

/**
 * Returns the logger of one part of troupe, category `["troupe", category]`
 * (`"logger":"troupe.<category>"` in the output).
 *
 * @example
 * ```ts
 * const log = getLog("pipeline");
 * log.warning("Stage {stage} restarted", { stage: "validate", error });
 * ```
 */
export function getLog(category: string): Logger {
  return getLogger(["troupe", category]);
}

function lineSink(write: (line: string) => void, formatter: (record: LogRecord) => string): Sink {
  return (record) => {
    const text = formatter(record);
    write(text.endsWith("\n") ? text.slice(0, -1) : text);
  };
}

function stderrSink(formatter: (record: LogRecord) => string): Sink {
  return getStreamSink(Writable.toWeb(process.stderr) as WritableStream<Uint8Array>, {
    formatter,
    // stderr belongs to the process, not to the logger: disposing the sink
    // must not close it.
    closeStream: false,
    nonBlocking: {
      bufferSize: BUFFER_SIZE,
      flushInterval: FLUSH_INTERVAL_MS,
      onDrop: ({ count }) => {
        // Straight to stderr: logging through the sink from here is ignored.
        process.stderr.write(
          JSON.stringify({
            "@timestamp": new Date().toISOString(),
            level: "WARN",
            message: `Dropped ${count} log records: more than ${
              2 * BUFFER_SIZE
            } were waiting for stderr`,
            logger: "troupe.log",
            dropped: count,
          }) + "\n",
        );
      },
    },
  });
}
