//! relais-control: the room control plane.
//!
//! * [`webhook`]: LiveKit-compatible webhook delivery (signed, ordered per
//!   room, retried, never blocking the caller).

pub mod webhook;
