// The Node graphile-worker peer of scripts/bench-peers.sh.
//
//   PEERS_NODE_DIR=... node graphile-node.mjs enqueue DATABASE_URL N   # migrate, add N jobs (addJobs)
//   PEERS_NODE_DIR=... node graphile-node.mjs drain DATABASE_URL N     # one worker, no-op task, until done
//
// The drain prints `drained N jobs in S s (worker)`, timed from just before the worker starts to
// the moment the jobs table is empty (graphile deletes a job when it completes), then exits.
// Settings: the ones graphile-worker's performance page states for its numbers (concurrentJobs
// 24, maxPoolSize 25, localQueue 500, batched completion with delay 0); GRAPHILE_CONCURRENCY,
// GRAPHILE_POOL, GRAPHILE_LOCAL_QUEUE (0: off) and GRAPHILE_COMPLETE_BATCH_MS (-1: off) change them.
import { args, load, payload, knob, waitDrained, stopWithin } from "./node-common.mjs";

const { mode, url, n } = args("graphile-node.mjs");
const { run, makeWorkerUtils, Logger } = await load("graphile-worker");
// Warnings and errors only (the default logs a line per job), as embq runs with RUST_LOG=warn.
const logger = new Logger(() => (level, message) => {
  if (level === "error" || level === "warning") console.error(`[graphile-worker ${level}] ${message}`);
});

if (mode === "enqueue") {
  const utils = await makeWorkerUtils({ connectionString: url, logger });
  await utils.migrate();
  const specs = Array.from({ length: n }, (_, i) => ({ identifier: "noop", payload: payload(i) }));
  await utils.addJobs(specs);
  await utils.release();
} else {
  const t0 = performance.now();
  let ran = 0;
  const localQueue = knob("GRAPHILE_LOCAL_QUEUE", 500);
  const runner = await run({
    logger,
    noHandleSignals: true,
    preset: {
      worker: {
        connectionString: url,
        concurrentJobs: knob("GRAPHILE_CONCURRENCY", 24),
        maxPoolSize: knob("GRAPHILE_POOL", 25),
        ...(localQueue > 0 ? { localQueue: { size: localQueue } } : {}),
        completeJobBatchDelay: knob("GRAPHILE_COMPLETE_BATCH_MS", 0),
        failJobBatchDelay: knob("GRAPHILE_COMPLETE_BATCH_MS", 0),
      },
    },
    taskList: {
      noop: async (job) => {
        if (typeof job.text !== "string") throw new Error("unexpected payload");
        ran++;
      },
    },
  });
  let utils;
  const left = async () => {
    utils ??= await makeWorkerUtils({ connectionString: url, logger });
    const sql = "SELECT count(*) AS n FROM graphile_worker._private_jobs";
    return utils.withPgClient(async (c) => Number((await c.query(sql)).rows[0].n));
  };
  await waitDrained(n, () => ran, left);
  const secs = (performance.now() - t0) / 1000;
  console.log(`drained ${n} jobs in ${secs.toFixed(6)} s (worker)`);
  await stopWithin(() => runner.stop(), 5000);
  await stopWithin(() => utils.release(), 1000);
}
process.exit(0);
