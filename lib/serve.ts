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
  /**
   * Stops accepting connections, waits for the requests in flight to be
   * answered, then closes the connections left open (idle keep-alive ones
   * included), so that clients cannot hold the shutdown.
   */
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

/**
 * Wraps `fetch` so that the answers being computed can be awaited:
 * `settled()` resolves once those running when it was called are done (not
 * the ones that start later: under steady keep-alive traffic there may
 * always be one).
 */
function trackRequests(fetch: Fetch): { tracked: Fetch; settled(): Promise<void> } {
  const running = new Set<Promise<unknown>>();
  const tracked: Fetch = (req) => {
    const answer = Promise.resolve(fetch(req));
    running.add(answer);
    answer.then(() => running.delete(answer), () => running.delete(answer));
    return answer;
  };
  const settled = async () => {
    await Promise.allSettled([...running]);
  };
  return { tracked, settled };
}

/** Starts serving `fetch` on `hostname:port` (port 0 picks a free one). */
export function serve(fetch: Fetch, options: { hostname: string; port: number }): Server {
  const g = globalThis as unknown as { Deno?: DenoLike; Bun?: BunLike };
  if (g.Bun !== undefined) {
    const { tracked, settled } = trackRequests(fetch);
    const s = g.Bun.serve({
      hostname: options.hostname,
      port: options.port,
      fetch: tracked,
      // Our own limits apply while streaming; this only has to be above them.
      maxRequestBodySize: 1024 * 1024 * 1024,
      idleTimeout: 60,
    });
    return {
      hostname: options.hostname,
      port: s.port,
      shutdown: async () => {
        // `stop(false)` stops listening at once, but its promise resolves
        // only when every connection is closed, and after load it was seen
        // to wait the whole shutdown timeout (1 run in 10, Bun 1.4.4,
        // keep-alive clients; docs/PERFORMANCE.md), so it is not awaited.
        // Once the handlers already running have answered (the ones that
        // start meanwhile see the drain and answer 503), a macrotask lets
        // their responses be written, then `stop(true)` closes whatever
        // connections are left.
        Promise.resolve(s.stop(false)).catch(() => {});
        await settled();
        await new Promise((resolve) => setTimeout(resolve, 0));
        await s.stop(true);
      },
    };
  }
  if (g.Deno !== undefined) {
    // Deno 2.9's shutdown() makes the body of every in-flight request
    // unreadable at once (denoland/deno#36809), so a POST still uploading
    // would fail with a 400. Wait for the handlers already running first;
    // the ones that start meanwhile see the drain and answer 503 unread.
    const { tracked, settled } = trackRequests(fetch);
    const s = g.Deno.serve(
      { hostname: options.hostname, port: options.port, onListen: () => {} },
      tracked,
    );
    return {
      hostname: options.hostname,
      port: s.addr.port,
      shutdown: async () => {
        await settled();
        await s.shutdown();
      },
    };
  }
  throw new Error("troupe runs on Deno or Bun: neither Deno.serve nor Bun.serve is available");
}
