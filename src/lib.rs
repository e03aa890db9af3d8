//! lrpm-host: an embedded-PHP host for farms of long-running PHP workers.
//!
//! Layout (docs/architecture.md): `php` and `process` hold all unsafe code;
//! `farm` is the pure decision core; `supervisor` is the poll loop around it;
//! `control` is the control-socket protocol and server, `metrics` the HTTP
//! endpoints, both over `connections` (one table of client connections),
//! and every part registers its descriptors in a `poll_set`; `job` parses and
//! validates jobs; `launch` builds what each PHP child is started with; `exit_code` is the one table of exit codes.

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod check;
pub mod cli;
pub mod cluster;
pub mod connections;
pub mod control;
pub mod escape;
pub mod exit_code;
pub mod farm;
pub mod host_output;
pub mod job;
pub mod launch;
pub mod log_file;
pub mod metrics;
pub mod php;
pub mod pidfile;
pub mod poll_set;
pub mod process;
pub mod supervisor;
pub mod telemetry;
pub mod worker_cmd;
