/**
 * @module
 * A throwaway `redis-server` (Debian's, `/usr/bin/redis-server`) for tests
 * and benchmarks: 127.0.0.1 on a free port, a fresh temporary directory,
 * no RDB snapshots, the append-only file on (`appendfsync everysec`, as the
 * stack script runs it), started and awaited (`PING` answers `PONG`), and
 * always stopped with its directory removed.
 *
 * @example
 * ```ts
 * const redis = await startRedis();
 * try {
 *   // TROUPE_QUEUE=redis.url
 * } finally {
 *   await redis.stop();
 * }
 * ```
 */
import { freePort } from "./_child_process.ts";

/** The redis-server binary; `TROUPE_REDIS_SERVER` overrides it. */
export const REDIS_SERVER: string = Deno.env.get("TROUPE_REDIS_SERVER") ?? "redis-server";

/** A running redis-server. */
export interface RedisServer {
  /** `redis://127.0.0.1:PORT`. */
  url: string;
  port: number;
  /** Its working directory (append-only file). */
  dir: string;
  /** Everything it wrote so far. */
  output(): string;
  /** Sends one command (inline form) and returns the raw reply. */
  command(line: string): Promise<string>;
  /** Kills it (SIGKILL) and waits, keeping the directory: {@linkcode restart} brings it back. */
  kill(): Promise<void>;
  /** Starts it again on the same port and directory (the append-only file is replayed). */
  restart(): Promise<void>;
  /** SIGTERM (SIGKILL after 5 s), waits for the exit, removes the directory. Idempotent. */
  stop(): Promise<void>;
}

/** Sends `line` to 127.0.0.1:`port` and returns what comes back first. */
async function send(port: number, line: string, timeoutMs = 2_000): Promise<string> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const timer = setTimeout(() => conn.close(), timeoutMs);
  try {
    await conn.write(new TextEncoder().encode(`${line}\r\n`));
    const buf = new Uint8Array(64 * 1024);
    const n = await conn.read(buf);
    return n === null ? "" : new TextDecoder().decode(buf.subarray(0, n));
  } finally {
    clearTimeout(timer);
    try {
      conn.close();
    } catch {
      // already closed by the timeout
    }
  }
}

async function drainInto(stream: ReadableStream<Uint8Array>, chunks: string[]): Promise<void> {
  for await (const text of stream.pipeThrough(new TextDecoderStream())) chunks.push(text);
}

/** Options of {@linkcode startRedis}. */
export interface RedisOptions {
  /** `appendfsync`: `everysec` (default) or `always`. */
  appendfsync?: "everysec" | "always";
}

/**
 * Starts redis-server on a free loopback port. A port taken meanwhile makes
 * it exit at once: it is tried again on another port, up to 3 times.
 */
export async function startRedis(options: RedisOptions = {}): Promise<RedisServer> {
  const dir = await Deno.makeTempDir({ prefix: "troupe_redis_" });
  const chunks: string[] = [];
  let child: Deno.ChildProcess | undefined;
  let status: Promise<Deno.CommandStatus> | undefined;
  let exited = false;
  let port = 0;

  const launch = async (): Promise<boolean> => {
    exited = false;
    child = new Deno.Command(REDIS_SERVER, {
      args: [
        "--bind",
        "127.0.0.1",
        "--port",
        String(port),
        "--dir",
        dir,
        "--save",
        "",
        "--appendonly",
        "yes",
        "--appendfsync",
        options.appendfsync ?? "everysec",
        "--daemonize",
        "no",
        "--loglevel",
        "warning",
      ],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const drained = Promise.all([drainInto(child.stdout, chunks), drainInto(child.stderr, chunks)]);
    status = child.status.then(async (s) => {
      exited = true;
      await drained;
      return s;
    });
    const deadline = Date.now() + 15_000;
    while (true) {
      if (exited) return false;
      const reply = await send(port, "PING", 500).catch(() => "");
      if (reply.startsWith("+PONG")) return true;
      if (Date.now() > deadline) {
        child.kill("SIGKILL");
        await status;
        throw new Error(
          `redis-server was not ready on port ${port} after 15 s:\n${chunks.join("")}`,
        );
      }
      await new Promise((r) => setTimeout(r, 20));
    }
  };

  for (let attempt = 1;; attempt++) {
    port = freePort();
    if (await launch()) break;
    if (attempt >= 3) {
      await Deno.remove(dir, { recursive: true }).catch(() => {});
      throw new Error(`redis-server exited before it was ready:\n${chunks.join("")}`);
    }
  }

  let stopped = false;
  const kill = async () => {
    if (!exited) child!.kill("SIGKILL");
    await status;
  };
  return {
    url: `redis://127.0.0.1:${port}`,
    port,
    dir,
    output: () => chunks.join(""),
    command: (line) => send(port, line),
    kill,
    restart: async () => {
      if (!exited) await kill();
      if (!(await launch())) {
        throw new Error(`redis-server did not restart on port ${port}:\n${chunks.join("")}`);
      }
    },
    stop: async () => {
      if (stopped) return;
      stopped = true;
      if (!exited) child!.kill("SIGTERM");
      const timer = setTimeout(() => exited || child!.kill("SIGKILL"), 5_000);
      await status;
      clearTimeout(timer);
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    },
  };
}
