/**
 * @module
 * Admin routes, mounted only when a token is set (`auth.token` or
 * `TROUPE_TOKEN`), behind the same bearer check as the rest of `/v1`.
 *
 * | route | answer |
 * |---|---|
 * | `GET /v1/admin/faults` | the fault plan in force |
 * | `PUT /v1/admin/faults` | replaces it (a `FaultPlan`, see `lib/faults.ts`); `{}` turns faults off |
 */
import { Hono } from "hono";
import * as v from "valibot";
import { type FaultInjector, FaultPlan } from "../lib/faults.ts";
import { ApiError } from "./_errors.ts";
import type { AppEnv } from "./_middleware.ts";

/** Routes for operators. */
export function createAdminRoutes(deps: { faults: FaultInjector }): Hono<AppEnv> {
  const { faults } = deps;
  const app = new Hono<AppEnv>();

  app.get("/v1/admin/faults", (c) => c.json(faults.plan));

  app.put("/v1/admin/faults", async (c) => {
    let json: unknown;
    try {
      json = await c.req.json();
    } catch (error) {
      throw new ApiError(400, "invalid_json", `Body is not JSON: ${(error as Error).message}`);
    }
    const plan = v.safeParse(FaultPlan, json);
    if (!plan.success) {
      throw new ApiError(422, "invalid_fault_plan", "Invalid fault plan", {
        details: {
          issues: plan.issues.map((i) => ({ path: v.getDotPath(i) ?? "", message: i.message })),
        },
      });
    }
    faults.set(plan.output);
    return c.json(faults.plan);
  });

  return app;
}
