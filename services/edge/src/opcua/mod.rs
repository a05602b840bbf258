//! OPC UA client connector (async-opcua).
//!
//! - [`client`]: client, security, user identity and session from config;
//! - [`resolve`]: namespace URIs and browse paths to this session's NodeIds,
//!   EURange for percent deadbands, the server's operation limits;
//! - [`convert`]: a DataValue as a telemetry reading with its quality;
//! - [`source`]: the supervised session, subscription or polling, and the
//!   writer to the telemetry topic;
//! - [`sim`]: the simulated plant as an OPC UA server.

pub mod client;
pub mod convert;
pub mod resolve;
pub mod sim;
pub mod source;

pub use source::OpcuaSource;
