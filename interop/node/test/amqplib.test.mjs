// The interop scenarios driven by amqplib (the most used Node client), through its promise API.

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import amqplib from "amqplib";
import { BROKER, amqplibOptions, brokerUrl, client, settle, sleep, track, waitFor } from "../lib/helpers.mjs";

const scenario = client("amqplib");

async function connect(socketOptions = {}) {
  const connection = await amqplib.connect(amqplibOptions(), { timeout: 5000, ...socketOptions });
  connection.on("error", () => {}); // errors are asserted where they are expected
  track(() => connection.close());
  return connection;
}

/** A channel whose server-sent close is asserted through the failing call, not an event. */
async function channel(connection, confirm = false) {
  const ch = confirm ? await connection.createConfirmChannel() : await connection.createChannel();
  ch.on("error", () => {});
  return ch;
}

async function drain(ch, queue) {
  const bodies = [];
  for (;;) {
    const message = await ch.get(queue, { noAck: true });
    if (message === false) return bodies;
    bodies.push(message.content.toString());
  }
}

/** Consumes until `count` deliveries arrived; returns the messages. */
async function collect(ch, queue, count, { noAck = false, ms = 5000 } = {}) {
  const got = [];
  const { consumerTag } = await ch.consume(queue, (message) => message && got.push(message), { noAck });
  await waitFor(() => got.length >= count, ms, `${count} deliveries`);
  await ch.cancel(consumerTag);
  return got;
}

async function expectChannelClose(promise, code, textPrefix) {
  await assert.rejects(promise, (error) => {
    assert.equal(error.code, code, error.message);
    assert.match(error.message, new RegExp(`with message "${textPrefix.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}`));
    return true;
  });
}

// -- connecting --------------------------------------------------------------------------------

scenario("connect_plain", async () => {
  const connection = await connect({ credentials: amqplib.credentials.plain(BROKER.user, BROKER.password) });
  const props = connection.connection.serverProperties;
  for (const key of ["product", "version", "platform", "copyright", "information"]) {
    assert.ok(key in props, `server-properties lacks ${key}`);
  }
  for (const cap of ["publisher_confirms", "exchange_exchange_bindings", "basic.nack", "consumer_cancel_notify",
    "connection.blocked", "consumer_priorities", "authentication_failure_close", "per_consumer_qos", "direct_reply_to"]) {
    assert.equal(props.capabilities[cap], true, `capability ${cap}`);
  }
  const ch = await channel(connection);
  await ch.close();
  await connection.close();
});

scenario("connect_amqplain", async () => {
  const connection = await connect({ credentials: amqplib.credentials.amqplain(BROKER.user, BROKER.password) });
  const ch = await channel(connection);
  const { queue } = await ch.assertQueue("", { exclusive: true });
  ch.sendToQueue(queue, Buffer.from("via-amqplain"));
  await waitFor(async () => (await ch.checkQueue(queue)).messageCount === 1);
  assert.deepEqual(await drain(ch, queue), ["via-amqplain"]);
  await connection.close();
});

scenario("connect_bad_password_refused", async () => {
  const options = amqplibOptions({ password: "wrong-password" });
  await assert.rejects(amqplib.connect(options, { timeout: 5000 }), /ACCESS_REFUSED|ACCESS-REFUSED|403/);
});

// -- topology and routing ----------------------------------------------------------------------

scenario("exchange_direct_routing", async (n) => {
  const connection = await connect();
  const ch = await channel(connection, true);
  const exchange = n.exchange();
  await ch.assertExchange(exchange, "direct", { durable: false });
  const [q1, q2] = [n.queue("q1"), n.queue("q2")];
  await ch.assertQueue(q1);
  await ch.assertQueue(q2);
  await ch.bindQueue(q1, exchange, "a");
  await ch.bindQueue(q2, exchange, "a");
  await ch.bindQueue(q2, exchange, "b");
  for (const key of ["a", "b", "c"]) ch.publish(exchange, key, Buffer.from(key));
  await ch.waitForConfirms();
  assert.deepEqual(await drain(ch, q1), ["a"]);
  assert.deepEqual(await drain(ch, q2), ["a", "b"]);
  ch.sendToQueue(q1, Buffer.from("direct-by-name"));
  await ch.waitForConfirms();
  assert.deepEqual(await drain(ch, q1), ["direct-by-name"]);
  await ch.unbindQueue(q2, exchange, "a");
  ch.publish(exchange, "a", Buffer.from("after-unbind"));
  await ch.waitForConfirms();
  assert.deepEqual(await drain(ch, q1), ["after-unbind"]);
  assert.deepEqual(await drain(ch, q2), []);
  await connection.close();
});

