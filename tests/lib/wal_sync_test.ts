import assert from "node:assert/strict";
import { WalSync } from "../../lib/wal_sync.ts";

/** A sync that finishes when told to, recording when each one started. */
function manualSync() {
  const started: Array<{ resolve: () => void; reject: (e: Error) => void }> = [];
  const sync = (_path: string) =>
    new Promise<void>((resolve, reject) => started.push({ resolve, reject }));
  return { sync, started };
}

const turn = () => new Promise<void>((resolve) => setTimeout(resolve, 0));

Deno.test("WalSync.durable waits for a sync that began after the call", async () => {
  const { sync, started } = manualSync();
  const wal = new WalSync("x-wal", sync);
  let first = false;
  wal.durable().then(() => (first = true));
  assert.equal(started.length, 1, "the first call starts a sync at once");
  let second = false;
  wal.durable().then(() => (second = true));
  assert.equal(started.length, 1, "a sync is running: the second call waits for the next one");
  started[0].resolve();
  await turn();
  assert.equal(first, true);
  assert.equal(second, false, "the sync that was running may have begun before its frames");
  assert.equal(started.length, 2, "the next sync started as soon as the first ended");
  started[1].resolve();
  await turn();
  assert.equal(second, true);
  assert.equal(wal.syncs, 2);
});

Deno.test("WalSync covers every call made during a running sync with one more sync", async () => {
  const { sync, started } = manualSync();
  const wal = new WalSync("x-wal", sync);
  const first = wal.durable();
  const waiting = Array.from({ length: 50 }, () => wal.durable());
  started[0].resolve();
  await first;
  await turn();
  assert.equal(started.length, 2, "50 commits, one group sync");
  started[1].resolve();
  await Promise.all(waiting);
  assert.equal(wal.syncs, 2);
});

Deno.test("WalSync passes a failed sync to its callers, and the next call syncs again", async () => {
  const { sync, started } = manualSync();
  const wal = new WalSync("x-wal", sync);
  const failing = wal.durable();
  started[0].reject(new Error("EIO"));
  await assert.rejects(failing, /EIO/);
  await turn();
  const next = wal.durable();
  assert.equal(started.length, 2);
  started[1].resolve();
  await next;
  assert.equal(wal.syncs, 1);
});

Deno.test("WalSync syncs a real file, reopening it when the file at the path is replaced", async () => {
  const dir = await Deno.makeTempDir({ prefix: "troupe_wal_sync_" });
  try {
    const path = `${dir}/db-wal`;
    await Deno.writeTextFile(path, "frames");
    const wal = new WalSync(path);
    await wal.durable();
    await Deno.remove(path);
    await Deno.writeTextFile(path, "new frames");
    await wal.durable();
    assert.equal(wal.syncs, 2);
    await Deno.remove(path);
    await assert.rejects(
      wal.durable(),
      /No such file|NotFound|ENOENT/i,
      "a missing WAL is an error",
    );
    await wal.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
