//! Modbus TCP: register maps read into telemetry readings.
//!
//! - [`decode`]: registers and bits to values, in any of the four byte
//!   orders, with scale and offset;
//! - [`plan`]: tags coalesced into as few reads as the protocol allows.

pub mod decode;
pub mod plan;
pub mod reader;
