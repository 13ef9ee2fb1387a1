/**
 * @module
 * A stream consumer: reads one partition's stream in the shared consumer
 * group on its own Redis connection, hands each entry's records to the
 * local pipeline, waits for their commit, then acknowledges (and deletes)
 * the entry. Several instances read the same streams in the same group, so
 * they share the work; an entry is acknowledged only after its records are
 * committed, so a consumer that dies holding entries loses nothing: its
 * entries stay pending and another consumer takes them over.
 *
 * ```
 * connecting ──► claiming ──► processing (entries) | next (none)
 * reading    ──► processing (entries) | next (none)
 * processing ──► next                  pipeline down: pausing ──(backoff)──► next
 * next       ──► stopped (draining) | claiming (claim due) | reading
 * any Redis error ──► backingOff ──(backoff)──► connecting
 * ```
 *
 * - `reading`: `XREADGROUP … COUNT batch_count BLOCK block_ms STREAMS s >`;
 *   about once a second it also refreshes `troupe_stream_lag` and
 *   `troupe_stream_pending` (`XINFO GROUPS`, `XLEN`).
 * - `claiming` (every `claim_idle_ms / 2`, at most 5 s, and at once
 *   again while there is more): `XAUTOCLAIM` takes over entries idle
 *   longer than `claim_idle_ms`, from consumers taken for dead. Their
 *   delivery counts (`XPENDING`) say whether to try again: an entry
 *   delivered more than `max_deliveries` times goes to the failed store
 *   (stage `queue`, with its records and the reason) and is acknowledged.
 * - `processing`: submits every entry's records in order
 *   (`TroupeSystem.submit`: validate, transform, aggregate, store, idempotent
 *   by record id, so a redelivered entry never counts twice), waits for the
 *   commits, then `XACK` + `XDEL` in one `MULTI`. When the pipeline answers
 *   429/503 it holds the entries and retries with backoff; nothing more is
 *   read meanwhile. While it works, it resets the idle time of the entries
 *   it holds (`XCLAIM … JUSTID`, which counts no delivery), so a slow commit
 *   is not mistaken for a dead consumer.
 * - `backingOff`: any Redis error closes the connection and waits
 *   (`lib/backoff.ts`, 100 ms doubling to 5 s) before connecting again.
 * - `pausing`: the local pipeline is down (its supervisor gave up): the
 *   entries not submitted are left to other consumers, and reading waits.
 *
 * On `queue.drain` the consumer finishes the read or the entries in hand
 * (commit and acknowledge), then stops (`stopped`, final).
 *
 * Events in: `queue.drain`. Its parent handles its errors (a throw is a
 * bug, not a Redis fault).
 */
import type { Logger } from "@logtape/logtape";
import { assign, fromCallback, fromPromise, setup } from "xstate";
import { type Backoff, createBackoff, nextDelay, resetBackoff } from "../lib/backoff.ts";
import { idOf, type IngestResult } from "../lib/batch.ts";
import type { QueueMetrics } from "../lib/metrics.ts";
import {
  chunk,
  decodeEntry,
  QUEUE_STAGE,
  type QueueBackend,
  type QueueConnection,
  type QueueSettings,
  type QueueSink,
  type StreamEntry,
  type StreamStats,
} from "../lib/queue.ts";
import type { FailedRecord } from "../lib/schemas.ts";

/** Events a stream consumer accepts. */
export type StreamConsumerEvent = { type: "queue.drain" };

/** Input of a stream consumer. */
export interface StreamConsumerInput {
  partition: number;
  stream: string;
  backend: QueueBackend;
  sink: QueueSink;
  metrics: QueueMetrics;
  log: Logger;
  /** Called with each committed entry's outcome (records accepted, duplicate, rejected). */
  onCommitted?: (result: IngestResult) => void;
  /** How often the stream's lag and pending entries are refreshed, ms. @default 1000 */
  statsIntervalMs?: number;
}

/** The connection of a consumer; the `owner` actor closes it whenever the consumer stops. */
interface Link {
  conn: QueueConnection | null;
}

interface Ctx extends StreamConsumerInput {
  settings: QueueSettings;
  link: Link;
  entries: StreamEntry[];
  backoff: Backoff;
  delayMs: number;
  draining: boolean;
  lastClaimAt: number;
  /** The last claim filled its batch: claim again at once. */
  moreToClaim: boolean;
  lastStatsAt: number;
  stats: StreamStats | null;
  /** Entries committed and acknowledged since start. */
  committed: number;
  lastError: string | null;
}

/** How often to look for entries of dead consumers. */
export function claimIntervalMs(claimIdleMs: number): number {
  return Math.max(100, Math.min(5_000, Math.floor(claimIdleMs / 2)));
}

