/**
 * @module
 * Where a Worker entry module of `lib/` is, for `new Worker(...)`.
 */

/**
 * The URL of `lib/<file>`: beside this module, except in a binary of `bun
 * build --compile main.ts lib/<file> ...`, where every module is bundled into
 * one whose URL is `file:///$bunfs/root/<binary>` and a worker entry keeps
 * its source path under that root (as `.js`; Bun maps the `.ts` name to it).
 * `deno compile --include lib/<file>` keeps module URLs, so the first form
 * works there.
 *
 * @example
 * ```ts
 * const worker = new Worker(workerEntry("sqlite_worker.ts"), { type: "module" });
 * ```
 */
export function workerEntry(file: string): string {
  return import.meta.url.startsWith("file:///$bunfs/")
    ? `/$bunfs/root/lib/${file}`
    : new URL(`./${file}`, import.meta.url).href;
}
