/**
 * @module
 * A bounded mailbox counted in records, not messages. xstate's own mailbox
 * is unbounded, so every stage keeps one of these in front of its workers:
 * ingest waits for room (and answers 429/503 when none comes), and a stage
 * hands a batch downstream only after reserving room for it, so no mailbox
 * ever holds more than its capacity.
 *
 * A batch larger than the whole capacity is let in when the mailbox is
 * empty, so an oversized batch can never wait forever.
 */

/** Anything with a size in records. */
export interface Sized {
  readonly size: number;
}

interface Waiter {
  need: number;
  resolve: (ok: boolean) => void;
  timer?: ReturnType<typeof setTimeout>;
}

/** A FIFO of batches bounded by the sum of their sizes. */
export class Mailbox<T extends Sized> {
  #items: T[] = [];
  #head = 0;
  #queued = 0;
  #reserved = 0;
  #waiters: Waiter[] = [];
  /** Capacity in records. */
  readonly capacity: number;

  constructor(capacity: number) {
    if (!(capacity >= 1)) {
      throw new RangeError(`Mailbox capacity must be at least 1, got ${capacity}`);
    }
    this.capacity = capacity;
  }

  /** Records queued plus records reserved by upstream stages. */
  get depth(): number {
    return this.#queued + this.#reserved;
  }

  /** Records queued. */
  get queued(): number {
    return this.#queued;
  }

  /** Batches queued. */
  get length(): number {
    return this.#items.length - this.#head;
  }

  /** Fraction of the capacity in use, 0 to 1 (or more for an oversized batch). */
  get fill(): number {
    return this.depth / this.capacity;
  }

  /** Whether `n` more records fit now. */
  hasRoom(n: number): boolean {
    return this.depth + n <= this.capacity || this.depth === 0;
  }

  /** Reserves room for `n` records to be {@linkcode put} later; `false` if they do not fit. */
  tryReserve(n: number): boolean {
    if (!this.hasRoom(n)) return false;
    this.#reserved += n;
    return true;
  }

  /** Gives back a reservation that will not be used. */
  release(n: number): void {
    this.#reserved = Math.max(0, this.#reserved - n);
    this.#wake();
  }

  /** Queues `item` if it fits; `false` otherwise. */
  offer(item: T): boolean {
    if (!this.hasRoom(item.size)) return false;
    this.#push(item);
    return true;
  }

  /**
   * Queues `item` whatever the room, turning `reserved` records of a
   * reservation into queued ones. Use after {@linkcode tryReserve}, or to
   * requeue a batch that was taken out of this mailbox.
   */
  put(item: T, reserved = 0): void {
    this.#reserved = Math.max(0, this.#reserved - reserved);
    this.#push(item);
    this.#wake();
  }

  /** Puts `item` back at the head, as the next one to take (a retry). */
  requeue(item: T): void {
    if (this.#head > 0) this.#items[--this.#head] = item;
    else this.#items.unshift(item);
    this.#queued += item.size;
  }

  /** The next item without taking it. */
  peek(): T | undefined {
    return this.#head < this.#items.length ? this.#items[this.#head] : undefined;
  }

  /** Takes the next item. */
  take(): T | undefined {
    if (this.#head >= this.#items.length) return undefined;
    const item = this.#items[this.#head];
    this.#items[this.#head++] = undefined as unknown as T;
    if (this.#head > 1024 && this.#head * 2 > this.#items.length) {
      this.#items = this.#items.slice(this.#head);
      this.#head = 0;
    }
    this.#queued -= item.size;
    this.#wake();
    return item;
  }

  /** Takes every queued item. */
  drain(): T[] {
    const items = this.#items.slice(this.#head);
    this.#items = [];
    this.#head = 0;
    this.#queued = 0;
    this.#wake();
    return items;
  }

  /**
   * Resolves `true` as soon as `n` records fit (first come, first served),
   * or `false` after `timeoutMs`.
   */
  waitForRoom(n: number, timeoutMs: number): Promise<boolean> {
    if (this.#waiters.length === 0 && this.hasRoom(n)) return Promise.resolve(true);
    if (timeoutMs <= 0) return Promise.resolve(false);
    return new Promise((resolve) => {
      const waiter: Waiter = { need: n, resolve };
      waiter.timer = setTimeout(() => {
        const i = this.#waiters.indexOf(waiter);
        if (i >= 0) this.#waiters.splice(i, 1);
        resolve(false);
        this.#wake();
      }, timeoutMs);
      this.#waiters.push(waiter);
    });
  }

  /** Answers every waiter `false` (used on shutdown). */
  cancelWaiters(): void {
    for (const w of this.#waiters.splice(0)) {
      clearTimeout(w.timer);
      w.resolve(false);
    }
  }

  #push(item: T): void {
    this.#items.push(item);
    this.#queued += item.size;
  }

  #wake(): void {
    // A woken waiter offers its batch right after; count its need as taken
    // so one freed slot does not wake several waiters that cannot all fit.
    let promised = 0;
    while (this.#waiters.length > 0) {
      const w = this.#waiters[0];
      const fits = this.depth + promised + w.need <= this.capacity ||
        (this.depth + promised === 0);
      if (!fits) break;
      this.#waiters.shift();
      clearTimeout(w.timer);
      promised += w.need;
      w.resolve(true);
    }
  }
}
