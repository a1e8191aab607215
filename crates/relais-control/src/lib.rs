//! relais-control: the room control plane.
//!
//! * [`room_service`]: LiveKit's `RoomService`, implemented once over a
//!   [`room_service::RoomBackend`] and served as Twirp and as gRPC.
//! * [`webhook`]: LiveKit-compatible webhook delivery (signed, ordered per
//!   room, retried, never blocking the caller).

pub mod room_service;
pub mod webhook;
