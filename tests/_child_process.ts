/**
 * @module
 * `troupe serve` as a real separate process for tests: a free loopback
 * port, both output pipes drained so the child never blocks, readiness
 * awaited, and a stop that sends a signal and waits for the exit code.
 */
import { fileURLToPath } from "node:url";

/** The repository root. */
export const ROOT: string = fileURLToPath(new URL("../", import.meta.url));

/** How long a child may take to exit after a signal: far above `shutdown_timeout_ms`. */
export const EXIT_TIMEOUT_MS = 15_000;

/** The environment of every child: no fault injection, no status line, no token, no queue. */
export const CHILD_ENV: Record<string, string> = {
  TROUPE_FAULTS: "",
  TROUPE_STATUS: "0",
  TROUPE_TOKEN: "",
  TROUPE_QUEUE: "",
};

/** A free loopback port: bound, read and released, for the child to take. */
export function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr as Deno.NetAddr;
  listener.close();
  return port;
}

/** A `serve` child process. */
export interface ServeProcess {
  url: string;
  child: Deno.ChildProcess;
  /** Everything the child wrote to stdout and stderr so far. */
  output(): string;
  /** Sends `signal`, then waits up to {@linkcode EXIT_TIMEOUT_MS} for the exit. */
  stop(signal: Deno.Signal): Promise<{ code: number; ms: number }>;
}

async function drainInto(stream: ReadableStream<Uint8Array>, chunks: string[]): Promise<void> {
  for await (const text of stream.pipeThrough(new TextDecoderStream())) chunks.push(text);
}

/**
 * Starts `command args… serve --port P --data DIR` and resolves once
 * `/readyz` answers 200. `command` is the Deno executable (with
 * `["run", "--allow-all", "main.ts"]` as `args`) or a compiled binary.
 */
export async function startServe(
  command: string,
  args: string[],
  data: string,
  /** More `serve` options, such as `["--config", file]`. */
  extra: string[] = [],
  /** More environment, laid over {@linkcode CHILD_ENV}, such as `{ TROUPE_QUEUE: url }`. */
  env: Record<string, string> = {},
): Promise<ServeProcess> {
  const port = freePort();
  const url = `http://127.0.0.1:${port}`;
  const child = new Deno.Command(command, {
    args: [...args, "serve", "--port", String(port), "--data", data, ...extra],
    cwd: ROOT,
    env: { ...CHILD_ENV, ...env },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const chunks: string[] = [];
  const drained = Promise.all([drainInto(child.stdout, chunks), drainInto(child.stderr, chunks)]);
  const output = () => chunks.join("");
  let exited: Deno.CommandStatus | undefined;
  const status = child.status.then(async (s) => {
    exited = s;
    await drained;
    return s;
  });
  const deadline = Date.now() + 30_000;
  while (true) {
    if (exited !== undefined) {
      await status;
      throw new Error(
        `${command} serve exited with code ${exited.code} before it was ready:\n${output()}`,
      );
    }
    const ready = await fetch(`${url}/readyz`).then(async (res) => {
      await res.body?.cancel();
      return res.status === 200;
    }, () => false);
    if (ready) break;
    if (Date.now() > deadline) {
      child.kill("SIGKILL");
      await status;
      throw new Error(`${command} serve was not ready on ${url} after 30 s:\n${output()}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  const stop = async (signal: Deno.Signal) => {
    const started = performance.now();
    child.kill(signal);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<"timeout">((r) =>
      timer = setTimeout(() => r("timeout"), EXIT_TIMEOUT_MS)
    );
    const result = await Promise.race([status, timeout]);
    clearTimeout(timer);
    if (result === "timeout") {
      child.kill("SIGKILL");
      await status;
      throw new Error(
        `${command} serve did not exit within ${EXIT_TIMEOUT_MS} ms of ${signal}:\n${output()}`,
      );
    }
    return { code: result.code, ms: performance.now() - started };
  };
  return { url, child, output, stop };
}

/** A server from Debian started by a test (Prometheus, Alertmanager). */
export interface Daemon {
  url: string;
  /** Everything it wrote so far. */
  output(): string;
  /** SIGTERM, then SIGKILL after 10 s; resolves once it has exited. */
  stop(): Promise<void>;
}

/**
 * Starts `command` with `args(port)` on a free loopback port and resolves
 * once `GET /-/ready` answers 2xx. A free port taken meanwhile makes the
 * daemon exit at once: it is tried again on another port, up to 3 times.
 */
export async function startDaemon(
  name: string,
  command: string,
  args: (port: number) => string[],
  options: { cwd?: string } = {},
): Promise<Daemon> {
  for (let attempt = 1;; attempt++) {
    const port = freePort();
    const url = `http://127.0.0.1:${port}`;
    const child = new Deno.Command(command, {
      args: args(port),
      cwd: options.cwd,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const chunks: string[] = [];
    const drained = Promise.all([drainInto(child.stdout, chunks), drainInto(child.stderr, chunks)]);
    const output = () => chunks.join("");
    let exited = false;
    const status = child.status.then(async (s) => {
      exited = true;
      await drained;
      return s;
    });
    const stop = async () => {
      if (!exited) child.kill("SIGTERM");
      const timer = setTimeout(() => exited || child.kill("SIGKILL"), 10_000);
      await status;
      clearTimeout(timer);
    };
    const deadline = Date.now() + 30_000;
    while (true) {
      if (exited) {
        const s = await status;
        if (attempt < 3) break;
        throw new Error(`${name} exited with code ${s.code} before it was ready:\n${output()}`);
      }
      const ready = await fetch(`${url}/-/ready`).then(async (res) => {
        await res.body?.cancel();
        return res.ok;
      }, () => false);
      if (ready) return { url, output, stop };
      if (Date.now() > deadline) {
        await stop();
        throw new Error(`${name} was not ready on ${url} after 30 s:\n${output()}`);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}
