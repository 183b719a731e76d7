"""Runs router cases against a real RabbitMQ (127.0.0.1:5672, guest/guest) and prints what it
does: topic matches, headers matches, and the reply code and text of refused operations. The
answers are the expectations in ../routing.rs. Objects are prefixed `router.` and deleted.

    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install pika
    /tmp/venv/bin/python crates/router/tests/rabbitmq/compare.py
"""
import pika, json, decimal, struct
import pika.data as pdata
class I8(int): pass
class U8(int): pass
class I16(int): pass
class F32(float): pass
class TS(int): pass
_orig = pdata.encode_value
def encode_value(pieces, value):
    if isinstance(value, I8): pieces.append(struct.pack('>cb', b'b', value)); return 2
    if isinstance(value, U8): pieces.append(struct.pack('>cB', b'B', value)); return 2
    if isinstance(value, I16): pieces.append(struct.pack('>ch', b's', value)); return 3
    if isinstance(value, TS): pieces.append(struct.pack('>cQ', b'T', value)); return 9
    if isinstance(value, F32): pieces.append(struct.pack('>cf', b'f', value)); return 5
    if isinstance(value, float): pieces.append(struct.pack('>cd', b'd', value)); return 9
    return _orig(pieces, value)
pdata.encode_value = encode_value
params = pika.ConnectionParameters('127.0.0.1', 5672, credentials=pika.PlainCredentials('guest','guest'))
conn = pika.BlockingConnection(params)
ch = conn.channel()

def topic_cases():
    cases = [
      ("a.b.c","a.b.c"),("a.b.c","a.b"),("a.*.c","a.b.c"),("a.*.c","a.c"),("a.#.c","a.c"),("a.#","a"),
      ("#.a","a"),("*","a"),("*","a.b"),("a*.b","a*.b"),("a*.b","ab.b"),("#",""),("#",".."),("#.#",""),
      ("*.#",""),("*.#","a"),("#.*",""),("#.*","a"),("*.*.#","a"),("a.#.#.b","a.b"),("a.#.b.#.c","a.c.b.c"),
      ("",""),("*",""),("",". "),("","."),("*.*","."),("*","."),("a..b","a..b"),("a.*.b","a..b"),("a.b","a..b"),
      ("a.#.b","a..b"),(".a",".a"),("*.a",".a"),("a.","a."),("a.*","a."),("a","a."),("a.#","a."),("#.","a."),("#.","a"),
      ("#.", ""), ("#.",".") , ("*.#.*","a"), ("*.#.*","a.b"), ("a.*.#", "a"), ("#.#.a.#", "a"),
    ]
    pats = sorted(set(p for p,_ in cases))
    ch.exchange_declare('router.t', 'topic', auto_delete=False)
    qs = {}
    for i,p in enumerate(pats):
        q = 'router.tq%d' % i
        ch.queue_declare(q, exclusive=True)
        ch.queue_bind(q, 'router.t', routing_key=p)
        qs[p] = q
    res = []
    for (p,k) in cases:
        for q in qs.values(): ch.queue_purge(q)
        ch.basic_publish('router.t', k, b'x')
        conn.sleep(0.05)
        m = ch.basic_get(qs[p], auto_ack=True)[0] is not None
        res.append((p,k,m))
    ch.exchange_delete('router.t')
    return res

for r in topic_cases(): print("TOPIC", repr(r[0]), repr(r[1]), r[2])

def headers_case(args, headers):
    ch.exchange_declare('router.h', 'headers')
    ch.queue_declare('router.hq', exclusive=True)
    ch.queue_bind('router.hq', 'router.h', arguments=args)
    ch.queue_purge('router.hq')
    ch.basic_publish('router.h', '', b'x', pika.BasicProperties(headers=headers))
    conn.sleep(0.05)
    m = ch.basic_get('router.hq', auto_ack=True)[0] is not None
    ch.queue_unbind('router.hq', 'router.h', arguments=args)
    ch.exchange_delete('router.h')
    return m

