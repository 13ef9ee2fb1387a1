/**
 * @module
 * Group commit for the SQLite write-ahead log: {@linkcode WalSync.durable}
 * resolves once an `fdatasync` of the WAL file that began after the call
 * has finished, so every frame written before it is on disk. One sync
 * covers every commit made while the previous one ran, and it runs on the
 * runtime's I/O thread pool, not on the thread that writes.
 *
 * Why: with `PRAGMA synchronous = FULL`, SQLite syncs the WAL inside each
 * `COMMIT`, and the writer thread waits for the disk: under load on this
 * machine the SQLite thread was in uninterruptible I/O wait in 7 % of
 * samples of its state (docs/PERFORMANCE.md, "What changed in this
 * round"). The store
 * now runs SQLite with `synchronous = NORMAL` (the WAL is written at
 * `COMMIT`, and synced before checkpoints, after them and when the WAL
 * starts over) and syncs the WAL itself before a commit is answered. An
 * answered commit is therefore as durable as with `FULL`: its frames were
 * written before the sync began. What `FULL` also promised, that no other
 * connection reads a transaction before it is durable, does not hold: the
 * query routes may show records a moment before their request is answered
 * (a power cut then could take back records nobody was told were stored).
 *
 * The file must stay the same while writers are open: SQLite deletes the
 * WAL only when the last connection closes. Each sync still checks that the
 * open handle is the file at the path (same inode) and reopens it if not.
 */
import { open, stat } from "node:fs/promises";

/** Syncs the data of the file at `path` to disk. */
export type SyncFile = (path: string) => Promise<void>;

/** A cached read-only handle on the WAL, reopened when the file at the path changes. */
function handleSync(): SyncFile & { close(): Promise<void> } {
  let handle: Awaited<ReturnType<typeof open>> | undefined;
  let ino: number | undefined;
  const sync = async (path: string) => {
    const now = (await stat(path)).ino;
    if (handle === undefined || ino !== now) {
      await handle?.close().catch(() => {});
      handle = await open(path, "r");
      ino = (await handle.stat()).ino;
    }
    await handle.datasync();
  };
  return Object.assign(sync, {
    close: async () => {
      const h = handle;
      handle = undefined;
      await h?.close().catch(() => {});
    },
  });
}

/** Group `fdatasync` of one WAL file. */
export class WalSync {
  readonly path: string;
  #sync: SyncFile;
  #close: () => Promise<void>;
  /** The sync running now. */
  #running: Promise<void> | undefined;
  /** The sync that starts when the running one ends, shared by everyone who asked meanwhile. */
  #next: Promise<void> | undefined;
  /** Syncs finished, for tests and metrics. */
  syncs = 0;

  /**
   * @param path The WAL file (`<database>-wal`).
   * @param sync How to sync it; tests substitute a slow or failing one.
   */
  constructor(path: string, sync?: SyncFile) {
    this.path = path;
    if (sync !== undefined) {
      this.#sync = sync;
      this.#close = () => Promise.resolve();
    } else {
      const s = handleSync();
      this.#sync = s;
      this.#close = s.close;
    }
  }

  /**
   * Resolves once everything written to the WAL before this call is on disk;
   * rejects when the sync that was to cover it failed (the next call tries
   * again).
   */
  durable(): Promise<void> {
    if (this.#running === undefined) return this.#start();
    // The running sync may have begun before the caller's frames were written.
    this.#next ??= this.#running.then(
      () => this.#startNext(),
      () => this.#startNext(),
    );
    return this.#next;
  }

  /** Closes the file handle once no sync runs. */
  async close(): Promise<void> {
    await Promise.allSettled([this.#running, this.#next]);
    await this.#close();
  }

  #startNext(): Promise<void> {
    this.#next = undefined;
    return this.#start();
  }

  #start(): Promise<void> {
    const running = this.#sync(this.path).then(() => {
      this.syncs++;
    });
    this.#running = running;
    const clear = () => {
      if (this.#running === running) this.#running = undefined;
    };
    running.then(clear, clear);
    return running;
  }
}
