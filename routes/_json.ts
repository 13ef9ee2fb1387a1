/**
 * @module
 * Reads a JSON request body against a valibot schema, the same way for
 * every route that takes one: 400 `invalid_json` when the body is not
 * JSON, 422 with the caller's code and every issue (`path`, `message`)
 * when it does not match.
 */
import type { Context } from "hono";
import * as v from "valibot";
import { ApiError } from "./_errors.ts";
import type { AppEnv } from "./_middleware.ts";

/**
 * The body of `c`, parsed by `schema`, or throws the {@linkcode ApiError}
 * that answers it.
 *
 * @example
 * ```ts
 * const metric = await jsonBody(c, CustomMetric, "invalid_metric", "Invalid custom metric");
 * ```
 */
export async function jsonBody<S extends v.GenericSchema>(
  c: Context<AppEnv>,
  schema: S,
  code: string,
  message: string,
): Promise<v.InferOutput<S>> {
  let json: unknown;
  try {
    json = await c.req.json();
  } catch (error) {
    throw new ApiError(400, "invalid_json", `Body is not JSON: ${(error as Error).message}`);
  }
  const parsed = v.safeParse(schema, json);
  if (!parsed.success) {
    throw new ApiError(422, code, message, {
      details: {
        issues: parsed.issues.map((i) => ({ path: v.getDotPath(i) ?? "", message: i.message })),
      },
    });
  }
  return parsed.output;
}
