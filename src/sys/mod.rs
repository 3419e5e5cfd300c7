//! Every `unsafe` block and raw syscall of cnet lives under this module, behind small safe
//! functions; the rest of the crate stays safe Rust.

pub mod icmp;
pub mod ns;
pub mod packet;
/// SIGINT/SIGTERM as a stop flag (capture).
pub mod signal;
/// SIGINT/SIGTERM collected synchronously (the tunnel's supervisor).
pub mod term;
pub mod tun;
pub mod udp;
