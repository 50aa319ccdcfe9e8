//! The detector agent, as a library so the binary stays thin and tests can reach the pure
//! parts. Data flow: `kernel` (hooks, events) → `tracker` (socket table) → `sample`
//! (kernel state by sock_diag) → `verdict` (stalled? why?) → `owner` (pid, fd) → `reaper` (policy and actions); `agent` runs
//! the loop; `api`, `cli`, `metrics` and `output` are thin surfaces.
pub mod agent;
pub mod api;
pub mod check;
pub mod cli;
pub mod kernel;
pub mod metrics;
pub mod output;
pub mod owner;
pub mod reaper;
pub mod scan;
pub mod sample;
pub mod tracker;
pub mod verdict;

#[cfg(test)]
mod deploy_tests;
