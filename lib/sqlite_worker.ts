/**
 * @module
 * The entry of the SQLite worker thread behind {@linkcode openWorkerWriter}
 * (`lib/worker_store.ts`). It holds one {@linkcode openSqliteWriter}
 * connection per writer of the main thread and answers one message at a
 * time, so the inserts, the aggregate upserts and the fsync of `COMMIT` run
 * on this thread while the main one keeps serving HTTP.
 *
 * ```
 * main ──{ id, op: "open",   conn, path, options }──► worker ──{ id, ok: true }──► main
 * main ──{ id, op: "commit", conn, units         }──► worker ──{ id, ok: true, value: inserted }
 * main ──{ id, op: "ping" | "close", conn         }──► worker ──{ id, ok: true }
 *                                      any failure ──► worker ──{ id, ok: false, error }
 * ```
 *
 * `units` are `WireUnit`s: each record's key and JSON body made on the main
 * thread, so this thread binds strings and runs SQLite, nothing else (no
 * `JSON.parse` of the records, no `JSON.stringify` of each again). The
 * bodies travel as one text, a record a line, which crosses the thread
 * boundary as one copy of its bytes.
 * `inserted` comes back as one string per unit, `"1"` for a stored record
 * and `"0"` for a duplicate.
 */
import {
  fromWire,
  openSqliteWriter,
  type SqliteOptions,
  type SqliteStoreWriter,
  type WireUnit,
} from "./sqlite_store.ts";

/** A request from the main thread. */
export type WorkerRequest =
  | { id: number; op: "open"; conn: number; path: string; options: SqliteOptions }
  | { id: number; op: "commit"; conn: number; units: WireUnit[] }
  | { id: number; op: "ping" | "close"; conn: number };

/** The answer to one {@linkcode WorkerRequest}, under the same `id`. */
export type WorkerReply =
  | { id: number; ok: true; value?: string[] }
  | { id: number; ok: false; error: { name: string; message: string } };

const writers = new Map<number, SqliteStoreWriter>();

function writerOf(conn: number): SqliteStoreWriter {
  const writer = writers.get(conn);
  if (writer === undefined) throw new Error(`Storage connection ${conn} is not open`);
  return writer;
}

/**
 * Runs one request's SQLite work now (every writer method here is
 * synchronous, so two connections' transactions never interleave) and
 * returns its answer, which for a commit settles once the commit is
 * durable: the next message is written while the WAL syncs.
 */
function handle(request: WorkerRequest): Promise<string[] | undefined> {
  switch (request.op) {
    case "open":
      writers.set(request.conn, openSqliteWriter(request.path, request.options));
      return Promise.resolve(undefined);
    case "commit": {
      const writer = writerOf(request.conn);
      const outcomes = writer.commitEncoded(request.units.map(fromWire));
      const inserted = outcomes.map((o) => o.inserted.map((b) => (b ? "1" : "0")).join(""));
      return writer.durable().then(() => inserted);
    }
    case "ping":
      return writerOf(request.conn).ping().then(() => undefined);
    case "close": {
      const writer = writers.get(request.conn);
      writers.delete(request.conn);
      return (writer?.close() ?? Promise.resolve()).then(() => undefined);
    }
    default:
      throw new TypeError(
        `Unknown SQLite worker request "${(request as { op?: unknown }).op}"`,
      );
  }
}

/** The worker's global scope, typed here so this file checks beside window code. */
const scope = globalThis as unknown as {
  onmessage: ((event: MessageEvent<WorkerRequest>) => void) | null;
  postMessage(message: WorkerReply): void;
};

scope.onmessage = (event) => {
  const { id } = event.data;
  let reply: Promise<string[] | undefined>;
  try {
    reply = handle(event.data);
  } catch (error) {
    reply = Promise.reject(error);
  }
  reply.then(
    (value) => scope.postMessage({ id, ok: true, value }),
    (error) => {
      const e = error instanceof Error ? error : new Error(String(error));
      scope.postMessage({ id, ok: false, error: { name: e.name, message: e.message } });
    },
  );
};