scenario("exchange_fanout_routing", async (n) => {
  const connection = await connect();
  const ch = await channel(connection, true);
  const exchange = n.exchange();
  await ch.assertExchange(exchange, "fanout", { durable: false });
  const queues = [n.queue("q0"), n.queue("q1"), n.queue("q2")];
  for (const queue of queues) {
    await ch.assertQueue(queue);
    await ch.bindQueue(queue, exchange, "ignored");
  }
  ch.publish(exchange, "anything", Buffer.from("m1"));
  ch.publish(exchange, "", Buffer.from("m2"));
  await ch.waitForConfirms();
  for (const queue of queues) assert.deepEqual(await drain(ch, queue), ["m1", "m2"]);
  await connection.close();
});

scenario("exchange_topic_routing", async (n) => {
  const connection = await connect();
  const ch = await channel(connection, true);
  const exchange = n.exchange();
  await ch.assertExchange(exchange, "topic", { durable: false });
  const patterns = { star: "a.*.c", hash: "a.#", tail: "#.z", one: "*", exact: "a.b.c" };
  const queues = {};
  for (const [label, pattern] of Object.entries(patterns)) {
    queues[label] = n.queue(label);
    await ch.assertQueue(queues[label]);
    await ch.bindQueue(queues[label], exchange, pattern);
  }
  for (const key of ["a.b.c", "a", "a.b.b.c", "x.y.z", "z", "b", "a.x.c"]) ch.publish(exchange, key, Buffer.from(key));
  await ch.waitForConfirms();
  const expected = {
    star: ["a.b.c", "a.x.c"],
    hash: ["a.b.c", "a", "a.b.b.c", "a.x.c"],
    tail: ["x.y.z", "z"],
    one: ["a", "z", "b"],
    exact: ["a.b.c"],
  };
  for (const [label, bodies] of Object.entries(expected)) assert.deepEqual(await drain(ch, queues[label]), bodies, label);
  await connection.close();
});

scenario("exchange_headers_routing", async (n) => {
  const connection = await connect();
  const ch = await channel(connection, true);
  const exchange = n.exchange();
  await ch.assertExchange(exchange, "headers", { durable: false });
  const [qAll, qAny] = [n.queue("all"), n.queue("any")];
  await ch.assertQueue(qAll);
  await ch.assertQueue(qAny);
  await ch.bindQueue(qAll, exchange, "", { "x-match": "all", format: "pdf", type: "report" });
  await ch.bindQueue(qAny, exchange, "", { "x-match": "any", format: "pdf", type: "log" });
  const cases = [
    ["both", { format: "pdf", type: "report" }],
    ["format-only", { format: "pdf" }],
    ["type-log", { type: "log" }],
    ["none", { format: "zip" }],
    ["no-headers", undefined],
  ];
  for (const [body, headers] of cases) ch.publish(exchange, "", Buffer.from(body), { headers });
  await ch.waitForConfirms();
  assert.deepEqual(await drain(ch, qAll), ["both"]);
  assert.deepEqual(await drain(ch, qAny), ["both", "format-only", "type-log"]);
  await connection.close();
});

scenario("exchange_to_exchange_binding", async (n) => {
  const connection = await connect();
  const ch = await channel(connection, true);
  const [source, destination] = [n.exchange("src"), n.exchange("dst")];
  await ch.assertExchange(source, "topic", { durable: false });
  await ch.assertExchange(destination, "fanout", { durable: false });
  await ch.bindExchange(destination, source, "orders.#");
  const queue = n.queue();
  await ch.assertQueue(queue);
  await ch.bindQueue(queue, destination, "");
  ch.publish(source, "orders.new", Buffer.from("routed"));
  ch.publish(source, "users.new", Buffer.from("not-routed"));
  await ch.waitForConfirms();
  assert.deepEqual(await drain(ch, queue), ["routed"]);
  await connection.close();
});

scenario("server_named_queue", async () => {
  const connection = await connect();
  const ch = await channel(connection, true);
  const ok = await ch.assertQueue("", { exclusive: true });
  assert.match(ok.queue, /^amq\.gen-/);
  assert.equal(ok.messageCount, 0);
  assert.equal(ok.consumerCount, 0);
  ch.sendToQueue(ok.queue, Buffer.from("to-generated"));
  await ch.waitForConfirms();
  assert.deepEqual(await drain(ch, ok.queue), ["to-generated"]);
  await connection.close();
});

// -- publishing and consuming ------------------------------------------------------------------

