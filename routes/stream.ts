/**
 * @module
 * `GET /v1/stream`: the dashboard's live feed, as Server-Sent Events.
 *
 * One {@linkcode StreamHub} serves every open stream from one timer, which
 * runs only while a stream is open: each tick it reads the new collector
 * samples once and writes them to every stream, with the status, the actor
 * tree and the alerts whenever they changed. Events:
 *
 * | event | data | when |
 * |---|---|---|
 * | `status` | `{"ready","checks","stages":{"validate":{"capacity"}},"version"}` | at open, on change |
 * | `actors` | the tree of `GET /v1/actors` | at open, on change |
 * | `alerts` | `{"active","resolved","silences"}` (alerts as `GET /v1/alerts`) | at open, on change |
 * | `samples` | `{"t":[ms…],"series":{"rss_bytes":[v…],…}}`, columns (`null` where a series has no sample) | at open: the last 15 minutes, or what came after `Last-Event-ID`; then each new collector sample |
 *
 * `samples` events carry `id:` (the time of their last sample), so a client
 * that reconnects with `Last-Event-ID` gets only what it missed. The stream
 * opens with `retry: 2000`, and a `: heartbeat` comment is written when
 * nothing else was for `heartbeatMs`.
 *
 * Bounds: at most `maxStreams` streams at once (429 JSON past it); a client
 * that stops reading is dropped once {@linkcode QUEUE_LIMIT} events wait
 * for it (it reconnects and resumes). Writes never block the tick.
 *
 * Shutdown: `closeAll()` ends every stream and refuses new ones (503), so a
 * graceful server shutdown, which waits for the responses in flight, is not
 * held up by open streams; `main.ts` calls it before `server.shutdown()`.
 *
 * The dashboard reads this with `fetch` rather than `EventSource`, so the
 * token goes in the `Authorization` header like for every `/v1/*` route
 * (never in the URL) and a 401 or 429 can be read.
 */
import { Hono } from "hono";
import type { TroupeSystem } from "../actors/mod.ts";
import type { AlertBook } from "../lib/alerts.ts";
import type { History } from "../lib/history.ts";
import { STAGES } from "../lib/schemas.ts";
import { markSilenced, type SilenceStore } from "../lib/silences.ts";
import { ApiError } from "./_errors.ts";
import type { AppEnv } from "./_middleware.ts";

/** The series the dashboard draws live. */
export const LIVE_SERIES: RegExp =
  /^(records_(accepted|duplicate|rejected)_per_second|ingest_latency_(p50|p99|mean)_ms|mailbox_depth_\w+|workers_\w+|cpu_core_\d+|process_cpu_(user|system)|rss_bytes|heap_(used|total)_bytes|eventloop_lag_p99_seconds|in_flight_records)$/;

/** Events queued for one client past which it is dropped. */
export const QUEUE_LIMIT = 256;

/** Samples in columns: one time column and one value column per series. */
export interface SampleColumns {
  t: number[];
  series: Record<string, Array<number | null>>;
}

/** What a {@linkcode StreamHub} streams. */
export interface StreamSource {
  /** Samples with time after `after` (epoch ms), oldest first. */
  samples(after: number): SampleColumns;
  status(): unknown;
  actors(): unknown;
  alerts(): unknown;
  /** Whether the service is shutting down (streams end then). */
  closing(): boolean;
}

/** Options of a {@linkcode StreamHub}. */
export interface StreamHubOptions {
  source: StreamSource;
  /** Tick period, ms. @default 500 */
  intervalMs?: number;
  /** A comment is written after this long without an event, ms. @default 15_000 */
  heartbeatMs?: number;
  /** Streams open at once. @default 32 */
  maxStreams?: number;
  /** The `retry:` field, ms. @default 2000 */
  retryMs?: number;
}

type Kind = "status" | "actors" | "alerts";

interface Client {
  controller: ReadableStreamDefaultController<Uint8Array>;
  lastT: number;
  lastWrite: number;
  /** The JSON of what it was last sent of each kind. */
  sent: Record<Kind, string>;
}

const encoder = new TextEncoder();
const KINDS: readonly Kind[] = ["status", "actors", "alerts"];

