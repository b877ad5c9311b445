#!/usr/bin/env python3
"""Scripted AMQP stream-queue session: prints each step's outcome; see README.md."""
import pika, sys, time
port = int(sys.argv[1])
c = pika.BlockingConnection(pika.ConnectionParameters(host='127.0.0.1', port=port))
def attempt(label, f):
    global c
    ch = c.channel()
    try:
        print(f"{label}: ok {f(ch)}")
    except pika.exceptions.ChannelClosedByBroker as e:
        print(f"{label}: channel {e.reply_code} {e.reply_text}")
    except pika.exceptions.ConnectionClosedByBroker as e:
        print(f"{label}: CONNECTION {e.reply_code} {e.reply_text}")
        c = pika.BlockingConnection(pika.ConnectionParameters(host='127.0.0.1', port=port))
    except Exception as e:
        print(f"{label}: other {type(e).__name__} {e}")
st = {'x-queue-type': 'stream'}
attempt("non-durable", lambda ch: ch.queue_declare('s0', arguments=st))
attempt("exclusive", lambda ch: ch.queue_declare('s1', durable=True, exclusive=True, arguments=st))
attempt("auto-delete", lambda ch: ch.queue_declare('s2', durable=True, auto_delete=True, arguments=st))
attempt("bad max-age", lambda ch: ch.queue_declare('s3', durable=True, arguments={'x-queue-type':'stream','x-max-age':'1x'}))
attempt("declare", lambda ch: ch.queue_declare('s', durable=True, arguments={'x-queue-type':'stream','x-max-age':'1h'}).method.message_count)
def pub(ch):
    ch.confirm_delivery()
    for i in range(5): ch.basic_publish('', 's', f'm{i}'.encode())
    return 'published'
attempt("publish", pub)
attempt("get", lambda ch: ch.basic_get('s'))
attempt("consume no qos", lambda ch: ch.basic_consume('s', lambda *a: None))
attempt("consume autoack", lambda ch: (ch.basic_qos(prefetch_count=10), ch.basic_consume('s', lambda *a: None, auto_ack=True)))
def consume(offset):
    def f(ch):
        got = []
        def cb(ch_, m, p, b):
            got.append((b, p.headers.get('x-stream-offset'), m.redelivered))
            ch_.basic_ack(m.delivery_tag)
        ch.basic_qos(prefetch_count=10)
        ch.basic_consume('s', cb, arguments={'x-stream-offset': offset})
        t = time.time()
        while time.time() - t < 1.0:
            c.process_data_events(time_limit=0.1)
        return got
    return f
attempt("offset first", consume('first'))
attempt("offset 2", consume(2))
attempt("offset last", consume('last'))
attempt("offset next", consume('next'))
attempt("offset bad", consume('bogus'))
attempt("redeclare", lambda ch: ch.queue_declare('s', durable=True, arguments={'x-queue-type':'stream','x-max-age':'1h'}).method.message_count)
attempt("purge", lambda ch: ch.queue_purge('s'))
