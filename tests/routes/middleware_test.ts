/**
 * @module
 * Tests of the shared middleware through a small Hono app and
 * `app.request()`.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { Hono } from "hono";
import { HTTPException } from "hono/http-exception";
import { closeLogging, getLog, setupLogging } from "../../lib/log.ts";
import { createMetrics, type Metrics } from "../../lib/metrics.ts";
import {
  accessLog,
  type AppEnv,
  httpMetrics,
  requestId,
  UNMATCHED_ROUTE,
} from "../../routes/_middleware.ts";

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

/** The app of these tests, mounted as `main.ts` mounts the real routes. */
function createApp(metrics: Metrics): Hono<AppEnv> {
  const users = new Hono<AppEnv>()
    .get("/users/:user_id", (c) => {
      const userId = c.req.param("user_id");
      if (userId === "missing") return c.json({ error: { code: "not_found" } }, 404);
      return c.json({ user_id: userId, request_id: c.get("requestId") });
    })
    .get("/raw", () => new Response("raw"))
    .get("/boom", () => {
      throw new Error("boom");
    })
    .get("/teapot", () => {
      throw new HTTPException(418, { message: "short and stout" });
    });
  const app = new Hono<AppEnv>();
  app.use(requestId());
  app.use(accessLog(getLog("http")));
  app.use(httpMetrics(metrics));
  app.get("/healthz", (c) => c.text("ok"));
  app.route("/v1", users);
  app.onError((error, c) => {
    const status = error instanceof HTTPException ? error.status : 500;
    return c.json({ error: { code: "error", message: error.message } }, status);
  });
  return app;
}

interface Observation {
  method: string;
  route: string;
  status: string;
  count: number;
}

/** The `_count` series of `troupe_http_request_duration_seconds`. */
async function httpObservations(metrics: Metrics): Promise<Observation[]> {
  const { values } = await metrics.httpDuration.get();
  return values
    .filter((value) => value.metricName === "troupe_http_request_duration_seconds_count")
    .map((value) => ({
      method: String(value.labels.method),
      route: String(value.labels.route),
      status: String(value.labels.status),
      count: value.value,
    }));
}

Deno.test("requestId generates an id and echoes it", async () => {
  const app = createApp(createMetrics({ defaultMetrics: false }));

  const response = await app.request("/v1/users/42");

  assert.equal(response.status, 200);
  const id = response.headers.get("x-request-id");
  assert.match(id ?? "", UUID);
  assert.equal((await response.json()).request_id, id);
});

Deno.test("requestId generates a new id for each request", async () => {
  const app = createApp(createMetrics({ defaultMetrics: false }));

  const first = await app.request("/healthz");
  const second = await app.request("/healthz");

  assert.notEqual(first.headers.get("x-request-id"), second.headers.get("x-request-id"));
});

Deno.test("requestId keeps a sane id from the request", async () => {
  const app = createApp(createMetrics({ defaultMetrics: false }));
  const given = "client-42.retry_3";

  const response = await app.request("/v1/users/42", { headers: { "x-request-id": given } });

  assert.equal(response.status, 200);
  assert.equal(response.headers.get("x-request-id"), given);
  assert.equal((await response.json()).request_id, given);
});

Deno.test("requestId replaces an insane id", async (t) => {
  const app = createApp(createMetrics({ defaultMetrics: false }));
  const cases: [string, string][] = [
    ["too long", "a".repeat(129)],
    ["with a space", "a b"],
    ["with markup", "<script>"],
    ["with quotes", '"injected":"field"'],
    ["with a slash", "../etc"],
    ["not ASCII", "ré-42"],
    ["empty", ""],
  ];
  for (const [name, given] of cases) {
    await t.step(name, async () => {
      const response = await app.request("/healthz", {
        headers: [["x-request-id", encodeHeaderValue(given)]],
      });

      assert.equal(response.status, 200);
      assert.match(response.headers.get("x-request-id") ?? "", UUID);
    });
  }

  await t.step("128 characters is the longest kept", async () => {
    const given = "b".repeat(128);

    const response = await app.request("/healthz", { headers: { "x-request-id": given } });

    assert.equal(response.headers.get("x-request-id"), given);
  });
});

/** Header values are byte strings: non-Latin-1 text goes in as its UTF-8 bytes. */
function encodeHeaderValue(value: string): string {
  return String.fromCharCode(...new TextEncoder().encode(value));
}

Deno.test("requestId keeps exactly the sane ids of any header value", async () => {
  const app = createApp(createMetrics({ defaultMetrics: false }));
  const headerChar = fc.integer({ min: 0x20, max: 0x7e }).map((code) => String.fromCharCode(code));
  const saneChar = fc.constantFrom(..."abcXYZ019._-");

  await fc.assert(
    fc.asyncProperty(
      fc.oneof(
        fc.string({ unit: headerChar, maxLength: 140 }),
        fc.string({ unit: saneChar, minLength: 1, maxLength: 140 }),
      ),
      async (given) => {
        const response = await app.request("/healthz", { headers: { "x-request-id": given } });

        const id = response.headers.get("x-request-id") ?? "";
        // Headers drop leading and trailing spaces of a value.
        const received = given.trim();
        if (/^[A-Za-z0-9._-]{1,128}$/.test(received)) assert.equal(id, received);
        else assert.match(id, UUID);
      },
    ),
    { numRuns: 300 },
  );
});

