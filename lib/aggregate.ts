/**
 * @module
 * Pure aggregation: sums a batch of processed records into per-user and
 * per-event deltas, and merges a delta into a stored aggregate.
 *
 * Storage applies one delta per key per batch (one upsert per key, not one
 * per record), inside the same transaction as the records themselves.
 */
import type { EventAggregate, ProcessedRecord, UserAggregate } from "./schemas.ts";
import { toUtcIso } from "./schemas.ts";

/** What one batch adds to one user. */
export interface UserDelta {
  user_id: string;
  count: number;
  total: number;
  /** Distinct events of the batch, in first-seen order. */
  events: string[];
  last_ms: number;
}

/** What one batch adds to one event type. */
export interface EventDelta {
  event: string;
  count: number;
  total: number;
  min: number;
  max: number;
}

/** Per-key deltas of one batch. */
export interface AggregateDeltas {
  users: Map<string, UserDelta>;
  events: Map<string, EventDelta>;
}

/** Sums `records` into per-user and per-event deltas. */
export function aggregateRecords(records: readonly ProcessedRecord[]): AggregateDeltas {
  const users = new Map<string, UserDelta>();
  const events = new Map<string, EventDelta>();
  for (const r of records) {
    let u = users.get(r.user_id);
    if (u === undefined) {
      u = { user_id: r.user_id, count: 0, total: 0, events: [], last_ms: r.timestamp_ms };
      users.set(r.user_id, u);
    }
    u.count++;
    u.total += r.value;
    if (!u.events.includes(r.event)) u.events.push(r.event);
    if (r.timestamp_ms > u.last_ms) u.last_ms = r.timestamp_ms;

    const e = events.get(r.event);
    if (e === undefined) {
      events.set(r.event, { event: r.event, count: 1, total: r.value, min: r.value, max: r.value });
    } else {
      e.count++;
      e.total += r.value;
      if (r.value < e.min) e.min = r.value;
      if (r.value > e.max) e.max = r.value;
    }
  }
  return { users, events };
}

/** A stored user aggregate with its last activity as epoch milliseconds. */
export interface StoredUser extends UserAggregate {
  last_ms: number;
}

/** Adds `delta` to `current` (or starts a new aggregate when there is none). */
export function mergeUser(current: StoredUser | undefined, delta: UserDelta): StoredUser {
  if (current === undefined) {
    return {
      user_id: delta.user_id,
      total_events: delta.count,
      total_value: delta.total,
      events: [...delta.events],
      last_activity: toUtcIso(delta.last_ms),
      last_ms: delta.last_ms,
    };
  }
  const events = [...current.events];
  for (const e of delta.events) if (!events.includes(e)) events.push(e);
  const last_ms = Math.max(current.last_ms, delta.last_ms);
  return {
    user_id: current.user_id,
    total_events: current.total_events + delta.count,
    total_value: current.total_value + delta.total,
    events,
    last_activity: toUtcIso(last_ms),
    last_ms,
  };
}

/** Adds `delta` to `current` (or starts a new aggregate when there is none). */
export function mergeEvent(current: EventAggregate | undefined, delta: EventDelta): EventAggregate {
  if (current === undefined) {
    return {
      event: delta.event,
      count: delta.count,
      total_value: delta.total,
      min_value: delta.min,
      max_value: delta.max,
    };
  }
  return {
    event: current.event,
    count: current.count + delta.count,
    total_value: current.total_value + delta.total,
    min_value: Math.min(current.min_value, delta.min),
    max_value: Math.max(current.max_value, delta.max),
  };
}
