/**
 * @module
 * Which shard of a sharded `process` run owns an input line, decided from
 * the line's text without `JSON.parse`: every shard reads every line, and
 * parsing all of them in each shard would cost what sharding saves
 * (`JSON.parse` is a fifth of a record's cost; scanning for the id costs
 * about 0.16 µs a line, 6 % of a shard's CPU).
 *
 * A line is owned by the shard its record id hashes to, so a repeated id
 * always lands in the same shard, whose store reports it as a duplicate.
 * The key hashed is {@linkcode lineIdKey}: for any line that `JSON.parse`
 * reads as an object whose `id` is a string or a number, it is exactly
 * `recordKey(JSON.parse(line).id)` (`lib/schemas.ts`), so `1`, `1.0` and
 * `"1"` are one id. A line without such an id (not JSON, no `id`, an `id`
 * that is an object or `null`, a blank line) goes to shard 0, where it
 * fails as it would in one shard. A line that is not JSON may get a key
 * anyway (the scanner checks structure only as far as it must): it is
 * still owned by exactly one shard, because every shard computes the same
 * function of the same text, and that shard reports it with its line
 * number.
 *
 * ```
 * {"id":42,"user_id":…}       fast path: `{"id":` first, a string without `\` or digits, then no `\`
 *                             and no other `"id"` in the line; hashed as it is read
 * { "user_id":…, "id":"42" }  full scan of the top-level keys; the last `id` wins, as in JSON.parse
 * not json / {"x":1}          no key: shard 0
 * ```
 */

/** Where the scanner found the key: a range of the line, or a string it had to build. */
let keyStart = 0;
let keyEnd = 0;
let keyText: string | undefined;

/** A JSON number as `JSON.parse` reads it. */
const JSON_NUMBER = /^-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?$/;

const QUOTE = 34; // "
const BACKSLASH = 92; // \
const COLON = 58; // :
const COMMA = 44; // ,
const OPEN_BRACE = 123; // {
const CLOSE_BRACE = 125; // }
const OPEN_BRACKET = 91; // [
const CLOSE_BRACKET = 93; // ]

/** JSON's four whitespace characters: space, tab, line feed, carriage return. */
function isSpace(c: number): boolean {
  return c === 32 || c === 9 || c === 10 || c === 13;
}

function skipSpace(s: string, i: number): number {
  while (i < s.length && isSpace(s.charCodeAt(i))) i++;
  return i;
}

/** Set by {@linkcode endOfString}: whether the string held a backslash. */
let escaped = false;

/** The index after the string token starting at `i` (a quote), or -1 when it does not end. */
function endOfString(s: string, i: number): number {
  escaped = false;
  for (i++; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c === QUOTE) return i + 1;
    if (c === BACKSLASH) {
      escaped = true;
      i++;
    }
  }
  return -1;
}

/** The index after the object or array starting at `i`, or -1 when it does not end. */
function endOfComposite(s: string, i: number): number {
  let depth = 0;
  for (; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c === QUOTE) {
      i = endOfString(s, i);
      if (i === -1) return -1;
      i--;
    } else if (c === OPEN_BRACE || c === OPEN_BRACKET) {
      depth++;
    } else if (c === CLOSE_BRACE || c === CLOSE_BRACKET) {
      if (--depth === 0) return i + 1;
    }
  }
  return -1;
}

/** The index after a bare token (number, `true`, `false`, `null` or garbage) starting at `i`. */
function endOfLiteral(s: string, i: number): number {
  for (; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c === COMMA || c === CLOSE_BRACE || c === CLOSE_BRACKET || isSpace(c)) break;
  }
  return i;
}

/**
 * Sets the key from the value token `s[start, end)`: a string or a number.
 * Returns false for any other value.
 */
function setKey(s: string, start: number, end: number, stringEscaped: boolean): boolean {
  const first = s.charCodeAt(start);
  if (first === QUOTE) {
    if (!stringEscaped) {
      keyStart = start + 1;
      keyEnd = end - 1;
      keyText = undefined;
      return true;
    }
    try {
      keyText = JSON.parse(s.slice(start, end)) as string;
      return true;
    } catch {
      return false;
    }
  }
  // Digits without a leading zero, short enough to be exact: the token is its own key.
  const length = end - start;
  if (length > 0 && length <= 15 && first >= 49 && first <= 57) {
    let plain = true;
    for (let i = start + 1; i < end; i++) {
      const c = s.charCodeAt(i);
      if (c < 48 || c > 57) {
        plain = false;
        break;
      }
    }
    if (plain) {
      keyStart = start;
      keyEnd = end;
      keyText = undefined;
      return true;
    }
  }
  const token = s.slice(start, end);
  if (!JSON_NUMBER.test(token)) return false;
  keyText = String(Number(token));
  return true;
}

