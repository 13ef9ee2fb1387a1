/**
 * @module
 * The effective configuration, read-only and with its secrets masked:
 * `GET /v1/config` answers the parsed {@linkcode Config} (every default
 * filled in) as JSON, for the dashboard and for anyone asking "what is this
 * instance running with?".
 *
 * Masked as `***`: every value under a key that names a secret (`token`,
 * `password`, `secret`, `api_key`…) and the password of every URL in any
 * string (`postgres://user:***@host/db`), so storage and queue URLs can be
 * shown without their credentials.
 */
import { Hono } from "hono";
import { type Config, maskPassword } from "../lib/config.ts";
import type { AppEnv } from "./_middleware.ts";

/** What a masked secret reads. */
export const MASK = "***";

const SECRET_KEY = /(^|_)(token|password|passwd|secret|api_key|apikey|credentials?)$/i;

/**
 * A deep copy of `value` with its secrets masked: values of secret-named
 * keys become `***` (unless `null`, which says "not set"), and URL
 * passwords are masked in every string.
 */
export function maskSecrets(value: unknown, key = ""): unknown {
  if (value === null || value === undefined) return value;
  if (key !== "" && SECRET_KEY.test(key)) return MASK;
  if (typeof value === "string") return maskPassword(value);
  if (Array.isArray(value)) return value.map((v) => maskSecrets(v));
  if (typeof value === "object") {
    return Object.fromEntries(
      Object.entries(value as Record<string, unknown>).map(([k, v]) => [k, maskSecrets(v, k)]),
    );
  }
  return value;
}

/** `GET /v1/config`. */
export function createConfigRoutes(deps: { config: Config }): Hono<AppEnv> {
  const app = new Hono<AppEnv>();
  // Computed once: the configuration does not change while running.
  const masked = maskSecrets(deps.config);
  app.get("/v1/config", (c) => c.json(masked as Record<string, unknown>));
  return app;
}
