/**
 * @module
 * The PostgreSQL storage backend, chosen with `storage.url` (or
 * `TROUPE_STORE`) set to `postgres://user:password@host:port/database`:
 * {@linkcode StoreWriter} and {@linkcode StoreReader} over the
 * [`postgres`](https://github.com/porsager/postgres) client. Several troupe
 * instances may write to one database at once; each keeps the contract of
 * `lib/store.ts` on its own and together they never count a record twice.
 *
 * Tables live in their own PostgreSQL schema ({@linkcode DEFAULT_PG_SCHEMA}),
 * created by {@linkcode createPostgresSchema} when troupe starts:
 *
 * ```
 * records  id text PK (recordKey) │ body text (JSON ProcessedRecord)
 * users    user_id text PK │ total_events │ total_value │ events text[] │ last_ms
 * events   event text PK │ count │ total_value │ min_value │ max_value
 * failed   seq bigserial PK │ record_id (JSON id or NULL) │ stage │ reason │ raw (JSON) │ failed_at
 * totals   slot int PK │ stored_records │ failed_records │ users │ events   (summed on read)
 * meta     key text PK │ value text   (schema_version)
 * ```
 *
 * Keys are `COLLATE "C"`, so users page in the same (binary) order as with
 * SQLite. Aggregates keep sums, counts, minima and maxima, never an average,
 * and `last_ms` (epoch ms) from which `last_activity` is formatted on read:
 * each is a commutative update (`+`, `LEAST`, `GREATEST`, appending the
 * events not yet listed), so transactions of several instances merge exactly
 * in whatever order they commit. `totals` has one row per slot, each writer
 * adding to one picked at random when it opens, so the writers of several
 * instances rarely wait on the same row; `counts()` sums them.
 *
 * A commit is ONE statement, so one transaction, one round trip:
 *
 * 1. `INSERT INTO records … SELECT … FROM unnest($ids, $bodies, …) ORDER BY
 *    id ON CONFLICT (id) DO NOTHING RETURNING id`, for every record of the
 *    commit whatever their number (each column is one array parameter, far
 *    from the 65 535 bind-parameter limit). A key repeated within the commit
 *    is sent once; its first record claims it. A key another transaction
 *    holds uncommitted makes this one wait, then skip the key (it committed)
 *    or store it (it rolled back): exactly one transaction of any number of
 *    instances stores, and counts, a record.
 * 2. From the rows `RETURNING` gave back only, the per-user and per-event
 *    sums, with ONE `INSERT … ON CONFLICT DO UPDATE SET count = t.count +
 *    excluded.count, …` per table (`xmax = 0` tells a new row from an
 *    updated one, which counts new users and event types). The aggregate
 *    stage's `deltas` are not used: PostgreSQL sums the inserted rows
 *    itself, in commit order (`sum(value ORDER BY ord)`, as JavaScript does).
 * 3. The failed records, then the writer's totals slot.
 *
 * The statement answers how many records went in and, unless all of them,
 * which. Every transaction locks rows in one order: records, users, events,
 * totals, and within each table by sorted key, so two transactions can wait
 * on each other in one direction only and no deadlock arises (the concurrent
 * writers test counts PostgreSQL's deadlocks: none, against plenty without
 * the sorting). A commit that still fails with a deadlock or serialization
 * failure (SQLSTATE 40P01, 40001) runs again, up to
 * {@linkcode PostgresOptions.maxAttempts} times; one that fails because the
 * connection was lost runs once more at once, on a fresh connection.
 *
 * Why one statement and not `sql.begin()`: postgres 3.4.9 crashes the whole
 * process (an uncaught `TypeError` in `nextWrite`) when a connection dies
 * inside `begin()` (porsager/postgres#1208), and a lost connection between
 * two statements of a hand-made `BEGIN … COMMIT` would send the next ones,
 * outside the transaction, on a new connection. Arrays go as text literals
 * built here ({@linkcode pgTextArray}) with the client's array types off,
 * since 3.4.9 loses them for good when the query fetching them on connect
 * fails. Measured on 2 cores (`bench/postgres_commit.ts`): multi-row
 * `VALUES` with 2000 bind parameters inserted 1000 records about as fast as
 * `unnest` (within the noise, 12 to 17 ms each), but needs one prepared
 * statement per row count and cannot hold more than 9362 records of seven
 * columns in one statement.
 *
 * Schema creation is idempotent (`CREATE … IF NOT EXISTS`) and runs under
 * `pg_advisory_xact_lock`, so instances starting together create it once;
 * a database holding another schema version is refused.
 *
 * Not partitioned. The seed's "partitioning by user_id hash" would make
 * `records` a hash-partitioned table whose unique key must include
 * `user_id`: a record sent again with another `user_id` would then be stored
 * twice, breaking idempotency by id. Partitioning `records` by a hash of the
 * id would keep it, but no query prunes by that hash and one server gains
 * nothing from it; the work is already spread by user across the writers of
 * every instance. A deployment that outgrows one table can partition by id
 * hash later without changing these statements.
 *
 * Connections: one per writer (`max: 1`, so at most
 * `pipeline.stages.store.max_workers`, ≤ 5, per process) and one for the
 * reader, which pipelines the query routes' reads on it. A lost connection
 * makes commits, pings and reads fail with {@linkcode PostgresStoreError}
 * (`connection: true`): the storage connection actors then hold the batches
 * behind the circuit breaker, the query routes answer 503, and the client
 * connects again on the next statement once PostgreSQL answers. Error
 * messages name the server as `user@host:port/database`, never with the
 * password.
 *
 * Unlike SQLite, PostgreSQL text cannot hold NUL (U+0000): a record whose id,
 * `user_id` or `event` holds one fails its commit (with the server answering
 * the ping), so the store stage isolates it into the failed store like any
 * poison record. Inside `metadata` a NUL is fine (the body is JSON).
 *
 * The client reads the `PG*` environment variables for what the URL leaves
 * out (password, port…); a URL without a user connects as `postgres`.
 */