function message(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
    function done() {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    }
  });
}

/** The failed records of an entry given up on: its records, or the entry itself when unreadable. */
export function failedOfEntry(entry: StreamEntry, reason: string): FailedRecord[] {
  const failedAt = new Date().toISOString();
  const decoded = decodeEntry(entry);
  if (!decoded.ok) {
    return [{
      record_id: null,
      stage: QUEUE_STAGE,
      reason: `${reason}; ${decoded.error}`,
      raw: entry.fields,
      failed_at: failedAt,
    }];
  }
  return decoded.records.map((raw) => ({
    record_id: idOf(raw),
    stage: QUEUE_STAGE,
    reason,
    raw,
    failed_at: failedAt,
  }));
}

/** Resolves with `promise`, or with `undefined` once `signal` aborts. */
function untilAborted<T>(promise: Promise<T>, signal: AbortSignal): Promise<T | undefined> {
  if (signal.aborted) return Promise.resolve(undefined);
  return new Promise((resolve, reject) => {
    const abort = () => resolve(undefined);
    signal.addEventListener("abort", abort, { once: true });
    promise.then(
      (v) => {
        signal.removeEventListener("abort", abort);
        resolve(v);
      },
      (e) => {
        signal.removeEventListener("abort", abort);
        reject(e);
      },
    );
  });
}

type StepInput = {
  conn: QueueConnection;
  ctx: Ctx;
};

/** Owns the consumer's connection: closes it when the consumer stops, in any state. */
const owner = fromCallback<{ type: "none" }, Link>(({ input: link }) => () => {
  link.conn?.close();
  link.conn = null;
});

/** Connects and makes sure the group exists. */
const connect = fromPromise<QueueConnection, { backend: QueueBackend; stream: string }>(
  async ({ input, signal }) => {
    const conn = await input.backend.connect();
    try {
      await conn.ensureGroup(input.stream);
    } catch (error) {
      conn.close();
      throw error;
    }
    if (signal.aborted) conn.close();
    return conn;
  },
);

/** Reads new entries; refreshes the stream figures first when they are due. */
const read = fromPromise<{ entries: StreamEntry[]; stats: StreamStats | null }, StepInput>(
  async ({ input: { conn, ctx } }) => {
    let stats: StreamStats | null = null;
    if (Date.now() - ctx.lastStatsAt >= (ctx.statsIntervalMs ?? 1_000)) {
      stats = await conn.stats(ctx.stream);
      ctx.metrics.streamLag.set({ stream: ctx.stream }, stats.lag);
      ctx.metrics.streamPending.set({ stream: ctx.stream }, stats.pending);
      ctx.metrics.streamLength.set({ stream: ctx.stream }, stats.length);
    }
    if (ctx.draining) return { entries: [], stats };
    const entries = await conn.read(ctx.stream, ctx.settings.batch_count, ctx.settings.block_ms);
    return { entries, stats };
  },
);

/** Takes over idle entries; gives up on those delivered too often. */
const claim = fromPromise<{ entries: StreamEntry[]; full: boolean }, StepInput>(
  async ({ input: { conn, ctx } }) => {
    const { settings, stream, metrics, log } = ctx;
    const claimed = await conn.claim(stream, settings.claim_idle_ms, settings.batch_count);
    const full = claimed.length >= settings.batch_count;
    if (claimed.length === 0) return { entries: [], full };
    metrics.queueEntriesTotal.inc({ outcome: "reclaimed" }, claimed.length);
    const counts = await conn.deliveries(stream, claimed.map((e) => e.id));
    const keep: StreamEntry[] = [];
    const giveUp: StreamEntry[] = [];
    for (const e of claimed) {
      // Not ours any more (claimed by another consumer meanwhile): one more try is harmless.
      const n = counts.get(e.id) ?? 1;
      (n > settings.max_deliveries ? giveUp : keep).push(e);
    }
    log.info("Took over {count} entries of {stream} idle for over {idleMs} ms", {
      count: claimed.length,
      stream,
      idleMs: settings.claim_idle_ms,
      givenUp: giveUp.length,
    });
    if (giveUp.length > 0) {
      const failed = giveUp.flatMap((e) =>
        failedOfEntry(
          e,
          `Stream entry ${e.id} of ${stream} was delivered ${
            counts.get(e.id)
          } times without a commit (queue.max_deliveries is ${settings.max_deliveries})`,
        )
      );
      await ctx.sink.fail(failed);
      await conn.ack(stream, giveUp.map((e) => e.id));
      metrics.queueEntriesTotal.inc({ outcome: "gave_up" }, giveUp.length);
      log.error("Gave up on {count} entries of {stream}: delivered over {max} times", {
        count: giveUp.length,
        stream,
        max: settings.max_deliveries,
        ids: giveUp.map((e) => e.id),
      });
    }
    return { entries: keep, full };
  },
);

