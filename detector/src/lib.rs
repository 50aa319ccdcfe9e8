//! The detector agent, as a library so the binary stays thin and tests can reach the pure
//! parts. Data flow: `kernel` (hooks, events) → `tracker` (socket table) → `sample` (kernel
//! state by sock_diag) → `verdict` (stalled? why?) → `owner` (pid, fd) → `report` (the typed
//! report) → `reaper` (policy and actions); `agent` runs the loop. The surfaces read the
//! report and never the reverse: `daemon` wires the agent to `api` and `metrics`; `cli`,
//! `output`, `check` and `scan` are the command line.
pub mod agent;
pub mod api;
pub mod check;
pub mod cli;
pub mod daemon;
pub mod fault;
pub mod kernel;
pub mod logging;
pub mod metrics;
pub mod output;
pub mod owner;
pub mod reaper;
pub mod report;
pub mod sample;
pub mod scan;
pub mod tcp;
pub mod text;
pub mod tracker;
pub mod verdict;

#[cfg(test)]
mod deploy_tests;