import postgres from "postgres";
import { maskPassword } from "./config.ts";
import {
  type EventAggregate,
  type ProcessedRecord,
  type RecordId,
  recordKey,
  type StageName,
  toUtcIso,
  type UserAggregate,
} from "./schemas.ts";
import type {
  CommitOutcome,
  CommitUnit,
  StoreCounts,
  StoredFailure,
  StoreReader,
  StoreWriter,
  UserPage,
} from "./store.ts";

/** Options of the PostgreSQL writer, reader and schema creation. */
export interface PostgresOptions {
  /**
   * The PostgreSQL schema (namespace) of troupe's tables: lower-case letters,
   * digits and `_`.
   * @default "troupe"
   */
  schema?: string;
  /** How long connecting may take before it fails. @default 5000 */
  connectTimeoutMs?: number;
  /** Longest a statement may run on the server (`statement_timeout`). @default 30000 */
  statementTimeoutMs?: number;
  /** Attempts at a commit that hits a deadlock or serialization failure. @default 5 */
  maxAttempts?: number;
}

/** The schema version this module writes and reads. */
export const PG_SCHEMA_VERSION = 1;

/** The PostgreSQL schema troupe's tables live in unless told otherwise. */
export const DEFAULT_PG_SCHEMA = "troupe";

/** Rows of `totals`; each writer adds to one of them. */
export const TOTALS_SLOTS = 16;

/** Key of the advisory lock held while the schema is created (`"troupe"` in ASCII). */
const SCHEMA_LOCK = 0x74726f757065;

/** SQLSTATEs after which the whole transaction may simply run again. */
const RETRYABLE = new Set(["40P01", "40001"]);

/** Errors of the client or server that mean the connection, not the statement, failed. */
const CONNECTION_CODES: Record<string, string> = {
  ECONNREFUSED: "connection refused",
  ECONNRESET: "connection reset",
  ETIMEDOUT: "timed out",
  EHOSTUNREACH: "host unreachable",
  ENETUNREACH: "network unreachable",
  ENOTFOUND: "host not found",
  EAI_AGAIN: "host name lookup failed",
  EPIPE: "connection broken",
  CONNECT_TIMEOUT: "connect timed out",
  CONNECTION_CLOSED: "connection closed",
  CONNECTION_ENDED: "connection ended",
  CONNECTION_DESTROYED: "connection destroyed",
  "28P01": "authentication failed",
  "28000": "authorization failed",
  "3D000": "database does not exist",
  "57P01": "server shutting down",
  "57P02": "server crashed",
  "57P03": "server not accepting connections yet",
  "53300": "too many connections",
};

/**
 * A failure talking to PostgreSQL: `code` is the SQLSTATE or the client's
 * error code, `cause` the original error. The message names the server
 * without its password.
 */
export class PostgresStoreError extends Error {
  readonly code: string | undefined;
  /** True when the connection failed (refused, lost, authentication), not a statement. */
  readonly connection: boolean;

  constructor(message: string, options: { code?: string; connection: boolean; cause: unknown }) {
    super(message, { cause: options.cause });
    this.name = "PostgresStoreError";
    this.code = options.code;
    this.connection = options.connection;
  }
}

/** Where a URL points, for messages: `user@host:port/database`, never the password. */
export function postgresTarget(url: string): string {
  try {
    const u = new URL(url);
    const user = u.username === "" ? "" : `${decodeURIComponent(u.username)}@`;
    return `${user}${u.host || "localhost"}${u.pathname === "/" ? "" : u.pathname}`;
  } catch {
    return maskPassword(url);
  }
}

/** Whether `url` names PostgreSQL (`postgres://` or `postgresql://`). */
export function isPostgresUrl(url: string): boolean {
  return /^postgres(ql)?:\/\//i.test(url);
}