scenario("publish_consume_manual_ack", async (n) => {
  const connection = await connect();
  const ch = await channel(connection);
  const queue = n.queue();
  await ch.assertQueue(queue);
  const bodies = Array.from({ length: 20 }, (_, i) => `m${i}`);
  for (const body of bodies) ch.sendToQueue(queue, Buffer.from(body));
  const got = await collect(ch, queue, bodies.length);
  assert.deepEqual(got.map((m) => m.content.toString()), bodies);
  assert.deepEqual(got.map((m) => m.fields.deliveryTag), bodies.map((_, i) => i + 1));
  assert.ok(got.every((m) => m.fields.redelivered === false && m.fields.exchange === "" && m.fields.routingKey === queue));
  for (const message of got.slice(0, 15)) ch.ack(message);
  ch.ack(got[got.length - 1], true);
  await ch.close();
  const check = await channel(connection);
  assert.equal((await check.checkQueue(queue)).messageCount, 0);
  await connection.close();
});

scenario("nack_requeue_redelivered", async (n) => {
  const connection = await connect();
  const ch = await channel(connection);
  const queue = n.queue();
  await ch.assertQueue(queue);
  for (const body of ["m1", "m2", "m3"]) ch.sendToQueue(queue, Buffer.from(body));
  let message = await ch.get(queue);
  assert.deepEqual([message.content.toString(), message.fields.redelivered], ["m1", false]);
  ch.nack(message, false, true);
  message = await ch.get(queue);
  assert.deepEqual([message.content.toString(), message.fields.redelivered], ["m1", true]);
  ch.reject(message, false);
  const m2 = await ch.get(queue);
  const m3 = await ch.get(queue);
  assert.deepEqual([m2.content.toString(), m3.content.toString()], ["m2", "m3"]);
  ch.nack(m3, true, true); // multiple: both back, in their order
  const again = await collect(ch, queue, 2, { noAck: true });
  assert.deepEqual(again.map((m) => [m.fields.redelivered, m.content.toString()]), [[true, "m2"], [true, "m3"]]);
  assert.equal((await ch.checkQueue(queue)).messageCount, 0);
  await connection.close();
});

scenario("unacked_requeued_on_channel_close", async (n) => {
  const connection = await connect();
  const ch = await channel(connection);
  const queue = n.queue();
  await ch.assertQueue(queue);
  ch.sendToQueue(queue, Buffer.from("m1"));
  ch.sendToQueue(queue, Buffer.from("m2"));
  const got = await collect(ch, queue, 2);
  assert.deepEqual(got.map((m) => m.content.toString()), ["m1", "m2"]);
  await ch.close();
  const next = await channel(connection);
  const again = await collect(next, queue, 2, { noAck: true });
  assert.deepEqual(again.map((m) => [m.fields.redelivered, m.content.toString()]), [[true, "m1"], [true, "m2"]]);
  await connection.close();
});

scenario("prefetch_limits_unacked", async (n) => {
  const connection = await connect();
  const ch = await channel(connection);
  const queue = n.queue();
  await ch.assertQueue(queue);
  for (let i = 0; i < 10; i++) ch.sendToQueue(queue, Buffer.from(`m${i}`));
  await ch.prefetch(3);
  const got = [];
  await ch.consume(queue, (message) => message && got.push(message));
  const count = () => got.length;
  await settle(count, 3);
  ch.ack(got[0]);
  await settle(count, 4);
  ch.ack(got[got.length - 1], true);
  await settle(count, 7);
  ch.ack(got[got.length - 1], true);
  await settle(count, 10);
  assert.deepEqual(got.map((m) => m.content.toString()), Array.from({ length: 10 }, (_, i) => `m${i}`));
  ch.ack(got[got.length - 1], true);
  await connection.close();
});

scenario("publisher_confirms", async (n) => {
  const connection = await connect();
  const ch = await channel(connection, true);
  const queue = n.queue();
  await ch.assertQueue(queue);
  const confirms = Array.from(
    { length: 100 },
    (_, i) => new Promise((resolve, reject) => ch.sendToQueue(queue, Buffer.from(`m${i}`), {}, (err) => (err ? reject(err) : resolve(i)))),
  );
  assert.equal((await Promise.all(confirms)).length, 100);
  assert.equal((await ch.checkQueue(queue)).messageCount, 100);
  await connection.close();
});

scenario("mandatory_unroutable_returned", async (n) => {
  const connection = await connect();
  const ch = await channel(connection, true);
  const exchange = n.exchange();
  await ch.assertExchange(exchange, "direct", { durable: false });
  const events = [];
  const returned = [];
  ch.on("return", (message) => {
    events.push("return");
    returned.push(message);
  });
  ch.publish(exchange, "nowhere", Buffer.from("lost"), { mandatory: true, messageId: "id-1" }, (err) => events.push(err ? "nack" : "ack"));
  await ch.waitForConfirms();
  assert.deepEqual(events, ["return", "ack"], "basic.return must come before the confirm");
  const [message] = returned;
  assert.equal(message.fields.replyCode, 312);
  assert.equal(message.fields.replyText, "NO_ROUTE");
  assert.equal(message.fields.exchange, exchange);
  assert.equal(message.fields.routingKey, "nowhere");
  assert.equal(message.properties.messageId, "id-1");
  assert.equal(message.content.toString(), "lost");
  // Not mandatory: dropped silently, still acked.
  events.length = 0;
  ch.publish(exchange, "nowhere", Buffer.from("dropped"), {}, (err) => events.push(err ? "nack" : "ack"));
  await ch.waitForConfirms();
  assert.deepEqual(events, ["ack"]);
  await connection.close();
});

