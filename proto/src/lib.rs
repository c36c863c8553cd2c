//! phivault's wire contract, package `phivault.v1`: the protobuf
//! definitions, the generated code and the conversions between wire messages
//! and the core's types, so that the core never sees a protobuf type.
//!
//! The crate is empty until the gRPC service lands; it is a workspace member
//! already so that the dependency graph (client → proto, never client →
//! vault) is fixed from the start.
