//! The media plane's batched socket IO is the `huddle-udp` crate (shared with the load
//! generator); this module names what the media plane takes from it.

pub(crate) use huddle_udp::{
    BATCH, RecvBatch, SendBatch, Waiter, Waker, enable_pktinfo, enable_rx_timestamps,
};
