/**
 * @module
 * The embedded storage backend: {@linkcode StoreWriter} and
 * {@linkcode StoreReader} over one SQLite file through `node:sqlite`
 * (`DatabaseSync`, which Deno and Bun both provide).
 *
 * The file is in WAL mode, so the reader's connection never waits for the
 * writer. Schema (version 2, kept in `PRAGMA user_version`):
 *
 * ```
 * records  seq INTEGER PK AUTOINCREMENT │ id TEXT UNIQUE (recordKey) │ body (JSON array, encodeBody)
 * users    user_id TEXT PK │ total_events │ total_value │ events (JSON array) │ last_activity │ last_ms
 * events   event TEXT PK │ count │ total_value │ min_value │ max_value
 * failed   seq INTEGER PK AUTOINCREMENT │ record_id (JSON id or NULL) │ stage │ reason │ raw (JSON) │ failed_at
 * totals   one row: stored_records │ failed_records │ users │ events
 * ```
 *
 * `totals` is updated in the same transaction as the rows it counts, so
 * {@linkcode StoreReader.counts} is one row read however large the tables
 * grow.
 *
 * `records` keeps only the key and the JSON body: separate `user_id`,
 * `event` and `timestamp_ms` columns cost about a quarter of the insert
 * time (measured: median 2.7 ms against 3.6 ms a 1000 rows) and nothing reads
 * them yet. A query that needs one later can add it in a schema migration as
 * a virtual generated column (`ALTER TABLE records ADD COLUMN user_id TEXT
 * AS (body ->> 3) VIRTUAL`) and index it.
 *
 * Since schema 2 the body is a JSON array of the record's fields in the
 * order of {@linkcode ProcessedRecord} ({@linkcode encodeBody}): 147 bytes
 * for a seed 000 record against 259 as an object, so fewer pages to write,
 * to copy at checkpoints and to cross to the writer's thread. Rows written
 * under schema 1 keep their object bodies; {@linkcode decodeBody} reads
 * both, so the upgrade from 1 to 2 rewrites nothing.
 *
 * A commit is one `BEGIN IMMEDIATE … COMMIT`. Records go in with multi-row
 * `INSERT … ON CONFLICT(id) DO NOTHING` (up to {@linkcode CHUNK_ROWS} rows a
 * statement, since each `node:sqlite` call and bound value has a cost),
 * all records of the commit in order: SQLite keeps the first row of a key
 * and ignores a later one, also within one statement. When
 * a statement's `changes` equals its row count every key was new, the usual
 * case; when it is 0 none was; only in between does one `SELECT id … WHERE
 * seq > ?` ask which rows this transaction added (`AUTOINCREMENT` promises
 * new rows a `seq` above any seen before). That replaces `RETURNING id`,
 * which cost about 1.4 ms a 1000 rows, a third of the commit. The aggregate
 * deltas of all units are summed in memory, the touched rows read once,
 * merged with {@linkcode mergeUser} and {@linkcode mergeEvent}, and written
 * with one upsert per key. Any error rolls everything back and is rethrown.
 *
 * When every statement's `changes` equals its row count (no key stored
 * before, none repeated) every outcome is `true` and the units' deltas serve
 * as they are, without a per-record map or set; otherwise the first record
 * of each key this transaction added claims it and the others are
 * duplicates.
 *
 * The user and event rows a commit merges into are kept in memory (a cache
 * of {@linkcode SqliteOptions.cacheRows} rows of each, least recently used
 * first out; a row not in it is read from the table), so the usual commit
 * reads no aggregate row and parses no event list. The rows a commit merges
 * enter the cache only after its `COMMIT` succeeds; a commit that fails
 * drops the rows it touched, which are read again next time. All writers of
 * one file in this thread share one cache (by real path, counted, dropped
 * when the last one closes), so a pool of writers stays consistent. Another
 * process or thread writing the same file while a writer is open is NOT
 * supported: the cache would not see its changes and the next commit would
 * overwrite them. (The service owns its data directory.)
 *
 * Checkpoints are off the commit path: writers set `wal_autocheckpoint = 0`
 * and a timer shared by the writers of a file runs `PRAGMA
 * wal_checkpoint(PASSIVE)` every {@linkcode SqliteOptions.checkpointIntervalMs}
 * (unref'd, cleared when the last writer closes), and on the next turn of
 * the event loop once about {@linkcode CHECKPOINT_BYTES} were written since
 * the last one; a commit runs it itself only when the timer has not had a
 * turn for two intervals. A complete checkpoint
 * lets the next commit start the WAL over, and `journal_size_limit` trims the
 * file to {@linkcode WAL_SIZE_LIMIT}, so the WAL stays about the size of one
 * interval's writes or {@linkcode CHECKPOINT_BYTES}, whichever is less.
 * The checkpoint syncs the WAL before it and the database file after it.
 *
 * Durability: SQLite runs with `synchronous = NORMAL` (the WAL is written at
 * `COMMIT` but not synced), and a `full` writer syncs the WAL itself before
 * `commit` resolves: a group `fdatasync` on the I/O thread pool that covers
 * every commit written while the previous one ran ({@linkcode WalSync}). An
 * answered commit is as durable as with SQLite's own `FULL`; the thread
 * that writes no longer waits for the disk.
 *
 * The SQL work is synchronous: a commit holds the thread until its rows are
 * written. Two writers in one thread therefore never overlap, and a pool of writer
 * connections in one thread adds no throughput; `busyTimeoutMs` only matters
 * when another process opens the file at the same time (creating the schema,
 * say).
 */