/** Turns anything thrown by the client into a {@linkcode PostgresStoreError} naming `target`. */
function storeError(error: unknown, target: string, doing: string): Error {
  if (error instanceof PostgresStoreError || error instanceof TypeError) return error;
  const e = error as { code?: unknown; message?: unknown } | null;
  const code = typeof e?.code === "string" ? e.code : undefined;
  const raw = typeof e?.message === "string" ? e.message : String(error);
  const known = code === undefined ? undefined : CONNECTION_CODES[code];
  // The client's own messages ("connect ECONNREFUSED 127.0.0.1:5432") say less than the name of
  // their code; the server's ("password authentication failed for user …") say more.
  const detail = known !== undefined && !/^\d/.test(code!) ? known : raw;
  return new PostgresStoreError(
    `Cannot ${doing} PostgreSQL "${target}": ${maskPassword(detail)}${
      code === undefined ? "" : ` (${code})`
    }`,
    { code, connection: known !== undefined, cause: error },
  );
}

function checkSchemaName(schema: string): string {
  if (!/^[a-z_][a-z0-9_]{0,62}$/.test(schema)) {
    throw new RangeError(
      `Invalid PostgreSQL schema name "${schema}": expected lower-case letters, digits and _`,
    );
  }
  return schema;
}

function checkPositive(what: string, n: number): number {
  if (!Number.isSafeInteger(n) || n < 1) {
    throw new RangeError(`Invalid ${what} ${n}: expected a positive integer`);
  }
  return n;
}

/**
 * The client of one writer or reader: at most `max` connections, nothing
 * connected until the first statement, every statement through
 * {@linkcode Connection.run}.
 *
 * `run` fails a statement as soon as the client reports a connection
 * closing while it is under way, and then swaps the client for a fresh one.
 * postgres 3.4.9 sometimes keeps a statement waiting through its reconnect
 * loop instead of failing it when the server is gone (a `close` before the
 * socket's `error`): the commit would hang for the whole outage, and the
 * storage actors would never hear of it. A statement the server did commit
 * just before the connection was lost is reported failed too; committed
 * again, its records are duplicates, never counted twice.
 */
class Connection {
  readonly target: string;
  readonly schema: string;
  #url: string;
  #settings: postgres.Options<Record<string, postgres.PostgresType>>;
  #sql: postgres.Sql;
  #watchers = new Set<() => void>();
  #ended = false;

  constructor(url: string, options: PostgresOptions, max: number) {
    if (!isPostgresUrl(url)) {
      throw new RangeError(
        `Invalid PostgreSQL URL "${maskPassword(url)}": expected postgres:// or postgresql://`,
      );
    }
    this.target = postgresTarget(url);
    this.schema = checkSchemaName(options.schema ?? DEFAULT_PG_SCHEMA);
    const connectMs = checkPositive("connect timeout", options.connectTimeoutMs ?? 5000);
    const statementMs = checkPositive("statement timeout", options.statementTimeoutMs ?? 30_000);
    let user: string | undefined;
    try {
      user = new URL(url).username === "" ? "postgres" : undefined;
    } catch (error) {
      throw new RangeError(`Invalid PostgreSQL URL "${maskPassword(url)}"`, { cause: error });
    }
    this.#url = url;
    this.#settings = {
      max,
      // Only when the URL names no user: the client's own fallback asks the OS, which needs
      // permissions troupe does not hold.
      ...(user === undefined ? {} : { user }),
      connect_timeout: Math.max(1, Math.ceil(connectMs / 1000)),
      idle_timeout: 0,
      max_lifetime: null,
      // No waiting of the client's own before it connects again (up to 20 s after repeated
      // failures by default): the storage actors and their circuit breaker do the backing off.
      backoff: () => 0,
      // Arrays go as text literals built here (see pgTextArray), so the client needs no array
      // types: version 3.4.9 loses them for good when the query that fetches them on connect
      // fails (a server shutting down), and then sends arrays it cannot encode.
      fetch_types: false,
      onnotice: () => {},
      connection: {
        application_name: "troupe",
        statement_timeout: statementMs,
      },
    };
    this.#sql = this.#open();
  }

  #open(): postgres.Sql {
    const sql: postgres.Sql = postgres(this.#url, {
      ...this.#settings,
      onclose: () => {
        if (sql === this.#sql) { for (const lost of [...this.#watchers]) lost(); }
      },
    });
    return sql;
  }

  /** Runs `statement` on the client; fails it at once if a connection closes meanwhile. */
  async run<T>(statement: (sql: postgres.Sql) => Promise<T>): Promise<T> {
    if (this.#ended) {
      throw new PostgresStoreError(`PostgreSQL connection to "${this.target}" is not open`, {
        code: "CONNECTION_ENDED",
        connection: true,
        cause: undefined,
      });
    }
    const sql = this.#sql;
    let lost!: () => void;
    const closed = new Promise<never>((_, reject) => {
      lost = () =>
        reject(Object.assign(new Error("connection closed"), { code: "CONNECTION_CLOSED" }));
    });
    this.#watchers.add(lost);
    const running = statement(sql);
    // Settled by the swap below at the latest; its outcome no longer matters then.
    running.catch(() => {});
    try {
      return await Promise.race([running, closed]);
    } catch (error) {
      if ((error as { code?: unknown }).code === "CONNECTION_CLOSED") this.#swap(sql);
      throw error;
    } finally {
      this.#watchers.delete(lost);
    }
  }

  /** Replaces `old` (if still current) with a fresh client, and ends `old` at once. */
  #swap(old: postgres.Sql): void {
    if (old !== this.#sql || this.#ended) return;
    this.#sql = this.#open();
    old.end({ timeout: 0 }).catch(() => {});
  }

  /** Ends the client; statements under way get a second to finish, then fail. */
  async end(): Promise<void> {
    if (this.#ended) return;
    this.#ended = true;
    await this.#sql.end({ timeout: 1 });
  }
}

