/**
 * @module
 * Serves a fetch handler on Deno or Bun, whichever runs us, and stops it
 * gracefully. Both runtimes speak the web `Request`/`Response` types that
 * Hono uses, so this is the only runtime-specific piece of the HTTP side.
 */

/** A listening server. */
export interface Server {
  readonly hostname: string;
  readonly port: number;
  /** Stops accepting connections and waits for in-flight requests. */
  shutdown(): Promise<void>;
}

type Fetch = (req: Request) => Response | Promise<Response>;

interface DenoLike {
  serve(
    options: { hostname: string; port: number; onListen?: (addr: { port: number }) => void },
    handler: Fetch,
  ): { addr: { port: number; hostname: string }; shutdown(): Promise<void> };
}

interface BunLike {
  serve(options: {
    hostname: string;
    port: number;
    fetch: Fetch;
    maxRequestBodySize?: number;
    idleTimeout?: number;
  }): { port: number; hostname: string; stop(closeActive?: boolean): Promise<void> | void };
}

/** Starts serving `fetch` on `hostname:port` (port 0 picks a free one). */
export function serve(fetch: Fetch, options: { hostname: string; port: number }): Server {
  const g = globalThis as unknown as { Deno?: DenoLike; Bun?: BunLike };
  if (g.Bun !== undefined) {
    const s = g.Bun.serve({
      hostname: options.hostname,
      port: options.port,
      fetch,
      // Our own limits apply while streaming; this only has to be above them.
      maxRequestBodySize: 1024 * 1024 * 1024,
      idleTimeout: 60,
    });
    return {
      hostname: options.hostname,
      port: s.port,
      shutdown: async () => {
        await s.stop(false);
      },
    };
  }
  if (g.Deno !== undefined) {
    // Deno 2.9's shutdown() makes the body of every in-flight request
    // unreadable at once (denoland/deno#36809), so a POST still uploading
    // would fail with a 400. Wait for the handlers already running first;
    // the ones that start meanwhile see the drain and answer 503 unread.
    const running = new Set<Promise<unknown>>();
    const tracked: Fetch = (req) => {
      const answer = Promise.resolve(fetch(req));
      running.add(answer);
      answer.then(() => running.delete(answer), () => running.delete(answer));
      return answer;
    };
    const s = g.Deno.serve(
      { hostname: options.hostname, port: options.port, onListen: () => {} },
      tracked,
    );
    return {
      hostname: options.hostname,
      port: s.addr.port,
      shutdown: async () => {
        await Promise.allSettled([...running]);
        await s.shutdown();
      },
    };
  }
  throw new Error("troupe runs on Deno or Bun: neither Deno.serve nor Bun.serve is available");
}
