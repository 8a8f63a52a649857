"""A job queue on redis-py, the way RQ and Celery use Redis: producers RPUSH
jobs, workers block on BRPOP. Run by tests/blocking.rs while it moves the
queue's shard leadership around: every job must be taken exactly once.

Usage: python job_queue.py <proxy port> <jobs> <workers>. Prints "started"
once workers block, then exits non-zero on a lost or repeated job.
"""
import sys
import threading
import time

import redis

port, jobs, workers = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
queue = "{jobs}:queue"
redis.Redis(port=port).delete(queue)

taken = []
taken_lock = threading.Lock()
done = threading.Event()


def worker():
    r = redis.Redis(port=port, decode_responses=True, socket_timeout=30)
    while not done.is_set():
        item = r.brpop(queue, timeout=1)
        if item is not None:
            with taken_lock:
                taken.append(item[1])
                if len(taken) >= jobs:
                    done.set()


threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
for t in threads:
    t.start()
time.sleep(0.5)
print("started", flush=True)

producer = redis.Redis(port=port, socket_timeout=30)
for i in range(jobs):
    producer.rpush(queue, f"job-{i}")
    if i % 20 == 0:
        time.sleep(0.02)

done.wait(timeout=60)
done.set()
for t in threads:
    t.join(timeout=10)
left = producer.llen(queue)
seen = set(taken)
repeated = len(taken) - len(seen)
missing = [f"job-{i}" for i in range(jobs) if f"job-{i}" not in seen]
print(f"taken {len(taken)} of {jobs}, repeated {repeated}, missing {len(missing)}, left in queue {left}")
if repeated or missing or left:
    print("missing:", missing[:10])
    sys.exit(1)
