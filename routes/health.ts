/**
 * @module
 * `GET /healthz` (the process answers) and `GET /readyz` (storage open,
 * supervisors up, not shutting down; 503 with the failing checks
 * otherwise). Load balancers take traffic away on `/readyz`; only a dead
 * process fails `/healthz`.
 */
import { Hono } from "hono";
import type { TroupeSystem } from "../actors/mod.ts";
import type { AppEnv } from "./_middleware.ts";

/** Health and readiness routes. */
export function createHealthRoutes(deps: { system: TroupeSystem; version: string }): Hono<AppEnv> {
  const { system, version } = deps;
  const app = new Hono<AppEnv>();
  const started = Date.now();

  app.get(
    "/healthz",
    (c) =>
      c.json({ status: "ok", version, uptime_seconds: Math.round((Date.now() - started) / 1000) }),
  );

  app.get("/readyz", (c) => {
    const { ready, checks } = system.readiness();
    if (ready) return c.json({ status: "ready", checks });
    c.header("retry-after", "5");
    return c.json(
      {
        status: "not_ready",
        checks,
        error: {
          code: "not_ready",
          message: checks.filter((x) => !x.ok).map((x) => x.message ?? x.name).join("; "),
          details: { failing: checks.filter((x) => !x.ok).map((x) => x.name) },
        },
      },
      503,
    );
  });

  return app;
}
