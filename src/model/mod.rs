//! The talk's model, pure data: the stages with their nodes, names and addresses
//! (topology), and for each node the ordered steps that build it, with the talk's words,
//! their `ip` equivalents and how each is undone (plan). Nothing here touches the kernel.

pub mod ebpf;
pub mod fault;
pub mod nat;
pub mod plan;
pub mod topology;
pub mod wire;
