//! Relais server: configuration, command line and (later) the server itself.

pub mod cli;
mod cluster;
pub mod config;
mod doorbell;
mod events;
pub mod fan_out;
mod heap_trim;
pub mod http;
pub mod metrics;
pub mod node;
mod room_api;
mod room_directory;
mod room_routing;
mod server;
mod shards;
mod shedding;
mod signal;
mod tcp;
mod thread_class;
mod udp;
mod websocket;

pub use server::run;
