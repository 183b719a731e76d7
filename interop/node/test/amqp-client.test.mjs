// The key interop scenarios driven by @cloudamqp/amqp-client (TypeScript, promise based).
//
// Left at its defaults on purpose: it negotiates frame_max 4096 (so a 1 MiB body travels in 257
// frames each way) and heartbeat 0 (off). It logs in with PLAIN only (no AMQPLAIN).

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { AMQPClient } from "@cloudamqp/amqp-client";
import { BROKER, brokerUrl, client, settle, track, waitFor } from "../lib/helpers.mjs";

const scenario = client("amqp_client");

async function connect() {
  const amqp = new AMQPClient(brokerUrl());
  // Registered before connecting: a handshake that never finishes must not keep the process alive.
  track(() => amqp.socket?.destroy());
  return amqp.connect();
}

async function drain(ch, queue) {
  const bodies = [];
  for (;;) {
    const message = await ch.basicGet(queue, { noAck: true });
    if (message === null) return bodies;
    bodies.push(message.bodyToString() ?? "");
  }
}

async function collect(ch, queue, count, { noAck = false, ms = 5000 } = {}) {
  const got = [];
  const consumer = await ch.basicConsume(queue, { noAck }, (message) => {
    got.push(message);
  });
  await waitFor(() => got.length >= count, ms, `${count} deliveries`);
  await consumer.cancel();
  return got;
}

async function expectChannelClose(promise, code, textPrefix) {
  await assert.rejects(promise, (error) => {
    // amqp-client reports "channel N closed: TEXT (CODE)".
    assert.match(error.message, /channel \d+ closed: (.*) \((\d+)\)$/);
    const [, text, got] = error.message.match(/closed: (.*) \((\d+)\)$/);
    assert.equal(Number(got), code, error.message);
    assert.ok(text.startsWith(textPrefix), error.message);
    return true;
  });
}

scenario("connect_plain", async () => {
  const conn = await connect();
  const ch = await conn.channel();
  const { name } = await ch.queueDeclare("", { exclusive: true });
  assert.match(name, /^amq\.gen-/);
  await ch.close();
  await conn.close();
});

scenario("exchange_topic_routing", async (n) => {
  const conn = await connect();
  const ch = await conn.channel();
  await ch.confirmSelect();
  const exchange = n.exchange();
  await ch.exchangeDeclare(exchange, "topic");
  const patterns = { star: "a.*.c", hash: "a.#", tail: "#.z", one: "*" };
  for (const [label, pattern] of Object.entries(patterns)) {
    await ch.queueDeclare(n.queue(label));
    await ch.queueBind(n.queue(label), exchange, pattern);
  }
  for (const key of ["a.b.c", "a", "x.y.z", "b"]) await ch.basicPublish(exchange, key, key);
  assert.deepEqual(await drain(ch, n.queue("star")), ["a.b.c"]);
  assert.deepEqual(await drain(ch, n.queue("hash")), ["a.b.c", "a"]);
  assert.deepEqual(await drain(ch, n.queue("tail")), ["x.y.z"]);
  assert.deepEqual(await drain(ch, n.queue("one")), ["a", "b"]);
  await conn.close();
});

scenario("publish_consume_manual_ack", async (n) => {
  const conn = await connect();
  const ch = await conn.channel();
  const queue = n.queue();
  await ch.queueDeclare(queue);
  const bodies = Array.from({ length: 20 }, (_, i) => `m${i}`);
  for (const body of bodies) await ch.basicPublish("", queue, body);
  const got = await collect(ch, queue, bodies.length);
  assert.deepEqual(got.map((m) => m.bodyToString()), bodies);
  assert.deepEqual(got.map((m) => m.deliveryTag), bodies.map((_, i) => i + 1));
  assert.ok(got.every((m) => m.redelivered === false));
  for (const message of got) await message.ack();
  await ch.close();
  const check = await conn.channel();
  assert.equal((await check.queueDeclare(queue, { passive: true })).messageCount, 0);
  await conn.close();
});

