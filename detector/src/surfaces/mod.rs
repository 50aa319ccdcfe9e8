//! What users and tools touch, over the domain's one typed report: the command line (`cli`,
//! `output`, `check`, `scan`), the running agent's wiring (`daemon`), its local API (`api`)
//! and its metrics endpoint (`metrics_http`). Surfaces import the domain, never the reverse.
pub mod api;
pub mod check;
pub mod cli;
pub mod daemon;
pub mod metrics_http;
pub mod output;
pub mod scan;
