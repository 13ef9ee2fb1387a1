/**
 * @module
 * Read-only views of what is stored: users and events aggregates, single
 * records, failed records. All read through one {@linkcode StoreReader}.
 *
 * | route | answer |
 * |---|---|
 * | `GET /v1/users/:user_id` | one user aggregate, 404 when unknown |
 * | `GET /v1/users?limit=&cursor=` | `{"users":{"user_001":{...}},"next_cursor"}` |
 * | `GET /v1/events/:event` | one event aggregate, 404 when unknown |
 * | `GET /v1/records/:id` | the stored, transformed record, 404 when unknown |
 * | `GET /v1/failed?limit=&stage=` | `{"failed":[...]}`, newest first |
 */
import { Hono } from "hono";
import { FAILURE_STAGES } from "../lib/schemas.ts";
import type { StoreReader } from "../lib/store.ts";
import { ApiError } from "./_errors.ts";
import type { AppEnv } from "./_middleware.ts";

/** Largest page a list route returns. */
export const MAX_PAGE = 1000;

/** Parses a `limit` query parameter: an integer from 1 to {@linkcode MAX_PAGE}. */
export function parseLimit(raw: string | undefined, fallback: number): number {
  if (raw === undefined || raw === "") return fallback;
  const n = Number(raw);
  if (!/^\d+$/.test(raw) || !Number.isSafeInteger(n) || n < 1 || n > MAX_PAGE) {
    throw new ApiError(
      400,
      "invalid_query",
      `limit must be an integer from 1 to ${MAX_PAGE}, got "${raw}"`,
      {
        details: { parameter: "limit", value: raw },
      },
    );
  }
  return n;
}

/** Routes that read storage. */
export function createQueryRoutes(deps: { reader: StoreReader }): Hono<AppEnv> {
  const { reader } = deps;
  const app = new Hono<AppEnv>();

  app.get("/v1/users/:user_id", async (c) => {
    const userId = c.req.param("user_id");
    const user = await reader.getUser(userId);
    if (user === undefined) throw new ApiError(404, "not_found", `No user "${userId}"`);
    return c.json(user);
  });

  app.get("/v1/users", async (c) => {
    const limit = parseLimit(c.req.query("limit"), 100);
    const page = await reader.listUsers(limit, c.req.query("cursor") || undefined);
    const users: Record<string, unknown> = {};
    for (const { user_id, ...rest } of page.users) users[user_id] = rest;
    return c.json({ users, next_cursor: page.next_cursor });
  });

  app.get("/v1/events/:event", async (c) => {
    const event = c.req.param("event");
    const found = await reader.getEvent(event) ?? await reader.getEvent(event.trim().toLowerCase());
    if (found === undefined) throw new ApiError(404, "not_found", `No event "${event}"`);
    return c.json(found);
  });

  app.get("/v1/records/:id", async (c) => {
    const id = c.req.param("id");
    const record = await reader.getRecord(id);
    if (record === undefined) throw new ApiError(404, "not_found", `No record with id "${id}"`);
    return c.json(record);
  });

  app.get("/v1/failed", async (c) => {
    const limit = parseLimit(c.req.query("limit"), 100);
    const stage = c.req.query("stage") || undefined;
    if (stage !== undefined && !(FAILURE_STAGES as readonly string[]).includes(stage)) {
      throw new ApiError(
        400,
        "invalid_query",
        `stage must be one of ${FAILURE_STAGES.join(", ")}, got "${stage}"`,
        {
          details: { parameter: "stage", value: stage },
        },
      );
    }
    return c.json({ failed: await reader.listFailed(limit, stage) });
  });

  return app;
}
