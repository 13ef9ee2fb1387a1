/**
 * @module
 * A throwaway PostgreSQL 15 for tests: `initdb` in a temporary directory,
 * `postgres` on a free loopback port with the socket in that directory,
 * `fsync=off` (unless asked), password (SCRAM) authentication over TCP, a `troupe`
 * superuser and database. PostgreSQL refuses to run as root, so as root
 * (CI, this machine) every binary runs as the `postgres` OS user through
 * `setpriv`, which execs in place: the child's pid is the postmaster's.
 *
 * `halt()` stops the server (fast shutdown) and keeps its data;
 * `resume()` starts it again on the same port and data directory, as an
 * outage drill needs. `stop()` stops it and deletes everything.
 */
import postgres from "postgres";
import { freePort } from "./_child_process.ts";

/** Where Debian installs PostgreSQL 15's server binaries. */
export const PG_BIN = "/usr/lib/postgresql/15/bin";

/** A running throwaway server. */
export interface PostgresServer {
  /** `postgres://troupe:<password>@127.0.0.1:<port>/troupe`. */
  url: string;
  port: number;
  password: string;
  /** The URL of database `name` on this server. */
  urlOf(name: string): string;
  /** Creates a fresh database and returns its URL. */
  createDatabase(name: string): Promise<string>;
  /** Everything the server logged so far. */
  output(): string;
  /** Stops the server (fast shutdown: sessions are cut), keeping its data. */
  halt(): Promise<void>;
  /** Starts it again on the same port and data directory; resolves once it accepts connections. */
  resume(): Promise<void>;
  /** Stops the server and deletes its directory. */
  stop(): Promise<void>;
}

const decoder = new TextDecoder();

/** Runs `command` to completion (as `postgres` when we are root); throws with its output on failure. */
async function run(command: string, args: string[]): Promise<string> {
  const [cmd, argv] = asPostgres(command, args);
  const out = await new Deno.Command(cmd, { args: argv, stdin: "null" }).output();
  const text = decoder.decode(out.stdout) + decoder.decode(out.stderr);
  if (!out.success) throw new Error(`${command} ${args.join(" ")} failed (${out.code}):\n${text}`);
  return text;
}

/** PostgreSQL will not run as root: drop to the `postgres` user, exec'ing in place. */
function asPostgres(command: string, args: string[]): [string, string[]] {
  if (Deno.uid() !== 0) return [command, args];
  return [
    "setpriv",
    ["--reuid=postgres", "--regid=postgres", "--init-groups", "--", command, ...args],
  ];
}

async function drainInto(stream: ReadableStream<Uint8Array>, chunks: string[]): Promise<void> {
  for await (const text of stream.pipeThrough(new TextDecoderStream())) chunks.push(text);
}

/** Whether PostgreSQL 15's binaries are installed (Debian's `postgresql` package). */
export function havePostgres(): boolean {
  try {
    return Deno.statSync(`${PG_BIN}/initdb`).isFile;
  } catch {
    return false;
  }
}

/** Options of {@linkcode startPostgres}. */
export interface PostgresServerOptions {
  /** Sync to disk like a real server (benchmarks); tests leave it off. @default false */
  fsync?: boolean;
}

/**
 * Creates and starts a server; resolves once it accepts connections and
 * database `troupe` exists. Bounded: throws after 30 s.
 */
