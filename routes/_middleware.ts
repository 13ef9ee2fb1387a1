/**
 * @module
 * Middleware shared by the routes of troupe, mounted once on the root app in
 * `main.ts`, outermost first:
 *
 * ```ts
 * const app = new Hono<AppEnv>();
 * app.use(requestId());
 * app.use(accessLog(getLog("http")));
 * app.use(httpMetrics(metrics));
 * ```
 *
 * - {@linkcode requestId} gives every request an id (the client's
 *   `x-request-id` when it is a sane token) and echoes it in the response.
 * - {@linkcode httpMetrics} observes `troupe_http_request_duration_seconds`,
 *   labelled by route pattern so that label values stay bounded.
 * - {@linkcode accessLog} writes one structured line per request.
 */
import type { Context, MiddlewareHandler } from "hono";
import { matchedRoutes } from "hono/route";
import type { Logger } from "@logtape/logtape";
import type { Metrics } from "../lib/metrics.ts";

/** The Hono environment of troupe's apps: what middleware puts in the context. */
export type AppEnv = {
  Variables: {
    /** The id of the request, as set by {@linkcode requestId}. */
    requestId: string;
  };
};

/** Header carrying the request id, both ways. */
export const REQUEST_ID_HEADER = "x-request-id";

/** The `route` label of a request that matched no route. */
export const UNMATCHED_ROUTE = "unmatched";

/** A client's request id is kept only if it is a plain token; anything else could forge log lines. */
const SANE_REQUEST_ID = /^[A-Za-z0-9._-]{1,128}$/;

/** Methods labelled as they are; any other becomes `OTHER`, so clients cannot mint label values. */
const KNOWN_METHODS = new Set(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]);

/**
 * Sets the id of each request: the `x-request-id` header of the request if
 * it is 1 to 128 characters of `[A-Za-z0-9._-]`, a fresh
 * `crypto.randomUUID()` otherwise. The id is available as
 * `c.get("requestId")` and sent back in the `x-request-id` response header.
 *
 * @example
 * ```ts
 * const app = new Hono<AppEnv>();
 * app.use(requestId());
 * app.get("/", (c) => c.text(c.get("requestId")));
 * ```
 */
export function requestId(): MiddlewareHandler<AppEnv> {
  return async function requestId(c, next) {
    const given = c.req.header(REQUEST_ID_HEADER);
    const id = given !== undefined && SANE_REQUEST_ID.test(given) ? given : crypto.randomUUID();
    c.set("requestId", id);
    // Set before the handler runs so that responses built by the context
    // (c.json, onError, notFound) carry it ...
    c.header(REQUEST_ID_HEADER, id);
    await next();
    // ... and again for a handler that returned a Response of its own.
    if (c.res.headers.get(REQUEST_ID_HEADER) !== id) c.header(REQUEST_ID_HEADER, id);
  };
}

/**
 * Observes the duration of each request in
 * `troupe_http_request_duration_seconds{method,route,status}`.
 *
 * `route` is the pattern of the route that answered (`/v1/users/:user_id`),
 * never the raw path, so one series exists per route and not per user.
 * A request that no route answered, which is a 404 from the not-found
 * handler, is labelled `unmatched`. Methods outside the standard ones are
 * labelled `OTHER`.
 *
 * Mount it outside any middleware that may answer early (auth, body limit)
 * so that those answers are measured too; they are labelled with the pattern
 * of that middleware (`/v1/*`).
 */
export function httpMetrics(metrics: Metrics): MiddlewareHandler {
  return async function httpMetrics(c, next) {
    const start = performance.now();
    let status = 500;
    try {
      await next();
      status = c.res.status;
    } finally {
      metrics.httpDuration.observe(
        { method: methodLabel(c.req.method), route: routeLabel(c, status), status: String(status) },
        (performance.now() - start) / 1000,
      );
    }
  };
}

/**
 * Writes one log record per request once it is answered, with the
 * properties `method`, `path` (without the query string, which may carry
 * secrets), `status`, `duration_ms` and `request_id` (when
 * {@linkcode requestId} runs before it). Answers with a 5xx status are
 * logged at level `error`, all others at `info`.
 *
 * @example
 * ```ts
 * app.use(accessLog(getLog("http")));
 * // {"@timestamp":"...","level":"INFO","message":"HTTP request","logger":"troupe.http",
 * //  "method":"GET","path":"/healthz","status":200,"duration_ms":0.412,"request_id":"..."}
 * ```
 */
export function accessLog(logger: Logger): MiddlewareHandler<AppEnv> {
  return async function accessLog(c, next) {
    const start = performance.now();
    let status = 500;
    try {
      await next();
      status = c.res.status;
    } finally {
      const properties = {
        method: c.req.method,
        path: c.req.path,
        status,
        duration_ms: Math.round((performance.now() - start) * 1000) / 1000,
        request_id: c.get("requestId"),
      };
      if (status >= 500) logger.error("HTTP request", properties);
      else logger.info("HTTP request", properties);
    }
  };
}

function methodLabel(method: string): string {
  return KNOWN_METHODS.has(method) ? method : "OTHER";
}

/**
 * The pattern of the route that answered. When no route answered, Hono has
 * run every matched middleware (all registered with `use`, method `ALL`)
 * and then its not-found handler, so the last one dispatched is a
 * middleware and the status is 404.
 */
function routeLabel(c: Context, status: number): string {
  const route = matchedRoutes(c)[c.req.routeIndex];
  if (route === undefined) return UNMATCHED_ROUTE;
  if (status === 404 && route.method === "ALL") return UNMATCHED_ROUTE;
  return route.path;
}