import { DatabaseSync, type SQLInputValue, type StatementSync } from "node:sqlite";
import { existsSync, mkdirSync, realpathSync } from "node:fs";
import { dirname, join } from "node:path";
import { type SyncFile, WalSync } from "./wal_sync.ts";
import {
  type AggregateDeltas,
  aggregateRecords,
  type EventDelta,
  mergeEvent,
  mergeUser,
  type StoredUser,
  type UserDelta,
} from "./aggregate.ts";
import {
  type EventAggregate,
  type ProcessedRecord,
  type RecordId,
  recordKey,
  type StageName,
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

/**
 * One commit unit as the writer needs it: each record's key and stored
 * body, the failed records as their row values, and the aggregate deltas
 * as plain arrays. Made by {@linkcode encodeUnits} on the writer's own
 * thread, or by {@linkcode fromWire} on the Worker from what
 * {@linkcode toWire} sent.
 */
export interface EncodedUnit {
  /** {@linkcode recordKey} of each record, in order. */
  keys: string[];
  /** {@linkcode encodeBody} of each record, in order: the stored body. */
  bodies: string[];
  /** The failed records: `[record_id as JSON or null, stage, reason, raw as JSON, failed_at]`. */
  failed: FailedValues[];
  /** The unit's deltas, assuming every record is new; recomputed from the bodies otherwise. */
  users?: UserDelta[];
  events?: EventDelta[];
}

/** A failed record as the values of its row. */
export type FailedValues = [string | null, string, string, string, string];

/**
 * The stored body of a record (schema 2): a JSON array of its fields in
 * the order of {@linkcode ProcessedRecord}. `JSON.stringify` of that array
 * took 0.35 µs a record against 0.60 for the object and 0.78 for a
 * template literal, whose rope of parts also made the join into the
 * Worker's text four times slower (records made by the transform stage
 * from parsed lines; `bench/sqlite_store_bench.ts`).
 *
 * @example
 * ```ts
 * encodeBody(record); // '[1,"2025-01-15T10:00:00Z",1736935200000,"user_001","login",1,{},"2025-01-15T10:00:01Z",0,false]'
 * ```
 */
export function encodeBody(r: ProcessedRecord): string {
  return JSON.stringify([
    r.id,
    r.timestamp,
    r.timestamp_ms,
    r.user_id,
    r.event,
    r.value,
    r.metadata,
    r.received_at,
    r.anomaly_score,
    r.is_anomaly,
  ]);
}

/** A stored body back as the record: the array of schema 2, or the object of schema 1. */
export function decodeBody(body: string): ProcessedRecord {
  const v = JSON.parse(body);
  if (!Array.isArray(v)) return v as ProcessedRecord;
  return {
    id: v[0],
    timestamp: v[1],
    timestamp_ms: v[2],
    user_id: v[3],
    event: v[4],
    value: v[5],
    metadata: v[6],
    received_at: v[7],
    anomaly_score: v[8],
    is_anomaly: v[9],
  };
}

/** The failed records of a unit as their row values. */
function failedValues(failed: CommitUnit["failed"]): FailedValues[] {
  return failed.map((f): FailedValues => [
    f.record_id === null ? null : JSON.stringify(f.record_id),
    f.stage,
    f.reason,
    // `undefined` has no JSON form; it is kept as null.
    JSON.stringify(f.raw) ?? "null",
    f.failed_at,
  ]);
}

/** The unit's deltas as arrays, when the aggregate stage made them. */
function deltaArrays(u: CommitUnit): Pick<EncodedUnit, "users" | "events"> {
  return u.deltas === undefined
    ? {}
    : { users: [...u.deltas.users.values()], events: [...u.deltas.events.values()] };
}

/** {@linkcode encodeBody} of each record, in order. */
function bodiesOf(records: CommitUnit["records"]): string[] {
  const bodies = new Array<string>(records.length);
  for (let i = 0; i < records.length; i++) bodies[i] = encodeBody(records[i]);
  return bodies;
}

/** Encodes commit units for {@linkcode SqliteStoreWriter.commitEncoded} on this thread. */
export function encodeUnits(units: readonly CommitUnit[]): EncodedUnit[] {
  return units.map((u): EncodedUnit => ({
    keys: u.records.map((r) => recordKey(r.id)),
    bodies: bodiesOf(u.records),
    failed: failedValues(u.failed),
    ...deltaArrays(u),
  }));
}

/**
 * A commit unit as it crosses to the writer's Worker thread: the bodies as
 * one text, a body a line (`JSON.stringify` never writes a raw line
 * break), and no keys, which the writer's thread reads back from the
 * bodies ({@linkcode keyOfBody}). Deno's `postMessage` copies one long
 * string in one piece but serialises an array of strings one by one: about
 * 1 µs a record in a CPU profile of the service under load, against the
 * 0.04 µs a record of the join here and the split there.
 */
export interface WireUnit {
  bodies: string;
  failed: FailedValues[];
  users?: UserDelta[];
  events?: EventDelta[];
}

/** A commit unit to {@linkcode WireUnit}, on the thread that made its records. */
export function toWire(u: CommitUnit): WireUnit {
  return {
    bodies: bodiesOf(u.records).join("\n"),
    failed: failedValues(u.failed),
    ...deltaArrays(u),
  };
}

/** {@linkcode WireUnit} to {@linkcode EncodedUnit}, on the writer's thread. */
export function fromWire({ bodies, failed, users, events }: WireUnit): EncodedUnit {
  const lines = bodies === "" ? [] : bodies.split("\n");
  const unit: EncodedUnit = { keys: lines.map(keyOfBody), bodies: lines, failed };
  if (users !== undefined) unit.users = users;
  if (events !== undefined) unit.events = events;
  return unit;
}

/**
 * The {@linkcode recordKey} of the record whose {@linkcode encodeBody} is
 * `body`, read off its first element: the digits of a number id, the text
 * of a string id without escapes, else (an id with escapes) from parsing.
 */
export function keyOfBody(body: string): string {
  if (body.charCodeAt(1) === 34) { // '"': a string id
    const end = body.indexOf('"', 2);
    const text = body.slice(2, end);
    return text.includes("\\") ? String(JSON.parse(body)[0]) : text;
  }
  return body.slice(1, body.indexOf(",", 1));
}

/** Options of {@linkcode openSqliteWriter}. */
export interface SqliteOptions {
  /**
   * `full`: a commit resolves once its WAL frames are synced to disk, and
   * survives power loss; `normal` survives a crash of the process only (the
   * OS still holds the write).
   * @default "full"
   */
  synchronous?: "full" | "normal";
  /**
   * How the WAL is synced for `full` (tests substitute a slow or failing
   * one). The first writer opened on a file sets it for all.
   * @default an `fdatasync` of the `-wal` file
   */
  syncWal?: SyncFile;
  /** Milliseconds to wait on a database locked by another process. @default 5000 */
  busyTimeoutMs?: number;
  /**
   * Milliseconds between WAL checkpoints, which run on a timer instead of
   * inside a commit. The first writer opened on a file sets it for all.
   * @default 1000
   */
  checkpointIntervalMs?: number;
  /**
   * Most user rows, and most event rows, the writers of one file keep in
   * memory. The first writer opened on a file sets it for all.
   * @default 100000
   */
  cacheRows?: number;
}

/** The schema version this module writes and reads. */
export const SCHEMA_VERSION = 2;

/** Most rows bound into one statement (at most 6 parameters a row: 600 in all). */
export const CHUNK_ROWS = 100;

/**
 * Bytes the WAL file is trimmed to when a writer starts it over after a
 * complete checkpoint (`PRAGMA journal_size_limit`).
 */
export const WAL_SIZE_LIMIT = 16 * 1024 * 1024;

/**
 * About this many bytes written since the last checkpoint schedule the next
 * one at once (on the next turn of the event loop, not inside the commit),
 * so that a busy writer keeps the WAL under {@linkcode WAL_SIZE_LIMIT} and
 * each checkpoint short. A checkpoint holds the writer's thread, and every
 * commit queued behind it waits: at 8 MiB each took about 25 ms, and the
 * p99 of 1000-record requests at 110k records/s was 59 ms; at 2 MiB it was
 * 34 to 44 ms for the same throughput; at 512 KiB it was lower than at 2
 * MiB in each of 4 alternating pairs of runs at 115k records/s (26, 37, 65,
 * 46 ms against 33, 45, 124, 52 ms on a machine whose speed drifted), with
 * closed-loop throughput within the noise (docs/PERFORMANCE.md).
 */
export const CHECKPOINT_BYTES = WAL_SIZE_LIMIT / 32;

/** What a commit writes besides record bodies, estimated: a few pages of index, users, totals. */
const COMMIT_OVERHEAD_BYTES = 8 * 4096;

const SCHEMA = `
CREATE TABLE records (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT NOT NULL UNIQUE,
  body TEXT NOT NULL
) STRICT;
CREATE TABLE users (
  user_id TEXT PRIMARY KEY,
  total_events INTEGER NOT NULL,
  total_value REAL NOT NULL,
  events TEXT NOT NULL,
  last_activity TEXT NOT NULL,
  last_ms INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
CREATE TABLE events (
  event TEXT PRIMARY KEY,
  count INTEGER NOT NULL,
  total_value REAL NOT NULL,
  min_value REAL NOT NULL,
  max_value REAL NOT NULL
) STRICT, WITHOUT ROWID;
CREATE TABLE failed (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  record_id TEXT,
  stage TEXT NOT NULL,
  reason TEXT NOT NULL,
  raw TEXT NOT NULL,
  failed_at TEXT NOT NULL
) STRICT;
CREATE INDEX failed_by_stage ON failed (stage, seq);
CREATE TABLE totals (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  stored_records INTEGER NOT NULL,
  failed_records INTEGER NOT NULL,
  users INTEGER NOT NULL,
  events INTEGER NOT NULL
) STRICT;
INSERT INTO totals VALUES (1, 0, 0, 0, 0);
`;

/**
 * Where the SQLite file lives inside the data directory.
 *
 * @example
 * ```ts
 * sqlitePath("data"); // "data/troupe.db"
 * ```
 */
export function sqlitePath(dataDir: string): string {
  return join(dataDir, "troupe.db");
}

/**
 * Opens the writer connection, creating the directory, the file and the
 * schema when they are missing. Safe to call on an existing store; throws
 * when the file holds another schema version than {@linkcode SCHEMA_VERSION}.
 *
 * @example
 * ```ts
 * const writer = openSqliteWriter(sqlitePath("data"), { synchronous: "normal" });
 * const [outcome] = await writer.commit([{ records, failed: [] }]);
 * await writer.close();
 * ```
 */
export function openSqliteWriter(path: string, options: SqliteOptions = {}): SqliteStoreWriter {
  const synchronous = options.synchronous ?? "full";
  if (synchronous !== "full" && synchronous !== "normal") {
    throw new RangeError(`Invalid synchronous mode "${synchronous}": expected "full" or "normal"`);
  }
  const busyTimeoutMs = checkBusyTimeout(options.busyTimeoutMs ?? 5000);
  const intervalMs = checkPositive(
    "checkpoint interval",
    options.checkpointIntervalMs ?? 1000,
    " ms",
  );
  const cacheRows = checkPositive("cache size", options.cacheRows ?? 100_000);
  if (path !== ":memory:") mkdirSync(dirname(path), { recursive: true });
  const db = new DatabaseSync(path);
  let shared: SharedFile | undefined;
  try {
    db.exec(`PRAGMA busy_timeout = ${busyTimeoutMs}`);
    db.exec("PRAGMA journal_mode = WAL");
    // `full` is kept by syncing the WAL before each answer (lib/wal_sync.ts), off this thread.
    db.exec("PRAGMA synchronous = NORMAL");
    // Checkpoints run on the shared timer, not in whichever commit fills the WAL.
    db.exec("PRAGMA wal_autocheckpoint = 0");
    db.exec(`PRAGMA journal_size_limit = ${WAL_SIZE_LIMIT}`);
    migrate(db, path);
    shared = joinSharedFile(path, db, intervalMs, cacheRows);
    const wal = synchronous === "full" && !shared.key.startsWith(":memory:")
      ? (shared.wal ??= new WalSync(`${shared.key}-wal`, options.syncWal))
      : undefined;
    return new SqliteWriter(db, shared, wal);
  } catch (error) {
    if (shared !== undefined) leaveSharedFile(shared, db);
    db.close();
    throw error;
  }
}

/** The SQLite writer: a {@linkcode StoreWriter} that also commits units already encoded. */
export interface SqliteStoreWriter extends StoreWriter {
  /**
   * Commits units made by {@linkcode encodeUnits}, in one transaction, at
   * once (the work is synchronous); same outcomes as `commit`.
   */
  commitEncoded(units: readonly EncodedUnit[]): CommitOutcome[];
  /**
   * Resolves once every commit made so far is on disk: at once for
   * `synchronous: "normal"`, after a group `fdatasync` of the WAL for
   * `"full"` ({@linkcode WalSync}). `commit` waits for it itself;
   * `commitEncoded` leaves it to the caller, so the thread can write the
   * next commit while the disk syncs this one.
   */
  durable(): Promise<void>;
}

/**
 * Opens a read-only connection for the query routes.
 *
 * Open it after {@linkcode openSqliteWriter} has run once on `path`: the
 * file must exist (this throws otherwise). A file without the schema yet
 * reads as an empty store until a writer creates it.
 *
 * @example
 * ```ts
 * const reader = openSqliteReader(sqlitePath("data"));
 * const user = await reader.getUser("user_001");
 * ```
 */
export function openSqliteReader(path: string): StoreReader {
  if (path !== ":memory:" && !existsSync(path)) {
    throw new Error(`Cannot open SQLite store "${path}" for reading: the file does not exist`);
  }
  const db = new DatabaseSync(path, { readOnly: true });
  try {
    db.exec("PRAGMA busy_timeout = 5000");
  } catch (error) {
    db.close();
    throw error;
  }
  return new SqliteReader(db, path);
}

function checkBusyTimeout(ms: number): number {
  if (!Number.isSafeInteger(ms) || ms < 0) {
    throw new RangeError(`Invalid busy timeout ${ms} ms: expected a non-negative integer`);
  }
  return ms;
}

function checkPositive(what: string, n: number, unit = ""): number {
  if (!Number.isSafeInteger(n) || n < 1) {
    throw new RangeError(`Invalid ${what} ${n}${unit}: expected a positive integer`);
  }
  return n;
}

function schemaVersion(db: DatabaseSync): number {
  const row = db.prepare("PRAGMA user_version").get() as { user_version: number };
  return row.user_version;
}

function migrate(db: DatabaseSync, path: string): void {
  if (schemaVersion(db) === SCHEMA_VERSION) return;
  // IMMEDIATE: two processes opening a new file at once create the schema once.
  db.exec("BEGIN IMMEDIATE");
  try {
    const version = schemaVersion(db);
    if (version === 0) {
      db.exec(SCHEMA);
      db.exec(`PRAGMA user_version = ${SCHEMA_VERSION}`);
    } else if (version === 1) {
      // Schema 2 only changes how new bodies are written; decodeBody reads the old ones.
      db.exec(`PRAGMA user_version = ${SCHEMA_VERSION}`);
    } else if (version !== SCHEMA_VERSION) {
      throw new Error(
        `Cannot open SQLite store "${path}": schema version ${version} is not ${SCHEMA_VERSION}`,
      );
    }
    db.exec("COMMIT");
  } catch (error) {
    if (db.isTransaction) db.exec("ROLLBACK");
    throw error;
  }
}

/** `?,?,…`: `n` placeholders. */
function list(n: number): string {
  return new Array(n).fill("?").join(",");
}

/** `(?,?,…),(?,?,…)…`: `rows` groups of `columns` placeholders. */
function placeholders(rows: number, columns: number): string {
  return new Array(rows).fill(`(${list(columns)})`).join(",");
}

function addUserDelta(into: Map<string, UserDelta>, d: UserDelta): void {
  const u = into.get(d.user_id);
  if (u === undefined) {
    into.set(d.user_id, { ...d, events: [...d.events] });
    return;
  }
  u.count += d.count;
  u.total += d.total;
  for (const e of d.events) if (!u.events.includes(e)) u.events.push(e);
  if (d.last_ms > u.last_ms) u.last_ms = d.last_ms;
}

function addEventDelta(into: Map<string, EventDelta>, d: EventDelta): void {
  const e = into.get(d.event);
  if (e === undefined) {
    into.set(d.event, { ...d });
    return;
  }
  e.count += d.count;
  e.total += d.total;
  if (d.min < e.min) e.min = d.min;
  if (d.max > e.max) e.max = d.max;
}

/**
 * The deltas of the records of `unit` whose bodies are `fresh`: the unit's
 * own when they are all of its records, else summed again from the bodies
 * (only when a commit meets duplicates).
 */
function unitDeltas(unit: EncodedUnit, fresh: readonly string[]): AggregateDeltas {
  if (
    fresh.length === unit.bodies.length && unit.users !== undefined && unit.events !== undefined
  ) {
    return {
      users: new Map(unit.users.map((d) => [d.user_id, d])),
      events: new Map(unit.events.map((d) => [d.event, d])),
    };
  }
  return aggregateRecords(fresh.map(decodeBody));
}

interface UserRow {
  user_id: string;
  total_events: number;
  total_value: number;
  events: string;
  last_activity: string;
  last_ms: number;
}

interface FailedRow {
  seq: number;
  record_id: string | null;
  stage: string;
  reason: string;
  raw: string;
  failed_at: string;
}

/** A cached user row: the aggregate and the JSON of its event list as stored. */
interface CachedUser {
  user: StoredUser;
  eventsJson: string;
}

/**
 * A map bounded to `limit` entries that forgets the least recently used one
 * first (a `Map` keeps insertion order, so a hit moves its key to the end).
 */
class LruMap<V> {
  #map = new Map<string, V>();
  #limit: number;

  constructor(limit: number) {
    this.#limit = limit;
  }

  get size(): number {
    return this.#map.size;
  }

  get(key: string): V | undefined {
    const value = this.#map.get(key);
    if (value !== undefined) {
      this.#map.delete(key);
      this.#map.set(key, value);
    }
    return value;
  }

  set(key: string, value: V): void {
    this.#map.delete(key);
    this.#map.set(key, value);
    if (this.#map.size > this.#limit) this.#map.delete(this.#map.keys().next().value!);
  }

  delete(key: string): void {
    this.#map.delete(key);
  }
}

/**
 * What the writers of one file in this thread share: the aggregate row
 * caches, which must follow every commit to the file, and the checkpoint
 * timer, which needs only one of them.
 */
interface SharedFile {
  key: string;
  writers: Set<DatabaseSync>;
  users: LruMap<CachedUser>;
  events: LruMap<EventAggregate>;
  intervalMs: number;
  timer: ReturnType<typeof setInterval> | undefined;
  /** A checkpoint due on the next turn of the event loop ({@linkcode CHECKPOINT_BYTES} written). */
  soon: ReturnType<typeof setTimeout> | undefined;
  /** `performance.now()` of the last checkpoint attempt. */
  lastCheckpoint: number;
  /** Bytes written since then, estimated from the record bodies. */
  written: number;
  /** Group sync of the WAL, made by the first `full` writer. */
  wal?: WalSync;
}

/** Shared state by real path of the file; `:memory:` databases are never shared. */
const sharedFiles = new Map<string, SharedFile>();
let memoryFiles = 0;

function joinSharedFile(
  path: string,
  db: DatabaseSync,
  intervalMs: number,
  cacheRows: number,
): SharedFile {
  const key = path === ":memory:" || path === "" ? `:memory:${memoryFiles++}` : realpathSync(path);
  let shared = sharedFiles.get(key);
  if (shared === undefined) {
    shared = {
      key,
      writers: new Set(),
      users: new LruMap(cacheRows),
      events: new LruMap(cacheRows),
      intervalMs,
      timer: undefined,
      soon: undefined,
      lastCheckpoint: performance.now(),
      written: 0,
    };
    const s = shared;
    s.timer = setInterval(() => checkpoint(s), intervalMs);
    unrefTimer(s.timer);
    sharedFiles.set(key, shared);
  }
  shared.writers.add(db);
  return shared;
}

function leaveSharedFile(shared: SharedFile, db: DatabaseSync): void {
  shared.writers.delete(db);
  if (shared.writers.size > 0) return;
  clearInterval(shared.timer);
  clearTimeout(shared.soon);
  sharedFiles.delete(shared.key);
  shared.wal?.close().catch(() => {});
}

/** Lets the process exit while `timer` is pending (Bun and Node: `unref()`; Deno: `unrefTimer`). */
function unrefTimer(timer: ReturnType<typeof setInterval>): void {
  if (typeof timer === "object" && timer !== null && "unref" in timer) {
    (timer as { unref(): void }).unref();
    return;
  }
  const deno = (globalThis as { Deno?: { unrefTimer?(id: number): void } }).Deno;
  deno?.unrefTimer?.(timer as unknown as number);
}

/**
 * Copies the WAL into the database file without waiting for anyone
 * (`PASSIVE`). Once the copy is complete the next commit starts the WAL over
 * from its beginning, and `journal_size_limit` trims a file that grew past
 * {@linkcode WAL_SIZE_LIMIT}, so the WAL stays about as large as the writes
 * of one interval. A failure is left for the next commit to report.
 */
function checkpoint(shared: SharedFile): void {
  shared.lastCheckpoint = performance.now();
  shared.written = 0;
  for (const db of shared.writers) {
    if (!db.isOpen || db.isTransaction) continue;
    try {
      db.exec("PRAGMA wal_checkpoint(PASSIVE)");
    } catch { /* a broken connection fails its next commit or ping */ }
    return;
  }
}

class SqliteWriter implements SqliteStoreWriter {
  #db: DatabaseSync;
  #shared: SharedFile;
  #wal: WalSync | undefined;
  #closed = false;
  /** Prepared statements by kind and row count, so each shape is compiled once. */
  #statements = new Map<string, StatementSync>();
  #ping: StatementSync;
  #lastSeq: StatementSync;
  #addTotals: StatementSync;
  /** Rows merged by the commit under way, put in the shared caches once it is durable. */
  #pendingUsers: CachedUser[] = [];
  #pendingEvents: EventAggregate[] = [];

  constructor(db: DatabaseSync, shared: SharedFile, wal: WalSync | undefined) {
    this.#db = db;
    this.#shared = shared;
    this.#wal = wal;
    this.#ping = db.prepare("SELECT 1");
    this.#lastSeq = db.prepare("SELECT coalesce(max(seq), 0) AS last FROM records");
    this.#addTotals = db.prepare(
      `UPDATE totals SET stored_records = stored_records + ?, failed_records = failed_records + ?,
         users = users + ?, events = events + ? WHERE id = 1`,
    );
  }

  async commit(units: readonly CommitUnit[]): Promise<CommitOutcome[]> {
    const outcomes = this.#commit(encodeUnits(units));
    await this.durable();
    return outcomes;
  }

  commitEncoded(units: readonly EncodedUnit[]): CommitOutcome[] {
    return this.#commit(units);
  }

  durable(): Promise<void> {
    return this.#wal === undefined ? Promise.resolve() : this.#wal.durable();
  }

  ping(): Promise<void> {
    try {
      this.#ping.get();
      return Promise.resolve();
    } catch (error) {
      return Promise.reject(error);
    }
  }

  close(): Promise<void> {
    this.#statements.clear();
    if (!this.#closed) {
      this.#closed = true;
      leaveSharedFile(this.#shared, this.#db);
    }
    if (!this.#db.isOpen) return Promise.resolve();
    try {
      // SQLite's advice for long-lived connections: refresh planner statistics on the way out.
      this.#db.exec("PRAGMA optimize");
    } catch { /* closing matters more than statistics */ }
    this.#db.close();
    return Promise.resolve();
  }

  #statement(kind: string, rows: number, sql: () => string): StatementSync {
    const key = `${kind}:${rows}`;
    let statement = this.#statements.get(key);
    if (statement === undefined) {
      statement = this.#db.prepare(sql());
      this.#statements.set(key, statement);
    }
    return statement;
  }

  #commit(units: readonly EncodedUnit[]): CommitOutcome[] {
    if (units.every((u) => u.keys.length === 0 && u.failed.length === 0)) {
      return units.map(() => ({ inserted: [] }));
    }
    const db = this.#db;
    const shared = this.#shared;
    shared.written += COMMIT_OVERHEAD_BYTES;
    db.exec("BEGIN IMMEDIATE");
    let outcomes: CommitOutcome[];
    try {
      outcomes = this.#write(units);
      db.exec("COMMIT");
    } catch (error) {
      // Rolling back a closed or broken connection can fail too; the first error is the news.
      try {
        if (db.isOpen && db.isTransaction) db.exec("ROLLBACK");
      } catch { /* the original error is rethrown below */ }
      // Nothing of this commit reached the caches; forgetting what it touched also covers a
      // COMMIT whose outcome SQLite could not report.
      for (const u of this.#pendingUsers) shared.users.delete(u.user.user_id);
      for (const e of this.#pendingEvents) shared.events.delete(e.event);
      this.#pendingUsers = [];
      this.#pendingEvents = [];
      throw error;
    }
    for (const u of this.#pendingUsers) shared.users.set(u.user.user_id, u);
    for (const e of this.#pendingEvents) shared.events.set(e.event, e);
    this.#pendingUsers = [];
    this.#pendingEvents = [];
    // Timers wait while commits follow each other without a turn of the event loop.
    if (performance.now() - shared.lastCheckpoint > 2 * shared.intervalMs) {
      checkpoint(shared);
    } else if (shared.written > CHECKPOINT_BYTES && shared.soon === undefined) {
      shared.soon = setTimeout(() => {
        shared.soon = undefined;
        checkpoint(shared);
      }, 0);
      unrefTimer(shared.soon);
    }
    return outcomes;
  }

  #write(units: readonly EncodedUnit[]): CommitOutcome[] {
    const { keys, stored } = this.#insertRecords(units);

    let storedCount = 0;
    let failedCount = 0;
    let users: Map<string, UserDelta>;
    let events: Map<string, EventDelta>;
    let outcomes: CommitOutcome[];
    if (stored === undefined && units.length === 1) {
      // The usual case: one unit, every record new. Its deltas serve as they are.
      const unit = units[0];
      storedCount = unit.keys.length;
      failedCount = unit.failed.length;
      ({ users, events } = unitDeltas(unit, unit.bodies));
      outcomes = [{ inserted: new Array<boolean>(unit.keys.length).fill(true) }];
    } else {
      users = new Map();
      events = new Map();
      let at = 0;
      outcomes = units.map((unit): CommitOutcome => {
        let inserted: boolean[];
        let fresh: readonly string[];
        if (stored === undefined) {
          inserted = new Array<boolean>(unit.keys.length).fill(true);
          fresh = unit.bodies;
        } else {
          // The first record of a new key claims it; any later one is a duplicate.
          inserted = unit.keys.map((_, i) => stored.delete(keys[at + i]));
          fresh = unit.bodies.filter((_, i) => inserted[i]);
        }
        at += unit.keys.length;
        storedCount += fresh.length;
        failedCount += unit.failed.length;
        const deltas = unitDeltas(unit, fresh);
        for (const d of deltas.users.values()) addUserDelta(users, d);
        for (const d of deltas.events.values()) addEventDelta(events, d);
        return { inserted };
      });
    }

    const newUsers = this.#applyUsers(users);
    const newEvents = this.#applyEvents(events);
    this.#insertFailed(units);
    if (storedCount + failedCount + newUsers + newEvents > 0) {
      this.#addTotals.run(storedCount, failedCount, newUsers, newEvents);
    }
    return outcomes;
  }

  /**
   * Inserts the records of all units in order; SQLite keeps the first row of a
   * key repeated in one statement and ignores the later ones. Returns every
   * record's key, and `stored` undefined when every record was new (so no key
   * repeated), else the keys this transaction stored.
   */
  #insertRecords(units: readonly EncodedUnit[]): { keys: string[]; stored?: Set<string> } {
    const keys = units.length === 1 ? units[0].keys : units.flatMap((u) => u.keys);
    const total = keys.length;
    if (total === 0) return { keys };
    // AUTOINCREMENT guarantees every row inserted from here on gets a seq above this one.
    let last: number | undefined;
    let stored: Set<string> | undefined;
    let u = 0;
    let r = 0;
    for (let start = 0; start < total; start += CHUNK_ROWS) {
      const rows = Math.min(CHUNK_ROWS, total - start);
      const params = new Array<SQLInputValue>(rows * 2);
      let bytes = 0;
      for (let i = 0; i < rows; i++) {
        while (r === units[u].bodies.length) {
          u++;
          r = 0;
        }
        const key = keys[start + i];
        const body = units[u].bodies[r++];
        params[2 * i] = key;
        params[2 * i + 1] = body;
        bytes += body.length + 2 * key.length;
      }
      this.#shared.written += bytes;
      if (last === undefined) last = (this.#lastSeq.get() as { last: number }).last;
      const { changes } = this.#statement(
        "records.insert",
        rows,
        () =>
          `INSERT INTO records (id, body) VALUES ${placeholders(rows, 2)}
             ON CONFLICT (id) DO NOTHING`,
      ).run(...params);
      if (changes === rows && stored === undefined) continue;
      if (stored === undefined) stored = new Set(keys.slice(0, start));
      if (changes === rows) {
        for (let i = start; i < start + rows; i++) stored.add(keys[i]);
      } else if (changes > 0) {
        // Some keys were stored before (or repeat within the commit): ask which rows this
        // transaction added.
        const chunk = keys.slice(start, start + rows);
        const added = this.#statement(
          "records.new",
          rows,
          () => `SELECT id FROM records WHERE seq > ? AND id IN (${list(rows)})`,
        ).all(last, ...chunk) as unknown as { id: string }[];
        for (const row of added) stored.add(row.id);
      }
    }
    return { keys, stored };
  }

  /**
   * The stored rows of `keys`: from the cache, else read in chunks. Also
   * counts the keys that have no row yet (new users or event types).
   */
  #current<T, Row>(
    keys: Iterable<string>,
    cache: LruMap<T>,
    statement: string,
    sql: (n: number) => string,
    fromRow: (row: Row) => [string, T],
  ): { current: Map<string, T>; created: number } {
    const current = new Map<string, T>();
    const missing: string[] = [];
    for (const key of keys) {
      const cached = cache.get(key);
      if (cached === undefined) missing.push(key);
      else current.set(key, cached);
    }
    let created = 0;
    for (let start = 0; start < missing.length; start += CHUNK_ROWS) {
      const chunk = missing.slice(start, start + CHUNK_ROWS);
      const rows = this.#statement(statement, chunk.length, () => sql(chunk.length))
        .all(...chunk) as unknown as Row[];
      for (const row of rows) {
        const [key, value] = fromRow(row);
        current.set(key, value);
      }
      created += chunk.length - rows.length;
    }
    return { current, created };
  }

  /** Merges the deltas into `users`; returns how many users are new. */
  #applyUsers(deltas: Map<string, UserDelta>): number {
    if (deltas.size === 0) return 0;
    const { current, created } = this.#current(
      deltas.keys(),
      this.#shared.users,
      "users.select",
      (n) =>
        `SELECT user_id, total_events, total_value, events, last_activity, last_ms
           FROM users WHERE user_id IN (${list(n)})`,
      (row: UserRow) => [row.user_id, { user: storedUser(row), eventsJson: row.events }],
    );

    const keys = [...deltas.keys()];
    const pending = this.#pendingUsers;
    for (let start = 0; start < keys.length; start += CHUNK_ROWS) {
      const rows = Math.min(CHUNK_ROWS, keys.length - start);
      const params = new Array<SQLInputValue>(rows * 6);
      for (let i = 0; i < rows; i++) {
        const key = keys[start + i];
        const before = current.get(key);
        const u = mergeUser(before?.user, deltas.get(key)!);
        // Events are only ever appended: an unchanged count is an unchanged list.
        const eventsJson = before !== undefined && before.user.events.length === u.events.length
          ? before.eventsJson
          : JSON.stringify(u.events);
        pending.push({ user: u, eventsJson });
        const p = 6 * i;
        params[p] = u.user_id;
        params[p + 1] = u.total_events;
        params[p + 2] = u.total_value;
        params[p + 3] = eventsJson;
        params[p + 4] = u.last_activity;
        params[p + 5] = u.last_ms;
      }
      this.#statement(
        "users.upsert",
        rows,
        () =>
          `INSERT INTO users (user_id, total_events, total_value, events, last_activity, last_ms)
             VALUES ${placeholders(rows, 6)}
             ON CONFLICT (user_id) DO UPDATE SET total_events = excluded.total_events,
               total_value = excluded.total_value, events = excluded.events,
               last_activity = excluded.last_activity, last_ms = excluded.last_ms`,
      ).run(...params);
    }
    return created;
  }

  /** Merges the deltas into `events`; returns how many event types are new. */
  #applyEvents(deltas: Map<string, EventDelta>): number {
    if (deltas.size === 0) return 0;
    const { current, created } = this.#current(
      deltas.keys(),
      this.#shared.events,
      "events.select",
      (n) =>
        `SELECT event, count, total_value, min_value, max_value
           FROM events WHERE event IN (${list(n)})`,
      (row: EventAggregate) => [row.event, eventAggregate(row)],
    );

    const keys = [...deltas.keys()];
    const pending = this.#pendingEvents;
    for (let start = 0; start < keys.length; start += CHUNK_ROWS) {
      const rows = Math.min(CHUNK_ROWS, keys.length - start);
      const params = new Array<SQLInputValue>(rows * 5);
      for (let i = 0; i < rows; i++) {
        const key = keys[start + i];
        const e = mergeEvent(current.get(key), deltas.get(key)!);
        pending.push(e);
        const p = 5 * i;
        params[p] = e.event;
        params[p + 1] = e.count;
        params[p + 2] = e.total_value;
        params[p + 3] = e.min_value;
        params[p + 4] = e.max_value;
      }
      this.#statement(
        "events.upsert",
        rows,
        () =>
          `INSERT INTO events (event, count, total_value, min_value, max_value)
             VALUES ${placeholders(rows, 5)}
             ON CONFLICT (event) DO UPDATE SET count = excluded.count,
               total_value = excluded.total_value, min_value = excluded.min_value,
               max_value = excluded.max_value`,
      ).run(...params);
    }
    return created;
  }

  #insertFailed(units: readonly EncodedUnit[]): void {
    let total = 0;
    for (const unit of units) total += unit.failed.length;
    if (total === 0) return;
    const all = total === units[0].failed.length ? units[0].failed : units.flatMap((u) => u.failed);
    for (let start = 0; start < all.length; start += CHUNK_ROWS) {
      const chunk = all.slice(start, start + CHUNK_ROWS);
      const params: SQLInputValue[] = chunk.flat();
      this.#statement(
        "failed",
        chunk.length,
        () =>
          `INSERT INTO failed (record_id, stage, reason, raw, failed_at)
             VALUES ${placeholders(chunk.length, 5)}`,
      ).run(...params);
    }
  }
}

