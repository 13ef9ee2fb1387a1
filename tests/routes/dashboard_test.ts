import assert from "node:assert/strict";
import { DASHBOARD_ASSETS } from "../../routes/_dashboard_assets.ts";
import { createDashboardRoutes, DASHBOARD_CSP } from "../../routes/dashboard.ts";

Deno.test("createDashboardRoutes serves the embedded page with a strict CSP and ETags", async (t) => {
  const app = createDashboardRoutes({ tokenRequired: true });

  await t.step("/ redirects to /dashboard", async () => {
    const res = await app.request("/");
    assert.equal(res.status, 302);
    assert.equal(res.headers.get("location"), "/dashboard");
  });

  await t.step("/dashboard is the HTML page, revalidated by its ETag", async () => {
    const res = await app.request("/dashboard");
    assert.equal(res.status, 200);
    assert.equal(res.headers.get("content-type"), "text/html; charset=utf-8");
    assert.equal(res.headers.get("content-security-policy"), DASHBOARD_CSP);
    assert.equal(res.headers.get("cache-control"), "no-cache");
    assert.equal(res.headers.get("x-content-type-options"), "nosniff");
    const etag = res.headers.get("etag")!;
    assert.match(etag, /^"[0-9a-f]{32}"$/);
    const html = await res.text();
    assert.match(html, /<title>troupe · dashboard<\/title>/);
    const again = await app.request("/dashboard", { headers: { "if-none-match": etag } });
    assert.equal(again.status, 304);
    assert.equal(await again.text(), "");
    const other = await app.request("/dashboard", { headers: { "if-none-match": '"x"' } });
    assert.equal(other.status, 200);
  });

  await t.step("the page loads nothing inline and nothing from elsewhere", () => {
    const html = DASHBOARD_ASSETS["/dashboard"].body;
    assert.doesNotMatch(html, /<script(?![^>]*\bsrc=)[^>]*>/, "no inline script");
    assert.doesNotMatch(html, /<style\b/, "no inline style element");
    assert.doesNotMatch(html, /\sstyle=/, "no style attribute");
    assert.doesNotMatch(html, /\son[a-z]+=/, "no inline event handler");
    assert.doesNotMatch(html, /(src|href)="(https?:)?\/\//, "nothing from another origin");
    assert.match(DASHBOARD_CSP, /script-src 'self'(;|$)/);
    assert.doesNotMatch(DASHBOARD_CSP, /unsafe/);
  });

  await t.step(
    "its script and styles are cached for good: their URLs carry their hash",
    async () => {
      const html = DASHBOARD_ASSETS["/dashboard"].body;
      for (
        const [path, type] of [["/dashboard/app.js", "text/javascript"], [
          "/dashboard/app.css",
          "text/css",
        ]]
      ) {
        const res = await app.request(path);
        assert.equal(res.status, 200);
        assert.equal(res.headers.get("content-type"), `${type}; charset=utf-8`);
        assert.equal(res.headers.get("cache-control"), "public, max-age=31536000, immutable");
        const hash = res.headers.get("etag")!.slice(1, 17);
        assert.ok(html.includes(`${path}?v=${hash}`), `the page names ${path} by its hash`);
        const body = await res.text();
        assert.match(body, /uPlot/);
      }
    },
  );

  await t.step("auth.json tells whether the API needs the token", async () => {
    const res = await app.request("/dashboard/auth.json");
    assert.equal(res.headers.get("cache-control"), "no-store");
    assert.deepEqual(await res.json(), { token_required: true });
    const open = createDashboardRoutes({ tokenRequired: false });
    assert.deepEqual(await (await open.request("/dashboard/auth.json")).json(), {
      token_required: false,
    });
  });
});
