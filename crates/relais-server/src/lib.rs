//! Relais server: configuration, command line and (later) the server itself.

pub mod config;
pub mod cli;
