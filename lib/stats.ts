/**
 * @module
 * Running figures for the status line and `GET /v1/stats` (seed 000's
 * `Metrics` and `PrintStatus`): records per second over the last second,
 * mean and p99 request latency over a sliding window, error rate.
 */

const WINDOW = 1024;

/** Counts of ingest outcomes and a sliding window of request latencies. */
export class IngestStats {
  accepted = 0;
  duplicates = 0;
  rejected = 0;
  requests = 0;
  /** Requests answered with a 4xx or 5xx. */
  failedRequests = 0;
  #latencies = new Float64Array(WINDOW);
  #latencyCount = 0;
  #rateBase = { at: 0, records: 0 };
  #rate = 0;

  /** Notes one answered ingest request. */
  observe(
    result: { accepted: number; duplicates: number; rejected: number },
    latencyMs: number,
  ): void {
    this.accepted += result.accepted;
    this.duplicates += result.duplicates;
    this.rejected += result.rejected;
    this.requests++;
    this.#latencies[this.#latencyCount++ % WINDOW] = latencyMs;
  }

  /** Notes one refused request (4xx or 5xx). */
  observeFailure(): void {
    this.requests++;
    this.failedRequests++;
  }

  /** Records handled (accepted, duplicate or rejected) since start. */
  get processed(): number {
    return this.accepted + this.duplicates + this.rejected;
  }

  /** Records per second, measured between calls at least 1 s apart. */
  rate(now = Date.now()): number {
    const elapsed = now - this.#rateBase.at;
    if (elapsed >= 1000) {
      if (this.#rateBase.at > 0) {
        this.#rate = ((this.processed - this.#rateBase.records) * 1000) / elapsed;
      }
      this.#rateBase = { at: now, records: this.processed };
    }
    return this.#rate;
  }

  /** Mean, median and 99th percentile of the last 1024 request latencies, ms. */
  latency(): { mean: number; p50: number; p99: number } {
    const n = Math.min(this.#latencyCount, WINDOW);
    if (n === 0) return { mean: 0, p50: 0, p99: 0 };
    const xs = Array.from(this.#latencies.subarray(0, n)).sort((a, b) => a - b);
    const mean = xs.reduce((s, x) => s + x, 0) / n;
    const at = (q: number) => xs[Math.min(n - 1, Math.max(0, Math.ceil(n * q) - 1))];
    return { mean, p50: at(0.5), p99: at(0.99) };
  }

  /** Share of records rejected, 0 to 1. */
  get errorRate(): number {
    return this.processed === 0 ? 0 : this.rejected / this.processed;
  }
}

/** Formats the one-line status (seed 000's PrintStatus). */
export function formatStatus(s: {
  rate: number;
  meanMs: number;
  errorRate: number;
  actors: number;
  rssBytes: number;
  load: number;
}): string {
  return `records/s ${s.rate.toFixed(0).padStart(7)} | latency ${s.meanMs.toFixed(1)} ms | ` +
    `errors ${(s.errorRate * 100).toFixed(2)}% | actors ${s.actors} | in flight ${s.load} | ` +
    `rss ${(s.rssBytes / 1048576).toFixed(0)} MiB`;
}
