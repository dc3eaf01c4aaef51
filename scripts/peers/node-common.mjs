// Shared by the Node peers of scripts/bench-peers.sh: argument parsing, package loading from
// the install outside the repo (PEERS_NODE_DIR), the job payloads and the drain wait.
import { createRequire } from "node:module";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

export function args(name) {
  const [mode, url, n] = process.argv.slice(2);
  if (!["enqueue", "drain"].includes(mode) || !url || !(Number(n) >= 0)) {
    console.error(`usage: node ${name} enqueue|drain DATABASE_URL N   (PEERS_NODE_DIR: where npm installed the peers)`);
    process.exit(2);
  }
  return { mode, url, n: Number(n) };
}

/** Imports a package installed under PEERS_NODE_DIR (not under the repo). */
export async function load(pkg) {
  const dir = process.env.PEERS_NODE_DIR;
  if (!dir) throw new Error("PEERS_NODE_DIR is not set");
  const resolved = createRequire(join(dir, "package.json")).resolve(pkg);
  return import(pathToFileURL(resolved).href);
}

/** The same shape as an embq job line. */
export function payload(i) {
  return { source_type: "doc", source_id: String(i), text: `receipt ${i}: coffee beans, oat milk, total ${i % 97}.50 paid by card` };
}

export const knob = (name, dflt) => (process.env[name] === undefined ? dflt : Number(process.env[name]));

/**
 * Resolves once the task ran `n` times (ran() reads the count) and `left()` (a SQL count of
 * unfinished jobs) says 0. Rejects if it takes longer than `limitMs`.
 */
export async function waitDrained(n, ran, left, limitMs = 600_000) {
  const t0 = performance.now();
  for (;;) {
    await new Promise((r) => setTimeout(r, 2));
    if (performance.now() - t0 > limitMs) throw new Error(`not drained after ${limitMs} ms: ran ${ran()} of ${n}`);
    if (ran() < n) continue;
    if ((await left()) === 0) return;
  }
}

/** Runs `stop` but gives up waiting after `ms`. */
export const stopWithin = (stop, ms) => Promise.race([stop().catch(() => {}), new Promise((r) => setTimeout(r, ms))]);
