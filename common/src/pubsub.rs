//! Pub/Sub messages between proxies and shard nodes.
//!
//! Every proxy registers the channels and patterns its clients subscribe to at
//! every shard node, with how many of its clients hold each. A PUBLISH goes to
//! the channel's home node (a hash of the channel over the nodes, so one
//! publisher's messages to one channel stay in order); that node queues a
//! delivery for every proxy with a matching subscription and answers the number
//! of receivers. Each proxy long-polls every node for its deliveries and hands
//! them to its clients. Nothing is replicated or stored: like Redis, Pub/Sub is
//! fire and forget.

use serde::{Deserialize, Serialize};

use crate::ops::Bytes;

/// What one proxy's clients subscribe to, with the number of clients each.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Subscriptions {
    /// SUBSCRIBE channels.
    pub channels: Vec<(Bytes, u32)>,
    /// PSUBSCRIBE patterns.
    pub patterns: Vec<(Bytes, u32)>,
    /// SSUBSCRIBE channels (a separate namespace, as in Redis).
    pub shard_channels: Vec<(Bytes, u32)>,
}

/// A message for a proxy's clients.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Delivery {
    /// To subscribers of `channel`.
    Message { channel: Bytes, payload: Bytes },
    /// To subscribers of `pattern`, which matched `channel`.
    PatternMessage {
        pattern: Bytes,
        channel: Bytes,
        payload: Bytes,
    },
    /// To SSUBSCRIBE subscribers of `channel`.
    ShardMessage { channel: Bytes, payload: Bytes },
    /// A keyspace notification (a `Message` or `PatternMessage` on a
    /// `__keyspace@0__:` or `__keyevent@0__:` channel) of Redis's event
    /// `class` (`x` for expired keys, ...): the node that applied the change
    /// sends it to every proxy subscribed, and each proxy hands it on only
    /// when the cluster's `notify-keyspace-events` enables that class and
    /// channel kind.
    Event { class: u8, delivery: Box<Delivery> },
}

/// Whether `notify-keyspace-events` (`flags`, Redis's letters) lets an event
/// of `class` out on `channel`.
pub fn event_enabled(flags: &[u8], class: u8, channel: &[u8]) -> bool {
    let kind = if channel.starts_with(b"__keyspace@") {
        b'K'
    } else if channel.starts_with(b"__keyevent@") {
        b'E'
    } else {
        return false;
    };
    // `A` is every class but key misses (`m`) and new keys (`n`).
    let all = b"g$lshzxetd".contains(&class) && flags.contains(&b'A');
    flags.contains(&kind) && (all || flags.contains(&class))
}

/// A Pub/Sub request from a proxy to a shard node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum PubSubRequest {
    /// Replaces proxy `proxy`'s subscriptions at this node, unless the node has
    /// a newer `version` already (registrations may arrive out of order).
    Register {
        proxy: u64,
        version: u64,
        subscriptions: Subscriptions,
    },
    /// PUBLISH (`sharded`: SPUBLISH): answered with the number of receivers.
    Publish {
        channel: Bytes,
        payload: Bytes,
        sharded: bool,
    },
    /// Deliveries for `proxy` after sequence `acked`, waiting up to `wait_ms`
    /// for the first.
    Poll { proxy: u64, acked: u64, wait_ms: u64 },
    /// PUBSUB CHANNELS / SHARDCHANNELS: channels with subscribers, matching
    /// `pattern` when given.
    Channels { pattern: Option<Bytes>, sharded: bool },
    /// PUBSUB NUMSUB / SHARDNUMSUB: subscribers of each channel.
    NumSub { channels: Vec<Bytes>, sharded: bool },
    /// PUBSUB NUMPAT: patterns with subscribers (counted once per proxy).
    NumPat,
}

/// A shard node's answer to a [`PubSubRequest`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum PubSubResponse {
    /// Registration stored.
    Registered,
    /// A count (receivers of a PUBLISH, NUMPAT).
    Count(i64),
    /// Deliveries numbered up to `last`, in order.
    Deliveries { last: u64, items: Vec<Delivery> },
    /// The node does not know this proxy (restarted, or it expired): register again.
    UnknownProxy,
    /// Channel names.
    Channels(Vec<Bytes>),
    /// Counts per channel, in the order asked.
    Counts(Vec<i64>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_follow_the_classes_and_channel_kinds_enabled() {
        let space = b"__keyspace@0__:k";
        let event = b"__keyevent@0__:expired";
        assert!(event_enabled(b"Ex", b'x', event));
        assert!(!event_enabled(b"Ex", b'x', space));
        assert!(event_enabled(b"KEA", b'x', space));
        assert!(!event_enabled(b"KEA", b'n', space));
        assert!(!event_enabled(b"E$", b'x', event));
        assert!(!event_enabled(b"", b'x', event));
        assert!(!event_enabled(b"KEA", b'x', b"news"));
    }
}
