"""Second batch against a real RabbitMQ: exact decimal comparison, alternate exchanges per
exchange, CC keys travelling along exchange-to-exchange bindings, auto-delete cascades.
Same set-up as compare.py.
"""
import pika, struct
import pika.data as pdata
class Dec:
    def __init__(s, scale, v): s.scale, s.v = scale, v
_orig = pdata.encode_value
def encode_value(pieces, value):
    if isinstance(value, Dec): pieces.append(struct.pack('>cBi', b'D', value.scale, value.v)); return 6
    return _orig(pieces, value)
pdata.encode_value = encode_value
params = pika.ConnectionParameters('127.0.0.1', 5672, credentials=pika.PlainCredentials('guest','guest'))
conn = pika.BlockingConnection(params)
ch = conn.channel()
def get(q):
    conn.sleep(0.1)
    n = 0
    while ch.basic_get(q, auto_ack=True)[0] is not None: n += 1
    return n
# decimal
ch.exchange_declare('router.h', 'headers')
ch.queue_declare('router.hq', exclusive=True)
ch.queue_bind('router.hq', 'router.h', arguments={'a': Dec(2, 100)})
ch.basic_publish('router.h', '', b'x', pika.BasicProperties(headers={'a': Dec(1, 10)}))
ch.basic_publish('router.h', '', b'x', pika.BasicProperties(headers={'a': Dec(2, 100)}))
print("decimal 2/100 vs 1/10 then 2/100 ->", get('router.hq'), "(1 = only exact)")
ch.exchange_delete('router.h')
# AE per exchange
ch.exchange_declare('router.x', 'direct', arguments={'alternate-exchange': 'router.xae'})
ch.exchange_declare('router.y', 'direct', arguments={'alternate-exchange': 'router.yae'})
ch.exchange_declare('router.xae', 'fanout'); ch.exchange_declare('router.yae', 'fanout')
ch.queue_declare('router.xaeq', exclusive=True); ch.queue_declare('router.yaeq', exclusive=True)
ch.queue_bind('router.xaeq', 'router.xae'); ch.queue_bind('router.yaeq', 'router.yae')
ch.exchange_bind('router.y', 'router.x', 'k')
ch.basic_publish('router.x', 'k', b'x')
print("AE per exchange: xae", get('router.xaeq'), "yae", get('router.yaeq'))
# CC through e2e
ch.exchange_declare('router.b', 'direct'); ch.exchange_declare('router.c', 'topic')
ch.queue_declare('router.q3', exclusive=True)
ch.exchange_bind('router.c', 'router.b', 'k.1')
ch.queue_bind('router.q3', 'router.c', 'k.2')
ch.basic_publish('router.b', 'k.1', b'x', pika.BasicProperties(headers={'CC': ['k.2']}))
print("CC travels e2e: q3 got", get('router.q3'))
# AE on default? publish to internal via e2e
# auto-delete cascade
ch.exchange_declare('router.ada', 'fanout', auto_delete=True)
ch.exchange_declare('router.adb', 'fanout', auto_delete=True)
ch.queue_declare('router.adq', exclusive=True)
ch.exchange_bind('router.adb', 'router.ada')
ch.queue_bind('router.adq', 'router.adb')
ch.queue_delete('router.adq')
for x in ['router.adb', 'router.ada']:
    try:
        ch.exchange_declare(x, 'fanout', passive=True); print(x, "still exists")
    except pika.exceptions.ChannelClosedByBroker as e:
        ch = conn.channel(); print(x, "gone", e.reply_code)
# unbind of e2e to auto-delete: deleting destination exchange cascades to source?
ch.exchange_declare('router.s', 'fanout', auto_delete=True)
ch.exchange_declare('router.d', 'fanout')
ch.exchange_bind('router.d', 'router.s')
ch.exchange_delete('router.d')
try:
    ch.exchange_declare('router.s', 'fanout', passive=True, auto_delete=True); print("router.s still exists after dest deleted")
except pika.exceptions.ChannelClosedByBroker as e:
    ch = conn.channel(); print("router.s gone after its destination deleted", e.reply_code)
for x in ['router.x','router.y','router.xae','router.yae','router.b','router.c','router.s','router.ada','router.adb']:
    ch.exchange_delete(x)
conn.close()
