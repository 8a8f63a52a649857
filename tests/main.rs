//! Integration tests of the root package: real multi-process clusters on loopback.
//!
//! One test binary (this file plus modules) to keep link time down.

mod harness;

mod backup;
mod blocking;
mod cluster;
mod compat;
mod consistency;
mod durability;
mod faults;
mod observability;
mod placement;
mod protocol;
mod pubsub;
mod scripting;