scenario("basic_get_and_get_empty", async (n) => {
  const connection = await connect();
  const ch = await channel(connection, true);
  const queue = n.queue();
  await ch.assertQueue(queue);
  assert.equal(await ch.get(queue), false);
  ch.sendToQueue(queue, Buffer.from("g1"));
  ch.sendToQueue(queue, Buffer.from("g2"));
  await ch.waitForConfirms();
  const first = await ch.get(queue);
  assert.deepEqual([first.content.toString(), first.fields.messageCount, first.fields.redelivered], ["g1", 1, false]);
  ch.ack(first);
  const second = await ch.get(queue, { noAck: true });
  assert.deepEqual([second.content.toString(), second.fields.messageCount], ["g2", 0]);
  assert.equal(await ch.get(queue), false);
  await connection.close();
});

scenario("large_body_1mib", async (n) => {
  const connection = await connect();
  const ch = await channel(connection, true);
  const queue = n.queue();
  await ch.assertQueue(queue);
  const body = randomBytes(1024 * 1024);
  ch.sendToQueue(queue, body);
  await ch.waitForConfirms();
  const [message] = await collect(ch, queue, 1, { noAck: true });
  assert.ok(message.content.equals(body));
  const longer = Buffer.concat([body, Buffer.from("tail")]);
  ch.sendToQueue(queue, longer);
  await ch.waitForConfirms();
  assert.ok((await ch.get(queue, { noAck: true })).content.equals(longer));
  await connection.close();
});

scenario("empty_body", async (n) => {
  const connection = await connect();
  const ch = await channel(connection, true);
  const queue = n.queue();
  await ch.assertQueue(queue);
  ch.sendToQueue(queue, Buffer.alloc(0), { contentType: "text/plain" });
  ch.sendToQueue(queue, Buffer.alloc(0));
  await ch.waitForConfirms();
  const first = await ch.get(queue, { noAck: true });
  assert.deepEqual([first.properties.contentType, first.content.length], ["text/plain", 0]);
  const [second] = await collect(ch, queue, 1, { noAck: true });
  assert.deepEqual([second.properties.contentType, second.content.length], [undefined, 0]);
  await connection.close();
});

scenario("properties_round_trip", async (n) => {
  const connection = await connect();
  const ch = await channel(connection, true);
  const queue = n.queue();
  await ch.assertQueue(queue);
  // Every field-value type RabbitMQ knows, with amqplib's explicit type notation.
  const headers = {
    bool: true,
    int8: { "!": "int8", value: -8 },
    uint8: { "!": "uint8", value: 200 },
    int16: { "!": "int16", value: -1600 },
    uint16: { "!": "uint16", value: 60000 },
    int32: { "!": "int32", value: -320000 },
    uint32: { "!": "uint32", value: 3200000000 },
    int64: { "!": "int64", value: -(2 ** 40) },
    float: { "!": "float", value: 1.5 },
    double: { "!": "double", value: 2.25 },
    decimal: { "!": "decimal", value: { places: 2, digits: 314 } },
    timestamp: { "!": "timestamp", value: 1700000000 },
    string: "text é",
    bytes: Buffer.from([0, 1, 255]),
    void: null,
    array: [1, "two", [3], { four: 4 }],
    nested: { level2: { level3: { deep: "yes", list: [] } }, n: 7 },
    emptyTable: {},
  };
  const expectedHeaders = {
    ...headers,
    int8: -8, uint8: 200, int16: -1600, uint16: 60000, int32: -320000, uint32: 3200000000,
    int64: -(2 ** 40), float: 1.5, double: 2.25,
  };
  const options = {
    contentType: "application/json",
    contentEncoding: "utf-8",
    headers,
    deliveryMode: 2,
    priority: 7,
    correlationId: "corr-1",
    replyTo: "reply.queue",
    expiration: "600000",
    messageId: "msg-1",
    timestamp: 1700000000,
    type: "interop.type",
    userId: BROKER.user, // RabbitMQ refuses a user-id that is not the connection's user
    appId: "warren-interop",
  };
  ch.sendToQueue(queue, Buffer.from("{}"), options);
  ch.sendToQueue(queue, Buffer.from("{}"), options);
  await ch.waitForConfirms();
  const viaGet = await ch.get(queue, { noAck: true });
  const [viaConsume] = await collect(ch, queue, 1, { noAck: true });
  for (const message of [viaGet, viaConsume]) {
    const { headers: gotHeaders, ...rest } = message.properties;
    const { headers: _sent, ...expectedRest } = options;
    assert.deepEqual(rest, { ...expectedRest, clusterId: undefined });
    assert.deepEqual(gotHeaders, expectedHeaders);
  }
  await connection.close();
});

