/**
 * @module
 * The ceiling of troupe's ingest path: the same HTTP stack as `main.ts
 * serve` (Hono on `Deno.serve` or `Bun.serve` through `lib/serve.ts`, the
 * body reader `readRecords` of `lib/body.ts`), but `POST /v1/records` only
 * reads the records and answers `{"accepted":N}`. Measured with the same
 * generator in the same run as the real server, it turns the end-to-end
 * figure into a ratio that holds when the machine's speed drifts.
 *
 * Modes:
 * - `parse` (default): read and parse the body.
 * - `validate`: also check each record against `DataRecord`
 *   (`lib/schemas.ts`) with `v.safeParse`, as the validate stage does;
 *   answers `{"accepted":valid,"rejected":invalid}`.
 *
 * `--middleware` mounts the middleware of `main.ts` (request id, HTTP
 * metrics, access log on stderr) in front, to price it.
 *
 * Prints `listening on http://127.0.0.1:PORT` once it listens; stops on
 * SIGTERM or SIGINT.
 *
 * Run: `deno run -A bench/ceiling_server.ts [--port P] [--mode parse|validate] [--middleware]`
 * or `bun bench/ceiling_server.ts ...`.
 */
import { Hono } from "hono";
import process from "node:process";
import { parseArgs } from "node:util";
import * as v from "valibot";
import { DEFAULT_BODY_LIMITS, readRecords } from "../lib/body.ts";
import { getLog, setupLogging } from "../lib/log.ts";
import { createMetrics } from "../lib/metrics.ts";
import { DataRecord } from "../lib/schemas.ts";
import { serve, type Server } from "../lib/serve.ts";
import { accessLog, type AppEnv, httpMetrics, requestId } from "../routes/_middleware.ts";

/** What the ceiling handler does with the records it read. */
export type CeilingMode = "parse" | "validate";

/** Options of {@linkcode createCeilingApp}. */
export interface CeilingOptions {
  /** @default "parse" */
  mode?: CeilingMode;
  /** Mount request id, HTTP metrics and access log as `main.ts` does. @default false */
  middleware?: boolean;
}

/**
 * Builds the ceiling app: `POST /v1/records` reads the body and answers
 * `{"accepted":N}` (400/413/415 with the body error otherwise).
 *
 * @example
 * ```ts
 * const app = createCeilingApp({ mode: "validate" });
 * const res = await app.request("/v1/records", {
 *   method: "POST",
 *   headers: { "content-type": "application/x-ndjson" },
 *   body: '{"id":1,"timestamp":"2025-01-15T10:00:00Z","user_id":"u","event":"e","value":1}\n',
 * });
 * await res.json(); // { accepted: 1, rejected: 0 }
 * ```
 */
export function createCeilingApp(options: CeilingOptions = {}): Hono<AppEnv> {
  const mode = options.mode ?? "parse";
  const app = new Hono<AppEnv>();
  if (options.middleware) {
    app.use(requestId());
    app.use(httpMetrics(createMetrics()));
    app.use(accessLog(getLog("http")));
  }
  app.post("/v1/records", async (c) => {
    const body = await readRecords(c.req.raw, DEFAULT_BODY_LIMITS);
    if (!body.ok) {
      const { status, code, message } = body.error;
      return c.json({ error: { code, message } }, status);
    }
    if (mode === "parse") return c.json({ accepted: body.value.length });
    let accepted = 0;
    for (const record of body.value) {
      if (v.safeParse(DataRecord, record).success) accepted++;
    }
    return c.json({ accepted, rejected: body.value.length - accepted });
  });
  return app;
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: process.argv.slice(2),
    options: {
      port: { type: "string", default: "0" },
      mode: { type: "string", default: "parse" },
      middleware: { type: "boolean", default: false },
    },
  });
  const mode = values.mode;
  if (mode !== "parse" && mode !== "validate") {
    process.stderr.write(`ceiling_server: --mode must be parse or validate (got "${mode}")\n`);
    process.exit(2);
  }
  if (values.middleware) await setupLogging({ level: "info" });
  const app = createCeilingApp({ mode, middleware: values.middleware });
  const server: Server = serve(app.fetch, { hostname: "127.0.0.1", port: Number(values.port) });
  process.stdout.write(`listening on http://127.0.0.1:${server.port} (mode ${mode})\n`);
  const stop = async () => {
    await server.shutdown();
    process.exit(0);
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}
