/**
 * @module
 * Reads the body of `POST /v1/records` into raw records, with hard limits.
 *
 * {@linkcode readRecords} takes a web `Request`, checks its content type and
 * encoding, reads the body chunk by chunk (inflating gzip on the fly) while
 * counting bytes, decodes strict UTF-8 and parses JSON or NDJSON into an
 * array of unknown values. Schema validation happens later, in the validate
 * stage; here a record is whatever JSON value the client sent.
 *
 * Nothing the client sends makes it throw: every fault is a
 * {@linkcode BodyError} value with a 400, 413 or 415 status and a stable
 * `code`, ready for the `{ "error": { code, message, details } }` answer.
 *
 * | code                     | status | when                                              |
 * | ------------------------ | ------ | ------------------------------------------------- |
 * | `unsupported_media_type` | 415    | content type missing or not JSON / NDJSON          |
 * | `unsupported_encoding`   | 415    | content encoding not identity / gzip               |
 * | `body_too_large`         | 413    | body (raw, compressed or inflated) over `maxBytes` |
 * | `too_many_records`       | 413    | more than `maxRecords` records                     |
 * | `invalid_gzip`           | 400    | gzip data that does not inflate                    |
 * | `invalid_utf8`           | 400    | bytes that are not UTF-8                           |
 * | `empty_body`             | 400    | no body, or only whitespace                        |
 * | `invalid_json`           | 400    | JSON that does not parse, or is not object/array   |
 * | `invalid_ndjson`         | 400    | an NDJSON line that does not parse                 |
 * | `invalid_body`           | 400    | the body stream failed while being read            |
 */

/** Limits on one request body; part of the `limits` config section. */
export interface BodyLimits {
  /** Largest body accepted, after gzip inflation too. @default 10 MiB */
  maxBytes: number;
  /** Most records in one request. @default 10000 */
  maxRecords: number;
}

/** Default body limits. */
export const DEFAULT_BODY_LIMITS: BodyLimits = { maxBytes: 10 * 1024 * 1024, maxRecords: 10_000 };

/** Why a body was refused; maps one to one onto the JSON error answer. */
export interface BodyError {
  /** HTTP status to answer with. */
  status: 400 | 413 | 415;
  /** Stable machine-readable code, e.g. `invalid_ndjson`. */
  code: string;
  /** Human-readable message, without a trailing period. */
  message: string;
  /** Extra facts, e.g. `{ line: 3 }` or `{ limit, received }`. */
  details?: Record<string, unknown>;
}

/** Outcome of reading or parsing a body: the raw records, or why not. */
export type BodyResult = { ok: true; value: unknown[] } | { ok: false; error: BodyError };

/** Content types accepted, mapped to the body format they select. */
const MEDIA_TYPES: Readonly<Record<string, "json" | "ndjson">> = {
  "application/json": "json",
  "application/x-ndjson": "ndjson",
  "application/ndjson": "ndjson",
  "application/jsonl": "ndjson",
};
const ACCEPTED_MEDIA_TYPES = Object.keys(MEDIA_TYPES);
const ACCEPTED_ENCODINGS = ["identity", "gzip", "x-gzip"];

/**
 * Compressed input is fed to the inflater in slices this large, because an
 * inflater turns each input chunk into one output chunk: deflate reaches
 * about 1000:1, so a 4 KiB slice inflates to at most about 4 MiB before the
 * byte count can stop it.
 */
const INFLATE_SLICE_BYTES = 4096;

/** Only JSON's own whitespace: a body of nothing else is empty. */
const JSON_BLANK = /^[\t\n\r ]*$/;
/** A blank NDJSON line (the `\n` is already split off). */
const LINE_BLANK = /^[\t\r ]*$/;

/** Strict: invalid UTF-8 throws instead of turning into U+FFFD. Strips a leading BOM. */
const UTF8 = new TextDecoder("utf-8", { fatal: true });

/** Marks a body that passed `maxBytes` while being read. */
const TOO_LARGE = Symbol("too large");

function fail(
  status: BodyError["status"],
  code: string,
  message: string,
  details?: Record<string, unknown>,
): BodyResult {
  const error: BodyError = details === undefined
    ? { status, code, message }
    : { status, code, message, details };
  return { ok: false, error };
}

/** Message of anything thrown, without ever throwing itself. */
function describe(cause: unknown): string {
  try {
    if (cause instanceof Error) return cause.message;
    return String(cause);
  } catch {
    return "unknown error";
  }
}

function emptyBody(): BodyResult {
  return fail(400, "empty_body", "Request body is empty");
}