// -- channels, consumers, queue lifetimes ------------------------------------------------------

scenario("many_channels_one_connection", async (n) => {
  const connection = await connect();
  const queue = n.queue();
  const channels = [];
  for (let i = 0; i < 64; i++) channels.push(await channel(connection, true));
  const numbers = channels.map((ch) => ch.ch);
  assert.equal(new Set(numbers).size, 64);
  await channels[0].assertQueue(queue);
  for (const ch of channels) ch.sendToQueue(queue, Buffer.from(String(ch.ch)));
  await Promise.all(channels.map((ch) => ch.waitForConfirms()));
  for (const ch of channels.filter((_, i) => i % 2 === 0)) await ch.close();
  const survivors = channels.filter((_, i) => i % 2 === 1);
  const bodies = [];
  for (const ch of survivors) bodies.push((await ch.get(queue, { noAck: true })).content.toString());
  bodies.push(...(await drain(survivors[0], queue)));
  assert.deepEqual(bodies.map(Number).sort((a, b) => a - b), [...numbers].sort((a, b) => a - b));
  await connection.close();
});

scenario("consumer_cancel_on_queue_delete", async (n) => {
  const connection = await connect();
  const ch = await channel(connection);
  const queue = n.queue();
  await ch.assertQueue(queue);
  let cancelled = false;
  await ch.consume(queue, (message) => {
    if (message === null) cancelled = true; // amqplib's signal for a server-sent basic.cancel
  });
  const other = await connect();
  await (await channel(other)).deleteQueue(queue);
  await other.close();
  await waitFor(() => cancelled, 5000, "basic.cancel from the server");
  // The channel stays usable.
  await ch.checkExchange("amq.direct");
  await connection.close();
});

scenario("exclusive_queue", async (n) => {
  const owner = await connect();
  const queue = n.queue();
  await (await channel(owner)).assertQueue(queue, { exclusive: true });
  const other = await connect();
  await expectChannelClose((await channel(other)).consume(queue, () => {}), 405, "RESOURCE_LOCKED");
  await owner.close();
  await expectChannelClose((await channel(other)).checkQueue(queue), 404, "NOT_FOUND");
  await other.close();
});

scenario("auto_delete_queue", async (n) => {
  const connection = await connect();
  const ch = await channel(connection);
  const queue = n.queue();
  await ch.assertQueue(queue, { autoDelete: true });
  assert.equal((await ch.checkQueue(queue)).consumerCount, 0);
  const first = await ch.consume(queue, () => {});
  const second = await ch.consume(queue, () => {});
  assert.equal((await ch.checkQueue(queue)).consumerCount, 2);
  await ch.cancel(first.consumerTag);
  assert.equal((await ch.checkQueue(queue)).consumerCount, 1);
  await ch.cancel(second.consumerTag);
  await expectChannelClose(ch.checkQueue(queue), 404, "NOT_FOUND");
  await connection.close();
});

// -- errors the client surfaces ----------------------------------------------------------------

scenario("error_404_missing_queue", async (n) => {
  const connection = await connect();
  const missing = n.queue("missing");
  await expectChannelClose((await channel(connection)).checkQueue(missing), 404, `NOT_FOUND - no queue '${missing}' in vhost '${BROKER.vhost}'`);
  await expectChannelClose((await channel(connection)).consume(missing, () => {}), 404, "NOT_FOUND");
  await expectChannelClose((await channel(connection)).bindQueue(missing, "amq.direct", "k"), 404, "NOT_FOUND");
  // Publishing to a missing exchange closes the channel asynchronously.
  const ch = await channel(connection);
  ch.publish(n.exchange("missing"), "k", Buffer.from("x"));
  await expectChannelClose(ch.assertQueue(n.queue("after")), 404, "NOT_FOUND - no exchange");
  await (await channel(connection)).checkExchange("amq.direct");
  await connection.close();
});

scenario("error_406_redeclare_different", async (n) => {
  const connection = await connect();
  const queue = n.queue();
  const exchange = n.exchange();
  const ch = await channel(connection);
  await ch.assertQueue(queue, { durable: false });
  await ch.assertExchange(exchange, "direct", { durable: false });
  await expectChannelClose(ch.assertQueue(queue, { durable: true }), 406, "PRECONDITION_FAILED - inequivalent arg 'durable'");
  await expectChannelClose((await channel(connection)).assertExchange(exchange, "fanout", { durable: false }), 406, "PRECONDITION_FAILED - inequivalent arg 'type'");
  const acker = await channel(connection);
  acker.ack({ fields: { deliveryTag: 999 } });
  await expectChannelClose(acker.checkQueue(queue), 406, "PRECONDITION_FAILED - unknown delivery tag 999");
  assert.equal((await (await channel(connection)).assertQueue(queue, { durable: false })).queue, queue);
  await connection.close();
});

