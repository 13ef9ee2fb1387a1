/**
 * @module
 * The dashboard: one page embedded in the binary (built from `web/` by
 * `scripts/build_dashboard.ts` into `routes/_dashboard_assets.ts`), with
 * uPlot bundled in; no CDN, nothing built at run time, works offline.
 *
 * | route | answer |
 * |---|---|
 * | `GET /` | 302 to `/dashboard` |
 * | `GET /dashboard` | the page (`no-cache`: revalidated with its ETag) |
 * | `GET /dashboard/app.js`, `/dashboard/app.css` | the script and styles; the page names them with their content hash, so they are cached for a year |
 * | `GET /dashboard/auth.json` | `{"token_required"}`: whether `/v1/*` needs the token, so the page asks for it before its first request rather than after a 401 |
 *
 * The page is public and holds no secret; what it shows comes from `/v1/*`,
 * which needs the token when one is set: the page asks for it on the first
 * 401 and keeps it in session storage. Every answer carries a strict
 * Content-Security-Policy (same-origin scripts, styles and requests only;
 * no inline script), and `If-None-Match` is answered 304.
 */
import { Hono } from "hono";
import { DASHBOARD_ASSETS, type DashboardAsset } from "./_dashboard_assets.ts";
import type { AppEnv } from "./_middleware.ts";

/** The Content-Security-Policy of the dashboard's files. */
export const DASHBOARD_CSP = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data:",
  "connect-src 'self'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join("; ");

function answer(asset: DashboardAsset, ifNoneMatch: string | undefined, immutable: boolean) {
  const headers: Record<string, string> = {
    "content-type": asset.type,
    etag: asset.etag,
    "cache-control": immutable ? "public, max-age=31536000, immutable" : "no-cache",
    "content-security-policy": DASHBOARD_CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
  };
  const matches = ifNoneMatch?.split(",").some((t) => {
    const tag = t.trim();
    return tag === "*" || tag === asset.etag || tag === `W/${asset.etag}`;
  });
  if (matches) return new Response(null, { status: 304, headers });
  return new Response(asset.body, { status: 200, headers });
}

/** `/`, `/dashboard` and its files. */
export function createDashboardRoutes(
  options: { tokenRequired: boolean; assets?: Record<string, DashboardAsset> },
): Hono<AppEnv> {
  const assets = options.assets ?? DASHBOARD_ASSETS;
  const app = new Hono<AppEnv>();
  app.get("/dashboard/auth.json", (c) => {
    c.header("cache-control", "no-store");
    return c.json({ token_required: options.tokenRequired });
  });
  app.get("/", (c) => c.redirect("/dashboard", 302));
  app.get("/dashboard", (c) => answer(assets["/dashboard"], c.req.header("if-none-match"), false));
  for (const path of ["/dashboard/app.js", "/dashboard/app.css"]) {
    app.get(path, (c) => answer(assets[path], c.req.header("if-none-match"), true));
  }
  return app;
}
