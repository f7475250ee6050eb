//! Peregrine: Falco alerts in, analysed `AlertReport`s and declared responses out.
//!
//! `main.rs` only parses the command line; everything it runs lives here.

pub mod analysis;
pub mod cli;
pub mod cluster;
pub mod crd;
pub mod falco;
pub mod health;
pub mod install_check;
pub mod intake;
pub mod knowledge;
pub mod leader;
pub mod metrics;
pub mod names;
pub mod offline;
pub mod operator;
pub mod policy;
pub mod remediation;
pub mod replay;
pub mod report;
pub mod shutdown;
pub mod telemetry;

/// The field manager of every server-side apply Peregrine makes.
pub const FIELD_MANAGER: &str = "peregrine";
