/**
 * @module
 * The contract every storage backend keeps (SQLite is the embedded
 * default). A storage connection actor owns one {@linkcode StoreWriter};
 * the HTTP query routes read through one {@linkcode StoreReader}.
 *
 * The promise behind `commit`: the records, the aggregate changes they cause
 * and the failed records of every unit are written in one transaction, or
 * nothing is. A record whose id is already stored changes nothing and is
 * reported as a duplicate.
 */
import type { AggregateDeltas } from "./aggregate.ts";
import type {
  EventAggregate,
  FailedRecord,
  ProcessedRecord,
  RecordId,
  UserAggregate,
} from "./schemas.ts";

/** One unit of a commit: usually the records of one batch. */
export interface CommitUnit {
  records: readonly ProcessedRecord[];
  failed: readonly FailedRecord[];
  /**
   * Deltas of `records` computed by the aggregate stage, assuming every
   * record is new. The store uses them as they are when no record turns out
   * to be a duplicate, and recomputes from the new records otherwise.
   */
  deltas?: AggregateDeltas;
}

/** What a commit did to one unit. */
export interface CommitOutcome {
  /** Per record of the unit, in order: `true` if stored now, `false` if it was a duplicate. */
  inserted: boolean[];
}

/** The write side: one per storage connection actor. */
export interface StoreWriter {
  /** Commits all units in one transaction; throws (and writes nothing) on failure. */
  commit(units: readonly CommitUnit[]): Promise<CommitOutcome[]>;
  /** Cheap liveness probe of the connection; throws when it is broken. */
  ping(): Promise<void>;
  close(): Promise<void>;
}

/** A page of users, in `user_id` order. */
export interface UserPage {
  users: UserAggregate[];
  /** Pass back as `cursor` for the next page; `null` on the last page. */
  next_cursor: string | null;
}

/** A failed record as listed by `GET /v1/failed`. */
export interface StoredFailure extends FailedRecord {
  seq: number;
}

/** Counts kept in storage, so they survive restarts. */
export interface StoreCounts {
  stored_records: number;
  failed_records: number;
  users: number;
  events: number;
}

/** The read side used by the query routes. */
export interface StoreReader {
  getUser(userId: string): Promise<UserAggregate | undefined>;
  listUsers(limit: number, cursor?: string): Promise<UserPage>;
  getEvent(event: string): Promise<EventAggregate | undefined>;
  getRecord(id: RecordId): Promise<ProcessedRecord | undefined>;
  /** Newest first; `stage` filters when given. */
  listFailed(limit: number, stage?: string): Promise<StoredFailure[]>;
  counts(): Promise<StoreCounts>;
  close(): Promise<void>;
}