/**
 * Creates troupe's schema and tables when they are missing, under an
 * advisory lock so instances starting at once do it once; throws
 * {@linkcode PostgresStoreError} when PostgreSQL cannot be reached or the
 * database holds another schema version than {@linkcode PG_SCHEMA_VERSION}.
 *
 * @example
 * ```ts
 * await createPostgresSchema("postgres://troupe:secret@127.0.0.1:5432/troupe");
 * ```
 */
export async function createPostgresSchema(
  url: string,
  options: PostgresOptions = {},
): Promise<void> {
  const c = new Connection(url, options, 1);
  const { target, schema: s } = c;
  try {
    // One simple-protocol query holding the whole transaction (no parameters, so several
    // statements are allowed): a lost connection leaves the client nothing to roll back.
    await c.run((sql) =>
      sql.unsafe(`BEGIN;
SELECT pg_advisory_xact_lock(${SCHEMA_LOCK});
${schemaSql(s)}
INSERT INTO ${s}.meta (key, value) VALUES ('schema_version', '${PG_SCHEMA_VERSION}')
  ON CONFLICT (key) DO NOTHING;
COMMIT;`)
    );
    const [row] = await c.run((sql) =>
      sql.unsafe(`SELECT value FROM ${s}.meta WHERE key = 'schema_version'`)
    );
    if (row?.value !== String(PG_SCHEMA_VERSION)) {
      throw new PostgresStoreError(
        `Cannot use PostgreSQL "${target}": schema "${s}" is version ${row?.value}, not ${PG_SCHEMA_VERSION}`,
        { connection: false, cause: undefined },
      );
    }
  } catch (error) {
    const code = (error as { code?: unknown } | null)?.code;
    const connecting = typeof code === "string" && code in CONNECTION_CODES;
    throw storeError(error, target, connecting ? "connect to" : "create the schema on");
  } finally {
    await c.end();
  }
}

function schemaSql(s: string): string {
  return `
CREATE SCHEMA IF NOT EXISTS ${s};
CREATE TABLE IF NOT EXISTS ${s}.meta (
  key text COLLATE "C" PRIMARY KEY,
  value text NOT NULL
);
CREATE TABLE IF NOT EXISTS ${s}.records (
  id text COLLATE "C" PRIMARY KEY,
  body text NOT NULL
);
CREATE TABLE IF NOT EXISTS ${s}.users (
  user_id text COLLATE "C" PRIMARY KEY,
  total_events bigint NOT NULL,
  total_value double precision NOT NULL,
  events text[] NOT NULL,
  last_ms bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS ${s}.events (
  event text COLLATE "C" PRIMARY KEY,
  count bigint NOT NULL,
  total_value double precision NOT NULL,
  min_value double precision NOT NULL,
  max_value double precision NOT NULL
);
CREATE TABLE IF NOT EXISTS ${s}.failed (
  seq bigserial PRIMARY KEY,
  record_id text,
  stage text NOT NULL,
  reason text NOT NULL,
  raw text NOT NULL,
  failed_at text NOT NULL
);
CREATE INDEX IF NOT EXISTS failed_by_stage ON ${s}.failed (stage, seq);
CREATE TABLE IF NOT EXISTS ${s}.totals (
  slot integer PRIMARY KEY,
  stored_records bigint NOT NULL,
  failed_records bigint NOT NULL,
  users bigint NOT NULL,
  events bigint NOT NULL
);`;
}

/** Fails unless the schema exists at {@linkcode PG_SCHEMA_VERSION}. */
async function checkSchema(c: Connection): Promise<void> {
  const [row] = await c.run((sql) =>
    sql.unsafe(`SELECT to_regclass($1) IS NOT NULL AS present`, [`${c.schema}.meta`])
  );
  const version = row.present
    ? (await c.run((sql) =>
      sql.unsafe(`SELECT value FROM ${c.schema}.meta WHERE key = 'schema_version'`)
    ))[0]?.value
    : undefined;
  if (version !== String(PG_SCHEMA_VERSION)) {
    throw new PostgresStoreError(
      version === undefined
        ? `Cannot use PostgreSQL "${c.target}": schema "${c.schema}" does not exist (createPostgresSchema creates it)`
        : `Cannot use PostgreSQL "${c.target}": schema "${c.schema}" is version ${version}, not ${PG_SCHEMA_VERSION}`,
      { connection: false, cause: undefined },
    );
  }
}

