/**
 * @module
 * The gate in front of reading a request body: a request's records enter
 * the heap only when the pipeline has room for them, and until then the
 * body waits unread in the socket (the kernel's memory, not ours), so the
 * client feels back-pressure through TCP instead of the process growing.
 *
 * Room: the records in the pipeline (every stage's mailbox and workers),
 * plus an estimate for each admitted request not yet submitted, are below
 * `limit`. Waiters are let in first come, first served; a request that
 * waits longer than its timeout is told `false` (the route answers 429).
 * When nothing at all is in flight a request is always let in, so one
 * larger than `limit` still goes through.
 *
 * Measured on 2 cores (docs/PERFORMANCE.md, "Memory"): with 16 clients
 * posting 1000 records each, admitting all of them parsed 16,000 records
 * ahead of the store; most of them outlived two young-generation
 * collections and were promoted, and the old generation grew to 110 MB of
 * garbage between full collections. Admitting about two commits' worth
 * keeps both threads busy and the rest unread.
 *
 * @example
 * ```ts
 * const gate = new Admission(() => system.load, 8000, 1000);
 * const pass = await gate.enter(1000);
 * if (pass === null) return tooManyRequests();
 * try {
 *   const records = await readBody();
 *   const outcome = await system.submit(records);
 *   pass.submitted(); // its records now count in system.load
 *   await outcome.ticket.promise;
 * } finally {
 *   pass.leave();
 * }
 * ```
 */

/** One admitted request's hold on the gate. */
export interface Pass {
  /** Its records are in the pipeline now (or it has none): stop estimating them. */
  submitted(): void;
  /** It is finished, answered or not; implies {@linkcode Pass.submitted}. */
  leave(): void;
}

interface Waiter {
  resolve: (pass: Pass | null) => void;
  timer: ReturnType<typeof setTimeout> | undefined;
}

/** How often waiters look at the load when nothing else woke them. */
const POLL_MS = 5;

/** A FIFO gate that lets requests in while the pipeline's load is below a limit. */
export class Admission {
  readonly limit: number;
  #load: () => number;
  #estimate: number;
  #waiters: Waiter[] = [];
  /** Admitted requests whose records are not counted in the load yet. */
  #reading = 0;
  /** Admitted requests not finished. */
  #inside = 0;
  #poll: ReturnType<typeof setInterval> | undefined;

  /**
   * @param load Records in the pipeline now.
   * @param limit Records in the pipeline above which requests wait.
   * @param estimate Records counted for an admitted request until it is submitted.
   */
  constructor(load: () => number, limit: number, estimate: number) {
    if (!(limit >= 1)) throw new RangeError(`Admission limit must be at least 1, got ${limit}`);
    this.#load = load;
    this.limit = limit;
    this.#estimate = estimate;
  }

  /** Requests waiting to be let in. */
  get waiting(): number {
    return this.#waiters.length;
  }

  /** Requests let in and not finished. */
  get inside(): number {
    return this.#inside;
  }

  /**
   * Waits until the request may read its body; `null` after `timeoutMs`
   * without room. Every pass must be left ({@linkcode Pass.leave}).
   */
  enter(timeoutMs: number): Promise<Pass | null> {
    if (this.#waiters.length === 0 && this.#room()) return Promise.resolve(this.#admit());
    return new Promise((resolve) => {
      const waiter: Waiter = { resolve, timer: undefined };
      waiter.timer = setTimeout(() => {
        const i = this.#waiters.indexOf(waiter);
        if (i >= 0) this.#waiters.splice(i, 1);
        this.#idle();
        resolve(null);
      }, timeoutMs);
      this.#waiters.push(waiter);
      this.#poll ??= setInterval(() => this.pump(), POLL_MS);
    });
  }

  /** Lets waiters in while there is room. */
  pump(): void {
    while (this.#waiters.length > 0 && this.#room()) {
      const waiter = this.#waiters.shift()!;
      clearTimeout(waiter.timer);
      waiter.resolve(this.#admit());
    }
    this.#idle();
  }

  #room(): boolean {
    const load = this.#load();
    if (load === 0 && this.#reading === 0) return true;
    return load + this.#reading * this.#estimate < this.limit;
  }

  #admit(): Pass {
    this.#reading++;
    this.#inside++;
    let reading = true;
    let inside = true;
    const submitted = () => {
      if (!reading) return;
      reading = false;
      this.#reading--;
      this.pump();
    };
    return {
      submitted,
      leave: () => {
        if (!inside) return;
        inside = false;
        this.#inside--;
        if (reading) submitted();
        else this.pump();
      },
    };
  }

  #idle(): void {
    if (this.#waiters.length === 0 && this.#poll !== undefined) {
      clearInterval(this.#poll);
      this.#poll = undefined;
    }
  }
}
