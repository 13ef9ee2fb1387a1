/**
 * @module
 * Alert silences over HTTP. A silence stops the notifier from telling
 * Alertmanager and the webhook about the alerts it matches, until it ends
 * or is deleted; `GET /v1/alerts` marks those alerts `silenced`.
 *
 * | route | answer |
 * |---|---|
 * | `POST /v1/alerts/silences` | body `{"alertname"?, "alert_id"?, "matchers"?: {label: value}, "duration": 3600 \| "1h", "comment"?}` → 201 the silence; 400 not JSON, 422 invalid |
 * | `GET /v1/alerts/silences` | `{"silences":[{"id","matchers","alert_id","comment","created_at","starts_at","ends_at","state"}]}`, active first |
 * | `DELETE /v1/alerts/silences/:id` | 204; 404 when unknown |
 */
import { Hono } from "hono";
import { newSilence, SilenceRequest, type SilenceStore } from "../lib/silences.ts";
import { ApiError } from "./_errors.ts";
import { jsonBody } from "./_json.ts";
import type { AppEnv } from "./_middleware.ts";

/** Silence routes over `silences`. */
export function createSilenceRoutes(deps: { silences: SilenceStore }): Hono<AppEnv> {
  const { silences } = deps;
  const app = new Hono<AppEnv>();

  app.get("/v1/alerts/silences", (c) => c.json({ silences: silences.list() }));

  app.post("/v1/alerts/silences", async (c) => {
    const request = await jsonBody(c, SilenceRequest, "invalid_silence", "Invalid silence");
    const silence = silences.add(newSilence(request));
    if (silence === undefined) {
      throw new ApiError(422, "too_many_silences", "Too many silences: delete some first");
    }
    return c.json(silence, 201);
  });

  app.delete("/v1/alerts/silences/:id", (c) => {
    const id = c.req.param("id");
    if (!silences.remove(id)) throw new ApiError(404, "not_found", `No silence "${id}"`);
    return c.body(null, 204);
  });

  return app;
}