scenario("error_403_amq_prefix", async (n) => {
  const connection = await connect();
  await expectChannelClose((await channel(connection)).assertQueue(`amq.${n.prefix}`), 403, "ACCESS_REFUSED");
  await expectChannelClose((await channel(connection)).assertExchange(`amq.${n.prefix}`, "direct"), 403, "ACCESS_REFUSED");
  const ch = await channel(connection);
  for (const name of ["amq.direct", "amq.fanout", "amq.topic", "amq.headers", "amq.match"]) await ch.checkExchange(name);
  await connection.close();
});

// -- reconnecting ------------------------------------------------------------------------------

scenario("reconnect_redeclare", async (n) => {
  const queue = n.queue();
  const exchange = n.exchange();
  const declare = async (ch) => {
    await ch.assertExchange(exchange, "topic", { durable: false });
    const ok = await ch.assertQueue(queue);
    await ch.bindQueue(queue, exchange, "k.#");
    return ok;
  };
  const first = await connect();
  let ch = await channel(first, true);
  assert.equal((await declare(ch)).messageCount, 0);
  ch.publish(exchange, "k.1", Buffer.from("before"));
  await ch.waitForConfirms();
  await first.close();
  const second = await connect();
  ch = await channel(second, true);
  assert.equal((await declare(ch)).messageCount, 1);
  ch.publish(exchange, "k.2", Buffer.from("after"));
  await ch.waitForConfirms();
  assert.deepEqual(await drain(ch, queue), ["before", "after"]);
  await second.close();
});

// -- more of the broker's contract: consumers, recover, purge, reply-to, heartbeats ------------

scenario("consumer_round_robin", async (n) => {
  const connection = await connect();
  const ch = await channel(connection);
  const queue = n.queue();
  await ch.assertQueue(queue);
  const got = { a: [], b: [] };
  await ch.consume(queue, (m) => m && got.a.push(m.content.toString()), { noAck: true });
  await ch.consume(queue, (m) => m && got.b.push(m.content.toString()), { noAck: true });
  for (let i = 0; i < 10; i++) ch.sendToQueue(queue, Buffer.from(String(i)));
  await waitFor(() => got.a.length + got.b.length === 10);
  const evens = ["0", "2", "4", "6", "8"];
  const odds = ["1", "3", "5", "7", "9"];
  assert.deepEqual([got.a, got.b].sort(), [evens, odds]);
  await connection.close();
});

scenario("exclusive_consumer_refused", async (n) => {
  const connection = await connect();
  const ch = await channel(connection);
  const queue = n.queue();
  await ch.assertQueue(queue);
  await ch.consume(queue, () => {}, { exclusive: true });
  await expectChannelClose((await channel(connection)).consume(queue, () => {}), 403, "ACCESS_REFUSED");
  await ch.checkQueue(queue); // the exclusive consumer's channel is unaffected
  await connection.close();
});

scenario("basic_recover_redelivers", async (n) => {
  const connection = await connect();
  const ch = await channel(connection);
  const queue = n.queue();
  await ch.assertQueue(queue);
  ch.sendToQueue(queue, Buffer.from("r1"));
  ch.sendToQueue(queue, Buffer.from("r2"));
  const first = await ch.get(queue);
  const second = await ch.get(queue);
  assert.deepEqual([first.fields.redelivered, second.fields.redelivered], [false, false]);
  await ch.recover();
  const again = [await ch.get(queue, { noAck: true }), await ch.get(queue, { noAck: true })];
  assert.deepEqual(again.map((m) => [m.fields.redelivered, m.content.toString()]), [[true, "r1"], [true, "r2"]]);
  await connection.close();
});

scenario("global_prefetch_shared", async (n) => {
  const connection = await connect();
  const ch = await channel(connection, true);
  const [q1, q2] = [n.queue("q1"), n.queue("q2")];
  for (const queue of [q1, q2]) {
    await ch.assertQueue(queue);
    for (let i = 0; i < 5; i++) ch.sendToQueue(queue, Buffer.from(`${queue}-${i}`));
  }
  await ch.waitForConfirms();
  // RabbitMQ 3.x: global=true is one limit shared by all consumers of the channel.
  await ch.prefetch(3, true);
  const got = [];
  await ch.consume(q1, (m) => m && got.push(m));
  await ch.consume(q2, (m) => m && got.push(m));
  const count = () => got.length;
  await settle(count, 3);
  ch.ack(got[got.length - 1], true);
  await settle(count, 6);
  await connection.close();
});