Deno.test("requestId sets the header on every kind of response", async (t) => {
  const app = createApp(createMetrics({ defaultMetrics: false }));
  const paths: [string, string, number][] = [
    ["a Response built by the handler", "/v1/raw", 200],
    ["an error mapped by onError", "/v1/boom", 500],
    ["an HTTPException", "/v1/teapot", 418],
    ["the not-found answer", "/nowhere", 404],
  ];
  for (const [name, path, status] of paths) {
    await t.step(name, async () => {
      const response = await app.request(path, { headers: { "x-request-id": "kept-1" } });

      assert.equal(response.status, status);
      assert.equal(response.headers.get("x-request-id"), "kept-1");
    });
  }
});

Deno.test("httpMetrics labels requests with the route pattern, not the raw path", async () => {
  const metrics = createMetrics({ defaultMetrics: false });
  const app = createApp(metrics);

  await app.request("/v1/users/42");
  await app.request("/v1/users/43");
  await app.request("/v1/users/44?verbose=1");

  assert.deepEqual(await httpObservations(metrics), [
    { method: "GET", route: "/v1/users/:user_id", status: "200", count: 3 },
  ]);
  const text = await metrics.registry.metrics();
  assert.match(text, /route="\/v1\/users\/:user_id"/);
  assert.doesNotMatch(text, /\/v1\/users\/4[234]/);
});

Deno.test("httpMetrics labels each outcome by route and status", async (t) => {
  const metrics = createMetrics({ defaultMetrics: false });
  const app = createApp(metrics);

  await t.step("a request no route matches is unmatched", async () => {
    await app.request("/v1/nothing/here");
    await app.request("/wp-login.php");
    await app.request("/healthz", { method: "POST" });
  });

  await t.step("a 404 answered by a route keeps its pattern", async () => {
    const response = await app.request("/v1/users/missing");
    assert.equal(response.status, 404);
  });

  await t.step("errors are counted with their mapped status", async () => {
    await app.request("/v1/boom");
    await app.request("/v1/teapot");
  });

  await t.step("unknown methods are labelled OTHER", async () => {
    await app.request("/healthz", { method: "PROPFIND" });
  });

  const observations = await httpObservations(metrics);
  const sorted = observations.toSorted((a, b) =>
    `${a.route} ${a.method}`.localeCompare(`${b.route} ${b.method}`)
  );
  assert.deepEqual(sorted, [
    { method: "GET", route: "/v1/boom", status: "500", count: 1 },
    { method: "GET", route: "/v1/teapot", status: "418", count: 1 },
    { method: "GET", route: "/v1/users/:user_id", status: "404", count: 1 },
    { method: "GET", route: UNMATCHED_ROUTE, status: "404", count: 2 },
    { method: "OTHER", route: UNMATCHED_ROUTE, status: "404", count: 1 },
    { method: "POST", route: UNMATCHED_ROUTE, status: "404", count: 1 },
  ]);
});

Deno.test("httpMetrics observes durations in the histogram buckets", async () => {
  const metrics = createMetrics({ defaultMetrics: false });
  const app = createApp(metrics);

  await app.request("/healthz");

  const text = await metrics.registry.metrics();
  assert.match(
    text,
    /^troupe_http_request_duration_seconds_bucket\{le="\+Inf",method="GET",route="\/healthz",status="200"\} 1$/m,
  );
  const sum = text.match(/^troupe_http_request_duration_seconds_sum\{[^}]*\} (\S+)$/m);
  assert.ok(sum !== null && Number(sum[1]) >= 0);
});

Deno.test("accessLog writes one structured line per request", async (t) => {
  const lines: string[] = [];
  await setupLogging({ level: "info", sink: (line) => lines.push(line) });
  try {
    const app = createApp(createMetrics({ defaultMetrics: false }));

    await t.step("with method, path, status, duration and request id", async () => {
      lines.length = 0;

      const response = await app.request("/v1/users/42?token=secret", {
        headers: { "x-request-id": "req-1" },
      });

      assert.equal(response.status, 200);
      assert.equal(lines.length, 1);
      const record = JSON.parse(lines[0]);
      assert.equal(record.level, "INFO");
      assert.equal(record.logger, "troupe.http");
      assert.equal(record.method, "GET");
      assert.equal(record.path, "/v1/users/42");
      assert.equal(record.status, 200);
      assert.equal(typeof record.duration_ms, "number");
      assert.ok(record.duration_ms >= 0);
      assert.equal(record.request_id, "req-1");
      assert.doesNotMatch(lines[0], /secret/);
    });

    await t.step("with the generated request id", async () => {
      lines.length = 0;

      const response = await app.request("/healthz", { method: "HEAD" });

      const record = JSON.parse(lines[0]);
      assert.equal(record.method, "HEAD");
      assert.equal(record.request_id, response.headers.get("x-request-id"));
    });

    await t.step("at level error for a 5xx answer", async () => {
      lines.length = 0;

      await app.request("/v1/boom");

      assert.equal(lines.length, 1);
      const record = JSON.parse(lines[0]);
      assert.equal(record.level, "ERROR");
      assert.equal(record.status, 500);
    });

    await t.step("for a request no route matches", async () => {
      lines.length = 0;

      await app.request("/nowhere");

      assert.equal(lines.length, 1);
      assert.equal(JSON.parse(lines[0]).status, 404);
    });
  } finally {
    await closeLogging();
  }
});
