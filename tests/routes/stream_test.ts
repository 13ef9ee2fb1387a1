import assert from "node:assert/strict";
import { Hono } from "hono";
import { onError } from "../../routes/_errors.ts";
import { getLog } from "../../lib/log.ts";
import {
  createStreamRoutes,
  type SampleColumns,
  StreamHub,
  type StreamSource,
} from "../../routes/stream.ts";
import { makeRecords, postRecords, quietLogs, startTestService, waitFor } from "../_helpers.ts";

/** A source whose samples, status and closing the test sets. */
function fakeSource() {
  const samples: Array<[number, number]> = [];
  const state = { ready: true, closing: false };
  const source: StreamSource = {
    samples: (after): SampleColumns => {
      const rows = samples.filter(([t]) => t > after);
      return { t: rows.map(([t]) => t), series: { rss_bytes: rows.map(([, v]) => v) } };
    },
    status: () => ({ ready: state.ready }),
    actors: () => ({ id: "root", children: [] }),
    alerts: () => ({ active: [], resolved: [], silences: [] }),
    closing: () => state.closing,
  };
  return { source, samples, state };
}

/** A real server on loopback serving the stream route of `hub`. */
function serveHub(hub: StreamHub) {
  const app = new Hono();
  app.route("/", createStreamRoutes({ hub }));
  app.onError(onError(getLog("http")));
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, app.fetch);
  return { url: `http://127.0.0.1:${server.addr.port}`, server };
}

interface SseEvent {
  event?: string;
  id?: string;
  data?: string;
  retry?: string;
  comment?: string;
}

/** Reads SSE events from a response, one at a time. */
function eventReader(res: Response) {
  const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  return {
    async next(timeoutMs = 5000): Promise<SseEvent | null> {
      const deadline = Date.now() + timeoutMs;
      while (!buffer.includes("\n\n")) {
        let timer: ReturnType<typeof setTimeout> | undefined;
        const chunk = await Promise.race([
          reader.read(),
          new Promise<"timeout">((r) => {
            timer = setTimeout(() => r("timeout"), Math.max(1, deadline - Date.now()));
          }),
        ]);
        clearTimeout(timer);
        if (chunk === "timeout") throw new Error(`No event within ${timeoutMs} ms`);
        if (chunk.done) return null;
        buffer += chunk.value;
      }
      const end = buffer.indexOf("\n\n");
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const e: SseEvent = {};
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) e.comment = line.slice(1).trim();
        else {
          const i = line.indexOf(": ");
          e[line.slice(0, i) as "event" | "id" | "data" | "retry"] = line.slice(i + 2);
        }
      }
      return e;
    },
    /** Events until one of type `event`. */
    async until(event: string): Promise<SseEvent> {
      for (;;) {
        const e = await this.next();
        if (e === null) throw new Error(`The stream ended before a "${event}" event`);
        if (e.event === event) return e;
      }
    },
    cancel: () => reader.cancel(),
  };
}

Deno.test("StreamHub streams status, actors, alerts and samples, and resumes from Last-Event-ID", async (t) => {
  await quietLogs();
  const { source, samples } = fakeSource();
  samples.push([1000, 1], [2000, 2]);
  const hub = new StreamHub({ source, intervalMs: 20, heartbeatMs: 150 });
  const { url, server } = serveHub(hub);
  try {
    await t.step("a new stream gets retry, the state and the whole history", async () => {
      const res = await fetch(`${url}/v1/stream`);
      assert.equal(res.status, 200);
      assert.equal(res.headers.get("content-type"), "text/event-stream; charset=utf-8");
      assert.equal(res.headers.get("cache-control"), "no-cache, no-transform");
      const events = eventReader(res);
      assert.deepEqual(await events.next(), { retry: "2000" });
      assert.deepEqual(await events.next(), { event: "status", data: '{"ready":true}' });
      assert.equal((await events.next())?.event, "actors");
      assert.equal((await events.next())?.event, "alerts");
      const first = await events.next();
      assert.equal(first?.event, "samples");
      assert.equal(first?.id, "2000");
      assert.deepEqual(JSON.parse(first!.data!), {
        t: [1000, 2000],
        series: { rss_bytes: [1, 2] },
      });

      samples.push([3000, 3]);
      const next = await events.until("samples");
      assert.equal(next.id, "3000");
      assert.deepEqual(JSON.parse(next.data!), { t: [3000], series: { rss_bytes: [3] } });

      const beat = await events.next();
      assert.deepEqual(beat, { comment: "heartbeat" }, "a heartbeat when nothing else was sent");
      await events.cancel();
    });

    await t.step("Last-Event-ID resumes after the samples already seen", async () => {
      const res = await fetch(`${url}/v1/stream`, { headers: { "last-event-id": "2000" } });
      const events = eventReader(res);
      const e = await events.until("samples");
      assert.equal(e.id, "3000");
      assert.deepEqual(JSON.parse(e.data!).t, [3000]);
      await events.cancel();
    });

    await t.step("closed streams leave no timer behind", async () => {
      await waitFor(() => hub.size === 0, 5000, "every stream to be dropped");
      assert.equal(hub.ticking, false);
    });
  } finally {
    hub.closeAll();
    await server.shutdown();
  }
});

