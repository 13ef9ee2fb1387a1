/**
 * @module
 * The validate stage worker: checks each raw record against the
 * `DataRecord` schema (with the configured limits). A record that does not
 * pass is refused with stage `validate` and the schema's message, and goes
 * to the failed store with its batch; the rest go on to transform.
 *
 * Well-formed records take a hand-written fast path (`fastValidate` in
 * `lib/schemas.ts`) that gives the schema's own output; the schema runs only
 * for the others, so every message still comes from it.
 *
 * Events: see `actors/_stage_worker.ts`.
 */
import * as v from "valibot";
import type { Batch } from "../lib/batch.ts";
import { type DataRecord, fastValidate, recordLimitsOf } from "../lib/schemas.ts";
import type { StageDeps } from "./_stage_deps.ts";
import { createStageWorkerMachine } from "./_stage_worker.ts";

/** Formats the first valibot issue as `field: message`. */
export function describeIssues(issues: readonly v.BaseIssue<unknown>[]): string {
  const first = issues[0];
  const path = v.getDotPath(first);
  if (path && first.input === undefined && first.kind === "schema") return `${path}: is required`;
  const message = `${first.message}${quote(first.input)}`;
  return path ? `${path}: ${message}` : message;
}

/** ` (got 1.5)` for a scalar value, shortened; nothing for objects. */
function quote(input: unknown): string {
  if (input === null || typeof input === "object" || input === undefined) return "";
  const text = typeof input === "string" ? JSON.stringify(input) : String(input);
  return ` (got ${text.length > 40 ? `${text.slice(0, 40)}…` : text})`;
}

/**
 * Validates the raw records of each batch. Results are computed for every
 * batch before any batch is changed, so a throw leaves them as they were.
 */
export async function validateBatches(batches: Batch[], deps: StageDeps): Promise<void> {
  const results = [];
  const limits = recordLimitsOf(deps.schema);
  for (const b of batches) {
    await deps.faults.check("validate", () => b.raw.map((r) => (r as { id?: unknown })?.id));
    const valid: DataRecord[] = [];
    const validIndex: number[] = [];
    const refused: Array<[unknown, number, string]> = [];
    for (let i = 0; i < b.raw.length; i++) {
      const fast = limits === undefined ? undefined : fastValidate(b.raw[i], limits);
      if (fast !== undefined) {
        valid.push(fast);
        validIndex.push(b.rawIndex[i]);
        continue;
      }
      const r = v.safeParse(deps.schema, b.raw[i]);
      if (r.success) {
        valid.push(r.output);
        validIndex.push(b.rawIndex[i]);
      } else {
        refused.push([b.raw[i], b.rawIndex[i], describeIssues(r.issues)]);
      }
    }
    results.push({ valid, validIndex, refused });
  }
  for (let k = 0; k < batches.length; k++) {
    const b = batches[k];
    const { valid, validIndex, refused } = results[k];
    for (const [raw, index, reason] of refused) b.reject(raw, index, "validate", reason);
    b.valid = valid;
    b.validIndex = validIndex;
    b.raw = [];
    b.rawIndex = [];
  }
}

/** Worker machine of the validate stage. */
export const validateStageMachine = createStageWorkerMachine("validate_stage", validateBatches);
