import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { buildDashboardModule, OUTPUT, ROOT } from "../../scripts/build_dashboard.ts";

Deno.test("routes/_dashboard_assets.ts is what scripts/build_dashboard.ts makes from web/ now", async () => {
  const built = await buildDashboardModule(ROOT);
  const committed = await readFile(join(ROOT, OUTPUT), "utf8");
  assert.ok(
    built === committed,
    `${OUTPUT} is out of date with web/ or uPlot: run \`deno task build:dashboard\``,
  );
});

Deno.test("buildDashboardModule is deterministic and names its assets by content hash", async () => {
  const [a, b] = await Promise.all([buildDashboardModule(ROOT), buildDashboardModule(ROOT)]);
  assert.equal(a, b);
  assert.match(a, /\/dashboard\/app\.js\?v=[0-9a-f]{16}/);
  assert.match(a, /\/dashboard\/app\.css\?v=[0-9a-f]{16}/);
  assert.doesNotMatch(a, /\{\{app\.(js|css)\}\}/);
});
