/**
 * @module
 * Measures the validate stage: `validateBatches` on 1000 typical records
 * (the records of the load generator, `bench/_records.ts`, numeric ids) in
 * one batch, and the same records with string ids; beside it `v.safeParse`
 * against `DataRecord` alone, {@linkcode fastValidate} alone and
 * {@linkcode isRealDate} alone, to show where the time goes.
 *
 * Records per second = 1000 / time per iteration. Under Deno it registers
 * `Deno.bench`es; under Bun (no `Deno.bench`) it times the same cases in a
 * loop and prints records/s.
 *
 * Run: `deno bench --allow-all bench/validate_bench.ts` or `bun bench/validate_bench.ts`
 */
import * as v from "valibot";
import { AnomalyTracker } from "../actors/transform_stage.ts";
import type { StageDeps } from "../actors/_stage_deps.ts";
import { validateBatches } from "../actors/validate_stage.ts";
import { Ticket, toBatches } from "../lib/batch.ts";
import { defaultConfig } from "../lib/config.ts";
import { FaultInjector } from "../lib/faults.ts";
import { getLog } from "../lib/log.ts";
import { createMetrics } from "../lib/metrics.ts";
import {
  DataRecord,
  dataRecordSchema,
  DEFAULT_RECORD_LIMITS,
  fastValidate,
  isRealDate,
} from "../lib/schemas.ts";
import { recordTails } from "./_records.ts";

const RECORDS = 1000;

const tails = recordTails(RECORDS);
const numeric: unknown[] = tails.map((tail, i) => JSON.parse(`{"id":${i + 1},${tail}`));
const stringIds: unknown[] = tails.map((tail, i) => JSON.parse(`{"id":"r-${i + 1}",${tail}`));
const timestamps = numeric.map((r) => (r as { timestamp: string }).timestamp);

const deps: StageDeps = {
  config: defaultConfig(),
  schema: dataRecordSchema(DEFAULT_RECORD_LIMITS),
  anomaly: new AnomalyTracker(),
  faults: new FaultInjector(),
  metrics: createMetrics({ defaultMetrics: false }),
  log: getLog("bench"),
  openWriter: () => Promise.reject(new Error("no storage in this bench")),
};

/** Validates `records` as one batch; throws if any is refused, so the bench measures the path it names. */
async function validateAll(records: unknown[]): Promise<void> {
  const [batch] = toBatches(new Ticket(), records, records.length);
  await validateBatches([batch], deps);
  if (batch.valid.length !== records.length) throw new Error("bench records were refused");
}

const cases: Array<[string, () => void | Promise<void>]> = [
  [`validateBatches, ${RECORDS} records, numeric ids`, async () => await validateAll(numeric)],
  [`validateBatches, ${RECORDS} records, string ids`, async () => await validateAll(stringIds)],
  [`v.safeParse DataRecord, ${RECORDS} records`, () => {
    for (const r of numeric) v.safeParse(DataRecord, r);
  }],
  [`fastValidate, ${RECORDS} records`, () => {
    for (const r of numeric) fastValidate(r, DEFAULT_RECORD_LIMITS);
  }],
  [`isRealDate, ${RECORDS} timestamps`, () => {
    for (const ts of timestamps) isRealDate(ts);
  }],
];

if ("Deno" in globalThis && typeof Deno.bench === "function") {
  for (const [name, fn] of cases) Deno.bench({ name, group: name.split(",")[0], fn });
} else {
  const runtime = "Bun" in globalThis
    ? `Bun ${(globalThis as unknown as { Bun: { version: string } }).Bun.version}`
    : "unknown runtime";
  console.log(`validate_bench on ${runtime}; records/s = ${RECORDS} / time per iteration`);
  for (const [name, fn] of cases) {
    for (let i = 0; i < 200; i++) await fn();
    let iterations = 0;
    const start = performance.now();
    while (performance.now() - start < 1000) {
      await fn();
      iterations++;
    }
    const perIter = (performance.now() - start) / iterations;
    const rate = Math.round(RECORDS / (perIter / 1000));
    console.log(`${name}: ${(perIter * 1000).toFixed(1)} µs/iter, ${rate} records/s`);
  }
}
