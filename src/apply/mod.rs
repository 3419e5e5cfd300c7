//! Applying the model to the kernel: the executor runs and undoes plan steps through
//! netlink (links, addresses, routes), /proc/sys and the tunnel's launcher; the record
//! under /run/cnet says what was done; the sweep finds what carries cnet's marks when the
//! record cannot say.

pub mod ebpf;
pub mod executor;
pub mod fault;
pub mod launch;
pub mod netlink;
pub mod process;
pub mod state;
pub mod sweep;
pub mod sysctl;
