//! The edgefleet control plane, as a library: the HTTPS API, the built-in CA, the store
//! and the desired-state controller. The `edgefleet server` command is a thin wrapper
//! around `Server::start` and `Server::run_until`.
//!
//! Code map:
//! - `args`: `ServerArgs`, the typed configuration.
//! - `server`: `Server` and `StartInfo`, start-up and the serving entry point.
//! - `datadir`: data directory layout, private files, CA and server certificate.
//! - `serve`: the TCP/TLS/HTTP accept loop and graceful shutdown.
//! - `routes`: the one route table; router and OpenAPI come from it. `openapi` renders it.
//! - `auth`: API tokens and node certificates; access middleware.
//! - `handlers`: one module per area of the API.
//! - `controller`: keeps each node's desired state equal to the merge of deployments.
//! - `status`: API read models (summaries, conditions, roll-ups), pure.
//! - `store`: the `Store` trait and its SQLite implementation.
//! - `error`, `extract`: the one API error type and extractors that produce it.
//!
//! **Invariant:** decisions (merge, selectors, validation, token and node lifecycle) come
//! from `edgefleet_core`; this crate feeds them records and the clock.
//! **Boundary:** only `store::sqlite` knows the database is SQLite.

#![forbid(unsafe_code)]

mod alerts;
mod args;
mod auth;
mod controller;
mod datadir;
mod error;
mod extract;
mod handlers;
mod lake;
mod metrics;
mod openapi;
mod planner;
mod routes;
mod serve;
mod server;
mod sessions;
mod state;
mod status;
pub mod store;
mod telemetry;

pub use args::ServerArgs;
pub use server::{Server, StartInfo};
