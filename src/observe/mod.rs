//! What observes a stage without changing it: status reads it back from the kernel,
//! check runs the talk's pings, capture shows packets, diagram draws it, explain prints a
//! plan as text, an iproute2 script or JSON, trace follows a packet hop by hop.

pub mod capture;
pub mod check;
pub mod diagram;
pub mod explain;
pub mod probe;
pub mod status;
pub mod trace;
