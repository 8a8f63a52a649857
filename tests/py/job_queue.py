"""A job queue on redis-py, the way RQ and Celery use Redis: producers RPUSH
jobs, workers block on BRPOP. Run by tests/blocking.rs while it moves the
queue's shard leadership around: every job must be taken exactly once.

Usage: python job_queue.py <proxy port> <jobs> <workers> [tolerant]. Prints
"started" once workers block, then exits non-zero on a lost or repeated job.
With `tolerant` (a member is killed meanwhile), a push that fails is retried
under a new name and the failed one counted as uncertain: it may or may not
have been queued, but must not be taken twice, and every push that succeeded
must be taken.
"""
import sys
import threading
import time

import redis

port, jobs, workers = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
tolerant = len(sys.argv) > 4 and sys.argv[4] == "tolerant"
queue = "{jobs}:queue"
redis.Redis(port=port).delete(queue)

taken = []
taken_lock = threading.Lock()
done = threading.Event()
pushed = set()
uncertain = set()
errors = []


def worker():
    # redis-py 8 gives up on a reply after 5 s by default and sends the
    # command again on a new connection: an element popped for the abandoned
    # connection is lost, as with Redis. Workers wait as long as it takes.
    r = redis.Redis(port=port, decode_responses=True, socket_timeout=None)
    while not done.is_set():
        try:
            item = r.brpop(queue, timeout=1)
        except redis.RedisError as e:
            # The proxy answers blocked clients itself across leader changes:
            # an error here is a failure of the test.
            print(f"worker error: {e!r}", flush=True)
            errors.append(repr(e))
            continue
        if item is not None:
            with taken_lock:
                taken.append(item[1])
                if not tolerant and len(taken) >= jobs:
                    done.set()


threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
for t in threads:
    t.start()
time.sleep(0.5)
print("started", flush=True)

producer = redis.Redis(port=port, socket_timeout=30)
for i in range(jobs):
    attempt = 0
    while True:
        name = f"job-{i}" if attempt == 0 else f"job-{i}-retry{attempt}"
        try:
            producer.rpush(queue, name)
            pushed.add(name)
            break
        except redis.RedisError as e:
            if not tolerant:
                raise
            print(f"push of {name} failed: {e}", flush=True)
            uncertain.add(name)
            attempt += 1
            time.sleep(0.2)
    if i % 20 == 0:
        time.sleep(0.02)

deadline = time.time() + 60
while time.time() < deadline and not done.is_set():
    with taken_lock:
        if pushed <= set(taken):
            break
    time.sleep(0.1)
time.sleep(2 if tolerant else 0)  # stragglers: uncertain pushes that were queued
done.set()
for t in threads:
    t.join(timeout=10)
left = producer.llen(queue)
seen = set(taken)
repeated = len(taken) - len(seen)
missing = sorted(pushed - seen)
print(f"taken {len(taken)} of {len(pushed)} pushed ({len(uncertain)} uncertain), "
      f"repeated {repeated}, missing {len(missing)}, left in queue {left}")
unexpected = seen - pushed - uncertain
if repeated or missing or left or unexpected or errors:
    print("missing:", missing[:10], "unexpected:", sorted(unexpected)[:10], "worker errors:", errors[:5])
    sys.exit(1)
