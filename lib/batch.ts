/**
 * @module
 * What travels between stages. One HTTP request (or one chunk of an input
 * file) gets a {@linkcode Ticket}; its records are cut into
 * {@linkcode Batch}es of at most `pipeline.batch_size` records. Each stage
 * fills in its part of the batch; the store stage settles the batch on the
 * ticket after the commit, and the ticket answers the request once every
 * batch of it is settled.
 *
 * A batch that keeps crashing a stage is split in two (both halves stay on
 * the same ticket) until the record that crashes it is alone; that record
 * then fails with its stage and reason, and the rest go on.
 */
import type { AggregateDeltas } from "./aggregate.ts";
import type { DataRecord, FailedRecord, ProcessedRecord, RecordId, StageName } from "./schemas.ts";

/** One refused record as reported to the client. */
export interface RecordError {
  /** Position of the record in the request, from 0. */
  index: number;
  id: unknown;
  stage: StageName;
  message: string;
}

/** The answer to `POST /v1/records`. */
export interface IngestResult {
  accepted: number;
  duplicates: number;
  rejected: number;
  errors: RecordError[];
}

/** Why a ticket could not be answered with a result. */
export class PipelineUnavailableError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "PipelineUnavailableError";
  }
}

/** One request's share of the pipeline: answers once all its batches are settled. */
export class Ticket {
  readonly result: IngestResult = { accepted: 0, duplicates: 0, rejected: 0, errors: [] };
  /** Committed records, per batch, for callers that need them (file mode). */
  readonly committed: ProcessedRecord[][] = [];
  readonly promise: Promise<IngestResult>;
  /** Whether to keep the committed records on the ticket. */
  readonly keepRecords: boolean;
  #pending = 0;
  #done = false;
  #resolve!: (r: IngestResult) => void;
  #reject!: (e: Error) => void;

  constructor(keepRecords = false) {
    this.keepRecords = keepRecords;
    this.promise = new Promise((resolve, reject) => {
      this.#resolve = resolve;
      this.#reject = reject;
    });
  }

  /** Batches not settled yet. */
  get pending(): number {
    return this.#pending;
  }

  get done(): boolean {
    return this.#done;
  }

  /** Counts one more batch that must settle before the answer. */
  open(): void {
    this.#pending++;
  }

