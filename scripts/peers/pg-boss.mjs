// The pg-boss peer of scripts/bench-peers.sh.
//
//   PEERS_NODE_DIR=... node pg-boss.mjs enqueue DATABASE_URL N   # create the queue, add N jobs (insert)
//   PEERS_NODE_DIR=... node pg-boss.mjs drain DATABASE_URL N     # one worker, no-op handler, until done
//
// The drain prints `drained N jobs in S s (worker)`, timed from just before pg-boss starts to the
// moment no job of the queue is left uncompleted, then exits.
// Settings (PGBOSS_*): a worker fetches BATCH (500) jobs at a time and completes them in one
// statement; CONCURRENCY (4) such workers run in the process (pg-boss's localConcurrency);
// burstWhenBatchFull keeps fetching without the poll delay while batches come back full, and
// POLL_S (0.5, pg-boss's minimum) is the poll interval otherwise; POOL (10) connections.
import { args, load, payload, knob, waitDrained, stopWithin } from "./node-common.mjs";

const QUEUE = "noop";
const { mode, url, n } = args("pg-boss.mjs");
const { PgBoss } = await load("pg-boss");

const t0 = performance.now();
const boss = new PgBoss({ connectionString: url, max: knob("PGBOSS_POOL", 10) });
boss.on("error", (err) => console.error(`[pg-boss error] ${err.message}`));
await boss.start();

if (mode === "enqueue") {
  await boss.createQueue(QUEUE);
  await boss.insert(QUEUE, Array.from({ length: n }, (_, i) => ({ data: payload(i) })));
  await stopWithin(() => boss.stop({ graceful: false }), 5000);
} else {
  let ran = 0;
  const batchSize = knob("PGBOSS_BATCH", 500);
  await boss.work(
    QUEUE,
    {
      batchSize,
      localConcurrency: knob("PGBOSS_CONCURRENCY", 4),
      pollingIntervalSeconds: knob("PGBOSS_POLL_S", 0.5),
      burstWhenBatchFull: batchSize > 1,
    },
    async (jobs) => {
      for (const job of jobs) if (typeof job.data.text !== "string") throw new Error("unexpected payload");
      ran += jobs.length;
    },
  );
  const db = boss.getDb();
  const left = async () => {
    const res = await db.executeSql("SELECT count(*) AS n FROM pgboss.job WHERE name = $1 AND state <> 'completed'", [QUEUE]);
    return Number(res.rows[0].n);
  };
  await waitDrained(n, () => ran, left);
  const secs = (performance.now() - t0) / 1000;
  console.log(`drained ${n} jobs in ${secs.toFixed(6)} s (worker)`);
  await stopWithin(() => boss.stop({ graceful: false }), 5000);
}
process.exit(0);
