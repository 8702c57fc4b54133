//! A fleet simulator: many simulated agents in one process, each with its own identity,
//! speaking the real agent protocol to a real edgefleet server over mutual TLS.
//!
//! Each simulated node generates its own key pair, enrolls with a CSR and a join token
//! (`POST /v1/enroll`) and then behaves like an agent: it long-polls its desired state,
//! "applies" it (nothing runs; workloads are reported running with a fake pid unless a
//! scripted behaviour says otherwise), reports its status, heartbeats, and sends
//! flight-recorder events. It is used by rollout integration tests and by
//! `bench/rollout.sh`, with thousands of nodes on a small machine.
//!
//! - `Simulator::start(SimConfig)` enrolls the fleet and returns the handle; the handle
//!   takes nodes offline and back, adds latency or loss, holds and releases update locks,
//!   and shows each node (`NodeSnapshot`) and the fleet (`FleetSummary`).
//! - Workloads are scripted from their spec's environment: `SIM_FAIL_START`,
//!   `SIM_CRASH_AFTER`, `SIM_CRASH_NODES` (see `behaviour`).
//! - Labels come from templates like `site=site-{i%10}` (see `template`) or a function.
//!
//! Footprint: all nodes share one tokio runtime and the resolved server address; each node
//! owns one rustls client configuration (its key and certificate, no session cache) and
//! one keep-alive HTTP/1.1 connection over tokio-rustls, spoken by a minimal client of
//! its own (`http`) that keeps no buffers between requests. See `node` for the order of
//! requests.
//!
//! Measured (release build, 2 CPUs, nodes idle after enrollment; "marginal" is the RSS
//! growth per added node between 200 and 1,000 or 2,000 nodes):
//!
//! | HTTP client per node                                | RSS / node at 1,000 | marginal |
//! |-----------------------------------------------------|---------------------|----------|
//! | a `reqwest::Client` (with its pool)                 | 54 KiB              | ~48 KiB  |
//! | hyper `client::conn::http1` + its connection task   | 43 KiB              | ~37 KiB  |
//! | the minimal client in `http` (this crate)           | 22 KiB              | ~16 KiB  |
//!
//! With 10,000 nodes (heartbeat 10 s) the simulator holds 166 MiB (16.6 KiB per node) and
//! uses about 14% of one core once they are idle.
//!
//! Of the remaining ~16 KiB, the rustls connection (its 4 KiB record buffer, keys, the
//! server's certificate chain) and the node's rustls configuration (~2.4 KiB) are most;
//! the node task's future is ~1.5 KiB because rarely used, large futures (connecting,
//! reporting during a poll) are boxed.
//!
//! Layout: `behaviour`, `template` and `model` are pure (time is an argument); `http`,
//! `enroll` and `node` do the IO; `sim` is the handle; `config` the validated settings.

#![forbid(unsafe_code)]

pub mod behaviour;
pub mod config;
mod enroll;
mod http;
pub mod model;
mod node;
mod sim;
pub mod template;

pub use config::{EnrollProgress, LabelFn, NodeLabels, ProgressFn, ServerTarget, SimConfig};
pub use enroll::EnrollError;
pub use http::{CallError, EndpointError};
pub use model::WorkloadSnapshot;
pub use sim::{EnrollStats, FleetSummary, NodeSnapshot, Selection, SimError, Simulator, short};
