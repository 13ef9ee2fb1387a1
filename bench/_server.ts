/**
 * @module
 * A `troupe serve` child process for the drills (`bench/outage_drill.ts`,
 * `bench/overload_drill.ts`): started from source on a free loopback port
 * over a data directory, ready once `/readyz` answers 200, stopped with
 * SIGTERM (SIGKILL after a timeout) or killed outright.
 *
 * @example
 * ```ts
 * const server = await startServer({ data: "/tmp/troupe_drill", env: { TROUPE_TOKEN: "..." } });
 * try {
 *   console.log(server.url, server.pid);
 * } finally {
 *   await server.kill();
 * }
 * ```
 */
import { type ChildProcess, spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { createServer } from "node:net";
import { dirname } from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";

/** The repository root: where `main.ts` is. */
export const ROOT: string = dirname(dirname(fileURLToPath(import.meta.url)));

/** Options of {@linkcode startServer}. */
export interface ServerOptions {
  /** Data directory. */
  data: string;
  /** `TROUPE_*` settings and the like, over the current environment without its `TROUPE_*`. */
  env?: Record<string, string>;
  /** Flags after `serve`. */
  extra?: string[];
  /** Milliseconds to wait for `/readyz`. @default 30000 */
  readyTimeoutMs?: number;
}

/** A running server. */
export interface DrillServer {
  url: string;
  pid: number;
  /** Whether the process is still running. */
  alive(): boolean;
  /** The last 64 KiB it wrote. */
  output(): string;
  /** SIGTERM, then SIGKILL after `timeoutMs`; the exit code, `null` when it had to be killed. */
  stop(timeoutMs?: number): Promise<number | null>;
  /** SIGKILL; resolves once it is gone. */
  kill(): Promise<void>;
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address !== null ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

/** Resolves after `ms`. */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function serverEnv(extra: Record<string, string>): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (v !== undefined && !k.startsWith("TROUPE_")) env[k] = v;
  }
  return { ...env, TROUPE_STATUS: "0", TROUPE_LOG_LEVEL: "warning", NO_COLOR: "1", ...extra };
}

/** Starts `deno run -A main.ts serve` and waits for `/readyz`; throws when it does not come up. */
export async function startServer(options: ServerOptions): Promise<DrillServer> {
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const deno = typeof Deno !== "undefined" ? Deno.execPath() : "deno";
  const child: ChildProcess = spawn(
    deno,
    [
      "run",
      "-A",
      "main.ts",
      "serve",
      "--host",
      "127.0.0.1",
      "--port",
      String(port),
      "--data",
      options.data,
      ...(options.extra ?? []),
    ],
    { cwd: ROOT, env: serverEnv(options.env ?? {}), stdio: ["ignore", "pipe", "pipe"] },
  );
  let tail = "";
  const keep = (chunk: Uint8Array | string) => {
    tail = (tail + chunk.toString()).slice(-65536);
  };
  child.stdout?.on("data", keep);
  child.stderr?.on("data", keep);
  let done = false;
  const exited = new Promise<number | null>((resolve) => {
    child.once("exit", (code) => {
      done = true;
      resolve(code);
    });
    child.once("error", (error) => {
      done = true;
      keep(`spawn error: ${error.message}\n`);
      resolve(-1);
    });
  });
  const signal = (sig: "SIGTERM" | "SIGKILL") => {
    if (done || child.pid === undefined) return;
    try {
      process.kill(child.pid, sig);
    } catch { /* already gone */ }
  };
  const server: DrillServer = {
    url,
    pid: child.pid ?? -1,
    alive: () => !done,
    output: () => tail,
    async stop(timeoutMs = 15_000) {
      if (done) return await exited;
      signal("SIGTERM");
      let timer: ReturnType<typeof setTimeout> | undefined;
      const timeout = new Promise<"timeout">((r) =>
        timer = setTimeout(() => r("timeout"), timeoutMs)
      );
      const result = await Promise.race([exited, timeout]);
      clearTimeout(timer);
      if (result !== "timeout") return result;
      signal("SIGKILL");
      await exited;
      return null;
    },
    async kill() {
      signal("SIGKILL");
      await exited;
    },
  };
  const deadline = Date.now() + (options.readyTimeoutMs ?? 30_000);
  try {
    for (;;) {
      if (done) {
        throw new Error(`Server exited with code ${await exited} before it was ready:\n${tail}`);
      }
      const ready = await fetch(`${url}/readyz`, { signal: AbortSignal.timeout(2000) }).then(
        async (res) => {
          await res.body?.cancel();
          return res.status === 200;
        },
        () => false,
      );
      if (ready) return server;
      if (Date.now() > deadline) throw new Error(`Server on ${url} not ready in time:\n${tail}`);
      await sleep(25);
    }
  } catch (error) {
    await server.kill();
    throw error;
  }
}

/** Machine facts for a report: cores, CPU model, runtime version, load average. */
export function machineInfo(): { nproc: number; cpu: string; runtime: string; loadavg: string } {
  let cpu = "unknown";
  let loadavg = "unknown";
  try {
    const info = readFileSync("/proc/cpuinfo", "utf8");
    cpu = /^model name\s*:\s*(.*)$/m.exec(info)?.[1] ?? cpu;
    loadavg = readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ");
  } catch { /* not Linux */ }
  return {
    nproc: navigator.hardwareConcurrency,
    cpu,
    runtime: typeof Deno !== "undefined" ? `Deno ${Deno.version.deno}` : "unknown",
    loadavg,
  };
}