/**
 * Parses a JSON body: an object is one record, an array holds the records.
 * Any other JSON value, unparsable text or whitespace only is a 400.
 *
 * @example
 * ```ts
 * parseJsonRecords('[{"id":1},{"id":2}]'); // { ok: true, value: [{ id: 1 }, { id: 2 }] }
 * parseJsonRecords('{"id":1}'); // { ok: true, value: [{ id: 1 }] }
 * ```
 */
export function parseJsonRecords(text: string): BodyResult {
  if (JSON_BLANK.test(text)) return emptyBody();
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (cause) {
    // A RangeError from hostile nesting lands here too.
    return fail(400, "invalid_json", `Cannot parse JSON body: ${describe(cause)}`);
  }
  if (Array.isArray(parsed)) return { ok: true, value: parsed };
  if (parsed !== null && typeof parsed === "object") return { ok: true, value: [parsed] };
  const kind = parsed === null ? "null" : typeof parsed;
  return fail(
    400,
    "invalid_json",
    `JSON body must be an object or an array of records, got ${kind}`,
    { type: kind },
  );
}

/**
 * Parses an NDJSON body: one JSON value per line, each one record. Blank
 * lines (JSON whitespace only, so `\r\n` endings too) are skipped. The first
 * bad line is a 400 whose `details.line` is its 1-based number.
 *
 * Each line is parsed on its own. Joining the lines into one JSON array and
 * parsing once measured only about 12% faster, and it accepts lines such as
 * `1,2` or `[1` + `2]` that are not one JSON value each; making it exact
 * (wrapping every line with a random tag and checking it back) measured
 * slower than parsing line by line. `bench/body_bench.ts` sets this function
 * beside `parseJsonRecords`, the one-parse ceiling.
 *
 * @example
 * ```ts
 * parseNdjsonRecords('{"id":1}\r\n\r\n{"id":2}\r\n'); // { ok: true, value: [{ id: 1 }, { id: 2 }] }
 * parseNdjsonRecords('{"id":1}\n{"id":'); // error invalid_ndjson, details { line: 2 }
 * ```
 */
export function parseNdjsonRecords(text: string): BodyResult {
  const parser = new NdjsonParser();
  parser.pushText(text);
  return parser.end();
}

/**
 * Parses NDJSON as its bytes arrive: each chunk is decoded (strict UTF-8,
 * streaming) and the lines it completes are parsed at once, so a body is
 * never held as one buffer or one string. A body of 1000 records is about
 * 140 KB: whole, its bytes and its text were each a fresh allocation larger
 * than V8's young generation takes (the text went straight to the old
 * generation), on every request; chunk by chunk, the text of each 64 KiB
 * chunk is young and dies young.
 *
 * The answer is the one the whole body would get: not UTF-8 anywhere beats
 * a bad line, and the first bad line is the one reported.
 */
class NdjsonParser {
  #records: unknown[] = [];
  #decoder = new TextDecoder("utf-8", { fatal: true });
  /** Text of the unfinished last line, in pieces (joined once its newline comes). */
  #pending: string[] = [];
  /** Lines seen so far. */
  #line = 0;
  #error: BodyResult | undefined;
  #notUtf8 = false;

