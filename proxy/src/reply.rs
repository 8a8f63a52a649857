//! Proxy-level failures and the one place they become wire strings.

use redraft_common::ids::ShardId;
use redraft_common::resp::Frame;

/// Why a routed command did not produce a reply.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// Leaders moved or the shard was unreachable until the retry deadline. The
    /// command was never applied; the client may retry.
    #[error("TRYAGAIN shard {0} is moving or electing a leader")]
    TryAgain(ShardId),
    /// No routing table yet, or the shard has no quorum. Client may retry later.
    #[error("CLUSTERDOWN {0}")]
    ClusterDown(String),
    /// The write was sent but its outcome is unknown. Never retried by the proxy.
    #[error("ERR timeout; write may have been applied")]
    Unknown,
    /// Keys of an atomic multi-key command are in different shards. Not retryable.
    #[error("CROSSSLOT Keys in request don't hash to the same slot")]
    CrossSlot,
    /// The shard no longer owns a key (a split or merge moved it); nothing was
    /// applied. The caller routes the keys again; clients never see this.
    #[error("TRYAGAIN shard {0} no longer owns the key")]
    Moved(ShardId),
}

/// The reply a client sees for `error`.
pub fn to_frame(error: &Error) -> Frame {
    Frame::Error(error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_strings_are_redis_style() {
        assert_eq!(
            to_frame(&Error::TryAgain(42)),
            Frame::error("TRYAGAIN shard 42 is moving or electing a leader")
        );
        assert_eq!(
            to_frame(&Error::CrossSlot),
            Frame::error("CROSSSLOT Keys in request don't hash to the same slot")
        );
        assert_eq!(
            to_frame(&Error::Unknown),
            Frame::error("ERR timeout; write may have been applied")
        );
    }
}
