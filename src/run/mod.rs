//! Where a plan runs: the node runner builds one node on the machine it runs on (host
//! mode, a real VM); the lab makes VM-like nodes out of namespaces on one machine and runs
//! the node runner inside each, through the one way into a node (enter).

pub mod enter;
pub mod lab;
pub mod node;
pub mod serve;
