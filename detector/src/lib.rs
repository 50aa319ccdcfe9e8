//! The detector agent, as a library so the binary stays thin and tests can reach the pure
//! parts. Data flow: `kernel` (hooks, events) → `tracker` (socket table) → `sample` (kernel
//! state by sock_diag) → `verdict` (stalled? why?) → `owner` (pid, fd) → `report` (the typed
//! report) → `reaper` (policy and actions); `agent` runs the loop, counting in `metrics` and
//! writing its log through `logging`. `surfaces` (the command line, the API, the metrics
//! endpoint, the daemon's wiring) read the report and never the reverse.
pub mod agent;
pub mod escape;
pub mod fault;
pub mod kernel;
pub mod logging;
pub mod metrics;
pub mod owner;
pub mod reaper;
pub mod report;
pub mod sample;
pub mod surfaces;
pub mod tcp;
pub mod tracker;
pub mod verdict;

#[cfg(test)]
mod deploy_tests;
