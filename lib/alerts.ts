/**
 * @module
 * The alert book: the alerts that are pending or firing now and the ones
 * resolved lately (seed 001's `Alert`), written by the alert rule actors
 * and read by `GET /v1/alerts` and the `ALERTS` series on `/metrics`.
 */

/** Alert severities. */
export type Severity = "info" | "warning" | "critical";

/** One alert (seed 001's Alert). */
export interface Alert {
  id: string;
  name: string;
  state: "pending" | "firing" | "resolved";
  severity: Severity;
  summary: string;
  description: string;
  labels: Record<string, string>;
  value: number | null;
  starts_at: string;
  ends_at: string | null;
  suggested_actions: string[];
}

/** Alerts now, and the last `keepResolved` resolved ones. */
export class AlertBook {
  readonly keepResolved: number;
  #active = new Map<string, Alert>();
  #resolved: Alert[] = [];
  #seq = 0;

  constructor(keepResolved = 100) {
    this.keepResolved = keepResolved;
  }

  /** Opens a pending alert for `name` (or returns the one open). */
  open(a: Omit<Alert, "id" | "state" | "ends_at">): Alert {
    const existing = this.#active.get(a.name);
    if (existing !== undefined) return existing;
    const alert: Alert = { ...a, id: `${a.name}-${++this.#seq}`, state: "pending", ends_at: null };
    this.#active.set(a.name, alert);
    return alert;
  }

  /** Updates the open alert of `name`. */
  update(name: string, change: Partial<Pick<Alert, "state" | "value" | "description">>): void {
    const a = this.#active.get(name);
    if (a !== undefined) Object.assign(a, change);
  }

  /** Drops a pending alert that never fired. */
  drop(name: string): void {
    this.#active.delete(name);
  }

  /** Resolves the open alert of `name`. */
  resolve(name: string, at: string): Alert | undefined {
    const a = this.#active.get(name);
    if (a === undefined) return undefined;
    this.#active.delete(name);
    a.state = "resolved";
    a.ends_at = at;
    this.#resolved.unshift(a);
    this.#resolved.length = Math.min(this.#resolved.length, this.keepResolved);
    return a;
  }

  /** Pending and firing alerts. */
  active(): Alert[] {
    return [...this.#active.values()];
  }

  /** Resolved alerts, newest first. */
  resolved(): Alert[] {
    return [...this.#resolved];
  }
}