function storedUser(row: UserRow): StoredUser {
  return {
    user_id: row.user_id,
    total_events: row.total_events,
    total_value: row.total_value,
    events: JSON.parse(row.events),
    last_activity: row.last_activity,
    last_ms: row.last_ms,
  };
}

function userAggregate(row: UserRow): UserAggregate {
  return {
    user_id: row.user_id,
    total_events: row.total_events,
    total_value: row.total_value,
    events: JSON.parse(row.events),
    last_activity: row.last_activity,
  };
}

function eventAggregate(row: EventAggregate): EventAggregate {
  return {
    event: row.event,
    count: row.count,
    total_value: row.total_value,
    min_value: row.min_value,
    max_value: row.max_value,
  };
}

function checkLimit(limit: number): void {
  if (!Number.isSafeInteger(limit) || limit < 1) {
    throw new RangeError(`Invalid limit ${limit}: expected a positive integer`);
  }
}

interface ReaderStatements {
  user: StatementSync;
  usersFirst: StatementSync;
  usersAfter: StatementSync;
  event: StatementSync;
  record: StatementSync;
  failed: StatementSync;
  failedByStage: StatementSync;
  counts: StatementSync;
}

const USER_COLUMNS = "user_id, total_events, total_value, events, last_activity";

class SqliteReader implements StoreReader {
  #db: DatabaseSync;
  #path: string;
  /** Prepared once the schema exists; until then every read sees an empty store. */
  #statements: ReaderStatements | undefined;