  /** Settles `batch` with the outcome of its commit. */
  settle(batch: Batch, inserted: readonly boolean[]): void {
    if (this.#done) return;
    const r = this.result;
    for (const ok of inserted) ok ? r.accepted++ : r.duplicates++;
    r.rejected += batch.failed.length;
    for (const e of batch.errors) r.errors.push(e);
    if (this.keepRecords) {
      this.committed.push(batch.processed.filter((_, i) => inserted[i]));
    }
    if (--this.#pending === 0) {
      this.#done = true;
      r.errors.sort((a, b) => a.index - b.index);
      this.#resolve(r);
    }
  }

  /** Settles one opened batch that carried no records (an empty request). */
  settleEmpty(): void {
    if (!this.#done && --this.#pending === 0) {
      this.#done = true;
      this.#resolve(this.result);
    }
  }

  /** Gives up on the request: nothing of it is acknowledged. */
  fail(error: Error): void {
    if (this.#done) return;
    this.#done = true;
    this.#reject(error);
  }
}

let nextSeq = 1;

/** Records on their way through the stages, with what each stage added. */
export class Batch {
  readonly seq = nextSeq++;
  readonly ticket: Ticket;
  /** When the request arrived, epoch ms. */
  readonly receivedAt: number;
  /** Records as received (input of validate). */
  raw: unknown[];
  /** Position in the request of each entry of `raw`. */
  rawIndex: number[];
  /** Validated records (input of transform). */
  valid: DataRecord[] = [];
  /** Position in the request of each entry of `valid` and then `processed`. */
  validIndex: number[] = [];
  /** Transformed records (input of aggregate and store). */
  processed: ProcessedRecord[] = [];
  /** Per-key sums of `processed`, filled by aggregate. */
  deltas: AggregateDeltas | undefined;
  /** Records refused so far, stored by the store stage with the batch. */
  failed: FailedRecord[] = [];
  errors: RecordError[] = [];
  /** The stage the batch is in or waiting for. */
  stage: StageName = "validate";
  /** Crashes of the current stage while holding this batch. */
  attempts = 0;
  /** Dispatch alone, not grouped with other batches (a half of a split batch). */
  isolate = false;

  constructor(ticket: Ticket, raw: unknown[], rawIndex: number[], receivedAt = Date.now()) {
    this.ticket = ticket;
    this.raw = raw;
    this.rawIndex = rawIndex;
    this.receivedAt = receivedAt;
    ticket.open();
  }

  /** Records currently carried: what the mailboxes count. */
  get size(): number {
    switch (this.stage) {
      case "validate":
        return this.raw.length;
      case "transform":
        return this.valid.length;
      default:
        return this.processed.length;
    }
  }

  /** Marks the record at `i` of the current stage's input as failed, and removes it. */
  failAt(i: number, stage: StageName, reason: string): void {
    let raw: unknown;
    let index: number;
    if (this.stage === "validate") {
      raw = this.raw[i];
      index = this.rawIndex[i];
      this.raw.splice(i, 1);
      this.rawIndex.splice(i, 1);
    } else if (this.stage === "transform") {
      raw = this.valid[i];
      index = this.validIndex[i];
      this.valid.splice(i, 1);
      this.validIndex.splice(i, 1);
    } else {
      raw = this.processed[i];
      index = this.validIndex[i];
      this.processed.splice(i, 1);
      this.validIndex.splice(i, 1);
      this.deltas = undefined;
    }
    this.reject(raw, index, stage, reason);
  }

  /** Records a refused record (not part of the stage input any more). */
  reject(raw: unknown, index: number, stage: StageName, reason: string): void {
    const id = idOf(raw);
    this.failed.push({
      record_id: id,
      stage,
      reason,
      raw,
      failed_at: new Date().toISOString(),
    });
    this.errors.push({ index, id, stage, message: reason });
  }

  /**
   * Splits the current stage's input in two halves; this batch keeps the
   * first half (and the failures so far), the returned one takes the rest.
   * Both stay on the same ticket.
   */
  split(): Batch {
    const other = new Batch(this.ticket, [], [], this.receivedAt);
    other.stage = this.stage;
    if (this.stage === "validate") {
      const half = Math.ceil(this.raw.length / 2);
      other.raw = this.raw.splice(half);
      other.rawIndex = this.rawIndex.splice(half);
    } else if (this.stage === "transform") {
      const half = Math.ceil(this.valid.length / 2);
      other.valid = this.valid.splice(half);
      other.validIndex = this.validIndex.splice(half);
    } else {
      const half = Math.ceil(this.processed.length / 2);
      other.processed = this.processed.splice(half);
      other.validIndex = this.validIndex.splice(half);
      this.deltas = undefined;
    }
    return other;
  }

  /** Number of records in the current stage's input. */
  get inputLength(): number {
    if (this.stage === "validate") return this.raw.length;
    if (this.stage === "transform") return this.valid.length;
    return this.processed.length;
  }
}

/** The id of a raw record when it has a usable one, else `null`. */
export function idOf(raw: unknown): RecordId | null {
  if (raw !== null && typeof raw === "object" && "id" in raw) {
    const id = (raw as { id: unknown }).id;
    if (typeof id === "string" && id.length > 0 && id.length <= 256) return id;
    if (typeof id === "number" && Number.isSafeInteger(id) && id >= 0) return id;
  }
  return null;
}

/** Cuts `records` into batches of at most `size`, all on `ticket`. */
export function toBatches(ticket: Ticket, records: unknown[], size: number): Batch[] {
  const batches: Batch[] = [];
  const now = Date.now();
  for (let start = 0; start < records.length; start += size) {
    const raw = records.slice(start, start + size);
    const index = new Array<number>(raw.length);
    for (let i = 0; i < raw.length; i++) index[i] = start + i;
    batches.push(new Batch(ticket, raw, index, now));
  }
  return batches;
}
