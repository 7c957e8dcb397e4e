//! The coordinator on the network: the gRPC service, the listener that accepts and sheds
//! connections, transport security, client authentication and development certificates.
//!
//! [`server`] puts the pieces together; [`service`] turns requests into calls on the round engine;
//! [`upload`] receives streamed uploads by the same rules here and in sub-aggregators;
//! `listener` and `admission` decide which connections and requests are taken at all;
//! `tls` and [`auth`] establish who is speaking; `undecodable` counts what tonic refused
//! before a handler ran; [`certs`] makes a development CA and client credentials.

pub(crate) mod admission;
pub mod auth;
pub mod certs;
pub(crate) mod listener;
pub mod server;
pub mod service;
pub(crate) mod tls;
pub(crate) mod undecodable;
pub mod upload;
