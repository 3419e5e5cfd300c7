//! Every `unsafe` block and raw syscall of cnet lives under this module, behind small safe
//! functions; the rest of the crate stays safe Rust.

pub mod icmp;
pub mod ns;
pub mod packet;
pub mod signal;
pub mod tun;