scenario("queue_purge_and_conditional_delete", async (n) => {
  const connection = await connect();
  const ch = await channel(connection, true);
  const queue = n.queue();
  await ch.assertQueue(queue);
  for (let i = 0; i < 3; i++) ch.sendToQueue(queue, Buffer.from("x"));
  await ch.waitForConfirms();
  await expectChannelClose(ch.deleteQueue(queue, { ifEmpty: true }), 406, "PRECONDITION_FAILED");
  const next = await channel(connection, true);
  assert.equal((await next.purgeQueue(queue)).messageCount, 3);
  const { consumerTag } = await next.consume(queue, () => {});
  await expectChannelClose((await channel(connection)).deleteQueue(queue, { ifUnused: true }), 406, "PRECONDITION_FAILED");
  await next.cancel(consumerTag);
  next.sendToQueue(queue, Buffer.from("last"));
  await next.waitForConfirms();
  assert.equal((await next.deleteQueue(queue, { ifUnused: true })).messageCount, 1);
  await expectChannelClose(next.checkQueue(queue), 404, "NOT_FOUND");
  await connection.close();
});

scenario("direct_reply_to", async (n) => {
  const connection = await connect();
  const ch = await channel(connection);
  const requests = n.queue("requests");
  await ch.assertQueue(requests);
  const replies = [];
  await ch.consume("amq.rabbitmq.reply-to", (m) => m && replies.push(m), { noAck: true });
  ch.sendToQueue(requests, Buffer.from("ping"), { replyTo: "amq.rabbitmq.reply-to", correlationId: "c1" });
  const server = await connect();
  const serverChannel = await channel(server);
  let request = false;
  await waitFor(async () => (request = await serverChannel.get(requests, { noAck: true })) !== false);
  assert.equal(request.content.toString(), "ping");
  assert.match(request.properties.replyTo, /^amq\.rabbitmq\.reply-to\./);
  serverChannel.sendToQueue(request.properties.replyTo, Buffer.from("pong"), { correlationId: request.properties.correlationId });
  await waitFor(() => replies.length === 1);
  assert.deepEqual([replies[0].properties.correlationId, replies[0].content.toString()], ["c1", "pong"]);
  await server.close();
  await connection.close();
});

scenario("heartbeat_keeps_idle_connection", async () => {
  // A 1 s heartbeat both ways: amqplib closes the connection when the broker is silent for two
  // intervals, and the broker closes it when it misses amqplib's heartbeats.
  const connection = await amqplib.connect(amqplibOptions({ heartbeat: 1 }), { timeout: 5000 });
  track(() => connection.close());
  let closed = null;
  connection.on("error", (error) => (closed = error));
  connection.on("close", (error) => (closed = error ?? "closed"));
  await sleep(3500);
  assert.equal(closed, null);
  const ch = await channel(connection);
  assert.match((await ch.assertQueue("", { exclusive: true })).queue, /^amq\.gen-/);
  await connection.close();
});

scenario("unacked_requeued_on_connection_close", async (n) => {
  const first = await connect();
  const ch = await channel(first);
  const queue = n.queue();
  await ch.assertQueue(queue);
  ch.sendToQueue(queue, Buffer.from("m1"));
  ch.sendToQueue(queue, Buffer.from("m2"));
  assert.deepEqual((await collect(ch, queue, 2)).map((m) => m.content.toString()), ["m1", "m2"]);
  await first.close();
  const second = await connect();
  const next = await channel(second);
  // Consume rather than get: the requeue may land a moment after close-ok.
  const again = await collect(next, queue, 2, { noAck: true });
  assert.deepEqual(again.map((m) => [m.fields.redelivered, m.content.toString()]), [[true, "m1"], [true, "m2"]]);
  await second.close();
});

// -- RabbitMQ extensions that clients rely on ----------------------------------------------------

scenario("message_ttl_expires", async (n) => {
  const connection = await connect();
  const ch = await channel(connection, true);
  const [perQueue, perMessage] = [n.queue("queue-ttl"), n.queue("message-ttl")];
  await ch.assertQueue(perQueue, { messageTtl: 100 });
  await ch.assertQueue(perMessage);
  ch.sendToQueue(perQueue, Buffer.from("expires"));
  ch.sendToQueue(perMessage, Buffer.from("expires"), { expiration: "100" });
  ch.sendToQueue(perMessage, Buffer.from("stays"), { expiration: "60000" });
  ch.sendToQueue(perMessage, Buffer.from("no-ttl"));
  await ch.waitForConfirms();
  await sleep(400);
  assert.deepEqual(await drain(ch, perQueue), []);
  assert.deepEqual(await drain(ch, perMessage), ["stays", "no-ttl"]);
  await connection.close();
});

