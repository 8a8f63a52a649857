//! Pub/Sub for this proxy's clients: SUBSCRIBE, PSUBSCRIBE, SSUBSCRIBE and
//! their UNSUBSCRIBEs, PUBLISH, SPUBLISH and PUBSUB.
//!
//! The proxy registers the union of its clients' subscriptions (with client
//! counts) at every shard node before confirming a SUBSCRIBE, and long-polls
//! every node for deliveries, which it hands to the subscribed connections.
//! PUBLISH goes to the channel's home node, which knows every proxy's
//! subscriptions, so a message published at one proxy reaches subscribers on all
//! of them (see `redraft_common::pubsub`). Like Redis's, delivery is at most
//! once: a subscriber that is gone, or a node that fails, loses messages.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redraft_common::ops::Bytes;
use redraft_common::pubsub::{Delivery, PubSubRequest, PubSubResponse, Subscriptions};
use redraft_common::resp::Frame;
use redraft_common::routing::NodeState;
use redraft_common::wire::{NodeRequest, NodeResponse};
use tokio::sync::mpsc;

use crate::reply::Error;
use crate::route::Router;
use crate::session::Session;

/// How long a node holds a poll open when it has nothing to deliver.
const POLL_WAIT: Duration = Duration::from_secs(5);
/// Deadline of one Pub/Sub call (a poll's wait included).
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// Which subscription namespace.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    /// SUBSCRIBE
    Channel,
    /// PSUBSCRIBE
    Pattern,
    /// SSUBSCRIBE
    Shard,
}

impl Kind {
    fn index(self) -> usize {
        self as usize
    }
}

/// A connection's subscriptions and the inbox its messages arrive in.
#[derive(Default)]
pub struct ClientSubscriptions {
    names: [BTreeSet<Bytes>; 3],
    /// Messages for this connection, once it has subscribed.
    pub inbox: Option<mpsc::UnboundedReceiver<Frame>>,
}

impl ClientSubscriptions {
    /// Whether the connection holds any subscription.
    pub fn active(&self) -> bool {
        self.names.iter().any(|n| !n.is_empty())
    }

    /// Redis's count in (un)subscribe confirmations: channels and patterns, or
    /// shard channels for the S-commands.
    fn count(&self, kind: Kind) -> i64 {
        match kind {
            Kind::Shard => self.names[Kind::Shard.index()].len() as i64,
            _ => (self.names[Kind::Channel.index()].len() + self.names[Kind::Pattern.index()].len()) as i64,
        }
    }
}

#[derive(Default)]
struct Local {
    /// Bumped on every registration sent, so nodes keep the newest.
    version: u64,
    /// Subscribers of each name, per kind.
    subscribers: [BTreeMap<Bytes, BTreeSet<u64>>; 3],
    inboxes: HashMap<u64, mpsc::UnboundedSender<Frame>>,
}

/// This proxy's Pub/Sub state.
pub struct PubSub {
    id: u64,
    router: Arc<Router>,
    local: Mutex<Local>,
    polling: Mutex<HashSet<SocketAddr>>,
    /// The cluster's `notify-keyspace-events`, read from the placement
    /// driver while this proxy has subscribers (see [`Self::follow_events`]).
    keyspace_events: Mutex<Vec<u8>>,
    /// Whether the task that follows `notify-keyspace-events` runs.
    following_events: std::sync::atomic::AtomicBool,
}

/// How often a proxy with subscribers rereads `notify-keyspace-events`.
const EVENTS_REFRESH: Duration = Duration::from_millis(500);

