//! The host's own domain types, below everything else: the configuration, the store and every
//! surface use them without importing each other.
//!
//! - [`JobState`]: a job's place in its life, mapped to GitHub through protocol's table.
//! - [`CommitInfo`]: the tested commit's author and subject, from the webhook.
//! - [`cron`]: 5-field cron schedules in UTC or a fixed offset, parsed once at load.
//! - [`junit`]: JUnit XML read as hostile input into test cases (issue 19).
//! - [`flakes`]: when a failed test is flaky, and which tests a quarantine entry names.
//! - [`pattern`]: the one `*` wildcard rule (branch filters, matrix branches, quarantine).
//! - [`matrix`]: the tested commit's `.github/sdci.yml` (hostile input) and its cells (issue 20).
//! - [`stages`]: a job's steps grouped into stages, the provisioned snapshot's name (issue 18).
//!
//! Invariant: nothing here performs I/O or depends on another module of the host.

mod commit;
pub mod cron;
pub mod flakes;
mod job_state;
pub mod junit;
pub mod matrix;
pub mod pattern;
pub mod stages;

pub use commit::CommitInfo;
pub use cron::Schedule;
pub use job_state::JobState;
