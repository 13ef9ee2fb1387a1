/**
 * @module
 * Rows per second committed to PostgreSQL through the store's writer
 * (`lib/postgres_store.ts`), on a throwaway PostgreSQL 15 started on
 * loopback (`tests/_postgres_server.ts`, with `fsync=on` unless `--no-fsync`):
 *
 * - `commit 1000 new`: one writer, commits of 1000 new records (seed 000's
 *   shape, 100 users, 5 event types), the whole commit timed;
 * - `commit 1000 duplicates`: the same records again;
 * - `5 writers at once`: the store pool's largest size, each committing its
 *   own 1000 new records at the same time, aggregate rows/s;
 * - the records insert alone, two ways, as one statement each: `unnest` of
 *   two text array literals (what the store sends for the records) against multi-row
 *   `VALUES ($1,$2),…` (2000 bind parameters), to justify the choice.
 *
 * Each figure: the median of `--rounds` timed rounds after one warm-up.
 *
 * Run: `deno run -A bench/postgres_commit.ts [--rounds 30] [--no-fsync] [--json]`
 */
import postgres from "postgres";
import { parseArgs } from "node:util";
import {
  createPostgresSchema,
  openPostgresWriter,
  pgJsonTextArray,
  pgTextArray,
} from "../lib/postgres_store.ts";
import type { StoreWriter } from "../lib/store.ts";
import { startPostgres } from "../tests/_postgres_server.ts";
import { processedRecords } from "./_records.ts";

const ROWS = 1000;

const { values: args } = parseArgs({
  options: {
    rounds: { type: "string", default: "30" },
    "no-fsync": { type: "boolean", default: false },
    json: { type: "boolean", default: false },
  },
});
const rounds = Number(args.rounds);
const fsync = !args["no-fsync"];

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

/** Runs `fn` once to warm up, then `rounds` times; returns the median ms. */
async function timed(fn: () => Promise<unknown>): Promise<number> {
  await fn();
  const ms: number[] = [];
  for (let i = 0; i < rounds; i++) {
    const t0 = performance.now();
    await fn();
    ms.push(performance.now() - t0);
  }
  return median(ms);
}

const pg = await startPostgres({ fsync });
const results: { name: string; ms: number; rows_per_s: number }[] = [];
const report = (name: string, ms: number, rows: number) => {
  results.push({ name, ms, rows_per_s: Math.round(rows / (ms / 1000)) });
  if (!args.json) {
    console.log(
      `${name.padEnd(40)} ${ms.toFixed(2).padStart(8)} ms  ${
        Math.round(rows / (ms / 1000)).toLocaleString("en").padStart(9)
      } rows/s`,
    );
  }
};
const writers: StoreWriter[] = [];
const admin = postgres(pg.url, { max: 1, onnotice: () => {}, fetch_types: false });
try {
  const [{ version }] = await admin`SELECT current_setting('server_version') AS version`;
  if (!args.json) {
    console.log(
      `postgres_commit bench: PostgreSQL ${version} on loopback, fsync=${fsync ? "on" : "off"}, ` +
        `${navigator.hardwareConcurrency} cores, ${ROWS} rows per commit, median of ${rounds}`,
    );
  }
  await createPostgresSchema(pg.url);
  for (let i = 0; i < 5; i++) writers.push(await openPostgresWriter(pg.url));
  let nextId = 0;
  const fresh = () => {
    const records = processedRecords(nextId, ROWS);
    nextId += ROWS;
    return records;
  };

  report(
    "commit 1000 new (1 writer)",
    await timed(() => writers[0].commit([{ records: fresh(), failed: [] }])),
    ROWS,
  );
  const again = fresh();
  await writers[0].commit([{ records: again, failed: [] }]);
  report(
    "commit 1000 duplicates (1 writer)",
    await timed(() => writers[0].commit([{ records: again, failed: [] }])),
    ROWS,
  );
  report(
    "5 writers at once, 1000 new each",
    await timed(() =>
      Promise.all(writers.map((w) => w.commit([{ records: fresh(), failed: [] }])))
    ),
    5 * ROWS,
  );

  // The records insert alone, as one statement, both ways.
  await admin`CREATE TABLE IF NOT EXISTS troupe.bench_records (id text COLLATE "C" PRIMARY KEY, body text NOT NULL)`;
  const rows = () => {
    const records = fresh();
    return {
      ids: records.map((r) => String(r.id)).sort(),
      bodies: records.map((r) => JSON.stringify(r)),
    };
  };
  const unnestSql = `INSERT INTO troupe.bench_records (id, body)
    SELECT * FROM unnest($1::text[], $2::text[]) ON CONFLICT (id) DO NOTHING RETURNING id`;
  report(
    "insert only: unnest of 2 array literals",
    await timed(() => {
      const { ids, bodies } = rows();
      return admin.unsafe(unnestSql, [pgTextArray(ids), pgJsonTextArray(bodies)], {
        prepare: true,
      });
    }),
    ROWS,
  );
  const valuesSql = `INSERT INTO troupe.bench_records (id, body) VALUES ${
    Array.from({ length: ROWS }, (_, i) => `($${2 * i + 1}, $${2 * i + 2})`).join(",")
  } ON CONFLICT (id) DO NOTHING RETURNING id`;
  report(
    "insert only: VALUES, 2000 parameters",
    await timed(() => {
      const { ids, bodies } = rows();
      const params: string[] = [];
      ids.forEach((id, i) => params.push(id, bodies[i]));
      return admin.unsafe(valuesSql, params, { prepare: true });
    }),
    ROWS,
  );
  if (args.json) console.log(JSON.stringify({ fsync, rounds, rows: ROWS, results }, null, 2));
} finally {
  await Promise.all(writers.map((w) => w.close()));
  await admin.end({ timeout: 1 });
  await pg.stop();
}
