/**
 * @module
 * Writes an NDJSON file of seed 000 `DataRecord`s for the `process` command
 * and its benchmarks: unique integer ids from 1, about 50 users, 5 event
 * types, values drawn per event type around its own mean (with a rare spike
 * so the anomaly score has something to find), ISO 8601 timestamps 100 ms
 * apart. The data is the same for the same seed.
 *
 * With `invalid`, that many lines (spread evenly) are bad instead, taking
 * turns: a line that is not JSON, a record without `user_id`, a record whose
 * `value` is a string.
 *
 * Run: `deno run -A bench/make_records.ts FILE COUNT [--invalid N] [--seed S]`
 *
 * @example
 * ```sh
 * deno run -A bench/make_records.ts /tmp/records.ndjson 1000000
 * deno run -A main.ts process --input /tmp/records.ndjson --out /tmp/out
 * ```
 */
import { closeSync, openSync, writeSync } from "node:fs";
import process from "node:process";

/** Options of {@linkcode writeRecords}. */
export interface MakeRecordsOptions {
  /** Records (lines) to write. */
  count: number;
  /** How many of the lines are invalid, spread evenly. @default 0 */
  invalid?: number;
  /** Seed of the pseudo-random values. @default 1 */
  seed?: number;
  /** Distinct users. @default 50 */
  users?: number;
}

/** Event types with the mean and spread of their values. */
const EVENTS: ReadonlyArray<{ name: string; mean: number; sd: number }> = [
  { name: "login", mean: 1, sd: 0.2 },
  { name: "page_view", mean: 0.5, sd: 0.1 },
  { name: "click", mean: 2, sd: 0.5 },
  { name: "purchase", mean: 50, sd: 15 },
  { name: "logout", mean: 1, sd: 0.3 },
];

const PAGES = ["/home", "/search", "/cart", "/checkout", "/account"];

const START_MS = Date.UTC(2025, 0, 15, 10);

/** Lines built before one write. */
const LINES_PER_WRITE = 10_000;

/** mulberry32: a small, fast, seedable generator of numbers in [0, 1). */
function random(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296;
  };
}

/**
 * Builds line `i` (from 0) of the file. `invalid` says which kind of bad
 * line to write instead of a record (0, 1 or 2), or `-1` for a good one.
 */
function line(i: number, rand: () => number, users: number, invalid: number): string {
  const id = i + 1;
  const e = EVENTS[Math.floor(rand() * EVENTS.length)];
  // Box–Muller: roughly normal around the event's mean.
  const normal = Math.sqrt(-2 * Math.log(1 - rand())) * Math.cos(2 * Math.PI * rand());
  const spike = rand() < 0.001 ? 10 : 0;
  const value = Math.round((e.mean + (normal + spike) * e.sd) * 1000) / 1000;
  const user = `user_${String(1 + Math.floor(rand() * users)).padStart(3, "0")}`;
  const timestamp = new Date(START_MS + i * 100).toISOString();
  const metadata = e.name === "page_view"
    ? `{"page":"${PAGES[i % PAGES.length]}"}`
    : `{"ip":"10.0.${i % 256}.${(i >>> 8) % 256}"}`;
  switch (invalid) {
    case 0:
      return `{"id":${id},"timestamp":"${timestamp}","user_id":"${user}",`;
    case 1:
      return `{"id":${id},"timestamp":"${timestamp}","event":"${e.name}","value":${value}}`;
    case 2:
      return `{"id":${id},"timestamp":"${timestamp}","user_id":"${user}","event":"${e.name}","value":"${value}"}`;
  }
  return `{"id":${id},"timestamp":"${timestamp}","user_id":"${user}","event":"${e.name}","value":${value},"metadata":${metadata}}`;
}

/**
 * Writes `options.count` lines to `path` (replacing it) and returns how many
 * were valid records.
 *
 * @example
 * ```ts
 * writeRecords("/tmp/records.ndjson", { count: 10_000, invalid: 10 });
 * ```
 */
export function writeRecords(path: string, options: MakeRecordsOptions): { valid: number } {
  const { count } = options;
  const invalid = Math.min(options.invalid ?? 0, count);
  const users = options.users ?? 50;
  const rand = random(options.seed ?? 1);
  // Bad line k (from 0) goes at floor((k + 0.5) * count / invalid).
  const every = invalid > 0 ? count / invalid : Infinity;
  let nextBad = invalid > 0 ? Math.floor(every / 2) : -1;
  let bad = 0;
  const fd = openSync(path, "w");
  try {
    let buffer: string[] = [];
    for (let i = 0; i < count; i++) {
      let kind = -1;
      if (i === nextBad) {
        kind = bad % 3;
        bad++;
        nextBad = bad < invalid ? Math.floor((bad + 0.5) * every) : -1;
      }
      buffer.push(line(i, rand, users, kind));
      if (buffer.length === LINES_PER_WRITE) {
        writeSync(fd, buffer.join("\n") + "\n");
        buffer = [];
      }
    }
    if (buffer.length > 0) writeSync(fd, buffer.join("\n") + "\n");
  } finally {
    closeSync(fd);
  }
  return { valid: count - bad };
}

function usage(): never {
  process.stderr.write(
    "Usage: make_records.ts FILE COUNT [--invalid N] [--seed S]\n",
  );
  process.exit(2);
}

if (import.meta.main) {
  const args = process.argv.slice(2);
  const positional: string[] = [];
  const flags = new Map<string, number>();
  for (let i = 0; i < args.length; i++) {
    if (args[i] === "--invalid" || args[i] === "--seed") {
      const n = Number(args[++i]);
      if (!Number.isSafeInteger(n) || n < 0) usage();
      flags.set(args[i - 1], n);
    } else {
      positional.push(args[i]);
    }
  }
  const count = Number(positional[1]);
  if (positional.length !== 2 || !Number.isSafeInteger(count) || count < 0) usage();
  const started = performance.now();
  const { valid } = writeRecords(positional[0], {
    count,
    invalid: flags.get("--invalid"),
    seed: flags.get("--seed"),
  });
  process.stderr.write(
    `Wrote ${count} lines (${valid} valid) to ${positional[0]} in ${
      Math.round(performance.now() - started)
    } ms\n`,
  );
}