scenario("nack_requeue_redelivered", async (n) => {
  const conn = await connect();
  const ch = await conn.channel();
  const queue = n.queue();
  await ch.queueDeclare(queue);
  await ch.basicPublish("", queue, "m1");
  await ch.basicPublish("", queue, "m2");
  // amqp-client's basicGet defaults to noAck: true.
  let message = await ch.basicGet(queue, { noAck: false });
  assert.deepEqual([message.bodyToString(), message.redelivered], ["m1", false]);
  await message.nack(true);
  message = await ch.basicGet(queue, { noAck: false });
  assert.deepEqual([message.bodyToString(), message.redelivered], ["m1", true]);
  await message.reject(false);
  message = await ch.basicGet(queue, { noAck: true });
  assert.deepEqual([message.bodyToString(), message.redelivered], ["m2", false]);
  assert.equal(await ch.basicGet(queue), null);
  await conn.close();
});

scenario("prefetch_limits_unacked", async (n) => {
  const conn = await connect();
  const ch = await conn.channel();
  const queue = n.queue();
  await ch.queueDeclare(queue);
  for (let i = 0; i < 6; i++) await ch.basicPublish("", queue, `m${i}`);
  await ch.prefetch(2);
  const got = [];
  await ch.basicConsume(queue, { noAck: false }, (message) => {
    got.push(message);
  });
  const count = () => got.length;
  await settle(count, 2);
  await got[0].ack();
  await settle(count, 3);
  await ch.basicAck(got[2].deliveryTag, true);
  await settle(count, 5);
  assert.deepEqual(got.map((m) => m.bodyToString()), ["m0", "m1", "m2", "m3", "m4"]);
  await conn.close();
});

scenario("publisher_confirms", async (n) => {
  const conn = await connect();
  const ch = await conn.channel();
  await ch.confirmSelect();
  const queue = n.queue();
  await ch.queueDeclare(queue);
  // In confirm mode basicPublish resolves with the delivery tag once the broker acked it.
  const tags = await Promise.all(Array.from({ length: 100 }, (_, i) => ch.basicPublish("", queue, `m${i}`)));
  assert.deepEqual(tags, Array.from({ length: 100 }, (_, i) => i + 1));
  assert.equal((await ch.queueDeclare(queue, { passive: true })).messageCount, 100);
  await conn.close();
});

scenario("mandatory_unroutable_returned", async (n) => {
  const conn = await connect();
  const ch = await conn.channel();
  await ch.confirmSelect();
  const exchange = n.exchange();
  await ch.exchangeDeclare(exchange, "direct");
  const events = [];
  ch.onReturn = (message) => events.push(["return", message.replyCode, message.replyText, message.routingKey, message.bodyToString()]);
  const tag = await ch.basicPublish(exchange, "nowhere", "lost", {}, true);
  events.push(["ack", tag]);
  assert.deepEqual(events, [["return", 312, "NO_ROUTE", "nowhere", "lost"], ["ack", 1]]);
  await conn.close();
});

scenario("basic_get_and_get_empty", async (n) => {
  const conn = await connect();
  const ch = await conn.channel();
  const queue = n.queue();
  await ch.queueDeclare(queue);
  assert.equal(await ch.basicGet(queue), null);
  await ch.basicPublish("", queue, "g1");
  await ch.basicPublish("", queue, "g2");
  const first = await ch.basicGet(queue, { noAck: false });
  assert.deepEqual([first.bodyToString(), first.messageCount], ["g1", 1]);
  await first.ack();
  const second = await ch.basicGet(queue, { noAck: true });
  assert.deepEqual([second.bodyToString(), second.messageCount], ["g2", 0]);
  assert.equal(await ch.basicGet(queue), null);
  await conn.close();
});

scenario("large_body_1mib", async (n) => {
  const conn = await connect();
  const ch = await conn.channel();
  await ch.confirmSelect();
  const queue = n.queue();
  await ch.queueDeclare(queue);
  const body = randomBytes(1024 * 1024);
  await ch.basicPublish("", queue, body);
  const [message] = await collect(ch, queue, 1, { noAck: true });
  assert.ok(Buffer.from(message.body).equals(body));
  await conn.close();
});

scenario("empty_body", async (n) => {
  const conn = await connect();
  const ch = await conn.channel();
  await ch.confirmSelect();
  const queue = n.queue();
  await ch.queueDeclare(queue);
  await ch.basicPublish("", queue, "", { type: "empty" });
  const message = await ch.basicGet(queue, { noAck: true });
  assert.deepEqual([message.bodySize, message.properties.type], [0, "empty"]);
  await conn.close();
});