/**
 * Opens a writer on its own connection (connected and the schema checked
 * before this resolves). Run {@linkcode createPostgresSchema} once first.
 *
 * @example
 * ```ts
 * const writer = await openPostgresWriter(url);
 * const [outcome] = await writer.commit([{ records, failed: [] }]);
 * await writer.close();
 * ```
 */
export async function openPostgresWriter(
  url: string,
  options: PostgresOptions = {},
): Promise<StoreWriter> {
  const c = new Connection(url, options, 1);
  const maxAttempts = checkPositive("attempt count", options.maxAttempts ?? 5);
  try {
    await checkSchema(c);
  } catch (error) {
    await c.end().catch(() => {});
    throw storeError(error, c.target, "connect to");
  }
  return new PostgresWriter(c, maxAttempts);
}

/**
 * Opens the reader of the query routes on one connection (connected and
 * the schema checked before this resolves).
 */
export async function openPostgresReader(
  url: string,
  options: PostgresOptions = {},
): Promise<StoreReader> {
  const c = new Connection(url, options, 1);
  try {
    await checkSchema(c);
  } catch (error) {
    await c.end().catch(() => {});
    throw storeError(error, c.target, "connect to");
  }
  return new PostgresReader(c);
}

/**
 * PostgreSQL as a service uses it: the schema, the reader, and writers on
 * demand. A writer connects on its first statement, so one opened while
 * PostgreSQL is down (a storage connection restarted during an outage)
 * still opens; its commits fail until the server is back.
 */
export interface PostgresStorage {
  /** `user@host:port/database`, for logs. */
  target: string;
  reader: StoreReader;
  /** Opens one more writer (one per storage connection actor). */
  openWriter(): Promise<StoreWriter>;
  /** Closes the reader and every writer still open. */
  close(): Promise<void>;
}

/**
 * Creates the schema, opens the reader, and hands out writers: what
 * `startService` needs when `storage.url` is set. Throws
 * {@linkcode PostgresStoreError} when PostgreSQL cannot be reached.
 */
export async function openPostgresStorage(
  url: string,
  options: PostgresOptions = {},
): Promise<PostgresStorage> {
  const maxAttempts = checkPositive("attempt count", options.maxAttempts ?? 5);
  await createPostgresSchema(url, options);
  const reader = await openPostgresReader(url, options);
  // Writers open, and those closing: close() waits for both.
  const writers = new Set<StoreWriter>();
  const closing = new Set<Promise<void>>();
  return {
    target: postgresTarget(url),
    reader,
    openWriter() {
      // Connects on its first statement: a writer opened while PostgreSQL is down still opens,
      // and its first commit fails into the storage connection's retry and the breaker.
      const writer = new PostgresWriter(new Connection(url, options, 1), maxAttempts);
      writers.add(writer);
      const close = writer.close.bind(writer);
      writer.close = () => {
        writers.delete(writer);
        const done = close().finally(() => closing.delete(done));
        closing.add(done);
        return done;
      };
      return Promise.resolve(writer);
    },
    async close() {
      await Promise.allSettled([
        reader.close(),
        ...[...writers].map((w) => w.close()),
        ...closing,
      ]);
    },
  };
}

/** What a commit sends, worked out once before the first attempt. */
interface CommitPlan {
  /** Every record's key, in commit order over all units. */
  keys: string[];
  /** Index (in `keys`) of the first record of each key. */
  first: Map<string, number>;
  /** The statement's parameters. */
  params: unknown[];
  /** Distinct keys in the commit. */
  distinct: number;
}