/**
 * Submits the entries' records, waits for their commits, acknowledges.
 * `refused`: the pipeline is down and entries were left to others.
 */
const processEntries = fromPromise<{ committed: number; refused: boolean }, StepInput>(
  async ({ input: { conn, ctx }, signal }) => {
    const { stream, sink, settings, metrics, log } = ctx;
    const entries = ctx.entries;
    let held = entries.map((e) => e.id);
    // Keep what we hold fresh, so nobody takes it over while it is committed.
    const heartbeat = setInterval(() => {
      conn.touch(stream, held).catch((error) =>
        log.debug("Refreshing held entries failed: {error}", { error: message(error) })
      );
    }, Math.max(50, Math.floor(settings.claim_idle_ms / 3)));
    try {
      const waits: { entry: StreamEntry; records: number; results: Promise<IngestResult>[] }[] = [];
      const unreadable: StreamEntry[] = [];
      let refused = false;
      let backoff = createBackoff(50, 2_000);
      submit: for (const entry of entries) {
        const decoded = decodeEntry(entry);
        if (!decoded.ok) {
          unreadable.push(entry);
          continue;
        }
        const results: Promise<IngestResult>[] = [];
        for (const part of chunk(decoded.records, sink.maxSubmit)) {
          for (;;) {
            if (signal.aborted) {
              refused = true;
              break submit;
            }
            const outcome = await sink.submit(part);
            if (outcome.ok) {
              results.push(outcome.ticket.promise);
              backoff = resetBackoff(backoff);
              break;
            }
            if (!sink.alive()) {
              refused = true;
              log.warn("The pipeline is down: leaving {count} entries of {stream} to others", {
                count: entries.length - waits.length,
                stream,
                reason: outcome.message,
              });
              break submit;
            }
            // Back-pressure: hold the entry (not acknowledged) and try again.
            const next = nextDelay(backoff);
            backoff = next.backoff;
            await sleep(Math.min(next.delayMs, outcome.retryAfterSeconds * 1_000), signal);
          }
        }
        waits.push({ entry, records: decoded.records.length, results });
      }
      // Entries not submitted are no longer ours to keep fresh.
      if (refused) held = waits.map((w) => w.entry.id);
      const done: string[] = [];
      let records = 0;
      const settled = await untilAborted(
        Promise.all(waits.map((w) => Promise.allSettled(w.results))),
        signal,
      );
      // Stopped meanwhile: whatever was not acknowledged stays pending for others.
      if (settled === undefined) return { committed: 0, refused: true };
      settled.forEach((outcomes, i) => {
        if (outcomes.every((o) => o.status === "fulfilled")) {
          done.push(waits[i].entry.id);
          records += waits[i].records;
          for (const o of outcomes) {
            ctx.onCommitted?.((o as PromiseFulfilledResult<IngestResult>).value);
          }
        } else {
          const why = outcomes.find((o) => o.status === "rejected") as PromiseRejectedResult;
          log.warn("Entry {id} of {stream} not committed, left pending: {reason}", {
            id: waits[i].entry.id,
            stream,
            reason: message(why.reason),
          });
        }
      });
      if (unreadable.length > 0) {
        await sink.fail(
          unreadable.flatMap((e) =>
            failedOfEntry(e, `Stream entry ${e.id} of ${stream} is unreadable`)
          ),
        );
        metrics.queueEntriesTotal.inc({ outcome: "gave_up" }, unreadable.length);
        done.push(...unreadable.map((e) => e.id));
      }
      await conn.ack(stream, done);
      metrics.queueEntriesTotal.inc({ outcome: "committed" }, done.length - unreadable.length);
      metrics.queueRecordsTotal.inc({ outcome: "committed" }, records);
      return { committed: done.length - unreadable.length, refused };
    } finally {
      clearInterval(heartbeat);
    }
  },
);

function closeConn(link: Link): void {
  link.conn?.close();
  link.conn = null;
}

function stepInput({ context }: { context: Ctx }): StepInput {
  if (context.link.conn === null) throw new Error("The consumer has no connection");
  return { conn: context.link.conn, ctx: context };
}

