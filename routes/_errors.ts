/**
 * @module
 * The one error shape of the API, `{"error":{"code","message","details"}}`,
 * and the `onError` / `notFound` handlers that make every failure answer
 * with it. Handlers throw {@linkcode ApiError}; a store that cannot reach
 * PostgreSQL answers 503 with `Retry-After`; anything else that escapes a
 * handler is a bug and answers 500 without leaking its message.
 */
import type { Context, ErrorHandler, NotFoundHandler } from "hono";
import { HTTPException } from "hono/http-exception";
import type { ContentfulStatusCode } from "hono/utils/http-status";
import type { Logger } from "@logtape/logtape";

/** The JSON body of every error answer. */
export interface ErrorBody {
  error: { code: string; message: string; details: Record<string, unknown> | null };
}

/** Builds an error body. */
export function errorBody(
  code: string,
  message: string,
  details: Record<string, unknown> | null = null,
): ErrorBody {
  return { error: { code, message, details } };
}

/** An expected failure of a request, with its status, code and details. */
export class ApiError extends HTTPException {
  readonly code: string;
  readonly details: Record<string, unknown> | null;
  readonly headers: Record<string, string>;

  constructor(
    status: ContentfulStatusCode,
    code: string,
    message: string,
    options: {
      details?: Record<string, unknown> | null;
      headers?: Record<string, string>;
      cause?: unknown;
    } = {},
  ) {
    super(status, { message, cause: options.cause });
    this.name = "ApiError";
    this.code = code;
    this.details = options.details ?? null;
    this.headers = options.headers ?? {};
  }
}

const CODES: Record<number, string> = {
  400: "bad_request",
  401: "unauthorized",
  404: "not_found",
  405: "method_not_allowed",
  413: "payload_too_large",
  415: "unsupported_media_type",
  422: "unprocessable",
  429: "too_many_requests",
  503: "unavailable",
};

/** Maps anything thrown by a handler to a JSON error answer. */
export function onError(log: Logger): ErrorHandler {
  return (err: Error, c: Context) => {
    if (err instanceof ApiError) {
      for (const [k, v] of Object.entries(err.headers)) c.header(k, v);
      return c.json(errorBody(err.code, err.message, err.details), err.status);
    }
    if (err instanceof HTTPException && err.res !== undefined) return err.getResponse();
    if (err instanceof HTTPException) {
      const status = err.status as ContentfulStatusCode;
      return c.json(errorBody(CODES[status] ?? "error", err.message || "Request failed"), status);
    }
    // PostgreSQL out of reach is a state of the service, not a bug: retry later.
    if (err.name === "PostgresStoreError" && (err as { connection?: unknown }).connection) {
      log.warning("Storage unavailable on {method} {path}: {error}", {
        method: c.req.method,
        path: c.req.path,
        error: err.message,
      });
      c.header("retry-after", "5");
      return c.json(errorBody("unavailable", "Storage is unavailable; retry later"), 503);
    }
    log.error("Unhandled error on {method} {path}: {error}", {
      method: c.req.method,
      path: c.req.path,
      error: err,
    });
    return c.json(errorBody("internal", "Internal error; the request was not processed"), 500);
  };
}

/** Answers 404 in the API's error shape. */
export const notFound: NotFoundHandler = (c) =>
  c.json(errorBody("not_found", `No route for ${c.req.method} ${c.req.path}`), 404);