/**
 * The fast path: the line starts with `{"id":` and a string without `\` or
 * a bare token, and after that value holds no `\` (an escaped key could
 * spell `id`) and no `"id"` (a later key would win). Then that value is the
 * id of the line, if the line is JSON at all.
 */
function scanFast(s: string): boolean | undefined {
  if (
    s.charCodeAt(0) !== OPEN_BRACE || s.charCodeAt(1) !== QUOTE || s.charCodeAt(2) !== 105 ||
    s.charCodeAt(3) !== 100 || s.charCodeAt(4) !== QUOTE || s.charCodeAt(5) !== COLON
  ) return undefined;
  const start = 6; // after `{"id":`
  const first = s.charCodeAt(start);
  if (first === OPEN_BRACE || first === OPEN_BRACKET) return undefined;
  let end: number;
  if (first === QUOTE) {
    end = endOfString(s, start);
    if (end === -1 || escaped) return undefined;
  } else {
    end = endOfLiteral(s, start);
  }
  const next = s.charCodeAt(end);
  if (next !== COMMA && next !== CLOSE_BRACE) return undefined;
  if (mayHaveIdAfter(s, end, s.length)) return undefined;
  return setKey(s, start, end, false);
}

/** The last answer of {@linkcode backslashAt}: text, where the search began, what it found. */
let slashText: string | undefined;
let slashFrom = 0;
let slashAt = -1;

/**
 * The index of the first `\` at or after `from` in `s`, or -1. Remembers
 * its last answer, so that the lines of one chunk of text, asked in order,
 * cost one search over the chunk rather than one to its end per line.
 */
function backslashAt(s: string, from: number): number {
  if (s !== slashText || from < slashFrom || (slashAt !== -1 && slashAt < from)) {
    slashText = s;
    slashFrom = from;
    slashAt = s.indexOf("\\", from);
  }
  return slashAt;
}

/**
 * Whether `s[from, end)` holds a `\` or a `"id"`: another key that may be
 * (or spell, escaped) `id`. Searches for `id"` and looks back one
 * character, because a search for `"id"` stops at every quote and costs
 * about three times as much (measured on Deno). A search may run past
 * `end`, but stops at the next line's `{"id":` at the latest.
 */
function mayHaveIdAfter(s: string, from: number, end: number): boolean {
  const slash = backslashAt(s, from);
  if (slash !== -1 && slash < end) return true;
  for (let j = s.indexOf('id"', from + 1); j !== -1 && j + 3 <= end; j = s.indexOf('id"', j + 3)) {
    if (s.charCodeAt(j - 1) === QUOTE) return true;
  }
  return false;
}

/**
 * {@linkcode scanFast} for the common lines, hashing as it goes: the hash of
 * the key of the line `s[start, end)` when it starts with `{"id":` and a
 * string without `\` or up to 15 digits without a leading zero, followed
 * by `,` or `}`, and holds no other key that may be `id`; -1 for any other
 * line.
 */
function fastHash(s: string, start: number, end: number): number {
  if (
    end - start < 8 || s.charCodeAt(start) !== OPEN_BRACE ||
    s.charCodeAt(start + 1) !== QUOTE || s.charCodeAt(start + 2) !== 105 ||
    s.charCodeAt(start + 3) !== 100 || s.charCodeAt(start + 4) !== QUOTE ||
    s.charCodeAt(start + 5) !== COLON
  ) return -1;
  let h = FNV_OFFSET;
  const value = start + 6;
  let i = value;
  let c = s.charCodeAt(i);
  if (c === QUOTE) {
    for (i = value + 1; i < end; i++) {
      c = s.charCodeAt(i);
      if (c === QUOTE) break;
      if (c === BACKSLASH) return -1;
      h = Math.imul(h ^ c, FNV_PRIME);
    }
    if (i >= end) return -1;
    i++;
  } else if (c >= 49 && c <= 57) {
    for (; i < end; i++) {
      c = s.charCodeAt(i);
      if (c < 48 || c > 57) break;
      h = Math.imul(h ^ c, FNV_PRIME);
    }
    if (i - value > 15) return -1;
  } else {
    return -1;
  }
  if (i >= end) return -1;
  const next = s.charCodeAt(i);
  if (next !== COMMA && next !== CLOSE_BRACE) return -1;
  if (mayHaveIdAfter(s, i, end)) return -1;
  return finish(h);
}