scenario("dead_letter_on_reject", async (n) => {
  const connection = await connect();
  const ch = await channel(connection, true);
  const [dlx, dead, work] = [n.exchange("dlx"), n.queue("dead"), n.queue("work")];
  await ch.assertExchange(dlx, "direct", { durable: false });
  await ch.assertQueue(dead);
  await ch.bindQueue(dead, dlx, "dead");
  await ch.assertQueue(work, { deadLetterExchange: dlx, deadLetterRoutingKey: "dead" });
  ch.sendToQueue(work, Buffer.from("poison"), { messageId: "p1" });
  await ch.waitForConfirms();
  ch.reject(await ch.get(work), false);
  let message = false;
  await waitFor(async () => (message = await ch.get(dead, { noAck: true })) !== false);
  assert.deepEqual([message.content.toString(), message.properties.messageId], ["poison", "p1"]);
  const [death] = message.properties.headers["x-death"];
  assert.deepEqual([death.queue, death.reason, death.count, death.exchange, death["routing-keys"]], [work, "rejected", 1, "", [work]]);
  await connection.close();
});

scenario("consumer_priority", async (n) => {
  const connection = await connect();
  const ch = await channel(connection);
  const queue = n.queue();
  await ch.assertQueue(queue);
  const got = { low: [], high: [] };
  await ch.consume(queue, (m) => m && got.low.push(m.content.toString()), { noAck: true });
  await ch.consume(queue, (m) => m && got.high.push(m.content.toString()), { noAck: true, priority: 10 });
  for (let i = 0; i < 6; i++) ch.sendToQueue(queue, Buffer.from(String(i)));
  await waitFor(() => got.low.length + got.high.length === 6);
  // An active higher-priority consumer with credit gets every message.
  assert.deepEqual(got, { low: [], high: ["0", "1", "2", "3", "4", "5"] });
  await connection.close();
});

scenario("quorum_delivery_limit", async (n) => {
  const connection = await connect();
  const ch = await channel(connection, true);
  const [dlx, dead, work] = [n.exchange("dlx"), n.queue("dead"), n.queue("work")];
  await ch.assertExchange(dlx, "fanout", { durable: false });
  await ch.assertQueue(dead);
  await ch.bindQueue(dead, dlx, "");
  await ch.assertQueue(work, { durable: true, deadLetterExchange: dlx, arguments: { "x-queue-type": "quorum", "x-delivery-limit": 2 } });
  ch.sendToQueue(work, Buffer.from("poison"));
  await ch.waitForConfirms();
  // RabbitMQ applies a quorum queue's nacks asynchronously: poll for each redelivery.
  const poll = async (queue) => {
    let message = false;
    await waitFor(async () => (message = await ch.get(queue)) !== false, 1000, "a message").catch(() => {});
    return message;
  };
  const seen = [];
  for (let message = await poll(work); message; message = await poll(work)) {
    seen.push([message.fields.redelivered, message.properties.headers["x-delivery-count"]]);
    ch.nack(message, false, true);
  }
  // Delivered limit + 1 times (basic.get counts from 0), then dead-lettered.
  assert.deepEqual(seen, [[false, 0], [true, 1], [true, 2]]);
  const message = await poll(dead);
  ch.ack(message);
  assert.equal(message.content.toString(), "poison");
  const headers = message.properties.headers;
  assert.equal(headers["x-delivery-count"], undefined);
  const [death] = headers["x-death"];
  assert.deepEqual([death.reason, death.queue, death.count], ["delivery_limit", work, 1]);
  await connection.close();
});

// -- the example program in interop/node/examples -----------------------------------------------

scenario("example_publish_consume", async () => {
  const { execFile } = await import("node:child_process");
  const { fileURLToPath } = await import("node:url");
  const example = fileURLToPath(new URL("../examples/publish_consume.mjs", import.meta.url));
  const stdout = await new Promise((resolve, reject) => {
    execFile(process.execPath, [example, brokerUrl()], { timeout: 20000 }, (error, out, err) =>
      error ? reject(new Error(`${error.message}\n${err}`)) : resolve(out),
    );
  });
  assert.match(stdout, /^received 'hello from amqplib' from amq\.gen-/);
});

scenario("server_generated_consumer_tag", async (n) => {
  const connection = await connect();
  const ch = await channel(connection);
  const queue = n.queue();
  await ch.assertQueue(queue);
  // amqplib sends an empty consumer tag unless given one: the broker names the consumer.
  const first = await ch.consume(queue, () => {});
  const second = await ch.consume(queue, () => {});
  assert.match(first.consumerTag, /^amq\.ctag-/);
  assert.notEqual(first.consumerTag, second.consumerTag);
  await ch.cancel(first.consumerTag);
  assert.equal((await ch.checkQueue(queue)).consumerCount, 1);
  await connection.close();
});
