/**
 * @module
 * The collector: samples the process and the pipeline every
 * `monitor.interval_ms` (1 to 5 s) into the in-memory {@linkcode History}.
 *
 * Process figures: CPU user and system (share of one core, from
 * `process.cpuUsage` deltas), CPU per core (from `os.cpus()` deltas), RSS,
 * heap used and total, external memory, and event-loop lag. Deno and Bun
 * report no GC events, and Deno's `monitorEventLoopDelay` misses short
 * stalls, so lag is measured by a timer-drift probe: a 10 ms interval whose
 * late arrivals are the lag. Pipeline figures come from the `read` function
 * of its input (mailbox depths, workers, actors per type, records/s…).
 *
 * ```
 * collector (systemId "collector")
 * └── lag_probe   setInterval(10 ms), records how late each tick is
 * ```
 *
 * Events in: none from outside; its own delayed `sample` tick.
 */
import { cpus } from "node:os";
import process from "node:process";
import { type EventObject, fromCallback, setup } from "xstate";
import type { History } from "../lib/history.ts";
import type { MinuteFlusher } from "../lib/history_store.ts";

/** How late the probe's ticks were since the last sample, ms. */
export class LagWindow {
  #samples: number[] = [];

  add(lateMs: number): void {
    if (this.#samples.length < 10_000) this.#samples.push(lateMs);
  }

  /** p99 and max of the window, then starts a new window. */
  take(): { p99: number; max: number; count: number } {
    const xs = this.#samples.sort((a, b) => a - b);
    this.#samples = [];
    if (xs.length === 0) return { p99: 0, max: 0, count: 0 };
    return {
      p99: xs[Math.min(xs.length - 1, Math.ceil(xs.length * 0.99) - 1)],
      max: xs[xs.length - 1],
      count: xs.length,
    };
  }
}

/** Probe period. */
export const LAG_PROBE_MS = 10;

/** Measures event-loop lag as timer drift into a {@linkcode LagWindow}. */
export const lagProbe = fromCallback<EventObject, LagWindow>(({ input: window }) => {
  let expected = performance.now() + LAG_PROBE_MS;
  const timer = setInterval(() => {
    const now = performance.now();
    window.add(Math.max(0, now - expected));
    expected = now + LAG_PROBE_MS;
  }, LAG_PROBE_MS);
  return () => clearInterval(timer);
});

/** Input of the collector. */
export interface CollectorInput {
  history: History;
  intervalMs: number;
  /** Pipeline figures to record at each sample, by series name. */
  read: () => Record<string, number>;
  /** Wall clock, epoch ms. @default Date.now */
  now?: () => number;
  /** Writes each complete minute to SQLite (the downsampled history). */
  flusher?: MinuteFlusher;
}

interface CpuTimes {
  idle: number;
  total: number;
}

interface CollectorContext extends CollectorInput {
  window: LagWindow;
  cpu: { user: number; system: number; at: number };
  cores: CpuTimes[];
  samples: number;
}

function coreTimes(): CpuTimes[] {
  return cpus().map((c) => {
    const t = c.times;
    return { idle: t.idle, total: t.user + t.nice + t.sys + t.idle + t.irq };
  });
}

/** Takes one sample of everything into the history. */
export function sampleInto(context: CollectorContext): void {
  const now = (context.now ?? Date.now)();
  const h = context.history;
  const at = performance.now();
  const usage = process.cpuUsage();
  const elapsedUs = Math.max(1, (at - context.cpu.at) * 1000);
  h.record("process_cpu_user", now, (usage.user - context.cpu.user) / elapsedUs);
  h.record("process_cpu_system", now, (usage.system - context.cpu.system) / elapsedUs);
  context.cpu = { user: usage.user, system: usage.system, at };
  const cores = coreTimes();
  cores.forEach((c, i) => {
    const before = context.cores[i];
    if (before === undefined) return;
    const total = c.total - before.total;
    h.record(`cpu_core_${i}`, now, total > 0 ? 1 - (c.idle - before.idle) / total : 0);
  });
  context.cores = cores;
  const mem = process.memoryUsage();
  h.record("rss_bytes", now, mem.rss);
  h.record("heap_used_bytes", now, mem.heapUsed);
  h.record("heap_total_bytes", now, mem.heapTotal);
  h.record("external_bytes", now, mem.external);
  const lag = context.window.take();
  h.record("eventloop_lag_p99_seconds", now, lag.p99 / 1000);
  h.record("eventloop_lag_max_seconds", now, lag.max / 1000);
  for (const [name, value] of Object.entries(context.read())) {
    if (Number.isFinite(value)) h.record(name, now, value);
  }
  context.flusher?.flush(h, now);
  context.samples++;
}

/** The collector machine. */
export const collectorMachine = setup({
  types: {
    context: {} as CollectorContext,
    input: {} as CollectorInput,
  },
  actors: { lagProbe },
  delays: { sampleInterval: ({ context }) => context.intervalMs },
}).createMachine({
  id: "collector",
  context: ({ input }) => {
    const usage = process.cpuUsage();
    return {
      ...input,
      window: new LagWindow(),
      cpu: { user: usage.user, system: usage.system, at: performance.now() },
      cores: coreTimes(),
      samples: 0,
    };
  },
  invoke: { id: "lag_probe", src: "lagProbe", input: ({ context }) => context.window },
  initial: "sampling",
  states: {
    sampling: {
      after: {
        sampleInterval: {
          target: "sampling",
          reenter: true,
          actions: ({ context }) => sampleInto(context),
        },
      },
    },
  },
});
