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
    const s = g.Deno.serve(
      { hostname: options.hostname, port: options.port, onListen: () => {} },
      fetch,
    );
    return { hostname: options.hostname, port: s.addr.port, shutdown: () => s.shutdown() };
  }
  throw new Error("troupe runs on Deno or Bun: neither Deno.serve nor Bun.serve is available");
}
