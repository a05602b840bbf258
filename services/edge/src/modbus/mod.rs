//! Modbus TCP: register maps read into telemetry readings.
//!
//! - [`decode`]: registers and bits to values, in any of the four byte
//!   orders, with scale and offset;
//! - [`plan`]: tags coalesced into as few reads as the protocol allows;
//! - [`reader`]: one poll of a device over a connection reopened when it
//!   breaks;
//! - [`poller`]: the poll loop producing readings to the telemetry topic.

pub mod decode;
pub mod plan;
pub mod poller;
pub mod reader;