  /** Feeds the next bytes of the body. */
  push(bytes: Uint8Array): void {
    if (this.#notUtf8) return;
    let text: string;
    try {
      text = this.#decoder.decode(bytes, { stream: true });
    } catch {
      this.#notUtf8 = true;
      return;
    }
    this.pushText(text);
  }

  /** Feeds already decoded text. */
  pushText(text: string): void {
    let start = 0;
    let nl = text.indexOf("\n");
    if (nl === -1) {
      if (text.length > 0) this.#pending.push(text);
      return;
    }
    if (this.#pending.length > 0) {
      this.#pending.push(text.slice(0, nl));
      this.#parse(this.#pending.join(""));
      this.#pending = [];
      start = nl + 1;
      nl = text.indexOf("\n", start);
    }
    for (; nl !== -1; nl = text.indexOf("\n", start)) {
      this.#parse(text.slice(start, nl));
      start = nl + 1;
    }
    if (start < text.length) this.#pending.push(text.slice(start));
  }

  /** Ends the body: its records, or why it is refused. */
  end(): BodyResult {
    if (!this.#notUtf8) {
      try {
        this.pushText(this.#decoder.decode());
      } catch {
        this.#notUtf8 = true;
      }
    }
    if (this.#notUtf8) return fail(400, "invalid_utf8", "Request body is not valid UTF-8");
    if (this.#pending.length > 0) this.#parse(this.#pending.join(""));
    this.#pending = [];
    if (this.#error !== undefined) return this.#error;
    if (this.#records.length === 0) return emptyBody();
    return { ok: true, value: this.#records };
  }

  #parse(line: string): void {
    const n = ++this.#line;
    if (line.length === 0 || this.#error !== undefined) return;
    // Blank lines are rare, so they are recognised only when parsing fails.
    try {
      this.#records.push(JSON.parse(line));
    } catch (cause) {
      if (LINE_BLANK.test(line)) return;
      this.#error = fail(
        400,
        "invalid_ndjson",
        `Cannot parse NDJSON line ${n}: ${describe(cause)}`,
        { line: n },
      );
    }
  }
}

/**
 * Reads a byte stream to its end, or stops (cancelling it) once past
 * `maxBytes`. With `sink`, each chunk goes to it as it comes and the answer
 * is empty bytes; without, the answer is the whole stream.
 */
async function readCapped(
  stream: ReadableStream<Uint8Array>,
  maxBytes: number,
  sink?: (chunk: Uint8Array) => void,
): Promise<Uint8Array | typeof TOO_LARGE> {
  const reader = stream.getReader();
  const chunks: Uint8Array[] = [];
  let total = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    if (!(value instanceof Uint8Array)) throw new TypeError("Body chunk is not a Uint8Array");
    total += value.byteLength;
    if (total > maxBytes) {
      // Not awaited: the answer must not wait on a slow or stuck client.
      reader.cancel().catch(() => {});
      return TOO_LARGE;
    }
    if (sink === undefined) chunks.push(value);
    else sink(value);
  }
  if (sink !== undefined) return new Uint8Array(0);
  if (chunks.length === 1) return chunks[0];
  const bytes = new Uint8Array(total);
  let offset = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return bytes;
}

/** What went on upstream of the inflater, to tell its failures apart. */
interface CompressedState {
  bytes: number;
  tooLarge: boolean;
  sourceFailed: boolean;
}

/**
 * Wraps the compressed body: counts its bytes (stopping past `maxBytes`),
 * remembers whether the source itself failed, and cuts chunks into
 * {@linkcode INFLATE_SLICE_BYTES} slices. Pulls only on demand, so the
 * inflater's back-pressure reaches the client.
 */
function countCompressed(
  body: ReadableStream<Uint8Array>,
  maxBytes: number,
  state: CompressedState,
): ReadableStream<Uint8Array> {
  const source = body.getReader();
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      // A pull must enqueue or close: returning with neither stalls the pipe,
      // so empty chunks (a `""` body is one) are skipped here.
      for (;;) {
        let result: ReadableStreamReadResult<Uint8Array>;
        try {
          result = await source.read();
        } catch (cause) {
          state.sourceFailed = true;
          throw cause;
        }
        if (result.done) {
          controller.close();
          return;
        }
        const chunk = result.value;
        if (!(chunk instanceof Uint8Array)) {
          state.sourceFailed = true;
          throw new TypeError("Body chunk is not a Uint8Array");
        }
        if (chunk.byteLength === 0) continue;
        state.bytes += chunk.byteLength;
        if (state.bytes > maxBytes) {
          state.tooLarge = true;
          source.cancel().catch(() => {});
          controller.error(new RangeError(`Compressed body exceeds ${maxBytes} bytes`));
          return;
        }
        for (let offset = 0; offset < chunk.byteLength; offset += INFLATE_SLICE_BYTES) {
          controller.enqueue(chunk.subarray(offset, offset + INFLATE_SLICE_BYTES));
        }
        return;
      }
    },
    cancel(reason) {
      return source.cancel(reason);
    },
  }, { highWaterMark: 0 });
}

function tooLarge(maxBytes: number, what: string): BodyResult {
  return fail(
    413,
    "body_too_large",
    `${what} exceeds the limit of ${maxBytes} bytes`,
    { limit: maxBytes },
  );
}

/** Reads and inflates a gzip body, counting inflated bytes as they come. */
async function readGzip(
  body: ReadableStream<Uint8Array>,
  maxBytes: number,
  sink?: (chunk: Uint8Array) => void,
): Promise<Uint8Array | BodyResult> {
  const state: CompressedState = { bytes: 0, tooLarge: false, sourceFailed: false };
  // The cast only narrows the writable side's `BufferSource` to the bytes we send.
  const inflater = new DecompressionStream("gzip") as ReadableWritablePair<Uint8Array, Uint8Array>;
  const inflated = countCompressed(body, maxBytes, state).pipeThrough(inflater);
  try {
    const bytes = await readCapped(inflated, maxBytes, sink);
    if (bytes === TOO_LARGE) return tooLarge(maxBytes, "Inflated request body");
    return bytes;
  } catch (cause) {
    if (state.tooLarge) return tooLarge(maxBytes, "Compressed request body");
    if (state.sourceFailed) throw cause;
    if (state.bytes === 0) return emptyBody();
    return fail(400, "invalid_gzip", `Cannot inflate gzip body: ${describe(cause)}`);
  }
}

async function readUnguarded(req: Request, limits: BodyLimits): Promise<BodyResult> {
  const typeHeader = req.headers.get("content-type");
  const mediaType = typeHeader === null ? "" : typeHeader.split(";", 1)[0].trim().toLowerCase();
  const format = Object.hasOwn(MEDIA_TYPES, mediaType) ? MEDIA_TYPES[mediaType] : undefined;
  if (format === undefined) {
    const received = typeHeader === null
      ? "Missing content type"
      : `Unsupported content type "${typeHeader}"`;
    return fail(
      415,
      "unsupported_media_type",
      `${received}: expected one of ${ACCEPTED_MEDIA_TYPES.join(", ")}`,
      { received: typeHeader, accepted: ACCEPTED_MEDIA_TYPES },
    );
  }

  const encodingHeader = req.headers.get("content-encoding");
  const encoding = encodingHeader === null ? "" : encodingHeader.trim().toLowerCase();
  const gzip = encoding === "gzip" || encoding === "x-gzip";
  if (!gzip && encoding !== "" && encoding !== "identity") {
    return fail(
      415,
      "unsupported_encoding",
      `Unsupported content encoding "${encodingHeader}": expected one of ${
        ACCEPTED_ENCODINGS.join(", ")
      }`,
      { received: encodingHeader, accepted: ACCEPTED_ENCODINGS },
    );
  }

  const lengthHeader = req.headers.get("content-length");
  if (lengthHeader !== null) {
    const length = Number(lengthHeader.trim());
    if (Number.isFinite(length) && length > limits.maxBytes) {
      req.body?.cancel().catch(() => {});
      return fail(
        413,
        "body_too_large",
        `Request body of ${length} bytes exceeds the limit of ${limits.maxBytes} bytes`,
        { limit: limits.maxBytes, received: length },
      );
    }
  }

  if (req.body === null) return emptyBody();
  // NDJSON is parsed as it arrives; a JSON body is one value, parsed whole.
  const ndjson = format === "ndjson" ? new NdjsonParser() : undefined;
  const sink = ndjson === undefined ? undefined : (chunk: Uint8Array) => ndjson.push(chunk);
  let bytes: Uint8Array;
  if (gzip) {
    const read = await readGzip(req.body, limits.maxBytes, sink);
    if (!(read instanceof Uint8Array)) return read;
    bytes = read;
  } else {
    const read = await readCapped(req.body, limits.maxBytes, sink);
    if (read === TOO_LARGE) return tooLarge(limits.maxBytes, "Request body");
    bytes = read;
  }

  let parsed: BodyResult;
  if (ndjson !== undefined) {
    parsed = ndjson.end();
  } else {
    if (bytes.byteLength === 0) return emptyBody();
    let text: string;
    try {
      text = UTF8.decode(bytes);
    } catch {
      return fail(400, "invalid_utf8", "Request body is not valid UTF-8");
    }
    parsed = parseJsonRecords(text);
  }
  if (parsed.ok && parsed.value.length > limits.maxRecords) {
    return fail(
      413,
      "too_many_records",
      `Request holds ${parsed.value.length} records, more than the limit of ${limits.maxRecords}`,
      { limit: limits.maxRecords, received: parsed.value.length },
    );
  }
  return parsed;
}

/**
 * Reads the records of a `POST /v1/records` request. Never throws for
 * anything the client sends; faults come back as a {@linkcode BodyError}.
 *
 * Accepts `application/json` (an object, or an array of records) and
 * `application/x-ndjson`, `application/ndjson`, `application/jsonl` (one
 * record per line), raw or `gzip` / `x-gzip` encoded. `maxBytes` caps the
 * declared length, the bytes on the wire and the inflated bytes: the body is
 * streamed and dropped as soon as it passes the cap, so a gzip bomb is never
 * inflated in full.
 *
 * @example
 * ```ts
 * const result = await readRecords(c.req.raw, DEFAULT_BODY_LIMITS);
 * if (!result.ok) throw new HTTPException(result.error.status, { message: result.error.message });
 * ```
 */
export async function readRecords(
  req: Request,
  limits: BodyLimits = DEFAULT_BODY_LIMITS,
): Promise<BodyResult> {
  try {
    return await readUnguarded(req, limits);
  } catch (cause) {
    return fail(400, "invalid_body", `Cannot read request body: ${describe(cause)}`);
  }
}
