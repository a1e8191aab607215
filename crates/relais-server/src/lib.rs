//! Relais server: configuration, command line and (later) the server itself.

pub mod config;
pub mod cli;
pub mod http;
mod server;
mod shards;
mod signal;

pub use server::run;
