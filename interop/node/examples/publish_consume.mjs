// Publish one message to Warren (or any AMQP 0-9-1 broker) with amqplib and consume it back.
//
//   node interop/node/examples/publish_consume.mjs [AMQP_URL]
//
// AMQP_URL defaults to amqp://guest:guest@127.0.0.1:5672/%2F (Warren's and RabbitMQ's default).

import amqplib from "amqplib";

const url = process.argv[2] ?? "amqp://guest:guest@127.0.0.1:5672/%2F";
const connection = await amqplib.connect(url);
const channel = await connection.createConfirmChannel();
// A server-named, exclusive queue: it disappears when this program disconnects.
const { queue } = await channel.assertQueue("", { exclusive: true });
channel.sendToQueue(queue, Buffer.from("hello from amqplib"));
await channel.waitForConfirms();
const received = await new Promise((resolve, reject) => {
  const timer = setTimeout(() => reject(new Error("no message within 5 s")), 5000);
  channel.consume(queue, (message) => {
    clearTimeout(timer);
    channel.ack(message);
    resolve(message.content.toString());
  });
});
console.log(`received '${received}' from ${queue}`);
await connection.close();