export async function startPostgres(options: PostgresServerOptions = {}): Promise<PostgresServer> {
  const fsync = options.fsync ?? false;
  const dir = await Deno.makeTempDir({ prefix: "troupe_pg_" });
  const chunks: string[] = [];
  let child: Deno.ChildProcess | undefined;
  let status: Promise<Deno.CommandStatus> | undefined;
  let exited = false;
  const password = `pw-${crypto.randomUUID()}`;
  let port = 0;

  const halt = async () => {
    if (child === undefined) return;
    const c = child;
    child = undefined;
    if (!exited) c.kill("SIGINT");
    // Fast shutdown takes well under a second; past 10 s, immediate, then kill.
    const quit = setTimeout(() => exited || c.kill("SIGQUIT"), 10_000);
    const kill = setTimeout(() => exited || c.kill("SIGKILL"), 15_000);
    await status;
    clearTimeout(quit);
    clearTimeout(kill);
  };

  const spawn = () => {
    exited = false;
    const [cmd, args] = asPostgres(`${PG_BIN}/postgres`, [
      "-D",
      `${dir}/data`,
      "-p",
      String(port),
      "-k",
      dir,
      "-c",
      "listen_addresses=127.0.0.1",
      "-c",
      `fsync=${fsync ? "on" : "off"}`,
      "-c",
      `full_page_writes=${fsync ? "on" : "off"}`,
      "-c",
      "max_connections=60",
      "-c",
      "shared_buffers=32MB",
    ]);
    const c = new Deno.Command(cmd, {
      args,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const drained = Promise.all([drainInto(c.stdout, chunks), drainInto(c.stderr, chunks)]);
    child = c;
    status = c.status.then(async (s) => {
      exited = true;
      await drained;
      return s;
    });
  };

  /** Waits until `pg_isready` says yes; false when the server exited first. */
  const ready = async (): Promise<boolean> => {
    const deadline = Date.now() + 30_000;
    while (!exited) {
      const probe = await new Deno.Command(`${PG_BIN}/pg_isready`, {
        args: ["-q", "-h", "127.0.0.1", "-p", String(port), "-t", "1"],
        stdin: "null",
        stdout: "null",
        stderr: "null",
      }).output();
      if (probe.success) return true;
      if (Date.now() > deadline) {
        await halt();
        throw new Error(`PostgreSQL was not ready on port ${port} after 30 s:\n${chunks.join("")}`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    return false;
  };

  const urlOf = (name: string) =>
    `postgres://troupe:${encodeURIComponent(password)}@127.0.0.1:${port}/${name}`;

  try {
    await new Deno.Command("chown", { args: ["postgres:postgres", dir] }).output().then((o) => {
      if (!o.success && Deno.uid() === 0) throw new Error(decoder.decode(o.stderr));
    });
    await Deno.writeTextFile(`${dir}/pwfile`, password + "\n");
    if (Deno.uid() === 0) {
      await new Deno.Command("chown", { args: ["postgres:postgres", `${dir}/pwfile`] }).output();
    }
    await run(`${PG_BIN}/initdb`, [
      "-D",
      `${dir}/data`,
      "-U",
      "troupe",
      `--pwfile=${dir}/pwfile`,
      "--auth-host=scram-sha-256",
      "--auth-local=trust",
      "-E",
      "UTF8",
      "--locale=C",
      "--no-sync",
      "--no-instructions",
    ]);
    // A free port can be taken between finding it and binding it: try another, up to 3 times.
    for (let attempt = 1;; attempt++) {
      port = freePort();
      spawn();
      if (await ready()) break;
      await status;
      child = undefined;
      if (attempt === 3) {
        throw new Error(`PostgreSQL exited before it was ready:\n${chunks.join("")}`);
      }
    }
    const admin = postgres(urlOf("postgres"), { max: 1, onnotice: () => {} });
    try {
      await admin`CREATE DATABASE troupe`;
    } finally {
      await admin.end({ timeout: 1 });
    }
  } catch (error) {
    await halt();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    throw error;
  }

  return {
    url: urlOf("troupe"),
    port,
    password,
    urlOf,
    async createDatabase(name) {
      const admin = postgres(urlOf("postgres"), { max: 1, onnotice: () => {} });
      try {
        await admin.unsafe(`CREATE DATABASE ${name}`);
      } finally {
        await admin.end({ timeout: 1 });
      }
      return urlOf(name);
    },
    output: () => chunks.join(""),
    halt,
    async resume() {
      if (child !== undefined) return;
      spawn();
      if (!(await ready())) {
        throw new Error(`PostgreSQL did not start again on port ${port}:\n${chunks.join("")}`);
      }
    },
    async stop() {
      await halt();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    },
  };
}