function plan(units: readonly CommitUnit[], slot: number): CommitPlan {
  const keys: string[] = [];
  const first = new Map<string, number>();
  const records: ProcessedRecord[] = [];
  for (const unit of units) {
    for (const record of unit.records) {
      const key = recordKey(record.id);
      if (!first.has(key)) {
        first.set(key, keys.length);
        records.push(record);
      }
      keys.push(key);
    }
  }
  // Rows go in sorted by key: one order for every transaction of every instance, so row locks
  // never form a cycle. `ord` keeps the commit order for the aggregates.
  const order = records.map((_, i) => i);
  const distinctKeys = [...first.keys()];
  order.sort((a, b) => (distinctKeys[a] < distinctKeys[b] ? -1 : 1));
  const n = order.length;
  const ids = new Array<string>(n);
  const bodies = new Array<string>(n);
  const users = new Array<string>(n);
  const events = new Array<string>(n);
  const values = new Array<number>(n);
  const times = new Array<number>(n);
  const ords = new Array<number>(n);
  for (let j = 0; j < n; j++) {
    const i = order[j];
    const r = records[i];
    ids[j] = distinctKeys[i];
    // A record JSON cannot encode throws here, before anything is sent.
    bodies[j] = JSON.stringify(r);
    users[j] = r.user_id;
    events[j] = r.event;
    values[j] = r.value;
    times[j] = r.timestamp_ms;
    ords[j] = i;
  }
  const failed = {
    record_id: [] as (string | null)[],
    stage: [] as string[],
    reason: [] as string[],
    raw: [] as string[],
    failed_at: [] as string[],
  };
  for (const unit of units) {
    for (const f of unit.failed) {
      failed.record_id.push(f.record_id === null ? null : JSON.stringify(f.record_id));
      failed.stage.push(f.stage);
      failed.reason.push(f.reason);
      // `undefined` has no JSON form; it is kept as null.
      failed.raw.push(JSON.stringify(f.raw) ?? "null");
      failed.failed_at.push(f.failed_at);
    }
  }
  return {
    keys,
    first,
    distinct: n,
    params: [
      pgTextArray(ids),
      pgJsonTextArray(bodies),
      pgTextArray(users),
      pgTextArray(events),
      pgNumberArray(values),
      pgNumberArray(times),
      pgNumberArray(ords),
      pgTextArray(failed.record_id),
      pgTextArray(failed.stage),
      pgTextArray(failed.reason),
      pgJsonTextArray(failed.raw),
      pgTextArray(failed.failed_at),
      slot,
    ],
  };
}