scenario("properties_round_trip", async (n) => {
  const conn = await connect();
  const ch = await conn.channel();
  await ch.confirmSelect();
  const queue = n.queue();
  await ch.queueDeclare(queue);
  const headers = {
    str: "s",
    int: -123456,
    big: 2n ** 40n,
    float: 1.5,
    bool: false,
    bytes: new Uint8Array([0, 255]),
    time: new Date(1700000000000),
    nothing: null,
    list: [1, "x", [true]],
    nested: { a: { b: { c: "d" } } },
  };
  const properties = {
    contentType: "text/plain",
    contentEncoding: "identity",
    headers,
    deliveryMode: 2,
    priority: 5,
    correlationId: "c",
    replyTo: "r",
    expiration: "60000",
    messageId: "m",
    timestamp: new Date(1700000000000),
    type: "t",
    userId: BROKER.user,
    appId: "a",
  };
  await ch.basicPublish("", queue, "props", properties);
  const [message] = await collect(ch, queue, 1, { noAck: true });
  const { headers: got, ...rest } = message.properties;
  const { headers: _sent, ...expected } = properties;
  assert.deepEqual(rest, expected);
  assert.deepEqual(got, { ...headers, big: 2 ** 40, bytes: new Uint8Array([0, 255]) });
  await conn.close();
});

scenario("many_channels_one_connection", async (n) => {
  const conn = await connect();
  const queue = n.queue();
  const channels = [];
  for (let i = 0; i < 64; i++) channels.push(await conn.channel());
  assert.equal(new Set(channels.map((ch) => ch.id)).size, 64);
  await channels[0].queueDeclare(queue);
  for (const ch of channels) {
    await ch.confirmSelect();
    await ch.basicPublish("", queue, String(ch.id));
  }
  for (const ch of channels.filter((_, i) => i % 2 === 0)) await ch.close();
  const bodies = await drain(channels[1], queue);
  assert.deepEqual(bodies.map(Number).sort((a, b) => a - b), channels.map((ch) => ch.id).sort((a, b) => a - b));
  await conn.close();
});

scenario("consumer_cancel_on_queue_delete", async (n) => {
  const conn = await connect();
  const ch = await conn.channel();
  const queue = n.queue();
  await ch.queueDeclare(queue);
  const consumer = await ch.basicConsume(queue, { noAck: true }, () => {});
  const other = await connect();
  await (await other.channel()).queueDelete(queue);
  await other.close();
  await assert.rejects(consumer.wait(5000), /Consumer cancelled by the server/);
  assert.equal(ch.closed, false);
  await conn.close();
});

scenario("error_404_missing_queue", async (n) => {
  const conn = await connect();
  const missing = n.queue("missing");
  await expectChannelClose((await conn.channel()).queueDeclare(missing, { passive: true }), 404, `NOT_FOUND - no queue '${missing}' in vhost '${BROKER.vhost}'`);
  const ch = await conn.channel();
  assert.equal(ch.closed, false);
  await ch.queueDeclare("", { exclusive: true });
  await conn.close();
});

scenario("error_406_redeclare_different", async (n) => {
  const conn = await connect();
  const queue = n.queue();
  await (await conn.channel()).queueDeclare(queue, { durable: false });
  await expectChannelClose((await conn.channel()).queueDeclare(queue, { durable: true }), 406, "PRECONDITION_FAILED - inequivalent arg 'durable'");
  await (await conn.channel()).queueDeclare(queue, { durable: false });
  await conn.close();
});

scenario("error_403_amq_prefix", async (n) => {
  const conn = await connect();
  await expectChannelClose((await conn.channel()).queueDeclare(`amq.${n.prefix}`), 403, "ACCESS_REFUSED");
  await expectChannelClose((await conn.channel()).exchangeDeclare(`amq.${n.prefix}`, "direct"), 403, "ACCESS_REFUSED");
  await (await conn.channel()).exchangeDeclare("amq.topic", "topic", { passive: true });
  await conn.close();
});