impl PubSub {
    /// Pub/Sub over `router`'s nodes, with a fresh proxy id.
    pub fn new(router: Arc<Router>) -> Arc<PubSub> {
        Arc::new(PubSub {
            id: rand::random(),
            router,
            local: Mutex::new(Local::default()),
            polling: Mutex::new(HashSet::new()),
            keyspace_events: Mutex::new(Vec::new()),
            following_events: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Keeps [`Self::keyspace_events`] current while anyone subscribes: a
    /// CONFIG SET of `notify-keyspace-events` at any proxy reaches this one's
    /// subscribers within [`EVENTS_REFRESH`].
    async fn follow_events(self: Arc<Self>) {
        loop {
            if let Ok(flags) = crate::config::keyspace_events(&self.router).await {
                *self.keyspace_events.lock().expect("events lock") = flags.into_bytes();
            }
            tokio::time::sleep(EVENTS_REFRESH).await;
            let idle = || self.local().subscribers.iter().all(|s| s.is_empty());
            if idle() {
                self.following_events.store(false, Ordering::SeqCst);
                // A subscription made meanwhile saw the task running and
                // relies on it.
                if idle() || self.following_events.swap(true, Ordering::SeqCst) {
                    return;
                }
            }
        }
    }

    fn local(&self) -> std::sync::MutexGuard<'_, Local> {
        self.local.lock().expect("pubsub lock")
    }

    /// Shard nodes that may hold subscriptions, sorted by address.
    fn nodes(&self) -> Vec<SocketAddr> {
        let table = self.router.table();
        let mut nodes: Vec<SocketAddr> = table
            .nodes
            .values()
            .filter(|n| n.state != NodeState::Removed)
            .filter_map(|n| n.addr.parse().ok())
            .collect();
        nodes.sort();
        nodes
    }

    async fn call(&self, node: SocketAddr, request: PubSubRequest) -> Result<PubSubResponse, Error> {
        let request = NodeRequest::PubSub(request);
        match self.router.endpoint().call(node, &request, CALL_TIMEOUT).await {
            Ok(NodeResponse::PubSub(answer)) => Ok(answer),
            Ok(other) => Err(Error::ClusterDown(format!("unexpected Pub/Sub answer {other:?}"))),
            Err(e) => Err(Error::ClusterDown(format!("Pub/Sub node {node} unreachable: {e}"))),
        }
    }

    /// The current subscriptions, with a new registration version.
    fn registration(&self) -> PubSubRequest {
        let mut local = self.local();
        local.version += 1;
        let counted = |kind: Kind| {
            local.subscribers[kind.index()]
                .iter()
                .map(|(name, clients)| (name.clone(), clients.len() as u32))
                .collect()
        };
        let subscriptions = Subscriptions {
            channels: counted(Kind::Channel),
            patterns: counted(Kind::Pattern),
            shard_channels: counted(Kind::Shard),
        };
        PubSubRequest::Register {
            proxy: self.id,
            version: local.version,
            subscriptions,
        }
    }

    /// Registers the current subscriptions at every node (starting a poll loop
    /// for nodes not polled yet). Nodes that fail are registered again by their
    /// poll loop.
    async fn sync(self: &Arc<Self>) {
        let registration = self.registration();
        let nodes = self.nodes();
        if !self.following_events.swap(true, Ordering::SeqCst) {
            tokio::spawn(self.clone().follow_events());
        }
        for &node in &nodes {
            if self.polling.lock().expect("polling lock").insert(node) {
                tokio::spawn(self.clone().poll_loop(node));
            }
        }
        let calls = nodes.into_iter().map(|node| self.call(node, registration.clone()));
        futures::future::join_all(calls).await;
    }

    async fn poll_loop(self: Arc<Self>, node: SocketAddr) {
        let mut acked = 0;
        loop {
            let request = PubSubRequest::Poll {
                proxy: self.id,
                acked,
                wait_ms: POLL_WAIT.as_millis() as u64,
            };
            match self.call(node, request).await {
                Ok(PubSubResponse::Deliveries { last, items }) => {
                    acked = last;
                    for item in items {
                        self.deliver(item);
                    }
                }
                Ok(PubSubResponse::UnknownProxy) => {
                    acked = 0;
                    if self.call(node, self.registration()).await.is_err() {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
                _ => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }

    fn deliver(&self, delivery: Delivery) {
        if let Delivery::Event { class, delivery } = delivery {
            let channel = match delivery.as_ref() {
                Delivery::Message { channel, .. } | Delivery::PatternMessage { channel, .. } => channel,
                _ => return,
            };
            let flags = self.keyspace_events.lock().expect("events lock").clone();
            if redraft_common::pubsub::event_enabled(&flags, class, channel) {
                self.deliver(*delivery);
            }
            return;
        }
        let bulk = |b: &[u8]| Frame::Bulk(b.to_vec());
        let (kind, name, frame) = match &delivery {
            Delivery::Message { channel, payload } => (
                Kind::Channel,
                channel,
                Frame::Push(vec![bulk(b"message"), bulk(channel), bulk(payload)]),
            ),
            Delivery::PatternMessage {
                pattern,
                channel,
                payload,
            } => (
                Kind::Pattern,
                pattern,
                Frame::Push(vec![bulk(b"pmessage"), bulk(pattern), bulk(channel), bulk(payload)]),
            ),
            Delivery::ShardMessage { channel, payload } => (
                Kind::Shard,
                channel,
                Frame::Push(vec![bulk(b"smessage"), bulk(channel), bulk(payload)]),
            ),
            Delivery::Event { .. } => return,
        };
        let local = self.local();
        for client in local.subscribers[kind.index()].get(name).into_iter().flatten() {
            if let Some(inbox) = local.inboxes.get(client) {
                let _ = inbox.send(frame.clone());
            }
        }
    }

    /// Drops every subscription of a closed connection.
    pub fn forget(self: &Arc<Self>, client: u64) {
        let changed = {
            let mut local = self.local();
            let had = local.inboxes.remove(&client).is_some();
            for subscribers in local.subscribers.iter_mut() {
                subscribers.retain(|_, clients| {
                    clients.remove(&client);
                    !clients.is_empty()
                });
            }
            had
        };
        if changed {
            let this = self.clone();
            tokio::spawn(async move { this.sync().await });
        }
    }

    /// The home node of a channel: where PUBLISH and PUBSUB queries go.
    fn home(&self, channel: &[u8]) -> Result<SocketAddr, Error> {
        let nodes = self.nodes();
        if nodes.is_empty() {
            return Err(Error::ClusterDown("no shard node to publish through".into()));
        }
        Ok(nodes[(xxhash_rust::xxh3::xxh3_64(channel) % nodes.len() as u64) as usize])
    }
}

fn bulk(bytes: &[u8]) -> Frame {
    Frame::Bulk(bytes.to_vec())
}

/// Runs a Pub/Sub command for `session` (name lowercase in `args[0]`).
pub async fn execute(pubsub: &Arc<PubSub>, session: &mut Session, name: &str, args: &[Bytes]) -> Frame {
    let result = match name {
        "subscribe" => subscribe(pubsub, session, Kind::Channel, &args[1..]).await,
        "psubscribe" => subscribe(pubsub, session, Kind::Pattern, &args[1..]).await,
        "ssubscribe" => subscribe(pubsub, session, Kind::Shard, &args[1..]).await,
        "unsubscribe" => unsubscribe(pubsub, session, Kind::Channel, &args[1..]).await,
        "punsubscribe" => unsubscribe(pubsub, session, Kind::Pattern, &args[1..]).await,
        "sunsubscribe" => unsubscribe(pubsub, session, Kind::Shard, &args[1..]).await,
        "publish" | "spublish" => publish(pubsub, &args[1], &args[2], name == "spublish").await,
        _ => introspect(pubsub, args).await,
    };
    result.unwrap_or_else(|e| crate::reply::to_frame(&e))
}

fn confirmation(verb: &str, name: Option<&[u8]>, count: i64) -> Frame {
    Frame::Push(vec![
        bulk(verb.as_bytes()),
        name.map_or(Frame::Null, bulk),
        Frame::Integer(count),
    ])
}

const VERBS: [&str; 3] = ["subscribe", "psubscribe", "ssubscribe"];
/// Redis's names in unsubscribe confirmations (`punsubscribe`, not `unpsubscribe`).
const UNSUBSCRIBE_VERBS: [&str; 3] = ["unsubscribe", "punsubscribe", "sunsubscribe"];

async fn subscribe(pubsub: &Arc<PubSub>, session: &mut Session, kind: Kind, names: &[Bytes]) -> Result<Frame, Error> {
    let client = session.client.id;
    {
        let mut local = pubsub.local();
        if session.pubsub.inbox.is_none() {
            let (sender, receiver) = mpsc::unbounded_channel();
            local.inboxes.insert(client, sender);
            session.pubsub.inbox = Some(receiver);
        }
        for name in names {
            local.subscribers[kind.index()]
                .entry(name.clone())
                .or_default()
                .insert(client);
        }
    }
    pubsub.sync().await;
    let mut replies = Vec::with_capacity(names.len());
    for name in names {
        session.pubsub.names[kind.index()].insert(name.clone());
        replies.push(confirmation(
            VERBS[kind.index()],
            Some(name),
            session.pubsub.count(kind),
        ));
    }
    Ok(Frame::Replies(replies))
}

async fn unsubscribe(pubsub: &Arc<PubSub>, session: &mut Session, kind: Kind, names: &[Bytes]) -> Result<Frame, Error> {
    let client = session.client.id;
    let verb = UNSUBSCRIBE_VERBS[kind.index()];
    let names: Vec<Bytes> = if names.is_empty() {
        session.pubsub.names[kind.index()].iter().cloned().collect()
    } else {
        names.to_vec()
    };
    if names.is_empty() {
        return Ok(confirmation(verb, None, session.pubsub.count(kind)));
    }
    {
        let mut local = pubsub.local();
        for name in &names {
            if let Some(clients) = local.subscribers[kind.index()].get_mut(name) {
                clients.remove(&client);
                if clients.is_empty() {
                    local.subscribers[kind.index()].remove(name);
                }
            }
        }
    }
    pubsub.sync().await;
    let mut replies = Vec::with_capacity(names.len());
    for name in &names {
        session.pubsub.names[kind.index()].remove(name);
        replies.push(confirmation(verb, Some(name), session.pubsub.count(kind)));
    }
    Ok(Frame::Replies(replies))
}

async fn publish(pubsub: &Arc<PubSub>, channel: &[u8], payload: &[u8], sharded: bool) -> Result<Frame, Error> {
    let request = PubSubRequest::Publish {
        channel: channel.to_vec(),
        payload: payload.to_vec(),
        sharded,
    };
    match pubsub.call(pubsub.home(channel)?, request).await? {
        PubSubResponse::Count(n) => Ok(Frame::Integer(n)),
        other => Err(Error::ClusterDown(format!("unexpected PUBLISH answer {other:?}"))),
    }
}

/// PUBSUB CHANNELS | NUMSUB | NUMPAT | SHARDCHANNELS | SHARDNUMSUB | HELP.
async fn introspect(pubsub: &Arc<PubSub>, args: &[Bytes]) -> Result<Frame, Error> {
    let sub = args[1].to_ascii_lowercase();
    let wrong_arity = || {
        Ok(Frame::error(format!(
            "ERR wrong number of arguments for 'pubsub|{}' command",
            String::from_utf8_lossy(&sub)
        )))
    };
    // Every node knows every proxy's subscriptions: ask one.
    let node = pubsub.home(b"")?;
    match sub.as_slice() {
        b"channels" | b"shardchannels" => {
            if args.len() > 3 {
                return wrong_arity();
            }
            let request = PubSubRequest::Channels {
                pattern: args.get(2).cloned(),
                sharded: sub == b"shardchannels",
            };
            match pubsub.call(node, request).await? {
                PubSubResponse::Channels(names) => Ok(Frame::Array(names.iter().map(|n| bulk(n)).collect())),
                other => Err(Error::ClusterDown(format!("unexpected answer {other:?}"))),
            }
        }
        b"numsub" | b"shardnumsub" => {
            let channels = args[2..].to_vec();
            let request = PubSubRequest::NumSub {
                channels: channels.clone(),
                sharded: sub == b"shardnumsub",
            };
            match pubsub.call(node, request).await? {
                // A flat array in RESP3 too, as Redis answers.
                PubSubResponse::Counts(counts) => Ok(Frame::Array(
                    channels
                        .iter()
                        .zip(counts)
                        .flat_map(|(c, n)| [bulk(c), Frame::Integer(n)])
                        .collect(),
                )),
                other => Err(Error::ClusterDown(format!("unexpected answer {other:?}"))),
            }
        }
        b"numpat" if args.len() == 2 => match pubsub.call(node, PubSubRequest::NumPat).await? {
            PubSubResponse::Count(n) => Ok(Frame::Integer(n)),
            other => Err(Error::ClusterDown(format!("unexpected answer {other:?}"))),
        },
        b"numpat" => wrong_arity(),
        b"help" => Ok(Frame::Array(
            [
                "PUBSUB <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                "CHANNELS [<pattern>]",
                "NUMPAT",
                "NUMSUB [<channel> ...]",
                "SHARDCHANNELS [<pattern>]",
                "SHARDNUMSUB [<shardchannel> ...]",
                "HELP",
            ]
            .iter()
            .map(|l| Frame::Simple(l.to_string()))
            .collect(),
        )),
        _ => Ok(Frame::error(format!(
            "ERR unknown subcommand '{}'. Try PUBSUB HELP.",
            String::from_utf8_lossy(&args[1])
        ))),
    }
}

/// Commands a RESP2 connection may send while it holds subscriptions.
pub fn allowed_while_subscribed(name: &str) -> bool {
    matches!(
        name,
        "subscribe"
            | "psubscribe"
            | "ssubscribe"
            | "unsubscribe"
            | "punsubscribe"
            | "sunsubscribe"
            | "ping"
            | "quit"
            | "reset"
    )
}
