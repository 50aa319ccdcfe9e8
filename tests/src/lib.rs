//! Support for the integration tests: the real agent binary, real peer processes, and cleanup
//! that runs even when a test panics (every handle kills and reaps its process on drop). One
//! module per concern; everything is re-exported here.
pub mod agent;
pub mod cgroup;
pub mod http;
pub mod netns;
pub mod peer;
pub mod policy;
pub mod privilege;
pub mod process;
pub mod wait;

pub use agent::*;
pub use cgroup::*;
pub use http::*;
pub use netns::*;
pub use peer::*;
pub use policy::*;
pub use privilege::*;
pub use process::*;
pub use wait::*;
