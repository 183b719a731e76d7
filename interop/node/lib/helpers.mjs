// Shared by the Node interop scenarios: broker address, scenario ids, strict xfail, unique names.
//
// A scenario's id is `CLIENT:SCENARIO` (e.g. `amqplib:publish_consume_manual_ack`), the same
// scheme as the Python suite, so interop/xfail-warren.txt and interop/SCENARIOS.md name each one
// the same way in every language.

import { appendFileSync, readFileSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { after, test } from "node:test";
import amqplib from "amqplib";

// Clients parse a URL's path differently (is `amqp://h/` the vhost "" or "/"?), so the suite
// parses AMQP_URL once: an empty path means the default vhost "/".
function parseBroker(raw) {
  const url = new URL(raw);
  if (url.protocol !== "amqp:") throw new Error(`AMQP_URL must be amqp://...: ${raw}`);
  const vhost = url.pathname.length > 1 ? decodeURIComponent(url.pathname.slice(1)) : "/";
  return {
    host: url.hostname || "127.0.0.1",
    port: Number(url.port || 5672),
    user: decodeURIComponent(url.username || "guest"),
    password: decodeURIComponent(url.password || "guest"),
    vhost,
  };
}

export const BROKER = parseBroker(process.env.AMQP_URL || "amqp://guest:guest@127.0.0.1:5672/");

/** A URL with the vhost percent-encoded, which every client reads the same way. */
export function brokerUrl() {
  const e = encodeURIComponent;
  return `amqp://${e(BROKER.user)}:${e(BROKER.password)}@${BROKER.host}:${BROKER.port}/${e(BROKER.vhost)}`;
}

function readXfail() {
  const path = process.env.INTEROP_XFAIL;
  const entries = new Map();
  if (!path) return entries;
  for (const raw of readFileSync(path, "utf8").split("\n")) {
    const line = raw.trim();
    if (!line || line.startsWith("#")) continue;
    const space = line.search(/\s/);
    const id = space < 0 ? line : line.slice(0, space);
    const reason = space < 0 ? "listed in xfail file" : line.slice(space).trim();
    entries.set(id, reason);
  }
  return entries;
}

const XFAIL = readXfail();
const SCENARIO_TIMEOUT_MS = 30_000;

/**
 * Returns `scenario(name, fn)` for one client; `fn(names, t)` gets the scenario's unique names,
 * deleted after it together with any connection it left open. A scenario listed in the xfail file must fail:
 * its failure passes the test (reported as XFAIL), and its success fails it (XPASS), so the list
 * stays true. A listed id that names no scenario of this client fails the file's last test.
 */
export function client(clientName) {
  const defined = new Set();
  const scenario = (name, fn) => {
    const id = `${clientName}:${name}`;
    defined.add(id);
    const reason = XFAIL.get(id);
    const title = reason === undefined ? id : `${id} [xfail]`;
    test(title, { timeout: SCENARIO_TIMEOUT_MS }, async (t) => {
      let failure;
      const created = names(name);
      try {
        await fn(created, t);
      } catch (error) {
        failure = error;
      } finally {
        await closeTracked();
        await created.cleanup();
      }
      if (reason === undefined) {
        if (failure !== undefined) {
          record(id, failure);
          throw failure;
        }
        return;
      }
      if (failure === undefined) {
        throw new Error(`XPASS(strict): ${id} is listed in ${process.env.INTEROP_XFAIL} but passed; remove it`);
      }
      t.diagnostic(`XFAIL ${id}: ${reason} (${firstLine(failure)})`);
    });
  };
  after(() => {
    const unknown = [...XFAIL.keys()].filter((id) => id.startsWith(`${clientName}:`) && !defined.has(id));
    if (unknown.length) {
      // Thrown from a hook, this fails the file.
      throw new Error(`${process.env.INTEROP_XFAIL} lists scenarios that do not exist: ${unknown.join(", ")}`);
    }
  });
  return scenario;
}

/** The error's message on one line (assert's diffs span several), cut to 160 characters. */
function firstLine(error) {
  return String(error?.message ?? error).replace(/\s+/g, " ").trim().slice(0, 160);
}

function record(id, error) {
  const path = process.env.INTEROP_RECORD;
  if (path) appendFileSync(path, `${id} ${firstLine(error)}\n`);
}

/** Settles after `ms` milliseconds. */
export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `check` until it returns true or `ms` passes. */
export async function waitFor(check, ms = 5000, what = "condition") {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await check()) return;
    await sleep(10);
  }
  throw new Error(`timed out waiting for ${what}`);
}

/** Waits until `count()` reaches `expected`, then checks it stays there for a while (nothing more arrives). */
export async function settle(count, expected, quietMs = 300) {
  await waitFor(() => count() >= expected, 5000, `${expected} deliveries`);
  await sleep(quietMs);
  if (count() !== expected) throw new Error(`expected ${expected} deliveries, got ${count()}`);
}

// Connections a scenario opened and did not close (it failed half-way) are torn down after it,
// so a failing scenario never keeps the test process alive.
const openSockets = new Set();
export function track(closeFn) {
  openSockets.add(closeFn);
  return closeFn;
}
async function closeTracked() {
  const pending = [...openSockets];
  openSockets.clear();
  for (const close of pending) {
    try {
      await close();
    } catch {
      // already closed
    }
  }
}

/**
 * Unique queue and exchange names for one scenario (`interop.<scenario>.<random>`); `cleanup()`
 * deletes them through a connection of its own, whatever the scenario's outcome.
 */
export function names(label) {
  const prefix = `interop.${label}.${randomBytes(4).toString("hex")}`;
  const queues = [];
  const exchanges = [];
  const created = {
    prefix,
    queue(tag = "q") {
      const name = `${prefix}.${tag}`;
      queues.push(name);
      return name;
    },
    exchange(tag = "x") {
      const name = `${prefix}.${tag}`;
      exchanges.push(name);
      return name;
    },
    async cleanup() {
      if (!queues.length && !exchanges.length) return;
      let connection;
      try {
        connection = await amqplib.connect(amqplibOptions(), { timeout: 5000 });
      } catch {
        return; // the broker is gone; nothing to clean
      }
      connection.on("error", () => {});
      try {
        for (const [kind, list] of [["queue", queues], ["exchange", exchanges]]) {
          for (const name of list) {
            // A fresh channel per delete: a broker under test may close the channel on a miss.
            try {
              const channel = await connection.createChannel();
              channel.on("error", () => {});
              if (kind === "queue") await channel.deleteQueue(name);
              else await channel.deleteExchange(name);
              await channel.close();
            } catch {
              // ignore
            }
          }
        }
      } finally {
        await connection.close().catch(() => {});
      }
    },
  };
  return created;
}

/** amqplib's connect options for BROKER, with explicit values rather than a URL. */
export function amqplibOptions(extra = {}) {
  return {
    protocol: "amqp",
    hostname: BROKER.host,
    port: BROKER.port,
    username: BROKER.user,
    password: BROKER.password,
    vhost: BROKER.vhost,
    heartbeat: 60,
    ...extra,
  };
}