const ARRAY_ESCAPE = /[\\"]/g;

/**
 * A PostgreSQL array literal of `xs` (`{"a","b\"c",NULL}`), sent as one text
 * parameter and cast by the statement.
 *
 * @example
 * ```ts
 * pgTextArray(["a", 'b"c', null]); // '{"a","b\\"c",NULL}'
 * ```
 */
export function pgTextArray(xs: readonly (string | null)[]): string {
  let out = "{";
  for (let i = 0; i < xs.length; i++) {
    const x = xs[i];
    if (i > 0) out += ",";
    out += x === null ? "NULL" : `"${x.replace(ARRAY_ESCAPE, "\\$&")}"`;
  }
  return out + "}";
}

/**
 * {@linkcode pgTextArray} for JSON texts (as `JSON.stringify` writes them),
 * built by the engine's own `JSON.stringify`, several times faster than
 * escaping each: those texts hold no control character and no lone
 * surrogate, so the JSON escapes of the outer array (`\"` and `\\`) are the
 * only ones, and they are the array literal's too.
 */
export function pgJsonTextArray(xs: readonly string[]): string {
  return `{${JSON.stringify(xs).slice(1, -1)}}`;
}

/** A PostgreSQL array literal of finite numbers (`{1,2.5,-3e-7}`). */
export function pgNumberArray(xs: readonly number[]): string {
  return `{${xs.join(",")}}`;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/**
 * The whole commit as one statement, so one implicit transaction: the
 * records, the aggregates of those actually inserted, the failed records
 * and the totals. Answers how many records went in and, unless that is all
 * of them, which.
 */
function commitSql(s: string): string {
  return `
WITH input AS (
  SELECT x.id COLLATE "C" AS id, x.body, x.user_id COLLATE "C" AS user_id,
         x.event COLLATE "C" AS event, x.value, x.ts_ms, x.ord
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::float8[], $6::bigint[],
                $7::int[]) AS x(id, body, user_id, event, value, ts_ms, ord)
), ins AS (
  INSERT INTO ${s}.records (id, body)
  SELECT id, body FROM input ORDER BY id
  ON CONFLICT (id) DO NOTHING
  RETURNING id
), fresh AS (
  SELECT input.* FROM input JOIN ins ON ins.id = input.id
), user_in AS (
  SELECT user_id, count(*) AS n, sum(value ORDER BY ord) AS total, max(ts_ms) AS last_ms,
         array_agg(event ORDER BY ord) AS seen
    FROM fresh GROUP BY user_id
), up_users AS (
  INSERT INTO ${s}.users AS t (user_id, total_events, total_value, events, last_ms)
  SELECT user_id, n, total,
         ARRAY(SELECT y.e FROM unnest(seen) WITH ORDINALITY AS y(e, i) GROUP BY y.e ORDER BY min(y.i)),
         last_ms
    FROM user_in ORDER BY user_id
  ON CONFLICT (user_id) DO UPDATE SET
    total_events = t.total_events + excluded.total_events,
    total_value = t.total_value + excluded.total_value,
    events = CASE WHEN excluded.events <@ t.events THEN t.events
      ELSE t.events || ARRAY(
        SELECT z.e FROM unnest(excluded.events) WITH ORDINALITY AS z(e, i)
         WHERE z.e <> ALL (t.events) ORDER BY z.i) END,
    last_ms = GREATEST(t.last_ms, excluded.last_ms)
  RETURNING xmax = 0 AS created
), event_in AS (
  SELECT event, count(*) AS n, sum(value ORDER BY ord) AS total, min(value) AS lo, max(value) AS hi
    FROM fresh GROUP BY event
), up_events AS (
  INSERT INTO ${s}.events AS t (event, count, total_value, min_value, max_value)
  SELECT event, n, total, lo, hi FROM event_in ORDER BY event
  ON CONFLICT (event) DO UPDATE SET
    count = t.count + excluded.count,
    total_value = t.total_value + excluded.total_value,
    min_value = LEAST(t.min_value, excluded.min_value),
    max_value = GREATEST(t.max_value, excluded.max_value)
  RETURNING xmax = 0 AS created
), ins_failed AS (
  INSERT INTO ${s}.failed (record_id, stage, reason, raw, failed_at)
  SELECT * FROM unnest($8::text[], $9::text[], $10::text[], $11::text[], $12::text[])
  RETURNING 1
), counts AS (
  SELECT (SELECT count(*) FROM ins) AS stored,
         (SELECT count(*) FROM ins_failed) AS failed,
         (SELECT count(*) FROM up_users WHERE created) AS users,
         (SELECT count(*) FROM up_events WHERE created) AS events
), up_totals AS (
  INSERT INTO ${s}.totals AS t (slot, stored_records, failed_records, users, events)
  SELECT $13, stored, failed, users, events FROM counts
   WHERE stored + failed + users + events > 0
  ON CONFLICT (slot) DO UPDATE SET
    stored_records = t.stored_records + excluded.stored_records,
    failed_records = t.failed_records + excluded.failed_records,
    users = t.users + excluded.users,
    events = t.events + excluded.events
)
SELECT stored,
       CASE WHEN stored = cardinality($1::text[]) THEN NULL
            ELSE (SELECT coalesce(json_agg(id), '[]') FROM ins) END AS ids
  FROM counts`;
}

class PostgresWriter implements StoreWriter {
  #c: Connection;
  #maxAttempts: number;
  #slot = Math.floor(Math.random() * TOTALS_SLOTS);
  #closed = false;
  #commitSql: string;

  constructor(c: Connection, maxAttempts: number) {
    this.#c = c;
    this.#maxAttempts = maxAttempts;
    this.#commitSql = commitSql(c.schema);
  }

  async commit(units: readonly CommitUnit[]): Promise<CommitOutcome[]> {
    this.#checkOpen();
    if (units.every((u) => u.records.length === 0 && u.failed.length === 0)) {
      return units.map(() => ({ inserted: [] }));
    }
    const p = plan(units, this.#slot);
    let row: { stored: string | number; ids: string[] | null };
    let reconnected = false;
    for (let attempt = 1;; attempt++) {
      try {
        // One statement, not BEGIN … COMMIT: PostgreSQL runs it as one transaction, it takes one
        // round trip, and a connection lost half way leaves the client no transaction to clean
        // up (postgres 3.4.9's begin() crashes the process on that: porsager/postgres#1208).
        [row] = await this.#c.run((sql) =>
          sql.unsafe(this.#commitSql, p.params as never[], { prepare: true })
        ) as unknown as (typeof row)[];
        break;
      } catch (error) {
        const code = (error as { code?: unknown } | null)?.code;
        if (attempt < this.#maxAttempts && typeof code === "string" && RETRYABLE.has(code)) {
          // Jittered, growing pause: the transactions that collided should not meet again.
          await sleep(Math.random() * 10 * attempt);
          continue;
        }
        if (!reconnected && typeof code === "string" && code in CONNECTION_CODES) {
          // The connection was lost, or the client reported a failure of an earlier one late
          // (3.4.9 can hand the next statement the error a server shutting down sent). If
          // storage is really down the second try fails too, and the storage actor holds the
          // batch; if not, it saves a crash of the connection and an attempt at the batch.
          // Idempotent by id: a statement that did commit before the loss reports duplicates.
          reconnected = true;
          attempt--;
          continue;
        }
        throw storeError(error, this.#c.target, "commit to");
      }
    }
    if (row.ids === null && p.distinct === p.keys.length) {
      // The usual case: every record new.
      return units.map((u) => ({ inserted: new Array<boolean>(u.records.length).fill(true) }));
    }
    // The first record of a key this transaction stored claims it; any other is a duplicate.
    const stored = new Set(row.ids ?? p.first.keys());
    let at = 0;
    return units.map((unit) => {
      const inserted = unit.records.map((_, i) => {
        const key = p.keys[at + i];
        return p.first.get(key) === at + i && stored.has(key);
      });
      at += unit.records.length;
      return { inserted };
    });
  }

  async ping(): Promise<void> {
    this.#checkOpen();
    try {
      await this.#c.run((sql) => sql`SELECT 1`);
    } catch (error) {
      throw storeError(error, this.#c.target, "reach");
    }
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    // A commit still under way gets a second to finish; then the socket is closed.
    await this.#c.end();
  }

  #checkOpen(): void {
    if (this.#closed) {
      throw new PostgresStoreError(`PostgreSQL writer "${this.#c.target}" is not open`, {
        connection: true,
        cause: undefined,
      });
    }
  }
}

function checkLimit(limit: number): void {
  if (!Number.isSafeInteger(limit) || limit < 1) {
    throw new RangeError(`Invalid limit ${limit}: expected a positive integer`);
  }
}

interface UserRow {
  user_id: string;
  total_events: string | number;
  total_value: number;
  events: string[];
  last_ms: string | number;
}

function userAggregate(row: UserRow): UserAggregate {
  return {
    user_id: row.user_id,
    total_events: Number(row.total_events),
    total_value: row.total_value,
    events: row.events,
    last_activity: toUtcIso(Number(row.last_ms)),
  };
}

/** `events` as JSON, which the client parses without knowing PostgreSQL's array types. */
const USER_COLUMNS = "user_id, total_events, total_value, to_json(events) AS events, last_ms";

class PostgresReader implements StoreReader {
  #c: Connection;
  #closed = false;

  constructor(c: Connection) {
    this.#c = c;
  }

  async #query<T>(text: string, params: (string | number)[]): Promise<T[]> {
    if (this.#closed) {
      throw new PostgresStoreError(`PostgreSQL reader "${this.#c.target}" is not open`, {
        connection: true,
        cause: undefined,
      });
    }
    try {
      return await this.#c.run((sql) =>
        sql.unsafe(text, params, { prepare: true })
      ) as unknown as T[];
    } catch (error) {
      throw storeError(error, this.#c.target, "read from");
    }
  }

  async getUser(userId: string): Promise<UserAggregate | undefined> {
    const [row] = await this.#query<UserRow>(
      `SELECT ${USER_COLUMNS} FROM ${this.#c.schema}.users WHERE user_id = $1`,
      [userId],
    );
    return row === undefined ? undefined : userAggregate(row);
  }

  async listUsers(limit: number, cursor?: string): Promise<UserPage> {
    checkLimit(limit);
    const s = this.#c.schema;
    // One row past the page tells whether another page follows.
    const rows = cursor === undefined
      ? await this.#query<UserRow>(
        `SELECT ${USER_COLUMNS} FROM ${s}.users ORDER BY user_id LIMIT $1`,
        [limit + 1],
      )
      : await this.#query<UserRow>(
        `SELECT ${USER_COLUMNS} FROM ${s}.users WHERE user_id > $1 ORDER BY user_id LIMIT $2`,
        [cursor, limit + 1],
      );
    const users = rows.slice(0, limit).map(userAggregate);
    return { users, next_cursor: rows.length > limit ? users[limit - 1].user_id : null };
  }

  async getEvent(event: string): Promise<EventAggregate | undefined> {
    const [row] = await this.#query<EventAggregate & { count: string | number }>(
      `SELECT event, count, total_value, min_value, max_value
         FROM ${this.#c.schema}.events WHERE event = $1`,
      [event],
    );
    if (row === undefined) return undefined;
    return {
      event: row.event,
      count: Number(row.count),
      total_value: row.total_value,
      min_value: row.min_value,
      max_value: row.max_value,
    };
  }

  async getRecord(id: RecordId): Promise<ProcessedRecord | undefined> {
    const [row] = await this.#query<{ body: string }>(
      `SELECT body FROM ${this.#c.schema}.records WHERE id = $1`,
      [recordKey(id)],
    );
    return row === undefined ? undefined : JSON.parse(row.body) as ProcessedRecord;
  }

  async listFailed(limit: number, stage?: string): Promise<StoredFailure[]> {
    checkLimit(limit);
    const s = this.#c.schema;
    const rows = stage === undefined
      ? await this.#query<FailedRow>(
        `SELECT seq, record_id, stage, reason, raw, failed_at FROM ${s}.failed
           ORDER BY seq DESC LIMIT $1`,
        [limit],
      )
      : await this.#query<FailedRow>(
        `SELECT seq, record_id, stage, reason, raw, failed_at FROM ${s}.failed
           WHERE stage = $1 ORDER BY seq DESC LIMIT $2`,
        [stage, limit],
      );
    return rows.map((row): StoredFailure => ({
      seq: Number(row.seq),
      record_id: row.record_id === null ? null : JSON.parse(row.record_id) as RecordId,
      stage: row.stage as StageName,
      reason: row.reason,
      raw: JSON.parse(row.raw),
      failed_at: row.failed_at,
    }));
  }

  async counts(): Promise<StoreCounts> {
    const [row] = await this.#query<Record<keyof StoreCounts, string | null>>(
      `SELECT sum(stored_records) AS stored_records, sum(failed_records) AS failed_records,
              sum(users) AS users, sum(events) AS events FROM ${this.#c.schema}.totals`,
      [],
    );
    return {
      stored_records: Number(row.stored_records ?? 0),
      failed_records: Number(row.failed_records ?? 0),
      users: Number(row.users ?? 0),
      events: Number(row.events ?? 0),
    };
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#c.end();
  }
}

interface FailedRow {
  seq: string | number;
  record_id: string | null;
  stage: string;
  reason: string;
  raw: string;
  failed_at: string;
}