/** Walks the top-level keys of the object on the line; the last `id` wins. */
function scanFull(s: string): boolean {
  let i = skipSpace(s, 0);
  if (s.charCodeAt(i) !== OPEN_BRACE) return false;
  i = skipSpace(s, i + 1);
  if (s.charCodeAt(i) === CLOSE_BRACE) return false;
  let found = false;
  for (;;) {
    if (s.charCodeAt(i) !== QUOTE) return false;
    const nameStart = i;
    i = endOfString(s, i);
    if (i === -1) return false;
    let isId: boolean;
    if (!escaped) {
      isId = i - nameStart === 4 && s.charCodeAt(nameStart + 1) === 105 &&
        s.charCodeAt(nameStart + 2) === 100;
    } else {
      try {
        isId = JSON.parse(s.slice(nameStart, i)) === "id";
      } catch {
        return false;
      }
    }
    i = skipSpace(s, i);
    if (s.charCodeAt(i) !== COLON) return false;
    i = skipSpace(s, i + 1);
    const valueStart = i;
    const c = s.charCodeAt(i);
    if (c === QUOTE) i = endOfString(s, i);
    else if (c === OPEN_BRACE || c === OPEN_BRACKET) i = endOfComposite(s, i);
    else i = endOfLiteral(s, i);
    if (i === -1 || i === valueStart) return false;
    // A later `id` replaces an earlier one, found or not (JSON.parse keeps the last).
    if (isId) found = c !== OPEN_BRACE && c !== OPEN_BRACKET && setKey(s, valueStart, i, escaped);
    i = skipSpace(s, i);
    const after = s.charCodeAt(i);
    if (after === COMMA) {
      i = skipSpace(s, i + 1);
      continue;
    }
    if (after !== CLOSE_BRACE) return false;
    return found && skipSpace(s, i + 1) === s.length;
  }
}

function scan(line: string): boolean {
  return scanFast(line) ?? scanFull(line);
}

/**
 * The id key of an input line, found without parsing the line: for a line
 * that is a JSON object whose `id` is a string or a number, the same string
 * as `recordKey(JSON.parse(line).id)`; `undefined` for a line without such
 * an id. A line that is not JSON may get a key or not.
 *
 * @example
 * ```ts
 * lineIdKey('{"id":7,"event":"login"}');         // "7"
 * lineIdKey('{"event":"login","id":"7"}');       // "7"
 * lineIdKey('{"id":1e3}');                       // "1000"
 * lineIdKey('{"meta":{"id":1}}');                // undefined
 * ```
 */
export function lineIdKey(line: string): string | undefined {
  if (!scan(line)) return undefined;
  return keyText ?? line.slice(keyStart, keyEnd);
}

/**
 * The shard (0 to `shards - 1`) that owns `line`: a hash of its
 * {@linkcode lineIdKey}, or 0 for a line without one. The same key always
 * gives the same shard.
 *
 * @example
 * ```ts
 * lineShard('{"id":7}', 2) === lineShard('{"id":"7"}', 2); // true
 * lineShard("not json", 2);                                // 0
 * ```
 */
export function lineShard(line: string, shards: number): number {
  return lineShardAt(line, 0, line.length, shards);
}

/**
 * {@linkcode lineShard} of the line `text[start, end)`, without cutting it
 * out of the text: what the reader of a shard asks of each line of a chunk
 * it has decoded, cutting out only its own lines. Ask the lines of one text
 * in order: the answers are the same in any order, but cost more.
 *
 * @example
 * ```ts
 * const text = '{"id":1}\n{"id":2}\n';
 * lineShardAt(text, 9, 17, 2) === lineShard('{"id":2}', 2); // true
 * ```
 */
export function lineShardAt(text: string, start: number, end: number, shards: number): number {
  if (shards <= 1) return 0;
  const fast = fastHash(text, start, end);
  if (fast !== -1) return fast % shards;
  const line = start === 0 && end === text.length ? text : text.slice(start, end);
  if (!scan(line)) return 0;
  return keyText === undefined
    ? hashRange(line, keyStart, keyEnd) % shards
    : hashRange(keyText, 0, keyText.length) % shards;
}

const FNV_OFFSET = 0x811c9dc5;
const FNV_PRIME = 0x01000193;

/**
 * FNV-1a over the UTF-16 code units of `s[start, end)`, then MurmurHash3's
 * finaliser: FNV's low bits alone follow the low bits of the characters,
 * which would split ids like `"a-1"`, `"a-3"` badly. Unsigned 32 bits.
 */
export function hashRange(s: string, start: number, end: number): number {
  let h = FNV_OFFSET;
  for (let i = start; i < end; i++) h = Math.imul(h ^ s.charCodeAt(i), FNV_PRIME);
  return finish(h);
}

/** MurmurHash3's 32-bit finaliser, unsigned. */
function finish(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}
