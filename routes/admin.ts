/**
 * @module
 * Admin routes, mounted only when a token is set (`auth.token` or
 * `TROUPE_TOKEN`), behind the same bearer check as the rest of `/v1`.
 *
 * | route | answer |
 * |---|---|
 * | `GET /v1/admin/faults` | the fault plan in force |
 * | `PUT /v1/admin/faults` | replaces it (a `FaultPlan`, see `lib/faults.ts`); `{}` turns faults off |
 * | `GET /v1/admin/monitor` | `{"enabled": bool}`: whether the monitor runs |
 * | `PUT /v1/admin/monitor` | `{"enabled": bool}` stops or restarts the collector, alert rules and notifier; 409 when `monitor.enabled` is false in the config |
 */
import { Hono } from "hono";
import * as v from "valibot";
import type { TroupeSystem } from "../actors/mod.ts";
import { type FaultInjector, FaultPlan } from "../lib/faults.ts";
import { ApiError } from "./_errors.ts";
import { jsonBody } from "./_json.ts";
import type { AppEnv } from "./_middleware.ts";

/** Routes for operators. */
export function createAdminRoutes(
  deps: { faults: FaultInjector; system: TroupeSystem },
): Hono<AppEnv> {
  const { faults, system } = deps;
  const app = new Hono<AppEnv>();

  app.get("/v1/admin/faults", (c) => c.json(faults.plan));

  app.put("/v1/admin/faults", async (c) => {
    const plan = await jsonBody(c, FaultPlan, "invalid_fault_plan", "Invalid fault plan");
    faults.set(plan);
    return c.json(faults.plan);
  });

  app.get("/v1/admin/monitor", (c) => c.json({ enabled: system.monitorEnabled === true }));

  app.put("/v1/admin/monitor", async (c) => {
    const { enabled } = await jsonBody(c, MonitorSwitch, "invalid_body", "Invalid body");
    if (system.monitorEnabled === null) {
      throw new ApiError(
        409,
        "monitor_disabled",
        "The monitor is disabled in the configuration (monitor.enabled: false)",
      );
    }
    system.setMonitor(enabled);
    return c.json({ enabled: system.monitorEnabled });
  });

  return app;
}

/** Body of `PUT /v1/admin/monitor`. */
const MonitorSwitch = v.strictObject({ enabled: v.boolean() });