  constructor(db: DatabaseSync, path: string) {
    this.#db = db;
    this.#path = path;
  }

  #ready(): ReaderStatements | undefined {
    if (this.#statements !== undefined) return this.#statements;
    const version = schemaVersion(this.#db);
    if (version === 0) return undefined;
    if (version !== SCHEMA_VERSION) {
      throw new Error(
        `Cannot read SQLite store "${this.#path}": schema version ${version} is not ${SCHEMA_VERSION}`,
      );
    }
    const db = this.#db;
    this.#statements = {
      user: db.prepare(`SELECT ${USER_COLUMNS} FROM users WHERE user_id = ?`),
      usersFirst: db.prepare(`SELECT ${USER_COLUMNS} FROM users ORDER BY user_id LIMIT ?`),
      usersAfter: db.prepare(
        `SELECT ${USER_COLUMNS} FROM users WHERE user_id > ? ORDER BY user_id LIMIT ?`,
      ),
      event: db.prepare(
        "SELECT event, count, total_value, min_value, max_value FROM events WHERE event = ?",
      ),
      record: db.prepare("SELECT body FROM records WHERE id = ?"),
      failed: db.prepare(
        "SELECT seq, record_id, stage, reason, raw, failed_at FROM failed ORDER BY seq DESC LIMIT ?",
      ),
      failedByStage: db.prepare(
        `SELECT seq, record_id, stage, reason, raw, failed_at FROM failed
           WHERE stage = ? ORDER BY seq DESC LIMIT ?`,
      ),
      counts: db.prepare(
        "SELECT stored_records, failed_records, users, events FROM totals WHERE id = 1",
      ),
    };
    return this.#statements;
  }

