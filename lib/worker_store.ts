/**
 * @module
 * A {@linkcode StoreWriter} whose SQLite work runs on a Worker thread
 * (`lib/sqlite_worker.ts`), so the main thread keeps HTTP, parsing and the
 * stages and pays only for the hand-off: the JSON body of each record
 * ({@linkcode toWire}, which the direct writer does as well) and the
 * copy of those strings into the message. Inserts, upserts and the fsync of
 * `COMMIT` use the second core. The readers of the query routes stay on the main thread
 * (WAL lets them read while the worker writes).
 *
 * ```
 * storage connection ─┐                         ┌─ SQLite connection 1
 * storage connection ─┼─ postMessage ─► worker ─┼─ SQLite connection 2
 * storage connection ─┘   (one per path)        └─ SQLite connection 3
 * ```
 *
 * The writers of one path and options share one worker (`share`, on by
 * default): `node:sqlite` is synchronous and SQLite takes one writer at a
 * time, so a second worker adds no write throughput, only lock waits
 * (`busy_timeout` sleeps) and memory. Each writer still has its own
 * connection inside the worker, so ping and close keep their meaning. The
 * worker ends when its last writer closes.
 *
 * A commit is answered only after the worker's `COMMIT` returned, so an
 * acknowledged record is as durable as with {@linkcode openSqliteWriter}.
 * If the worker dies (an `error` event), every pending and later call of
 * its writers rejects; the storage connections crash and their pool
 * restarts them, which opens a fresh worker.
 */
import { type SqliteOptions, toWire } from "./sqlite_store.ts";
import type { WorkerReply, WorkerRequest } from "./sqlite_worker.ts";
import type { CommitOutcome, CommitUnit, StoreWriter } from "./store.ts";
import { workerEntry } from "./worker_entry.ts";

/** Options of {@linkcode openWorkerWriter}. */
export interface WorkerStoreOptions extends Omit<SqliteOptions, "syncWal"> {
  /**
   * One worker for all writers of the same path and options; `false` gives
   * each writer its own worker.
   * @default true
   */
  share?: boolean;
  /**
   * The worker's entry module; tests substitute one that fails.
   * @default `lib/sqlite_worker.ts`
   */
  workerUrl?: string | URL;
}

/** Distributes `WorkerRequest` without `id`, keeping the union. */
type Request = WorkerRequest extends infer R ? R extends unknown ? Omit<R, "id"> : never : never;

interface Pending {
  resolve: (value: string[] | undefined) => void;
  reject: (error: Error) => void;
}

/** One worker thread and the calls waiting on it. */
class SqliteThread {
  readonly key: string | undefined;
  #worker: Worker;
  #pending = new Map<number, Pending>();
  #nextId = 1;
  #nextConn = 1;
  #writers = 0;
  #failure: Error | undefined;

  constructor(key: string | undefined, url: string | URL, path: string) {
    this.key = key;
    this.#worker = new Worker(typeof url === "string" ? url : url.href, { type: "module" });
    this.#worker.onmessage = (event: MessageEvent<WorkerReply>) => {
      const reply = event.data;
      const pending = this.#pending.get(reply.id);
      if (pending === undefined) return;
      this.#pending.delete(reply.id);
      if (reply.ok) return pending.resolve(reply.value);
      const error = new Error(reply.error.message);
      error.name = reply.error.name;
      pending.reject(error);
    };
    this.#worker.onerror = (event: ErrorEvent) => {
      // Handled here: left alone, a worker's uncaught error would end the whole process.
      event.preventDefault();
      this.#fail(new Error(`SQLite worker for "${path}" died: ${event.message}`));
    };
    this.#worker.onmessageerror = () => {
      this.#fail(new Error(`SQLite worker for "${path}" sent a message that cannot be read`));
    };
    // Bun tells when a worker ends; Deno has no such event (its deaths come as `error`).
    this.#worker.addEventListener("close", () => {
      this.#fail(new Error(`SQLite worker for "${path}" exited`));
    });
  }

  /** Opens one more SQLite connection in this worker; returns its number. */
  async attach(path: string, options: SqliteOptions): Promise<number> {
    const conn = this.#nextConn++;
    this.#writers++;
    try {
      await this.request({ op: "open", conn, path, options });
      return conn;
    } catch (error) {
      this.detach();
      throw error;
    }
  }

  /** Forgets one writer; the last one ends the worker. */
  detach(): void {
    if (--this.#writers > 0) return;
    this.#fail(new Error("SQLite worker was closed"));
  }

  request(request: Request): Promise<string[] | undefined> {
    if (this.#failure !== undefined) return Promise.reject(this.#failure);
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
      this.#worker.postMessage({ ...request, id });
    });
  }

  #fail(error: Error): void {
    if (this.#failure !== undefined) return;
    this.#failure = error;
    if (this.key !== undefined && shared.get(this.key) === this) shared.delete(this.key);
    this.#worker.terminate();
    for (const pending of this.#pending.values()) pending.reject(error);
    this.#pending.clear();
  }
}

/** Workers shared by path and options. */
const shared = new Map<string, SqliteThread>();

class WorkerWriter implements StoreWriter {
  #thread: SqliteThread;
  #conn: number;
  #closed = false;

  constructor(thread: SqliteThread, conn: number) {
    this.#thread = thread;
    this.#conn = conn;
  }

  async commit(units: readonly CommitUnit[]): Promise<CommitOutcome[]> {
    if (this.#closed) throw new Error("Storage connection is closed");
    const encoded = units.map(toWire);
    const inserted = await this.#thread.request({ op: "commit", conn: this.#conn, units: encoded });
    return inserted!.map((flags) => ({ inserted: Array.from(flags, (flag) => flag === "1") }));
  }

  async ping(): Promise<void> {
    if (this.#closed) throw new Error("Storage connection is closed");
    await this.#thread.request({ op: "ping", conn: this.#conn });
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    try {
      await this.#thread.request({ op: "close", conn: this.#conn });
    } catch { /* a dead worker took its connection with it */ }
    this.#thread.detach();
  }
}

/**
 * Opens a writer on the SQLite file `path` whose work runs on a Worker
 * thread. Same contract, options and schema checks as
 * {@linkcode openSqliteWriter}; rejects when the worker cannot start or
 * the file cannot be opened.
 *
 * @example
 * ```ts
 * const writer = await openWorkerWriter(sqlitePath("data"), { synchronous: "full" });
 * const [outcome] = await writer.commit([{ records, failed: [] }]);
 * await writer.close(); // the worker ends with its last writer
 * ```
 */
export async function openWorkerWriter(
  path: string,
  options: WorkerStoreOptions = {},
): Promise<StoreWriter> {
  const { share = true, workerUrl, ...sqlite } = options;
  const url = workerUrl ?? workerEntry("sqlite_worker.ts");
  const key = share ? JSON.stringify([path, sqlite, String(url)]) : undefined;
  let thread = key === undefined ? undefined : shared.get(key);
  if (thread === undefined) {
    thread = new SqliteThread(key, url, path);
    if (key !== undefined) shared.set(key, thread);
  }
  const conn = await thread.attach(path, sqlite);
  return new WorkerWriter(thread, conn);
}
