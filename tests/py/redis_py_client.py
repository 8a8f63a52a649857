"""redis-py (from PyPI) against a Redraft proxy: pipelines, transactions with
WATCH under contention, RESP3, the collection types, and cross-shard refusal.

Usage: python redis_py_client.py <proxy port> <another proxy's port>. Exits
non-zero on any failure.
"""
import sys
import threading

import redis

port = int(sys.argv[1])
other_port = int(sys.argv[2])
r = redis.Redis(port=port, decode_responses=True)

# Pipelines: many commands in one round trip, replies in order.
pipe = r.pipeline(transaction=False)
for i in range(200):
    pipe.set(f"pipe:{i}", i)
    pipe.incr(f"pipe:{i}")
replies = pipe.execute()
assert replies == [x for i in range(200) for x in (True, i + 1)], replies[:6]
assert r.mget([f"pipe:{i}" for i in range(200)]) == [str(i + 1) for i in range(200)]

# A transaction: queued, then applied as one step.
with r.pipeline() as tx:
    tx.set("{acct}a", 100).set("{acct}b", 0).decrby("{acct}a", 30).incrby("{acct}b", 30)
    tx.mget("{acct}a", "{acct}b")
    assert tx.execute() == [True, True, 70, 30, ["70", "30"]]

# WATCH-based compare-and-set from several clients: every increment counts once.
def bump(pipe):
    value = int(pipe.get("{cnt}counter") or 0)
    pipe.multi()
    pipe.set("{cnt}counter", value + 1)

def worker():
    client = redis.Redis(port=port)
    for _ in range(25):
        client.transaction(bump, "{cnt}counter")

threads = [threading.Thread(target=worker) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
assert r.get("{cnt}counter") == "100", r.get("{cnt}counter")

# Keys of one transaction in different shards: refused, nothing applied.
try:
    with r.pipeline() as tx:
        for i in range(20):
            tx.set(f"spread:{i}", i)
        tx.execute()
    raise AssertionError("a transaction over many shards must be refused")
except redis.exceptions.ClusterCrossSlotError:
    pass
assert r.exists(*[f"spread:{i}" for i in range(20)]) == 0

# Collection types through the client library's own reply parsing.
r.hset("user:1", mapping={"name": "ada", "age": "36"})
assert r.hgetall("user:1") == {"name": "ada", "age": "36"}
assert r.hincrby("user:1", "age", 1) == 37
r.rpush("queue", "a", "b", "c")
assert r.lpop("queue") == "a" and r.lrange("queue", 0, -1) == ["b", "c"]
r.sadd("tags", "x", "y", "z")
assert r.smembers("tags") == {"x", "y", "z"}
assert r.spop("tags") in {"x", "y", "z"} and r.scard("tags") == 2
r.zadd("board", {"ann": 10, "bob": 20.5, "cid": 15})
assert r.zrange("board", 0, -1, withscores=True) == [("ann", 10.0), ("cid", 15.0), ("bob", 20.5)]
assert r.zrevrank("board", "bob") == 0
assert sorted(r.scan_iter(match="user:*")) == ["user:1"]

# RESP3: maps, sets and doubles arrive as such.
r3 = redis.Redis(port=port, protocol=3, decode_responses=True)
assert r3.hgetall("user:1") == {"name": "ada", "age": "37"}
assert r3.zscore("board", "bob") == 20.5
assert r3.smembers("tags") == set(r.smembers("tags"))
assert r3.client_id() != r.client_id()
# Cluster-mode clients: the proxy answers CLUSTER SLOTS as one node that owns
# every slot, so RedisCluster sends everything to it.
cluster = redis.RedisCluster(host="127.0.0.1", port=port, decode_responses=True)
cluster.set("cluster:a", "1")
assert cluster.get("cluster:a") == "1"
assert cluster.mget_nonatomic(["cluster:a", "cluster:missing"]) == ["1", None]
assert cluster.keyslot("foo") == 12182
cluster.close()

# Pub/Sub: subscribed at one proxy, published at the other, in RESP2 and RESP3.
for protocol in (2, 3):
    client = redis.Redis(port=port, protocol=protocol, decode_responses=True)
    pubsub = client.pubsub()
    pubsub.subscribe(f"events{protocol}")
    pubsub.psubscribe("alerts.*")
    confirmations = [pubsub.get_message(timeout=5) for _ in range(2)]
    assert [m["type"] for m in confirmations] == ["subscribe", "psubscribe"], confirmations
    publisher = redis.Redis(port=other_port, decode_responses=True)
    assert publisher.publish(f"events{protocol}", "hello") == 1
    assert publisher.publish("alerts.disk", "full") == 1
    # The two channels have different home nodes: Redraft orders one
    # publisher's messages per channel, not across channels
    # (docs/decisions.md, Pub/Sub), so they may arrive either way round.
    received = sorted((pubsub.get_message(timeout=5) for _ in range(2)), key=lambda m: m["type"])
    assert received[0]["type"] == "message" and received[0]["data"] == "hello", received
    assert received[1]["type"] == "pmessage" and received[1]["channel"] == "alerts.disk", received
    assert publisher.pubsub_numsub(f"events{protocol}") == [(f"events{protocol}", 1)]
    pubsub.close()
print("redis-py checks passed")