  /** Runs a synchronous read as the contract's promise; `s` is undefined before the schema exists. */
  #run<T>(read: (s: ReaderStatements | undefined) => T): Promise<T> {
    try {
      return Promise.resolve(read(this.#ready()));
    } catch (error) {
      return Promise.reject(error);
    }
  }

  getUser(userId: string): Promise<UserAggregate | undefined> {
    return this.#run((s) => {
      const row = s?.user.get(userId) as UserRow | undefined;
      return row === undefined ? undefined : userAggregate(row);
    });
  }

  listUsers(limit: number, cursor?: string): Promise<UserPage> {
    return this.#run((s) => {
      checkLimit(limit);
      if (s === undefined) return { users: [], next_cursor: null };
      // One row past the page tells whether another page follows.
      const rows = (cursor === undefined
        ? s.usersFirst.all(limit + 1)
        : s.usersAfter.all(cursor, limit + 1)) as unknown as UserRow[];
      const users = rows.slice(0, limit).map(userAggregate);
      return { users, next_cursor: rows.length > limit ? users[limit - 1].user_id : null };
    });
  }

  getEvent(event: string): Promise<EventAggregate | undefined> {
    return this.#run((s) => {
      const row = s?.event.get(event) as EventAggregate | undefined;
      return row === undefined ? undefined : eventAggregate(row);
    });
  }

  getRecord(id: RecordId): Promise<ProcessedRecord | undefined> {
    return this.#run((s) => {
      const row = s?.record.get(recordKey(id)) as { body: string } | undefined;
      return row === undefined ? undefined : decodeBody(row.body);
    });
  }

  listFailed(limit: number, stage?: string): Promise<StoredFailure[]> {
    return this.#run((s) => {
      checkLimit(limit);
      if (s === undefined) return [];
      const rows = (stage === undefined
        ? s.failed.all(limit)
        : s.failedByStage.all(stage, limit)) as unknown as FailedRow[];
      return rows.map((row): StoredFailure => ({
        seq: row.seq,
        record_id: row.record_id === null ? null : JSON.parse(row.record_id) as RecordId,
        stage: row.stage as StageName,
        reason: row.reason,
        raw: JSON.parse(row.raw),
        failed_at: row.failed_at,
      }));
    });
  }

  counts(): Promise<StoreCounts> {
    return this.#run((s) => {
      if (s === undefined) return { stored_records: 0, failed_records: 0, users: 0, events: 0 };
      const row = s.counts.get() as unknown as StoreCounts;
      return {
        stored_records: row.stored_records,
        failed_records: row.failed_records,
        users: row.users,
        events: row.events,
      };
    });
  }

  close(): Promise<void> {
    if (this.#db.isOpen) this.#db.close();
    this.#statements = undefined;
    return Promise.resolve();
  }
}
