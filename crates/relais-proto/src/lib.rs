//! LiveKit wire types for Relais.
//!
//! The messages are generated from Relais' own `.proto` files in `proto/`
//! (package `livekit`), written to match LiveKit's field names, numbers and
//! types exactly so that unmodified LiveKit SDKs interoperate:
//!
//! * [`livekit`] — every message and enum (prost), proto3-JSON
//!   `serde` impls (pbjson: writes lowerCamel, reads lowerCamel and
//!   snake_case), and the tonic `RoomService` stubs
//!   ([`livekit::room_service_server`], [`livekit::room_service_client`]).
//! * [`FILE_DESCRIPTOR_SET`] — the encoded `FileDescriptorSet` of those files.
//! * [`ids`] — LiveKit-style identifiers (`RM_`, `PA_`, `TR_…`).
//! * [`limits`] — LiveKit's limits on names, metadata and attributes.
//! * [`for_each_message!`] — a registry of every message type by full name.
//! * [`encode_join_response`] — a newcomer's `JoinResponse`, its other
//!   participants copied in as the room keeps them encoded.
//!
//! Map fields are `BTreeMap`s, so encoding is deterministic (sorted keys).
//!
//! Note on byte order: prost writes a `oneof` at the position of its lowest
//! field number. For `DataPacket`, whose `value` oneof (2, 3, 6..15, 18)
//! interleaves with plain fields (4, 5, 16, 17), re-encoded bytes can order
//! fields differently from LiveKit's Go/Python encoders. Any protobuf parser
//! accepts either order; the decoded message is identical.

#![warn(missing_docs)]

pub use prost::Message;

/// Generated LiveKit protocol types (package `livekit`).
#[allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    rustdoc::all,
    rustdoc::invalid_html_tags,
    rustdoc::bare_urls,
    rustdoc::broken_intra_doc_links
)]
pub mod livekit {
    include!(concat!(env!("OUT_DIR"), "/livekit.rs"));
    include!(concat!(env!("OUT_DIR"), "/livekit.serde.rs"));
}

include!(concat!(env!("OUT_DIR"), "/registry.rs"));

/// Encoded `google.protobuf.FileDescriptorSet` of Relais' `proto/*.proto`
/// (plus the imported well-known types), with source info.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/livekit_descriptor.bin"));

pub mod ids;
mod join_response;
pub mod limits;

pub use join_response::encode_join_response;

#[cfg(test)]
mod tests;
