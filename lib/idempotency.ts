/**
 * @module
 * `Idempotency-Key` for `POST /v1/records`: a client that sends the same
 * key with the same body gets the first answer again, without the records
 * going through the pipeline a second time.
 *
 * - Same key, same body, answer remembered: the remembered status and body.
 * - Same key, same body, first request still being processed: waits for the
 *   first request's answer and gives that (rather than a 409 the client would
 *   have to retry). When the first ends without an answer worth remembering
 *   (429, 503, a crash), one waiter takes its place and is processed for real.
 * - Same key, different body (in flight or remembered): refused, the route
 *   answers 422 `idempotency_key_reused`.
 *
 * Only answers the client should not retry for real are remembered: the
 * route remembers 2xx and 422, never 429 or 503. A body is compared by the
 * SHA-256 of its raw bytes as sent (still compressed when gzip), together with
 * its `Content-Type` and `Content-Encoding`: the same bytes declared as another
 * format are another request.
 *
 * Memory is bounded: at most `maxKeys` keys and about `maxBytes` of keys and
 * answers; past either the oldest key is forgotten. A key is forgotten
 * `windowMs` after it was first seen.
 */
import { createHash } from "node:crypto";

/** Options of an {@linkcode IdempotencyCache}; the `idempotency` config section. */
export interface IdempotencyOptions {
  /** How long a key is remembered, from when it was first seen. @default 3600000 */
  windowMs: number;
  /** Most keys remembered; past it the oldest is forgotten. @default 10000 */
  maxKeys: number;
  /**
   * Most bytes (counted as characters of keys and answer bodies) remembered;
   * past it the oldest keys are forgotten, and a larger answer is not kept.
   * @default 67108864
   */
  maxBytes: number;
  /** The clock, in milliseconds. @default Date.now */
  now?: () => number;
}

/** Default idempotency options. */
export const DEFAULT_IDEMPOTENCY_OPTIONS: Readonly<Required<Omit<IdempotencyOptions, "now">>> = {
  windowMs: 3_600_000,
  maxKeys: 10_000,
  maxBytes: 64 * 1024 * 1024,
};

/** A remembered answer: its status and its body, byte for byte. */
export interface IdempotentAnswer {
  status: number;
  body: string;
}

/** The outcome of checking an `Idempotency-Key` header. */
export type IdempotencyKeyResult = { ok: true; value: string } | { ok: false; error: string };

/**
 * What {@linkcode IdempotencyCache.claim} found:
 * - `replay`: answer with `answer` and do nothing else;
 * - `reused`: the key belongs to another body;
 * - `owner`: process the request, then `remember` its answer or `release`.
 */
export type IdempotencyClaim =
  | { kind: "replay"; answer: IdempotentAnswer }
  | { kind: "reused" }
  | { kind: "owner"; lease: IdempotencyLease };

/** The right and duty to answer a key first. Exactly one call counts; later ones do nothing. */
export interface IdempotencyLease {
  /** Keeps `answer` for the key and hands it to the requests waiting on it. */
  remember(answer: IdempotentAnswer): void;
  /** Forgets the key without an answer; one waiting request becomes the owner. */
  release(): void;
}

/** Characters one key may hold: printable ASCII, space included. */
const KEY_PATTERN = /^[\x20-\x7e]{1,255}$/;

/** Rough cost of an entry besides its key and answer, so tiny entries still count. */
const ENTRY_OVERHEAD_BYTES = 128;

/** How much of a bad key a message quotes. */
const QUOTE_LIMIT = 64;

/**
 * Checks an `Idempotency-Key` header value: 1 to 255 printable ASCII
 * characters (`\x20`-`\x7e`).
 *
 * @example
 * ```ts
 * parseIdempotencyKey("order-42"); // { ok: true, value: "order-42" }
 * parseIdempotencyKey(""); // { ok: false, error: 'Invalid Idempotency-Key "": ...' }
 * ```
 */
export function parseIdempotencyKey(header: string): IdempotencyKeyResult {
  if (KEY_PATTERN.test(header)) return { ok: true, value: header };
  const quoted = header.length > QUOTE_LIMIT
    ? `${JSON.stringify(header.slice(0, QUOTE_LIMIT))}… (${header.length} characters)`
    : JSON.stringify(header);
  return {
    ok: false,
    error: `Invalid Idempotency-Key ${quoted}: must be 1 to 255 printable ASCII characters`,
  };
}

/** A request whose body is hashed while it is read, and the hash once it is. */
export interface HashedRequest {
  /** Read the body from this request instead of the original. */
  request: Request;
  /**
   * Hex SHA-256 of the content type, content encoding and raw body bytes.
   * Call it once, after the body was read to its end.
   */
  digest(): string;
}

/**
 * Wraps `req` so that its body is hashed (SHA-256) chunk by chunk as the
 * reader pulls it: nothing is buffered for the hash, and a body refused early
 * (415, 413) is never read just to be hashed. The content type and encoding
 * are hashed first, so the same bytes sent as another format hash apart.
 *
 * `crypto.subtle.digest` would need the whole body in one buffer, a second
 * copy of up to `limits.max_body_bytes`; `node:crypto`'s incremental hash
 * needs none, and both Deno and Bun have it.
 *
 * @example
 * ```ts
 * const hashed = hashRequestBody(c.req.raw);
 * const body = await readRecords(hashed.request, limits);
 * if (body.ok) console.log(hashed.digest());
 * ```
 */
