//! The node's Pub/Sub hub: which proxies subscribe to what, and a queue of
//! deliveries per proxy that the proxy long-polls (see `redraft_common::pubsub`).
//!
//! Queues are bounded ([`QUEUE_LIMIT`]; the oldest deliveries go first, as
//! Redis drops a client whose output buffer overflows) and a proxy that has not
//! polled for [`PROXY_EXPIRY`] is forgotten, so a dead proxy costs nothing for long.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redraft_common::glob;
use redraft_common::pubsub::{Delivery, PubSubRequest, PubSubResponse, Subscriptions};
use tokio::sync::Notify;

/// Most undelivered messages held for one proxy.
pub const QUEUE_LIMIT: usize = 100_000;
/// A proxy that has not polled for this long is forgotten.
pub const PROXY_EXPIRY: Duration = Duration::from_secs(30);
/// Most deliveries returned by one poll.
const POLL_BATCH: usize = 1024;
/// Longest a poll may wait.
const MAX_WAIT: Duration = Duration::from_secs(10);

struct Proxy {
    subscriptions: Subscriptions,
    version: u64,
    queue: VecDeque<(u64, Delivery)>,
    next: u64,
    seen: Instant,
    wake: Arc<Notify>,
}

/// Every proxy's subscriptions and pending deliveries.
#[derive(Default)]
pub struct Hub {
    proxies: Mutex<HashMap<u64, Proxy>>,
}

