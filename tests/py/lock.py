"""A Redlock-style lock on redis-py: workers take a lock with SET NX PX and
release it with the compare-and-delete script (registered with
`register_script`, so it runs by EVALSHA and falls back to EVAL), and under
the lock do a read-modify-write of a counter that only the lock protects.
Run by tests/scripting.rs: the counter must end at workers * rounds.

Usage: python lock.py <proxy port> <workers> <rounds>. Prints
"counter N releases M foreign-release R" and exits non-zero on a lost update.
"""
import sys
import threading
import time
import uuid

import redis

port, workers, rounds = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
LOCK, COUNTER = "{lock}:resource", "{lock}:counter"
RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
else
    return 0
end
"""
client = redis.Redis(port=port, decode_responses=True)
client.delete(LOCK, COUNTER)
release = client.register_script(RELEASE)
releases = []
errors = []


def worker():
    r = redis.Redis(port=port, decode_responses=True)
    mine = 0
    try:
        for _ in range(rounds):
            token = uuid.uuid4().hex
            while not r.set(LOCK, token, nx=True, px=10000):
                time.sleep(0.001)
            value = int(r.get(COUNTER) or 0)
            r.set(COUNTER, value + 1)
            mine += release(keys=[LOCK], args=[token], client=r)
    except Exception as e:  # reported below
        errors.append(repr(e))
    releases.append(mine)


threads = [threading.Thread(target=worker) for _ in range(workers)]
for t in threads:
    t.start()
for t in threads:
    t.join()
# A release with someone else's token must not delete the lock.
client.set(LOCK, "owner")
foreign = release(keys=[LOCK], args=["intruder"])
counter = int(client.get(COUNTER) or 0)
print(f"counter {counter} releases {sum(releases)} foreign-release {foreign} lock {client.get(LOCK)}")
if errors:
    print("errors:", errors[:5])
sys.exit(0 if counter == workers * rounds and not errors else 1)
