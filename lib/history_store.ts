/**
 * @module
 * The downsampled metric history kept in SQLite: one row per series and
 * minute with min, mean and max, kept for `monitor.retention_days` (7 by
 * default), so `GET /v1/metrics/history` can answer for ranges past the
 * 15 minutes held in memory. It lives in the service's SQLite file, in a
 * table of its own, written through its own connection once a minute.
 */
import { mkdirSync } from "node:fs";
import { dirname } from "node:path";
import { DatabaseSync } from "node:sqlite";
import type { History, HistoryPoint } from "./history.ts";

/** One minute of one series. */
export interface MinutePoint extends HistoryPoint {
  name: string;
}

/** Reads and writes the `metric_history` table. */
export class HistoryStore {
  #db: DatabaseSync;
  #open = true;

  constructor(path: string) {
    mkdirSync(dirname(path), { recursive: true });
    this.#db = new DatabaseSync(path);
    this.#db.exec("PRAGMA busy_timeout = 5000");
    this.#db.exec(`CREATE TABLE IF NOT EXISTS metric_history (
      name TEXT NOT NULL,
      t INTEGER NOT NULL,
      min REAL NOT NULL,
      mean REAL NOT NULL,
      max REAL NOT NULL,
      count INTEGER NOT NULL,
      PRIMARY KEY (name, t)
    ) WITHOUT ROWID`);
  }

  /** Writes points in one transaction; a point already stored is replaced. */
  append(points: readonly MinutePoint[]): void {
    if (points.length === 0) return;
    const insert = this.#db.prepare(
      "INSERT OR REPLACE INTO metric_history (name, t, min, mean, max, count) VALUES (?, ?, ?, ?, ?, ?)",
    );
    this.#db.exec("BEGIN");
    try {
      for (const p of points) insert.run(p.name, p.t, p.min, p.mean, p.max, p.count);
      this.#db.exec("COMMIT");
    } catch (error) {
      this.#db.exec("ROLLBACK");
      throw error;
    }
  }

  /** Minutes of `name` with `from <= t <= to`, oldest first. */
  query(name: string, from: number, to: number): HistoryPoint[] {
    const rows = this.#db.prepare(
      "SELECT t, min, mean, max, count FROM metric_history WHERE name = ? AND t >= ? AND t <= ? ORDER BY t",
    ).all(name, from, to) as unknown as HistoryPoint[];
    return rows.map(({ t, min, mean, max, count }) => ({ t, min, mean, max, count }));
  }

  /** Names of every stored series. */
  names(): string[] {
    return (this.#db.prepare("SELECT DISTINCT name FROM metric_history ORDER BY name")
      .all() as Array<
        { name: string }
      >).map((r) => r.name);
  }

  /** Deletes minutes older than `before`; returns how many. */
  prune(before: number): number {
    return Number(this.#db.prepare("DELETE FROM metric_history WHERE t < ?").run(before).changes);
  }

  close(): void {
    if (!this.#open) return;
    this.#open = false;
    this.#db.close();
  }
}

/** Merges per-minute points into steps of `stepMs` (a multiple of a minute works best). */
export function mergeSteps(
  points: readonly HistoryPoint[],
  from: number,
  stepMs: number,
): HistoryPoint[] {
  const out: HistoryPoint[] = [];
  let cur: HistoryPoint | undefined;
  let sum = 0;
  for (const p of points) {
    const start = from + Math.floor((p.t - from) / stepMs) * stepMs;
    if (cur === undefined || cur.t !== start) {
      if (cur !== undefined) cur.mean = sum / cur.count;
      cur = { t: start, min: p.min, mean: 0, max: p.max, count: 0 };
      out.push(cur);
      sum = 0;
    }
    cur.min = Math.min(cur.min, p.min);
    cur.max = Math.max(cur.max, p.max);
    cur.count += p.count;
    sum += p.mean * p.count;
  }
  if (cur !== undefined) cur.mean = sum / cur.count;
  return out;
}

/** Writes each complete minute of every in-memory series once, and prunes old minutes. */
export class MinuteFlusher {
  #store: HistoryStore;
  #retentionMs: number;
  #flushedUpTo: number;
  #lastPrune = 0;

  constructor(store: HistoryStore, retentionMs: number, now: number) {
    this.#store = store;
    this.#retentionMs = retentionMs;
    this.#flushedUpTo = Math.floor(now / 60_000) * 60_000;
  }

  /** Flushes the minutes that ended by `now`; returns the points written. */
  flush(history: History, now: number): number {
    const upTo = Math.floor(now / 60_000) * 60_000;
    if (upTo <= this.#flushedUpTo) return 0;
    const points: MinutePoint[] = [];
    for (const name of history.names()) {
      for (const p of history.query(name, this.#flushedUpTo, upTo - 1, 60_000)) {
        points.push({ name, ...p });
      }
    }
    this.#store.append(points);
    this.#flushedUpTo = upTo;
    if (now - this.#lastPrune >= 3_600_000) {
      this.#store.prune(now - this.#retentionMs);
      this.#lastPrune = now;
    }
    return points.length;
  }
}
