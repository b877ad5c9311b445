#!/usr/bin/env python3
"""Load and check many entities for benches/scale.sh.

  scale_load.py streams-load PORT N [P] XADD P0 .. P(N-1) (P defaults to "s:"), one entry each
  scale_load.py streams-check PORT N [P] every Pi holds exactly its one entry
  scale_load.py queues-load PORT N      durable queues q:0 .. q:N-1, one persistent message each
  scale_load.py queues-check PORT N     every q:i holds exactly its one message (read with
                                        basic.get, then requeued)
"""
import sys

import pika
import redis

BATCH = 10_000
WORKERS = 4


def streams_load(port, n, prefix):
    r = redis.Redis(port=port)
    for start in range(0, n, BATCH):
        p = r.pipeline(transaction=False)
        for i in range(start, min(n, start + BATCH)):
            p.xadd(f"{prefix}{i}", {"f": str(i)})
        p.execute()


def streams_check(port, n, prefix):
    r = redis.Redis(port=port)
    assert r.dbsize() >= n, (r.dbsize(), n)
    for start in range(0, n, BATCH):
        p = r.pipeline(transaction=False)
        keys = range(start, min(n, start + BATCH))
        for i in keys:
            p.xrange(f"{prefix}{i}")
        for i, entries in zip(keys, p.execute()):
            assert len(entries) == 1 and entries[0][1] == {b"f": str(i).encode()}, (i, entries)


def channel(port):
    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
    return connection, connection.channel()


def queues_part(port, n, worker, check):
    connection, ch = channel(port)
    for i in range(worker, n, WORKERS):
        name = f"q:{i}"
        if check:
            count = ch.queue_declare(name, passive=True).method.message_count
            assert count == 1, (name, count)
            method, _, body = ch.basic_get(name, auto_ack=False)
            assert method is not None and body == str(i).encode(), (name, body)
            ch.basic_reject(method.delivery_tag, requeue=True)
        else:
            ch.queue_declare(name, durable=True)
            ch.basic_publish("", name, str(i).encode(),
                             properties=pika.BasicProperties(delivery_mode=2))
    if not check:
        # One confirmed publish at the end: everything before it on this connection is stored.
        ch.confirm_delivery()
        ch.queue_declare("barrier", durable=True)
        ch.basic_publish("", "barrier", b"x", properties=pika.BasicProperties(delivery_mode=2))
    connection.close()


def queues(port, n, check):
    import multiprocessing
    procs = [multiprocessing.Process(target=queues_part, args=(port, n, w, check))
             for w in range(WORKERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        assert p.exitcode == 0, p.exitcode


if __name__ == "__main__":
    what, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    prefix = sys.argv[4] if len(sys.argv) > 4 else "s:"
    {
        "streams-load": lambda: streams_load(port, n, prefix),
        "streams-check": lambda: streams_check(port, n, prefix),
        "queues-load": lambda: queues(port, n, False),
        "queues-check": lambda: queues(port, n, True),
    }[what]()
