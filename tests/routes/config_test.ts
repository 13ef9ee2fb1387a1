import assert from "node:assert/strict";
import fc from "fast-check";
import { maskPassword } from "../../lib/config.ts";
import { MASK, maskSecrets } from "../../routes/config.ts";
import { getJson, startTestService } from "../_helpers.ts";

Deno.test("maskPassword masks the password of every URL in a string", () => {
  assert.equal(
    maskPassword("postgres://app:s3cret@db:5432/troupe"),
    "postgres://app:***@db:5432/troupe",
  );
  assert.equal(maskPassword("redis://:pw@127.0.0.1:6379/0"), "redis://:***@127.0.0.1:6379/0");
  assert.equal(maskPassword("postgres://u:p@ss@host/db"), "postgres://u:***@host/db");
  assert.equal(
    maskPassword("a http://x:1@h b https://y:2@k"),
    "a http://x:***@h b https://y:***@k",
  );
  assert.equal(maskPassword("http://127.0.0.1:9093"), "http://127.0.0.1:9093");
  assert.equal(maskPassword("http://user@host"), "http://user@host");
});

Deno.test("maskSecrets never leaves a URL password or a secret-named value in place", () => {
  const password = fc.stringMatching(/^[A-Za-z0-9!$&'()*+,;=%-]{1,20}$/);
  fc.assert(fc.property(
    fc.constantFrom("postgres", "redis", "amqp", "https"),
    fc.stringMatching(/^[a-z0-9]{0,8}$/),
    password,
    password,
    (scheme, user, pass, token) => {
      const url = `${scheme}://${user}:${pass}@host.example:5432/db`;
      const masked = maskSecrets({
        storage: { url },
        queue: { urls: [url] },
        auth: { token, api_key: token },
      }) as Record<string, Record<string, unknown>>;
      const text = JSON.stringify(masked);
      assert.equal(masked.storage.url, `${scheme}://${user}:${MASK}@host.example:5432/db`);
      assert.equal(masked.auth.token, MASK);
      assert.equal(masked.auth.api_key, MASK);
      assert.ok(!text.includes(`:${pass}@`));
    },
  ));
  assert.deepEqual(maskSecrets({ auth: { token: null } }), { auth: { token: null } });
});

Deno.test("GET /v1/config answers the effective configuration with the token masked", async () => {
  const token = "config-test-token-0123456789";
  const svc = await startTestService({
    auth: { token },
    alerts: { webhook_url: "http://hook:hunter2@127.0.0.1:9/hook" },
  });
  try {
    assert.equal((await getJson(svc.url, "/v1/config")).status, 401);
    const res = await fetch(`${svc.url}/v1/config`, {
      headers: { authorization: `Bearer ${token}` },
    });
    assert.equal(res.status, 200);
    const text = await res.text();
    assert.ok(!text.includes(token));
    assert.ok(!text.includes("hunter2"));
    const config = JSON.parse(text);
    assert.equal(config.auth.token, MASK);
    assert.equal(config.alerts.webhook_url, "http://hook:***@127.0.0.1:9/hook");
    assert.equal(config.server.shutdown_timeout_ms, svc.config.server.shutdown_timeout_ms);
    assert.equal(config.pipeline.batch_size, svc.config.pipeline.batch_size);
  } finally {
    await svc.close();
  }
});
