//! Modbus TCP: register maps read into telemetry readings.
//!
//! - [`decode`]: registers and bits to values, in any of the four byte
//!   orders, with scale and offset;
//! - [`plan`]: tags coalesced into as few reads as the protocol allows;
//! - [`reader`]: one poll of a device over a connection reopened when it
//!   breaks;
//! - [`poller`]: the poll loop producing readings to the telemetry topic;
//! - [`sim`]: a simulated plant (line PLCs, energy meter) served over
//!   Modbus TCP for `marktwin up` and tests.

pub mod decode;
pub mod plan;
pub mod poller;
pub mod reader;
pub mod sim;