hc = [
  ({'a': 1}, {'a': 1.0}),
  ({'a': 1}, {'a': 1.5}),
  ({'a': 2**40}, {'a': 2**40}),
  ({'a': 1}, {'a': '1'}),
  ({'a': 'ab'}, {'a': b'ab'}),
  ({'a': None}, {'a': 'z'}),
  ({'a': 'z'}, {'a': None}),
  ({'a': True}, {'a': 1}),
  ({'x-match':'any'}, {'z': 1}),
  ({'x-match':'all'}, {}),
  ({'x-match':'all'}, None),
  ({'x-match':'any', 'x-foo': 1}, {'x-foo': 1}),
  ({'x-match':'all', 'x-foo': 1, 'a': 1}, {'a': 1}),
  ({'x-match':'all-with-x', 'x-foo': 1, 'a': 1}, {'a': 1}),
  ({'x-match':'all-with-x', 'x-foo': 1, 'a': 1}, {'a': 1, 'x-foo': 1}),
  ({'x-match':'any-with-x', 'x-foo': 1}, {'x-foo': 1}),
  ({'x-match':'all-with-x'}, {}),
  ({'a': decimal.Decimal('1.00')}, {'a': decimal.Decimal('1.00')}),
  ({'a': decimal.Decimal('1.00')}, {'a': decimal.Decimal('1.0')}),
  ({'a': [1,2]}, {'a': [1,2]}),
  ({'a': {'b': 1}}, {'a': {'b': 1}}),
  ({'a': 1.0}, {'a': 1}),
  ({'a': I8(1)}, {'a': 2**40 - 2**40 + 1}),
  ({'a': I8(1)}, {'a': U8(1)}),
  ({'a': I16(7)}, {'a': TS(7)}),
  ({'a': F32(0.5)}, {'a': 0.5}),
  ({'a': [I8(1)]}, {'a': [1]}),
  ({'a': [1]}, {'a': [1]}),
  ({'a': 'x'}, {'a': 'x', 'a': 'y'}),
]
for a,h in hc: print("HEADERS", a, h, headers_case(a,h))

def err(fn):
    global conn, ch
    try:
        fn(); return "ok"
    except pika.exceptions.ChannelClosedByBroker as e:
        ch = conn.channel(); return "channel %s %s" % (e.reply_code, e.reply_text)
    except pika.exceptions.ConnectionClosedByBroker as e:
        conn = pika.BlockingConnection(params); ch = conn.channel(); return "conn %s %s" % (e.reply_code, e.reply_text)

print("DEL missing", err(lambda: ch.exchange_delete('router.nope')))
print("DEL amq.direct", err(lambda: ch.exchange_delete('amq.direct')))
print("DECL amq.mine", err(lambda: ch.exchange_declare('amq.mine', 'direct')))
print("DECL amq.direct eq", err(lambda: ch.exchange_declare('amq.direct', 'direct', durable=True)))
print("DECL default", err(lambda: ch.exchange_declare('', 'direct')))
print("DECL bad type", err(lambda: ch.exchange_declare('router.bt', 'x-nope')))
ch.exchange_declare('router.x', 'direct', durable=False)
print("INEQ type", err(lambda: ch.exchange_declare('router.x', 'topic')))
print("INEQ durable", err(lambda: ch.exchange_declare('router.x', 'direct', durable=True)))
print("INEQ ad", err(lambda: ch.exchange_declare('router.x', 'direct', auto_delete=True)))
print("INEQ ae", err(lambda: ch.exchange_declare('router.x', 'direct', arguments={'alternate-exchange':'ae'})))
print("EQ other arg", err(lambda: ch.exchange_declare('router.x', 'direct', arguments={'x-foo':'ae'})))
print("AE bad type", err(lambda: ch.exchange_declare('router.aebad', 'direct', arguments={'alternate-exchange': 5})))
ch.queue_declare('router.q', exclusive=True)
print("UNBIND missing", err(lambda: ch.queue_unbind('router.q', 'router.x', 'nokey')))
print("UNBIND missing q", err(lambda: ch.queue_unbind('router.noq', 'router.x', 'nokey')))
print("UNBIND missing x", err(lambda: ch.queue_unbind('router.q', 'router.nox', 'nokey')))
ch.queue_declare('router.q', exclusive=True)
print("BIND missing both", err(lambda: ch.queue_bind('router.noq', 'router.nox', 'k')))
print("BIND missing q", err(lambda: ch.queue_bind('router.noq', 'router.x', 'k')))
print("BIND default", err(lambda: ch.queue_bind('router.q', '', 'k')))
print("UNBIND default", err(lambda: ch.queue_unbind('router.q', '', 'router.q')))
ch.exchange_declare('router.h2', 'headers')
ch.queue_declare('router.q', exclusive=True)
print("BIND bad xmatch", err(lambda: ch.queue_bind('router.q', 'router.h2', arguments={'x-match':'some'})))
print("BIND bad xmatch type", err(lambda: ch.queue_bind('router.q', 'router.h2', arguments={'x-match':5})))
ch.queue_declare('router.q', exclusive=True)
ch.queue_bind('router.q', 'router.x', 'k')
print("DEL in use", err(lambda: ch.exchange_delete('router.x', if_unused=True)))
ch.exchange_declare('router.int', 'fanout', internal=True)
print("PUB internal", err(lambda: (ch.basic_publish('router.int', 'k', b'x'), ch.queue_declare('router.q', exclusive=True))))
for x in ['router.x','router.h2','router.int']:
    try: ch.exchange_delete(x)
    except Exception as e: print("cleanup", x, e); ch = conn.channel()
conn.close()