/** One SSE message. */
export function sseMessage(event: string, data: unknown, id?: string | number): string {
  const lines = [`event: ${event}`];
  if (id !== undefined) lines.push(`id: ${id}`);
  lines.push(`data: ${JSON.stringify(data)}`);
  return lines.join("\n") + "\n\n";
}

/** The columns of `c` after time `after`; `undefined` when none. */
function sliceAfter(c: SampleColumns, after: number): SampleColumns | undefined {
  const from = c.t.findIndex((t) => t > after);
  if (from < 0) return undefined;
  if (from === 0) return c;
  return {
    t: c.t.slice(from),
    series: Object.fromEntries(Object.entries(c.series).map(([k, v]) => [k, v.slice(from)])),
  };
}

/** Every open stream, fed from one timer. */
export class StreamHub {
  readonly intervalMs: number;
  readonly heartbeatMs: number;
  readonly maxStreams: number;
  readonly retryMs: number;
  #source: StreamSource;
  #clients = new Set<Client>();
  #timer: ReturnType<typeof setInterval> | undefined;
  #closed = false;

  constructor(options: StreamHubOptions) {
    this.#source = options.source;
    this.intervalMs = options.intervalMs ?? 500;
    this.heartbeatMs = options.heartbeatMs ?? 15_000;
    this.maxStreams = options.maxStreams ?? 32;
    this.retryMs = options.retryMs ?? 2000;
  }

  /** Streams open now. */
  get size(): number {
    return this.#clients.size;
  }

  /** Whether the hub's timer runs (only while a stream is open). */
  get ticking(): boolean {
    return this.#timer !== undefined;
  }

  /** Whether {@linkcode closeAll} was called. */
  get closed(): boolean {
    return this.#closed;
  }