Deno.test("StreamHub answers 429 JSON past maxStreams, and closeAll ends every stream", async () => {
  await quietLogs();
  const { source } = fakeSource();
  const hub = new StreamHub({ source, intervalMs: 20, maxStreams: 2 });
  const { url, server } = serveHub(hub);
  try {
    const a = eventReader(await fetch(`${url}/v1/stream`));
    const b = eventReader(await fetch(`${url}/v1/stream`));
    await a.next();
    await b.next();
    assert.equal(hub.size, 2);
    assert.equal(hub.ticking, true);

    const third = await fetch(`${url}/v1/stream`);
    assert.equal(third.status, 429);
    assert.equal(third.headers.get("retry-after"), "5");
    assert.equal((await third.json()).error.code, "too_many_streams");

    hub.closeAll();
    for (const events of [a, b]) {
      for (let e = await events.next(); e !== null; e = await events.next()) {
        // Drain what was sent before the end.
      }
    }
    assert.equal(hub.size, 0);
    assert.equal(hub.ticking, false);
    const after = await fetch(`${url}/v1/stream`);
    assert.equal(after.status, 503);
    assert.equal((await after.json()).error.code, "unavailable");
  } finally {
    hub.closeAll();
    await server.shutdown();
  }
});

Deno.test("StreamHub ends its streams once its source says the service is closing", async () => {
  await quietLogs();
  const { source, state } = fakeSource();
  const hub = new StreamHub({ source, intervalMs: 20 });
  const { url, server } = serveHub(hub);
  try {
    const events = eventReader(await fetch(`${url}/v1/stream`));
    await events.next();
    state.closing = true;
    for (let e = await events.next(); e !== null; e = await events.next()) {
      // Drain until the end.
    }
    assert.equal(hub.size, 0);
    assert.equal(hub.ticking, false);
  } finally {
    hub.closeAll();
    await server.shutdown();
  }
});

Deno.test("GET /v1/stream of a running service: live samples, and open streams do not hold its shutdown", async () => {
  const svc = await startTestService({ server: { shutdown_timeout_ms: 30_000 } });
  let stopped = false;
  try {
    const events = eventReader(await fetch(`${svc.url}/v1/stream`));
    const status = JSON.parse((await events.until("status")).data!);
    assert.equal(status.ready, true);
    assert.deepEqual(Object.keys(status.stages), ["validate", "transform", "aggregate", "store"]);
    const actors = JSON.parse((await events.until("actors")).data!);
    assert.equal(actors.id, "root");
    assert.equal((await postRecords(svc.url, makeRecords(50, "sse"))).status, 200);
    // Samples come each collector interval; wait for one that saw the records.
    const deadline = Date.now() + 10_000;
    let accepted = 0;
    while (accepted === 0 && Date.now() < deadline) {
      const e = await events.until("samples");
      const cols = JSON.parse(e.data!);
      assert.equal(Number(e.id), cols.t[cols.t.length - 1]);
      for (const name of ["rss_bytes", "mailbox_depth_validate", "workers_store"]) {
        assert.ok(name in cols.series, name);
      }
      accepted = Math.max(0, ...(cols.series.records_accepted_per_second ?? []));
    }
    assert.ok(accepted > 0, "a sample counted the accepted records");

    const second = eventReader(await fetch(`${svc.url}/v1/stream`));
    await second.next();
    assert.equal(svc.streams.size, 2);

    const started = Date.now();
    await svc.close();
    stopped = true;
    const ms = Date.now() - started;
    // Were the streams holding it, the shutdown would take its whole 30 s timeout.
    assert.ok(ms < 15_000, `shutdown took ${ms} ms with two streams open`);
    assert.equal(svc.streams.size, 0);
    assert.equal(svc.streams.ticking, false);
    for (const r of [events, second]) {
      try {
        for (let e = await r.next(); e !== null; e = await r.next()) {
          // Drain until the end.
        }
      } catch (error) {
        // Cut off is ended too; still open is not.
        if (String(error).includes("No event within")) throw error;
      }
    }
  } finally {
    if (!stopped) await svc.close();
  }
});
