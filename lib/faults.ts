/**
 * @module
 * Fault injection, off unless asked for (config section `faults` or the
 * `TROUPE_FAULTS` environment variable, JSON). Used by tests and by the
 * crash and outage drills to prove that supervision, retries and poison
 * isolation keep every acknowledged record.
 *
 * @example
 * ```json
 * {"stages":{"transform":{"throw_rate":0.01}},"poison_ids":["bad-1"]}
 * ```
 */
import * as v from "valibot";
import type { StageName } from "./schemas.ts";
import { recordKey } from "./schemas.ts";

/** One stage's faults. */
export const StageFaults = v.strictObject({
  /** Fraction of batches on which the stage throws, 0 to 1. @default 0 */
  throw_rate: v.optional(v.pipe(v.number(), v.minValue(0), v.maxValue(1)), 0),
  /** The stage throws on this many batches, then behaves. @default 0 */
  throw_count: v.optional(v.pipe(v.number(), v.integer(), v.minValue(0)), 0),
  /** Extra time the stage takes per batch, ms. @default 0 */
  latency_ms: v.optional(v.pipe(v.number(), v.minValue(0)), 0),
});
export type StageFaults = v.InferOutput<typeof StageFaults>;

/** The `faults` config section. */
export const FaultPlan = v.strictObject({
  /** Faults per stage. */
  stages: v.optional(
    v.strictObject({
      validate: v.optional(StageFaults),
      transform: v.optional(StageFaults),
      aggregate: v.optional(StageFaults),
      store: v.optional(StageFaults),
    }),
    {},
  ),
  /** Record ids that make every stage in `poison_stages` throw whenever it sees them. */
  poison_ids: v.optional(v.array(v.union([v.string(), v.number()])), []),
  /**
   * Storage is unavailable (every commit and ping fails) for this many ms
   * from the moment the plan is set. @default 0
   */
  storage_outage_ms: v.optional(v.pipe(v.number(), v.integer(), v.minValue(0)), 0),
  /**
   * The transform stage keeps this many bytes of heap per batch and never
   * lets go: a real memory leak, for the memory-leak alert drill. @default 0
   */
  leak_bytes_per_batch: v.optional(v.pipe(v.number(), v.integer(), v.minValue(0)), 0),
  /** Stages that choke on poison ids. @default ["transform"] */
  poison_stages: v.optional(
    v.array(v.picklist(["validate", "transform", "aggregate", "store"])),
    ["transform"],
  ),
});
export type FaultPlan = v.InferOutput<typeof FaultPlan>;
/** A fault plan as written: every field optional. */
export type FaultPlanInput = v.InferInput<typeof FaultPlan>;

/** The error an injected fault throws. */
export class InjectedFault extends Error {
  constructor(message: string) {
    super(message);
    this.name = "InjectedFault";
  }
}

/** Storage cannot be reached: the commit may be retried as it is. */
export class StorageUnavailableError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "StorageUnavailableError";
  }
}

/** Applies a {@linkcode FaultPlan}; a plan with nothing in it costs one branch per batch. */
export class FaultInjector {
  #plan: FaultPlan;
  #poison: Set<string>;
  #thrown = new Map<StageName, number>();
  #random: () => number;
  #outageUntil = 0;
  /** What the leak drill holds on to. */
  #leaked: number[][] = [];

  /** Throws a `ValiError` for an invalid plan. */
  constructor(input: FaultPlanInput = {}, random: () => number = Math.random) {
    const plan = v.parse(FaultPlan, input);
    this.#plan = plan;
    this.#poison = new Set(plan.poison_ids.map(recordKey));
    this.#random = random;
    this.#outageUntil = plan.storage_outage_ms > 0 ? Date.now() + plan.storage_outage_ms : 0;
  }

  /** Whether any fault is configured. */
  get active(): boolean {
    return this.#poison.size > 0 || this.#plan.storage_outage_ms > 0 ||
      this.#plan.leak_bytes_per_batch > 0 ||
      Object.values(this.#plan.stages).some((s) => s !== undefined);
  }

  get plan(): FaultPlan {
    return this.#plan;
  }

  /** Replaces the plan (admin route); throws a `ValiError` for an invalid one. */
  set(input: FaultPlanInput): void {
    const plan = v.parse(FaultPlan, input);
    this.#plan = plan;
    this.#poison = new Set(plan.poison_ids.map(recordKey));
    this.#thrown.clear();
    this.#outageUntil = plan.storage_outage_ms > 0 ? Date.now() + plan.storage_outage_ms : 0;
  }

  /** Throws {@linkcode StorageUnavailableError} during an injected storage outage. */
  checkStorage(): void {
    if (this.#outageUntil > 0 && Date.now() < this.#outageUntil) {
      throw new StorageUnavailableError(
        `Injected storage outage (${this.#outageUntil - Date.now()} ms left)`,
      );
    }
  }

  /** Throws when `stage` should fail on a batch holding records with `ids`. */
  async check(stage: StageName, ids: () => Iterable<unknown>): Promise<void> {
    if (stage === "transform" && this.#plan.leak_bytes_per_batch > 0) {
      // A plain array on the JS heap (strings from repeat/padEnd would be
      // ropes sharing their parts, and typed arrays live off the heap).
      this.#leaked.push(
        new Array(Math.ceil(this.#plan.leak_bytes_per_batch / 8)).fill(this.#leaked.length),
      );
    }
    const f = this.#plan.stages[stage];
    if (f !== undefined) {
      if (f.latency_ms > 0) await new Promise((r) => setTimeout(r, f.latency_ms));
      const thrown = this.#thrown.get(stage) ?? 0;
      if (thrown < f.throw_count) {
        this.#thrown.set(stage, thrown + 1);
        throw new InjectedFault(
          `Injected fault in stage "${stage}" (${thrown + 1} of ${f.throw_count})`,
        );
      }
      if (f.throw_rate > 0 && this.#random() < f.throw_rate) {
        throw new InjectedFault(`Injected fault in stage "${stage}" (rate ${f.throw_rate})`);
      }
    }
    if (this.#poison.size > 0 && this.#plan.poison_stages.includes(stage)) {
      for (const id of ids()) {
        if ((typeof id === "string" || typeof id === "number") && this.#poison.has(recordKey(id))) {
          throw new InjectedFault(`Poison record ${JSON.stringify(id)} in stage "${stage}"`);
        }
      }
    }
  }
}
