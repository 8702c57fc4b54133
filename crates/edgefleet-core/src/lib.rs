//! The pure core of edgefleet.
//!
//! Every decision lives here as a pure function or a state machine: label and selector
//! logic, manifest parsing and validation, revision hashing, the layered merge that computes
//! a node's desired state, node liveness, join-token rules, certificate renewal timing, and
//! the agent's workload supervisor. Time is always an argument.
//!
//! **Invariant:** nothing in this crate reads the clock, touches a file or a socket, or
//! spawns a task. The server, agent and CLI are shells that feed it inputs and carry out
//! what it decides.

#![forbid(unsafe_code)]

pub mod alerts;
pub mod backoff;
pub mod diff;
pub mod hash;
pub mod labels;
pub mod lifecycle;
pub mod manifest;
pub mod merge;
pub mod probe;
pub mod rollout;
pub mod selector;
pub mod streams;
pub mod supervisor;
pub mod template;
pub mod window;
