/**
 * @module
 * The dashboard in a real browser: Debian's headless Chromium driven by
 * `playwright-core` (no browser downloaded), against a real troupe with a
 * token set and a rule that fires as soon as records are accepted.
 *
 * It checks what a person would: the page loads with no console error,
 * asks for the token once, draws its charts, its records/s figure rises
 * while records are posted, the firing alert shows (and can be silenced
 * from the page), the actor tree shows the pipeline, failed records can be
 * filtered, the configuration shows with the token masked, it fits a
 * phone-width screen, and its live feed reconnects by itself when troupe
 * restarts. Screenshots (1280×800 and 390×844) go to `tests/screenshots/`,
 * or to `$TROUPE_SCREENSHOTS` (`deno task screenshots` writes the README's,
 * in `docs/screenshots/`).
 *
 * playwright-core runs under Deno through its Node.js compatibility; only
 * the browser is a separate process.
 */
import assert from "node:assert/strict";
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import { type Browser, chromium, type Page } from "playwright-core";
import { FaultInjector } from "../lib/faults.ts";
import { ROOT } from "./_child_process.ts";
import { getJson, makeRecords, postRecords, startTestService } from "./_helpers.ts";

// In-page code is written as strings: these tests type-check without the DOM library.

/** True once every chart exists and holds more than one sample. */
const CHARTS_HAVE_DATA = `(() => {
  const charts = globalThis.troupeDashboard?.charts;
  return charts?.size === 7 && [...charts.values()].every((u) => u.data[0].length > 1);
})()`;

/** Inked (non-transparent) pixels of each chart canvas. */
const INKED_PIXELS = `[...document.querySelectorAll("#chart-grid canvas")].map((c) => {
  const { data } = c.getContext("2d").getImageData(0, 0, c.width, c.height);
  let n = 0;
  for (let i = 3; i < data.length; i += 4) if (data[i] > 0) n++;
  return n;
})`;

/** Tag and text of the focused element. */
const FOCUSED = `(() => {
  const e = document.activeElement;
  return e ? e.tagName.toLowerCase() + ":" + (e.textContent ?? "").trim() : "";
})()`;

/**
 * Polls `expression` in `page` until it is truthy. `page.waitForFunction`
 * cannot be used: it evaluates its predicate with `eval`, which the page's
 * Content-Security-Policy forbids (as it should).
 */