impl Hub {
    fn proxies(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Proxy>> {
        self.proxies.lock().expect("pubsub lock")
    }

    /// Serves one request.
    pub async fn serve(&self, request: PubSubRequest) -> PubSubResponse {
        match request {
            PubSubRequest::Register {
                proxy,
                version,
                subscriptions,
            } => {
                let mut proxies = self.proxies();
                proxies.retain(|_, p| p.seen.elapsed() < PROXY_EXPIRY);
                let entry = proxies.entry(proxy).or_insert_with(|| Proxy {
                    subscriptions: Subscriptions::default(),
                    version: 0,
                    queue: VecDeque::new(),
                    next: 1,
                    seen: Instant::now(),
                    wake: Arc::new(Notify::new()),
                });
                if version >= entry.version {
                    entry.subscriptions = subscriptions;
                    entry.version = version;
                }
                entry.seen = Instant::now();
                PubSubResponse::Registered
            }
            PubSubRequest::Publish {
                channel,
                payload,
                sharded,
            } => PubSubResponse::Count(self.publish(&channel, &payload, sharded)),
            PubSubRequest::Poll { proxy, acked, wait_ms } => self.poll(proxy, acked, wait_ms).await,
            PubSubRequest::Channels { pattern, sharded } => {
                let mut names: Vec<Vec<u8>> = self
                    .proxies()
                    .values()
                    .flat_map(|p| {
                        list(&p.subscriptions, sharded)
                            .iter()
                            .map(|(c, _)| c.clone())
                            .collect::<Vec<_>>()
                    })
                    .filter(|c| pattern.as_ref().is_none_or(|p| glob::matches(p, c)))
                    .collect();
                names.sort();
                names.dedup();
                PubSubResponse::Channels(names)
            }
            PubSubRequest::NumSub { channels, sharded } => {
                let proxies = self.proxies();
                PubSubResponse::Counts(
                    channels
                        .iter()
                        .map(|c| {
                            proxies
                                .values()
                                .map(|p| count(list(&p.subscriptions, sharded), c))
                                .sum()
                        })
                        .collect(),
                )
            }
            PubSubRequest::NumPat => {
                let mut patterns: Vec<Vec<u8>> = self
                    .proxies()
                    .values()
                    .flat_map(|p| {
                        p.subscriptions
                            .patterns
                            .iter()
                            .map(|(c, _)| c.clone())
                            .collect::<Vec<_>>()
                    })
                    .collect();
                patterns.sort();
                patterns.dedup();
                PubSubResponse::Count(patterns.len() as i64)
            }
        }
    }

    /// Whether any proxy subscribes to something a keyspace notification
    /// could reach (a pattern, or a `__keyspace@`/`__keyevent@` channel):
    /// without, shards do not even collect them.
    pub fn wants_events(&self) -> bool {
        self.proxies().values().any(|p| {
            !p.subscriptions.patterns.is_empty()
                || p.subscriptions
                    .channels
                    .iter()
                    .any(|(c, _)| c.starts_with(b"__keyspace@") || c.starts_with(b"__keyevent@"))
        })
    }

    /// Publishes a keyspace notification of `class` (Redis's letter) for
    /// `event` on `key`, on both of Redis's channels; proxies filter them by
    /// the cluster's `notify-keyspace-events`.
    pub fn notify(&self, class: u8, event: &[u8], key: &[u8]) {
        let keyspace = [&b"__keyspace@0__:"[..], key].concat();
        let keyevent = [&b"__keyevent@0__:"[..], event].concat();
        self.publish_as(&keyspace, event, false, Some(class));
        self.publish_as(&keyevent, key, false, Some(class));
    }

    /// Queues the message for every matching subscription; returns the number of
    /// receiving clients (a client counts once per matching subscription, as in Redis).
    fn publish(&self, channel: &[u8], payload: &[u8], sharded: bool) -> i64 {
        self.publish_as(channel, payload, sharded, None)
    }

    /// [`Self::publish`], the deliveries marked as notifications of `class`.
    fn publish_as(&self, channel: &[u8], payload: &[u8], sharded: bool, class: Option<u8>) -> i64 {
        let mut receivers = 0;
        for proxy in self.proxies().values_mut() {
            let mut deliveries = Vec::new();
            let subscribers = count(list(&proxy.subscriptions, sharded), channel);
            if subscribers > 0 {
                receivers += subscribers;
                deliveries.push(if sharded {
                    Delivery::ShardMessage {
                        channel: channel.to_vec(),
                        payload: payload.to_vec(),
                    }
                } else {
                    Delivery::Message {
                        channel: channel.to_vec(),
                        payload: payload.to_vec(),
                    }
                });
            }
            if !sharded {
                for (pattern, n) in &proxy.subscriptions.patterns {
                    if glob::matches(pattern, channel) {
                        receivers += i64::from(*n);
                        deliveries.push(Delivery::PatternMessage {
                            pattern: pattern.clone(),
                            channel: channel.to_vec(),
                            payload: payload.to_vec(),
                        });
                    }
                }
            }
            if deliveries.is_empty() {
                continue;
            }
            for delivery in deliveries {
                let delivery = match class {
                    Some(class) => Delivery::Event {
                        class,
                        delivery: Box::new(delivery),
                    },
                    None => delivery,
                };
                proxy.queue.push_back((proxy.next, delivery));
                proxy.next += 1;
            }
            while proxy.queue.len() > QUEUE_LIMIT {
                proxy.queue.pop_front();
            }
            proxy.wake.notify_one();
        }
        receivers
    }

    async fn poll(&self, proxy: u64, acked: u64, wait_ms: u64) -> PubSubResponse {
        let deadline = Instant::now() + Duration::from_millis(wait_ms).min(MAX_WAIT);
        loop {
            let wake = {
                let mut proxies = self.proxies();
                let Some(entry) = proxies.get_mut(&proxy) else {
                    return PubSubResponse::UnknownProxy;
                };
                entry.seen = Instant::now();
                while entry.queue.front().is_some_and(|(seq, _)| *seq <= acked) {
                    entry.queue.pop_front();
                }
                if !entry.queue.is_empty() || Instant::now() >= deadline {
                    let items: Vec<(u64, Delivery)> = entry.queue.iter().take(POLL_BATCH).cloned().collect();
                    let last = items.last().map_or(acked, |(seq, _)| *seq);
                    return PubSubResponse::Deliveries {
                        last,
                        items: items.into_iter().map(|(_, d)| d).collect(),
                    };
                }
                entry.wake.clone()
            };
            let _ = tokio::time::timeout_at(deadline.into(), wake.notified()).await;
        }
    }
}

fn list(subscriptions: &Subscriptions, sharded: bool) -> &[(Vec<u8>, u32)] {
    if sharded {
        &subscriptions.shard_channels
    } else {
        &subscriptions.channels
    }
}

fn count(list: &[(Vec<u8>, u32)], channel: &[u8]) -> i64 {
    list.iter()
        .filter(|(c, _)| c == channel)
        .map(|(_, n)| i64::from(*n))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subs(channels: &[(&str, u32)], patterns: &[(&str, u32)]) -> Subscriptions {
        let own = |l: &[(&str, u32)]| l.iter().map(|(c, n)| (c.as_bytes().to_vec(), *n)).collect();
        Subscriptions {
            channels: own(channels),
            patterns: own(patterns),
            shard_channels: Vec::new(),
        }
    }

    #[tokio::test]
    async fn publishes_reach_every_matching_proxy_in_order() {
        let hub = Hub::default();
        let register = |proxy, subscriptions| PubSubRequest::Register {
            proxy,
            version: 1,
            subscriptions,
        };
        hub.serve(register(1, subs(&[("news", 2)], &[]))).await;
        hub.serve(register(2, subs(&[], &[("n*", 1)]))).await;
        let publish = |payload: &str| PubSubRequest::Publish {
            channel: b"news".to_vec(),
            payload: payload.as_bytes().to_vec(),
            sharded: false,
        };
        assert!(matches!(hub.serve(publish("a")).await, PubSubResponse::Count(3)));
        hub.serve(publish("b")).await;
        let PubSubResponse::Deliveries { last, items } = hub.poll(1, 0, 0).await else {
            panic!()
        };
        assert_eq!(items.len(), 2);
        assert_eq!(
            items[1],
            Delivery::Message {
                channel: b"news".to_vec(),
                payload: b"b".to_vec()
            }
        );
        // Acknowledged deliveries are not sent again; an idle poll waits then answers empty.
        let PubSubResponse::Deliveries { items, .. } = hub.poll(1, last, 10).await else {
            panic!()
        };
        assert!(items.is_empty());
        let PubSubResponse::Deliveries { items, .. } = hub.poll(2, 0, 0).await else {
            panic!()
        };
        assert!(matches!(&items[0], Delivery::PatternMessage { pattern, .. } if pattern == b"n*"));
        assert!(matches!(hub.poll(9, 0, 0).await, PubSubResponse::UnknownProxy));
        let PubSubResponse::Counts(counts) = hub
            .serve(PubSubRequest::NumSub {
                channels: vec![b"news".to_vec(), b"other".to_vec()],
                sharded: false,
            })
            .await
        else {
            panic!()
        };
        assert_eq!(counts, vec![2, 0]);
    }

    #[tokio::test]
    async fn a_waiting_poll_wakes_on_publish() {
        let hub = Arc::new(Hub::default());
        hub.serve(PubSubRequest::Register {
            proxy: 1,
            version: 1,
            subscriptions: subs(&[("c", 1)], &[]),
        })
        .await;
        let waiter = {
            let hub = hub.clone();
            tokio::spawn(async move { hub.poll(1, 0, 5_000).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        hub.serve(PubSubRequest::Publish {
            channel: b"c".to_vec(),
            payload: b"x".to_vec(),
            sharded: false,
        })
        .await;
        let answer = tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("woken")
            .unwrap();
        assert!(matches!(answer, PubSubResponse::Deliveries { items, .. } if items.len() == 1));
    }
}
