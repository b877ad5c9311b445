#!/usr/bin/env python3
"""Scripted AMQP session (declarations, errors): prints each step's outcome; see README.md."""
import pika, sys, time
port = int(sys.argv[1])
def conn():
    return pika.BlockingConnection(pika.ConnectionParameters(host='127.0.0.1', port=port))
c = conn()
def attempt(label, f):
    global c
    ch = c.channel()
    try:
        r = f(ch)
        print(f"{label}: ok {r}")
    except pika.exceptions.ChannelClosedByBroker as e:
        print(f"{label}: channel {e.reply_code} {e.reply_text}")
    except pika.exceptions.ConnectionClosedByBroker as e:
        print(f"{label}: CONNECTION {e.reply_code} {e.reply_text}")
        c = conn()
    except Exception as e:
        print(f"{label}: other {type(e).__name__} {e}")
        c = conn()
attempt("declare q", lambda ch: ch.queue_declare('cq').method.queue)
attempt("redeclare durable", lambda ch: ch.queue_declare('cq', durable=True))
attempt("redeclare autodelete", lambda ch: ch.queue_declare('cq', auto_delete=True))
attempt("redeclare args", lambda ch: ch.queue_declare('cq', arguments={'x-max-length': 10}))
attempt("passive missing q", lambda ch: ch.queue_declare('nope', passive=True))
attempt("passive missing x", lambda ch: ch.exchange_declare('nopex', passive=True))
attempt("declare x", lambda ch: ch.exchange_declare('cx', 'direct'))
attempt("redeclare x type", lambda ch: ch.exchange_declare('cx', 'fanout'))
attempt("redeclare x durable", lambda ch: ch.exchange_declare('cx', 'direct', durable=True))
attempt("unknown type", lambda ch: ch.exchange_declare('cy', 'weird'))
attempt("amq. exchange", lambda ch: ch.exchange_declare('amq.mine', 'direct'))
attempt("amq.direct redeclare", lambda ch: ch.exchange_declare('amq.direct', 'direct', durable=True))
attempt("amq.direct redeclare wrong", lambda ch: ch.exchange_declare('amq.direct', 'fanout', durable=True))
attempt("amq. queue", lambda ch: ch.queue_declare('amq.q'))
attempt("bind default", lambda ch: ch.queue_bind('cq', '', 'k'))
attempt("bind missing queue", lambda ch: ch.queue_bind('nope', 'cx', 'k'))
attempt("bind missing exchange", lambda ch: ch.queue_bind('cq', 'nopex', 'k'))
attempt("delete default x", lambda ch: ch.exchange_delete(''))
attempt("delete amq.direct", lambda ch: ch.exchange_delete('amq.direct'))
attempt("delete missing x", lambda ch: ch.exchange_delete('nopex'))
attempt("delete missing q", lambda ch: ch.queue_delete('nope').method.message_count)
def pub_missing(ch):
    ch.basic_publish('nopex', 'k', b'x'); time.sleep(0.3); ch.queue_declare('cq', passive=True)
attempt("publish missing x", pub_missing)
def unknown_tag(ch):
    ch.basic_ack(42); time.sleep(0.3); ch.queue_declare('cq', passive=True)
attempt("ack unknown tag", unknown_tag)
def double_ack(ch):
    ch.basic_publish('', 'cq', b'x'); time.sleep(0.2)
    m = ch.basic_get('cq'); ch.basic_ack(m[0].delivery_tag); ch.basic_ack(m[0].delivery_tag); time.sleep(0.3); ch.queue_declare('cq', passive=True)
attempt("double ack", double_ack)
def ifempty(ch):
    ch.basic_publish('', 'cq', b'x'); time.sleep(0.2)
    ch.queue_delete('cq', if_empty=True)
attempt("delete if_empty", ifempty)
def ifunused(ch):
    ch.basic_consume('cq', lambda *a: None)
    c2 = c.channel(); c2.queue_delete('cq', if_unused=True)
attempt("delete if_unused", ifunused)
def xifunused(ch):
    ch.queue_bind('cq', 'cx', 'k'); ch.exchange_delete('cx', if_unused=True)
attempt("x delete if_unused", xifunused)
def excl_consumer(ch):
    ch.queue_declare('eq'); ch.basic_consume('eq', lambda *a: None, exclusive=True)
    c2 = c.channel(); c2.basic_consume('eq', lambda *a: None)
attempt("exclusive consumer", excl_consumer)
def reuse_tag(ch):
    ch.basic_consume('eq2' if False else 'cq', lambda *a: None, consumer_tag='t1')
    ch.basic_consume('cq', lambda *a: None, consumer_tag='t1')
attempt("reuse tag", reuse_tag)
attempt("get empty default", lambda ch: ch.basic_get('', auto_ack=True))
attempt("recover false", lambda ch: ch.basic_recover(requeue=False))
def txconfirm(ch):
    ch.tx_select(); ch.confirm_delivery()
attempt("tx then confirm", txconfirm)
def confirmtx(ch):
    ch.confirm_delivery(); ch.tx_select()
attempt("confirm then tx", confirmtx)
attempt("commit without select", lambda ch: ch.tx_commit())
attempt("qos", lambda ch: ch.basic_qos(prefetch_count=5, global_qos=True))
attempt("flow false", lambda ch: ch.flow(False))
attempt("queue type stream nondurable", lambda ch: ch.queue_declare('sq', arguments={'x-queue-type': 'stream'}))
attempt("unknown vhost", lambda ch: pika.BlockingConnection(pika.ConnectionParameters(host='127.0.0.1', port=port, virtual_host='nov')))