scenario("reconnect_redeclare", async (n) => {
  const queue = n.queue();
  const first = await connect();
  let ch = await first.channel();
  await ch.confirmSelect();
  await ch.queueDeclare(queue);
  await ch.basicPublish("", queue, "before");
  await first.close();
  const second = await connect();
  ch = await second.channel();
  assert.equal((await ch.queueDeclare(queue)).messageCount, 1);
  assert.deepEqual(await drain(ch, queue), ["before"]);
  await second.close();
});

scenario("tx_commit_rollback", async (n) => {
  const conn = await connect();
  const ch = await conn.channel();
  const queue = n.queue();
  await ch.queueDeclare(queue);
  await ch.txSelect();
  await ch.basicPublish("", queue, "rolled-back");
  await ch.txRollback();
  await ch.basicPublish("", queue, "committed");
  const check = await conn.channel();
  assert.equal((await check.queueDeclare(queue, { passive: true })).messageCount, 0);
  await ch.txCommit();
  assert.deepEqual(await drain(check, queue), ["committed"]);
  await conn.close();
});

scenario("confirm_then_tx_refused", async () => {
  const conn = await connect();
  const ch = await conn.channel();
  await ch.confirmSelect();
  await expectChannelClose(ch.txSelect(), 406, "PRECONDITION_FAILED");
  assert.equal(conn.closed, false);
  await conn.close();
});

scenario("direct_reply_to", async (n) => {
  const conn = await connect();
  const ch = await conn.channel();
  const requests = n.queue("requests");
  await ch.queueDeclare(requests);
  const replies = [];
  await ch.basicConsume("amq.rabbitmq.reply-to", { noAck: true }, (m) => {
    replies.push([m.properties.correlationId, m.bodyToString()]);
  });
  await ch.basicPublish("", requests, "ping", { replyTo: "amq.rabbitmq.reply-to", correlationId: "c1" });
  const server = await connect();
  const serverChannel = await server.channel();
  let request = null;
  await waitFor(async () => (request = await serverChannel.basicGet(requests, { noAck: true })) !== null);
  assert.match(request.properties.replyTo, /^amq\.rabbitmq\.reply-to\./);
  await serverChannel.basicPublish("", request.properties.replyTo, "pong", { correlationId: request.properties.correlationId });
  await waitFor(() => replies.length === 1);
  assert.deepEqual(replies, [["c1", "pong"]]);
  await server.close();
  await conn.close();
});

/** Asserts that `conn` was closed by the broker with `code` and a reply text starting `textPrefix`. */
async function expectConnectionClose(conn, promise, code, textPrefix) {
  await assert.rejects(promise, (error) => {
    // amqp-client reports a server-sent connection.close as "connection closed: TEXT (CODE)".
    const match = error.message.match(/connection closed: (.*) \((\d+)\)$/);
    assert.ok(match, error.message);
    assert.equal(Number(match[2]), code, error.message);
    assert.ok(match[1].startsWith(textPrefix), error.message);
    return true;
  });
  await waitFor(() => conn.closed, 5000, "the connection to close");
}

scenario("immediate_flag_not_implemented", async (n) => {
  const conn = await connect();
  const ch = await conn.channel();
  const queue = n.queue();
  await ch.queueDeclare(queue);
  // RabbitMQ 3.x dropped `immediate`: a publish with it is a 540 connection error.
  const published = ch.basicPublish("", queue, "now", {}, false, true);
  await expectConnectionClose(conn, published.then(() => ch.queueDeclare(queue, { passive: true })), 540, "NOT_IMPLEMENTED");
});

scenario("prefetch_size_not_implemented", async () => {
  const conn = await connect();
  const ch = await conn.channel();
  await expectConnectionClose(conn, ch.basicQos(10, 4096), 540, "NOT_IMPLEMENTED");
});

scenario("channel_flow_inactive_not_implemented", async () => {
  const conn = await connect();
  const ch = await conn.channel();
  // RabbitMQ 3.x answers flow(active=true) with flow-ok, but does not let a client pause its
  // deliveries: flow(active=false) is a 540 connection error.
  assert.equal(await ch.basicFlow(true), true);
  await expectConnectionClose(conn, ch.basicFlow(false), 540, "NOT_IMPLEMENTED");
});
