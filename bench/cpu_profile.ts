/**
 * @module
 * Summarises a V8 `.cpuprofile` (from `deno run --cpu-prof`, `bun
 * --cpu-prof` or `node:inspector`'s Profiler): the functions with the most
 * self time, the functions with the most total (inclusive) time, and the
 * share of each part of troupe's ingest path (body parsing, valibot,
 * xstate, SQLite, logging, metrics, garbage collection, ...).
 *
 * Time per sample is the profile's own `timeDeltas`, so the figures are
 * wall-clock time spent on the JS thread, not only CPU: a synchronous
 * SQLite commit waiting for `fsync` counts against SQLite. A native leaf
 * without a script (`JSON.parse`, a `node:sqlite` call) is put in the part
 * of its nearest caller that has one; so is a helper of `lib/schemas.ts`
 * (`toUtcIso` belongs to whichever stage calls it).
 *
 * Run: `deno run -A bench/cpu_profile.ts FILE.cpuprofile [--top N] [--json]`
 */
import { readFileSync } from "node:fs";
import process from "node:process";
import { parseArgs } from "node:util";

/** The parts of a `.cpuprofile` this reads. */
export interface CpuProfile {
  nodes: Array<{
    id: number;
    callFrame: { functionName: string; url: string; lineNumber: number; columnNumber: number };
    children?: number[];
  }>;
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

/** One function's time. */
export interface FunctionTime {
  /** `name (file:line)`. */
  name: string;
  ms: number;
  /** Share of the profile's time, 0 to 100. */
  percent: number;
}

/** What {@linkcode summariseProfile} returns. */
export interface ProfileSummary {
  totalMs: number;
  samples: number;
  /** Functions by self time, most first. */
  self: FunctionTime[];
  /** Functions by total (inclusive) time, most first; each counted once per sample. */
  total: FunctionTime[];
  /** Parts of the ingest path by self time (see {@linkcode categorise}). */
  categories: FunctionTime[];
}

/** Where a frame's script lives, shortened: `lib/body.ts`, `npm:xstate/...`. */
function shortUrl(url: string): string {
  if (url === "") return "";
  const npm = /node_modules\/(?:\.deno\/[^/]+\/node_modules\/)?((?:@[^/]+\/)?[^/]+)\/(.*)$/.exec(
    url,
  );
  if (npm) return `npm:${npm[1]}/${npm[2]}`;
  const own = /\/(actors|lib|routes|bench)\/([^/]+)$/.exec(url);
  if (own) return `${own[1]}/${own[2]}`;
  if (url.endsWith("/main.ts")) return "main.ts";
  return url.replace(/^.*\/ext\//, "ext:").replace(/^file:\/\//, "");
}

/** Rules from script to part of the ingest path, first match wins. */
const CATEGORY_RULES: Array<[RegExp, string]> = [
  [/sqlite/, "SQLite store"],
  [/npm:valibot|actors\/validate_stage/, "validate (valibot)"],
  [/actors\/transform_stage/, "transform stage"],
  [/actors\/aggregate_stage|lib\/aggregate/, "aggregate stage"],
  [/npm:xstate|actors\/|lib\/mailbox|lib\/batch/, "actors (xstate, pools, mailbox, batches)"],
  [/lib\/body/, "body read + parse"],
  [/npm:@logtape|lib\/log/, "logging"],
  [/npm:prom-client|lib\/metrics|lib\/stats/, "metrics"],
  [/npm:hono|routes\/|lib\/serve|main\.ts/, "HTTP (Hono, routes, middleware)"],
  [/^ext:/, "runtime (Deno ext: HTTP, streams, timers)"],
];

/** Names a part of troupe's ingest path for a shortened script URL, or `undefined`. */
export function categorise(url: string): string | undefined {
  for (const [re, name] of CATEGORY_RULES) if (re.test(url)) return name;
  return undefined;
}

const SPECIAL = new Set(["(garbage collector)", "(idle)", "(program)", "(root)"]);

/**
 * Summarises a profile: self time, total time and parts, over all samples.
 *
 * @example
 * ```ts
 * const summary = summariseProfile(JSON.parse(readFileSync(file, "utf8")));
 * console.log(summary.categories[0]); // { name: "SQLite store", ms: 4210.5, percent: 41.2 }
 * ```
 */
export function summariseProfile(profile: CpuProfile, top = 25): ProfileSummary {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const label = (id: number) => {
    const f = byId.get(id)!.callFrame;
    const url = shortUrl(f.url);
    const name = f.functionName || "(anonymous)";
    return url === "" ? name : `${name} (${url}:${f.lineNumber + 1})`;
  };

  const self = new Map<string, number>();
  const total = new Map<string, number>();
  const categories = new Map<string, number>();
  let totalMs = 0;
  for (let i = 0; i < profile.samples.length; i++) {
    // The delta after a sample is the time it stands for.
    const ms = (profile.timeDeltas[i + 1] ?? 0) / 1000;
    totalMs += ms;
    const leaf = profile.samples[i];
    self.set(label(leaf), (self.get(label(leaf)) ?? 0) + ms);
    const seen = new Set<string>();
    let category: string | undefined;
    const leafName = byId.get(leaf)!.callFrame.functionName;
    if (SPECIAL.has(leafName)) category = leafName;
    for (let id: number | undefined = leaf; id !== undefined; id = parent.get(id)) {
      const name = label(id);
      if (!seen.has(name)) {
        seen.add(name);
        total.set(name, (total.get(name) ?? 0) + ms);
      }
      category ??= categorise(shortUrl(byId.get(id)!.callFrame.url));
    }
    category ??= "other";
    categories.set(category, (categories.get(category) ?? 0) + ms);
  }
  const list = (m: Map<string, number>, n: number) =>
    [...m.entries()]
      .sort((a, b) => b[1] - a[1])
      .slice(0, n)
      .map(([name, ms]) => ({
        name,
        ms: Math.round(ms * 10) / 10,
        percent: Math.round((1000 * ms) / totalMs) / 10,
      }));
  return {
    totalMs: Math.round(totalMs),
    samples: profile.samples.length,
    self: list(self, top),
    total: list(new Map([...total].filter(([k]) => !SPECIAL.has(k.split(" ")[0]))), top),
    categories: list(categories, Infinity),
  };
}

/** The summary as markdown tables. */
export function formatSummary(s: ProfileSummary): string {
  const table = (title: string, rows: FunctionTime[]) =>
    [
      `| ${title} | ms | % |`,
      "|---|---:|---:|",
      ...rows.map((r) => `| ${r.name} | ${r.ms} | ${r.percent} |`),
    ]
      .join("\n");
  return [
    `${s.samples} samples over ${s.totalMs} ms`,
    "",
    table("part (self time)", s.categories),
    "",
    table("function (self time)", s.self),
    "",
    table("function (total time)", s.total),
  ].join("\n");
}

if (import.meta.main) {
  const { values, positionals } = parseArgs({
    args: process.argv.slice(2),
    options: { top: { type: "string", default: "25" }, json: { type: "boolean", default: false } },
    allowPositionals: true,
  });
  if (positionals.length !== 1) {
    process.stderr.write("Usage: cpu_profile.ts FILE.cpuprofile [--top N] [--json]\n");
    process.exit(2);
  }
  const summary = summariseProfile(
    JSON.parse(readFileSync(positionals[0], "utf8")),
    Number(values.top),
  );
  process.stdout.write((values.json ? JSON.stringify(summary) : formatSummary(summary)) + "\n");
}
