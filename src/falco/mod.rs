//! The alert as Falco (or Falcosidekick) sends it: parsing and reading, no IO.
//!
//! Everything in an alert is attacker-influenced: values are read from
//! `output_fields`, never recovered from the `output` text.

mod alert;
mod fields;
mod subject;

pub use alert::{Alert, MAX_DEPTH, ParseError, parse};
pub use fields::{is_missing, value_text};
pub use subject::{is_dns_label, subject_of};
