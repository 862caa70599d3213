//! The protocol's generated types: prost messages, tonic client and server stubs, and the
//! canonical proto3 JSON mapping (serde), all generated from `proto/` at build time.

/// Package `aesp.v1`: every message, enum and service of the protocol.
pub mod v1 {
    #![allow(
        missing_docs,
        unreachable_pub,
        unused_qualifications,
        clippy::all,
        clippy::pedantic,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::allow_attributes_without_reason,
        reason = "generated code follows prost, tonic and pbjson, not this crate's lints"
    )]
    include!(concat!(env!("OUT_DIR"), "/aesp.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/aesp.v1.serde.rs"));
}

/// Package `google.rpc`: the gRPC rich error model, in which an
/// [`EnterpriseError`](v1::EnterpriseError) crosses the wire.
pub mod google_rpc {
    #![allow(
        missing_docs,
        unreachable_pub,
        unused_qualifications,
        clippy::all,
        clippy::allow_attributes_without_reason,
        reason = "generated code follows prost, not this crate's lints"
    )]
    include!(concat!(env!("OUT_DIR"), "/google.rpc.rs"));
}

/// The encoded `FileDescriptorSet` of every `.proto` file of the protocol (including
/// `google/rpc/status.proto` and the well-known types it imports), for gRPC reflection and
/// dynamic tooling.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/aesp_descriptor.bin"));

/// The `type_url` of an [`EnterpriseError`](v1::EnterpriseError) packed in a
/// `google.protobuf.Any`.
pub const ENTERPRISE_ERROR_TYPE_URL: &str = "type.googleapis.com/aesp.v1.EnterpriseError";