/** Reads one partition's stream and commits its entries through the pipeline. */
export const streamConsumerMachine = setup({
  types: {
    context: {} as Ctx,
    events: {} as StreamConsumerEvent,
    input: {} as StreamConsumerInput,
  },
  actors: { connect, read, claim, processEntries, owner },
  delays: { retry: ({ context }) => context.delayMs },
  guards: {
    draining: ({ context }) => context.draining,
    claimDue: ({ context }) =>
      context.moreToClaim ||
      Date.now() - context.lastClaimAt >= claimIntervalMs(context.settings.claim_idle_ms),
  },
  actions: {
    closeConn: ({ context }) => closeConn(context.link),
    scheduleRetry: assign(({ context }) => {
      const { delayMs, backoff } = nextDelay(context.backoff);
      return { delayMs, backoff };
    }),
    logError: ({ context, event }) => {
      const error = message((event as { error?: unknown }).error);
      // One line per new error: a Redis that stays down does not flood the log.
      if (error !== context.lastError) {
        context.log.warn("Consumer of {stream}: {error}; reconnecting with backoff", {
          stream: context.stream,
          error,
        });
      }
    },
    rememberError: assign({
      lastError: ({ event }) => message((event as { error?: unknown }).error),
    }),
    startDrain: assign({ draining: true }),
  },
}).createMachine({
  id: "stream_consumer",
  context: ({ input }) => ({
    ...input,
    settings: input.backend.settings,
    link: { conn: null },
    entries: [],
    backoff: createBackoff(100, 5_000),
    delayMs: 0,
    draining: false,
    lastClaimAt: 0,
    moreToClaim: false,
    lastStatsAt: 0,
    stats: null,
    committed: 0,
    lastError: null,
  }),
  invoke: { src: "owner", input: ({ context }) => context.link },
  on: { "queue.drain": { actions: "startDrain" } },
  initial: "connecting",
  states: {
    connecting: {
      on: { "queue.drain": { target: "stopped", actions: "startDrain" } },
      invoke: {
        src: "connect",
        input: ({ context }) => ({ backend: context.backend, stream: context.stream }),
        onDone: {
          target: "claiming",
          actions: assign(({ context, event }) => {
            if (context.lastError !== null) {
              context.log.info("Consumer of {stream} connected again", { stream: context.stream });
            }
            context.link.conn = event.output;
            return { backoff: resetBackoff(context.backoff), lastError: null };
          }),
        },
        onError: { target: "backingOff", actions: ["logError", "rememberError"] },
      },
    },
    claiming: {
      invoke: {
        src: "claim",
        input: stepInput,
        onDone: [
          {
            guard: ({ event }) => event.output.entries.length > 0,
            target: "processing",
            actions: assign(({ event }) => ({
              entries: event.output.entries,
              lastClaimAt: Date.now(),
              moreToClaim: event.output.full,
            })),
          },
          {
            target: "next",
            actions: assign(({ event }) => ({
              lastClaimAt: Date.now(),
              moreToClaim: event.output.full,
            })),
          },
        ],
        onError: { target: "backingOff", actions: ["logError", "rememberError"] },
      },
    },
    reading: {
      invoke: {
        src: "read",
        input: stepInput,
        onDone: [
          {
            guard: ({ event }) => event.output.entries.length > 0,
            target: "processing",
            actions: assign(({ context, event }) => ({
              entries: event.output.entries,
              stats: event.output.stats ?? context.stats,
              lastStatsAt: event.output.stats === null ? context.lastStatsAt : Date.now(),
            })),
          },
          {
            target: "next",
            actions: assign(({ context, event }) => ({
              stats: event.output.stats ?? context.stats,
              lastStatsAt: event.output.stats === null ? context.lastStatsAt : Date.now(),
            })),
          },
        ],
        onError: { target: "backingOff", actions: ["logError", "rememberError"] },
      },
    },
    processing: {
      invoke: {
        src: "processEntries",
        input: stepInput,
        onDone: [
          {
            guard: ({ event }) => event.output.refused,
            target: "pausing",
            actions: ["scheduleRetry", assign({ entries: [] })],
          },
          {
            target: "next",
            actions: assign(({ context, event }) => ({
              entries: [],
              committed: context.committed + event.output.committed,
            })),
          },
        ],
        onError: {
          target: "backingOff",
          actions: ["logError", "rememberError", assign({ entries: [] })],
        },
      },
    },
    next: {
      always: [
        { guard: "draining", target: "stopped" },
        { guard: "claimDue", target: "claiming" },
        { target: "reading" },
      ],
    },
    pausing: {
      after: { retry: "next" },
      on: { "queue.drain": { target: "stopped", actions: "startDrain" } },
    },
    backingOff: {
      entry: ["closeConn", "scheduleRetry"],
      after: { retry: "connecting" },
      on: { "queue.drain": { target: "stopped", actions: "startDrain" } },
    },
    stopped: {
      type: "final",
      entry: "closeConn",
    },
  },
});