  /**
   * Opens a stream that starts after `lastEventId` (a sample time), or
   * with the whole in-memory history. `"full"` past `maxStreams`,
   * `"closed"` after {@linkcode closeAll}.
   */
  open(lastEventId?: string | null): ReadableStream<Uint8Array> | "full" | "closed" {
    if (this.#closed || this.#source.closing()) return "closed";
    if (this.#clients.size >= this.maxStreams) return "full";
    const resume = lastEventId != null && /^\d{1,15}$/.test(lastEventId) ? Number(lastEventId) : 0;
    let client: Client | undefined;
    return new ReadableStream<Uint8Array>({
      start: (controller) => {
        const c: Client = {
          controller,
          lastT: resume,
          lastWrite: Date.now(),
          sent: { status: "", actors: "", alerts: "" },
        };
        client = c;
        this.#clients.add(c);
        this.#write(c, `retry: ${this.retryMs}\n\n`);
        for (const kind of KINDS) this.#sendChanged(c, kind, JSON.stringify(this.#source[kind]()));
        this.#sendSamples(c, this.#source.samples(resume));
        this.#timer ??= setInterval(() => this.tick(), this.intervalMs);
      },
      cancel: () => this.#drop(client),
    }, new CountQueuingStrategy({ highWaterMark: QUEUE_LIMIT }));
  }

  /** Writes what is new to every stream (the timer calls it; tests may too). */
  tick(): void {
    if (this.#source.closing()) {
      this.closeAll();
      return;
    }
    if (this.#clients.size === 0) return;
    const now = Date.now();
    const current = KINDS.map((kind) => [kind, JSON.stringify(this.#source[kind]())] as const);
    // Read once for all: from the client furthest behind (usually all are even).
    const oldest = Math.min(...[...this.#clients].map((c) => c.lastT));
    const columns = this.#source.samples(oldest);
    for (const client of [...this.#clients]) {
      for (const [kind, json] of current) this.#sendChanged(client, kind, json);
      this.#sendSamples(client, columns);
      if (now - client.lastWrite >= this.heartbeatMs) this.#write(client, ": heartbeat\n\n");
    }
  }

  /** Ends every stream and refuses new ones; stops the timer. */
  closeAll(): void {
    this.#closed = true;
    for (const client of [...this.#clients]) {
      this.#clients.delete(client);
      try {
        // A client that reads everything gets a clean end; one that is
        // behind is cut off, so it cannot hold the shutdown.
        if ((client.controller.desiredSize ?? 0) >= QUEUE_LIMIT) client.controller.close();
        else client.controller.error(new Error("The service is shutting down"));
      } catch {
        // Already closed by the client.
      }
    }
    this.#stopTimer();
  }

  #sendChanged(client: Client, kind: Kind, json: string): void {
    if (client.sent[kind] === json) return;
    client.sent[kind] = json;
    this.#write(client, `event: ${kind}\ndata: ${json}\n\n`);
  }

  #sendSamples(client: Client, columns: SampleColumns): void {
    const fresh = sliceAfter(columns, client.lastT);
    if (fresh === undefined) return;
    const last = fresh.t[fresh.t.length - 1];
    client.lastT = last;
    this.#write(client, sseMessage("samples", fresh, last));
  }

  #write(client: Client, text: string): void {
    if (!this.#clients.has(client)) return;
    if ((client.controller.desiredSize ?? 0) <= 0) {
      // It stopped reading: drop it rather than queue without bound.
      this.#drop(client);
      try {
        client.controller.error(new Error("The client stopped reading the stream"));
      } catch {
        // Already closed.
      }
      return;
    }
    client.controller.enqueue(encoder.encode(text));
    client.lastWrite = Date.now();
  }

  #drop(client: Client | undefined): void {
    if (client === undefined) return;
    this.#clients.delete(client);
    if (this.#clients.size === 0) this.#stopTimer();
  }

  #stopTimer(): void {
    clearInterval(this.#timer);
    this.#timer = undefined;
  }
}

/** What {@linkcode liveSource} reads. */
export interface LiveSourceDeps {
  system: TroupeSystem;
  history: History;
  book: AlertBook;
  silences?: SilenceStore;
  version: string;
}

/** The {@linkcode StreamSource} of a running service. */
export function liveSource(deps: LiveSourceDeps): StreamSource {
  const { system, history, book, silences, version } = deps;
  let names: string[] = [];
  let seen = -1;
  const liveNames = () => {
    const all = history.names();
    if (all.length !== seen) {
      seen = all.length;
      names = all.filter((n) => LIVE_SERIES.test(n));
    }
    return names;
  };
  return {
    samples: (after) => {
      const now = Date.now();
      const byName = liveNames().map((n) => [n, history.samples(n, after + 1, now)] as const);
      const times = new Set<number>();
      for (const [, s] of byName) for (const [t] of s) times.add(t);
      const t = [...times].sort((a, b) => a - b);
      const index = new Map(t.map((x, i) => [x, i]));
      const series: SampleColumns["series"] = {};
      for (const [name, s] of byName) {
        const col: Array<number | null> = new Array(t.length).fill(null);
        for (const [at, v] of s) col[index.get(at)!] = v;
        series[name] = col;
      }
      return { t, series };
    },
    status: () => {
      const r = system.readiness();
      return {
        ready: r.ready,
        checks: r.checks,
        stages: Object.fromEntries(
          STAGES.map((s) => [s, { capacity: system.runtimes[s].mailbox.capacity }]),
        ),
        version,
      };
    },
    actors: () => system.tree(),
    alerts: () => ({
      active: markSilenced(book.active(), silences),
      resolved: markSilenced(book.resolved().slice(0, 50), silences),
      silences: (silences?.list() ?? []).filter((s) => s.state === "active"),
    }),
    closing: () => system.draining,
  };
}

/** `GET /v1/stream` over `hub`. */
export function createStreamRoutes(deps: { hub: StreamHub }): Hono<AppEnv> {
  const { hub } = deps;
  const app = new Hono<AppEnv>();
  app.get("/v1/stream", (c) => {
    const stream = hub.open(c.req.header("last-event-id"));
    if (stream === "full") {
      throw new ApiError(
        429,
        "too_many_streams",
        `At most ${hub.maxStreams} streams may be open at once`,
        { headers: { "retry-after": "5" }, details: { max_streams: hub.maxStreams } },
      );
    }
    if (stream === "closed") {
      throw new ApiError(503, "unavailable", "The service is shutting down", {
        headers: { "retry-after": "5" },
      });
    }
    return new Response(stream, {
      headers: {
        "content-type": "text/event-stream; charset=utf-8",
        "cache-control": "no-cache, no-transform",
        "x-accel-buffering": "no",
      },
    });
  });
  return app;
}
