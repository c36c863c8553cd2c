//! Client library and `phivault-client` command-line tool for the phivault
//! gRPC service. It depends on `phivault-proto` only, never on the server
//! crate, so pipelines build it without compiling RocksDB.
//!
//! The crate is empty until the gRPC service lands.