async function until(page: Page, expression: string, what: string): Promise<void> {
  const deadline = Date.now() + WAIT_MS;
  while (!(await page.evaluate(expression))) {
    if (Date.now() > deadline) throw new Error(`Timed out after ${WAIT_MS} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Debian's Chromium (`apt-get install chromium`). */
const CHROMIUM = "/usr/bin/chromium";
const TOKEN = "dashboard-test-token-0123456789";
const SHOTS = Deno.env.get("TROUPE_SCREENSHOTS") ?? join(ROOT, "tests", "screenshots");
const AUTH = { authorization: `Bearer ${TOKEN}` };
/** Longest wait for anything the page should show. */
const WAIT_MS = 15_000;

const RULE = {
  name: "RecordsAccepted",
  metric: "troupe_records_total",
  labels: { outcome: "accepted" },
  function: "value",
  op: ">",
  threshold: 0,
  for: 0,
  severity: "critical",
  summary: "Records were accepted",
  suggested_actions: ["Nothing to do: the dashboard test set this rule to fire"],
};

function launch(): Promise<Browser> {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ["--no-sandbox", "--disable-dev-shm-usage"],
    timeout: 30_000,
  });
}

/** Collects console errors and uncaught exceptions of `page`. */
function watchErrors(page: Page): string[] {
  const errors: string[] = [];
  page.on("console", (m) => {
    if (m.type() === "error") errors.push(`console: ${m.text()}`);
  });
  page.on("pageerror", (e) => errors.push(`pageerror: ${e.message}`));
  return errors;
}

/**
 * Posts records until `stop()` is called or `maxMs` passes: 200 fresh ones
 * every 100 ms, now and then a batch again (duplicates) and a few invalid
 * ones (rejected), so that every line of the records chart moves.
 */
function keepPosting(url: string, prefix: string, maxMs = 60_000) {
  let stopped = false;
  const done = (async () => {
    const deadline = Date.now() + maxMs;
    for (let i = 0; !stopped && Date.now() < deadline; i++) {
      const batch: unknown[] = makeRecords(200, `${prefix}-${i % 4 === 3 ? i - 1 : i}`);
      if (i % 10 === 4) {
        for (let k = 0; k < 3; k++) {
          batch.push({
            id: `junk-${i}-${k}`,
            timestamp: "soon",
            user_id: "u",
            event: "e",
            value: 1,
          });
        }
      }
      const res = await postRecords(url, batch, AUTH);
      assert.equal(res.status, 200);
      await new Promise((r) => setTimeout(r, 100));
    }
  })();
  return {
    stop: async () => {
      stopped = true;
      await done;
    },
  };
}

Deno.test({
  name: "the dashboard draws live charts, alerts and the actor tree in headless Chromium",
  // Playwright keeps a pipe to Chromium and timers of its own between steps.
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    await mkdir(SHOTS, { recursive: true });
    const overrides = {
      auth: { token: TOKEN },
      alerts: { evaluation_interval: "1s", rules: [RULE] },
    };
    const dir = await Deno.makeTempDir({ prefix: "troupe_dashboard_" });
    const faults = new FaultInjector();
    let svc = await startTestService(overrides, faults, dir);
    let browser: Browser | undefined;
    let traffic: ReturnType<typeof keepPosting> | undefined;
    try {
      browser = await launch();
      const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
      const page = await context.newPage();
      page.setDefaultTimeout(WAIT_MS);
      const errors = watchErrors(page);

      await t.step("/ redirects to /dashboard, which asks for the token once", async () => {
        const res = await page.goto(`${svc.url}/`);
        assert.equal(res?.status(), 200);
        assert.equal(new URL(page.url()).pathname, "/dashboard");
        assert.match(res?.headers()["content-security-policy"] ?? "", /script-src 'self'/);
        await page.locator("#token-dialog[open]").waitFor();
        await page.locator("#token-input").fill(TOKEN);
        await page.keyboard.press("Enter");
        await page.locator("#conn[data-state=live]").waitFor();
        await page.locator("#ready[data-state=ok]").waitFor();
        assert.equal(await page.locator("#token-dialog[open]").count(), 0);
        assert.equal(await page.evaluate(`sessionStorage.getItem("troupe.token")`), TOKEN);
      });

      await t.step("the records/s figure rises while records are posted", async () => {
        const before = Number(await page.locator("#fig-rate").getAttribute("data-value"));
        assert.equal(before, 0);
        // Traffic runs until the screenshots are taken.
        traffic = keepPosting(svc.url, "live");
        await until(
          page,
          `Number(document.getElementById("fig-rate").dataset.value) > 0`,
          "records/s above 0",
        );
        // A few more seconds of traffic, so the charts have a shape.
        await new Promise((r) => setTimeout(r, 3000));
        assert.match(await page.locator("#fig-rate").innerText(), /^[\d,. ]+$/);
      });

      await t.step("the charts hold data and drew on their canvases", async () => {
        await until(page, CHARTS_HAVE_DATA, "charts have data");
        const inked = await page.evaluate<number[]>(INKED_PIXELS);
        assert.equal(inked.length, 7);
        for (const n of inked) assert.ok(n > 500, `a chart canvas has only ${n} inked pixels`);
        const accepted = await page.evaluate<number>(
          `Math.max(...globalThis.troupeDashboard.charts.get("records").data[1].filter((v) => v !== null))`,
        );
        assert.ok(accepted > 0, "the records/s chart shows accepted records");
      });

      await t.step("the firing alert shows with severity, value and actions", async () => {
        const alert = page.locator('#alerts-active li[data-alert="RecordsAccepted"]');
        await page.locator('#alerts-active li[data-alert="RecordsAccepted"][data-state=firing]')
          .waitFor();
        const text = await alert.innerText();
        assert.match(text, /critical/i);
        assert.match(text, /firing/);
        assert.match(text, /Records were accepted/);
        assert.match(text, /Nothing to do: the dashboard test set this rule to fire/);
        assert.notEqual(await page.locator("#fig-alerts").innerText(), "0");
      });

      await t.step("the actor tree shows the pipeline's pools", async () => {
        for (const stage of ["validate", "transform", "aggregate", "store"]) {
          const node = page.locator(`#actor-tree [data-actor="pool.${stage}"]`);
          await node.waitFor();
          assert.match(await node.innerText(), /stage_pool/);
          assert.match(await node.innerText(), /\/ 20,000|\/ 20 000|\/ 20000/);
        }
        assert.ok(await page.locator("#actor-tree [data-actor=monitor]").count() > 0);
      });

      await t.step("an actor that crashed and restarted is marked", async () => {
        assert.equal(await page.locator("#actor-tree [data-restarted=true]").count(), 0);
        faults.set({ stages: { transform: { throw_count: 1 } } });
        assert.equal((await postRecords(svc.url, makeRecords(5, "crash"), AUTH)).status, 200);
        const marked = page.locator("#actor-tree [data-restarted=true]").first();
        await marked.waitFor();
        assert.match(await marked.innerText(), /restarted/);
        assert.match(await marked.innerText(), /restarts 1/);
        assert.match(await marked.getAttribute("data-actor") ?? "", /^transform\.\d+$/);
        assert.equal(await page.locator("#actor-tree [data-restarted=true]").count(), 1);
        faults.set({});
      });

      await t.step("the alert is silenced from the page, by keyboard", async () => {
        const alert = page.locator('#alerts-active li[data-alert="RecordsAccepted"]');
        await alert.locator("select").selectOption("15m");
        await alert.locator("button.silence").focus();
        await page.keyboard.press("Enter");
        await page.locator('#alerts-active li[data-alert="RecordsAccepted"][data-silenced=true]')
          .waitFor();
        assert.match(await alert.innerText(), /silenced/);
        const res = await fetch(`${svc.url}/v1/alerts/silences`, { headers: AUTH });
        const { silences } = await res.json();
        assert.equal(silences.length, 1);
        assert.deepEqual(silences[0].matchers, { alertname: "RecordsAccepted" });
        const span = Date.parse(silences[0].ends_at) - Date.parse(silences[0].starts_at);
        assert.equal(span, 15 * 60_000);
        await page.locator("#silences li").first().waitFor();
      });

      await t.step("failed records are listed and filtered by stage", async () => {
        const bad = { id: "bad-1", timestamp: "nope", user_id: "u", event: "login", value: 1 };
        assert.equal((await postRecords(svc.url, [bad], AUTH)).status, 422);
        await page.locator("#failed-filter button[type=submit]").click();
        const row = page.locator("#failed-rows tr", { hasText: "bad-1" });
        await row.waitFor();
        assert.match(await row.innerText(), /validate/);
        await page.locator("#failed-stage").selectOption("store");
        await page.locator("#failed-empty:not([hidden])").waitFor();
        await page.locator("#failed-stage").selectOption("validate");
        await row.waitFor();
        await page.locator("#failed-search").fill("no-such-text");
        await page.locator("#failed-empty:not([hidden])").waitFor();
        await page.locator("#failed-search").fill("");
      });

      await t.step("the configuration shows with the token masked", async () => {
        await until(
          page,
          `document.getElementById("config-json").textContent.includes('"token": "***"')`,
          "the masked config",
        );
        assert.ok(!(await page.locator("#config-json").innerText()).includes(TOKEN));
      });

      await t.step("a history range loads from /v1/metrics/history", async () => {
        await page.locator('.range button[data-range="1h"]').click();
        await until(
          page,
          `/Showing|No history/.test(document.getElementById("range-note").textContent)`,
          "the history range",
        );
        assert.equal(
          await page.locator('.range button[data-range="1h"]').getAttribute("aria-pressed"),
          "true",
        );
        await page.locator('.range button[data-range="live"]').click();
        await until(page, CHARTS_HAVE_DATA, "charts have data");
      });

      await t.step("Tab reaches the skip link, the nav and the range buttons", async () => {
        await page.reload();
        await page.locator("#conn[data-state=live]").waitFor();
        const seen: string[] = [];
        for (let i = 0; i < 20; i++) {
          await page.keyboard.press("Tab");
          seen.push(await page.evaluate<string>(FOCUSED));
        }
        assert.equal(seen[0], "a:Skip to content");
        assert.ok(seen.includes("a:Alerts"), seen.join(" | "));
        assert.ok(seen.includes("button:1 h"), seen.join(" | "));
        const outline = await page.evaluate<string>(
          "getComputedStyle(document.activeElement).outlineStyle",
        );
        assert.notEqual(outline, "none");
      });

      await t.step("screenshot at 1280×800", async () => {
        await page.evaluate("document.activeElement?.blur(); scrollTo(0, 0)");
        await page.screenshot({ path: join(SHOTS, "dashboard-desktop.png") });
        await page.screenshot({ path: join(SHOTS, "dashboard-desktop-full.png"), fullPage: true });
      });

      await t.step("fits a 390 px wide phone screen", async () => {
        const phone = await browser!.newContext({
          viewport: { width: 390, height: 844 },
          deviceScaleFactor: 2,
          isMobile: true,
          hasTouch: true,
        });
        await phone.addInitScript(
          `sessionStorage.setItem("troupe.token", ${JSON.stringify(TOKEN)})`,
        );
        const small = await phone.newPage();
        small.setDefaultTimeout(WAIT_MS);
        const phoneErrors = watchErrors(small);
        await small.goto(`${svc.url}/dashboard`);
        await small.locator("#conn[data-state=live]").waitFor();
        await until(small, CHARTS_HAVE_DATA, "charts have data");
        await small.locator('#actor-tree [data-actor="pool.store"]').waitFor();
        const overflow = await small.evaluate<number>(
          "document.documentElement.scrollWidth - document.documentElement.clientWidth",
        );
        assert.ok(overflow <= 0, `the page is ${overflow} px wider than the phone`);
        await small.screenshot({ path: join(SHOTS, "dashboard-phone.png") });
        await phone.close();
        assert.deepEqual(phoneErrors, []);
      });

      await traffic?.stop();

      await t.step("no console error", () => {
        assert.deepEqual(errors, []);
      });

      await t.step("the API agrees with what the page showed", async () => {
        const alerts = await fetch(`${svc.url}/v1/alerts`, { headers: AUTH });
        const body = await alerts.json();
        const alert = body.active.find((a: { name: string }) => a.name === "RecordsAccepted");
        assert.equal(alert.silenced, true);
        assert.equal((await getJson(svc.url, "/v1/alerts")).status, 401);
      });

      await t.step("the page reconnects by itself when troupe restarts", async () => {
        const before = await page.evaluate<number>("globalThis.troupeDashboard.live.t.at(-1)");
        const port = svc.server.port;
        await svc.close();
        await page.locator("#conn[data-state=retrying]").waitFor();
        svc = await startTestService({ ...overrides, server: { port } }, undefined, svc.dir);
        await page.locator("#conn[data-state=live]").waitFor();
        await until(
          page,
          `globalThis.troupeDashboard.live.t.at(-1) > ${before}`,
          "samples from the new process",
        );
        const increasing = await page.evaluate<boolean>(
          "globalThis.troupeDashboard.live.t.every((t, i, all) => i === 0 || all[i - 1] < t)",
        );
        assert.ok(increasing, "no sample twice after resuming");
        assert.equal(
          await page.locator("#token-dialog[open]").count(),
          0,
          "no second token prompt",
        );
        await page.locator('#actor-tree [data-actor="pool.validate"]').waitFor();
      });
    } finally {
      await traffic?.stop();
      await browser?.close().catch(() => {});
      await svc.close();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
    assert.equal(svc.streams.size, 0, "every stream ended with the service");
  },
});
