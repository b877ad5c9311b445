"""Unmodified redis-py against a running Potok: streams, groups, Pub/Sub, over RESP2 and RESP3.
Usage: python3 tests/redis_py_smoke.py PORT (driven by tests/redis_py.rs)."""
import sys
import time

import redis

port = int(sys.argv[1])
for proto in (2, 3):
    r = redis.Redis(port=port, protocol=proto, decode_responses=True)
    key = f"py{proto}"
    ids = [r.xadd(key, {"n": i}) for i in range(5)]
    assert r.xlen(key) == 5
    assert [e[0] for e in r.xrange(key, count=2)] == ids[:2]
    assert r.xrevrange(key, count=1)[0][0] == ids[-1]
    assert r.xread({key: ids[3]})  # entries after the 4th
    r.xgroup_create(key, "g", id="0")
    assert r.xreadgroup("g", "c1", {key: ">"}, count=2)
    assert r.xack(key, "g", ids[0]) == 1
    assert r.xpending(key, "g")["pending"] == 1
    assert r.xinfo_stream(key)["length"] == 5
    assert r.xinfo_groups(key)[0]["name"] == "g"
    assert r.xautoclaim(key, "g", "c2", 0, "0")[0] == "0-0"
    pubsub = r.pubsub()
    pubsub.subscribe("ch")
    assert pubsub.get_message(timeout=2)["type"] == "subscribe"
    r.publish("ch", "hi")
    message = None
    deadline = time.time() + 5
    while message is None and time.time() < deadline:
        message = pubsub.get_message(timeout=1)
    assert message and message["data"] == "hi", message
    pubsub.close()
    assert r.type(key) == "stream"
    assert r.client_setname("me") and r.client_getname() == "me"
    assert "redis_version" in r.info("server")
    with r.pipeline(transaction=True) as pipe:
        pipe.xadd(key, {"n": "tx"}).xlen(key)
        assert pipe.execute()[1] == 6
    print(f"redis-py {redis.__version__} RESP{proto}: ok")