export function hashRequestBody(req: Request): HashedRequest {
  const hash = createHash("sha256");
  const type = req.headers.get("content-type") ?? "";
  const encoding = req.headers.get("content-encoding") ?? "";
  // Lengths first, so no choice of header values can collide with another.
  hash.update(`${type.length}:${type}\n${encoding.length}:${encoding}\n`);
  const digest = () => hash.digest("hex");
  if (req.body === null) return { request: req, digest };
  const body = req.body.pipeThrough(
    new TransformStream<Uint8Array, Uint8Array>({
      transform(chunk, controller) {
        hash.update(chunk);
        controller.enqueue(chunk);
      },
    }),
  );
  // `duplex` is required by the standard for a stream body, and missing from some typings.
  const init = { method: req.method, headers: req.headers, body, duplex: "half" };
  return { request: new Request(req.url, init as RequestInit), digest };
}

interface Entry {
  key: string;
  hash: string;
  /** When the key was first seen, by the cache's clock. */
  seenAt: number;
  /** Counted against `maxBytes`. */
  bytes: number;
  /** `null` while the owner is processing. */
  answer: IdempotentAnswer | null;
  /** Settles when the owner remembers (with its answer) or releases (with `null`). */
  settled: Promise<IdempotentAnswer | null>;
}

/**
 * Remembers the answers of idempotent requests, bounded in keys, bytes and
 * time. In memory: keys are forgotten on restart, which only costs a retry its
 * shortcut, since records are idempotent by `id` anyway.
 *
 * @example
 * ```ts
 * const cache = new IdempotencyCache();
 * const claim = await cache.claim("order-42", hashed.digest());
 * if (claim.kind === "owner") claim.lease.remember({ status: 200, body: "{}" });
 * ```
 */
export class IdempotencyCache {
  readonly #windowMs: number;
  readonly #maxKeys: number;
  readonly #maxBytes: number;
  readonly #now: () => number;
  /** In insertion order, which is `seenAt` order: the oldest key comes first. */
  readonly #entries = new Map<string, Entry>();
  #bytes = 0;

  constructor(options: Partial<IdempotencyOptions> = {}) {
    const o = { ...DEFAULT_IDEMPOTENCY_OPTIONS, ...options };
    for (const name of ["windowMs", "maxKeys", "maxBytes"] as const) {
      if (!(Number.isSafeInteger(o[name]) && o[name] > 0)) {
        throw new RangeError(`${name} must be a positive integer, got ${o[name]}`);
      }
    }
    this.#windowMs = o.windowMs;
    this.#maxKeys = o.maxKeys;
    this.#maxBytes = o.maxBytes;
    this.#now = options.now ?? (() => Date.now());
  }

  /** Keys remembered or in flight. */
  get size(): number {
    return this.#entries.size;
  }

  /** Bytes counted against `maxBytes`. */
  get bytes(): number {
    return this.#bytes;
  }

  /**
   * Looks `key` up for a body hashing to `hash`. Resolves at once unless
   * the same key and body are in flight, in which case it waits for that
   * request to end. Never rejects.
   */
  async claim(key: string, hash: string): Promise<IdempotencyClaim> {
    for (;;) {
      const cutoff = this.#expire();
      let entry = this.#entries.get(key);
      // A clock that stepped back can leave an expired key behind a fresh one.
      if (entry !== undefined && entry.seenAt <= cutoff) {
        this.#delete(entry);
        entry = undefined;
      }
      if (entry === undefined) return { kind: "owner", lease: this.#add(key, hash) };
      if (entry.hash !== hash) return { kind: "reused" };
      if (entry.answer !== null) return { kind: "replay", answer: entry.answer };
      const answer = await entry.settled;
      if (answer !== null) return { kind: "replay", answer };
      // Released: take the key if no other waiter took it first.
    }
  }

  /** Forgets every key whose window has passed, oldest first; returns the cutoff. */
  #expire(): number {
    const cutoff = this.#now() - this.#windowMs;
    for (const entry of this.#entries.values()) {
      if (entry.seenAt > cutoff) break;
      this.#delete(entry);
    }
    return cutoff;
  }

  #add(key: string, hash: string): IdempotencyLease {
    while (this.#entries.size >= this.#maxKeys) this.#delete(this.#oldest());
    let settle!: (answer: IdempotentAnswer | null) => void;
    const entry: Entry = {
      key,
      hash,
      seenAt: this.#now(),
      bytes: ENTRY_OVERHEAD_BYTES + key.length + hash.length,
      answer: null,
      settled: new Promise((resolve) => (settle = resolve)),
    };
    this.#entries.set(key, entry);
    this.#bytes += entry.bytes;
    this.#shrink(entry);
    let done = false;
    return {
      remember: (answer) => {
        if (done) return;
        done = true;
        // Evicted or expired while in flight: the waiters still get the answer.
        if (this.#entries.get(key) === entry) {
          const extra = answer.body.length;
          if (entry.bytes + extra > this.#maxBytes) {
            this.#delete(entry);
          } else {
            entry.answer = answer;
            entry.bytes += extra;
            this.#bytes += extra;
            this.#shrink(entry);
          }
        }
        settle(answer);
      },
      release: () => {
        if (done) return;
        done = true;
        if (this.#entries.get(key) === entry) this.#delete(entry);
        settle(null);
      },
    };
  }

  /** Forgets the oldest keys, never `keep`, until the bytes fit. */
  #shrink(keep: Entry): void {
    for (const entry of this.#entries.values()) {
      if (this.#bytes <= this.#maxBytes) return;
      if (entry !== keep) this.#delete(entry);
    }
  }

  #oldest(): Entry {
    return this.#entries.values().next().value!;
  }

  #delete(entry: Entry): void {
    this.#entries.delete(entry.key);
    this.#bytes -= entry.bytes;
  }
}
