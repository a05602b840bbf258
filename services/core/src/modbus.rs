//! Configuration of Modbus TCP devices: register maps and polling.
//!
//! ```toml
//! [[edge.modbus.devices]]
//! name = "packer-1"
//! address = "10.0.0.21:502"
//! unit_id = 1
//! asset = "line-1"
//! poll_interval_ms = 1000
//!
//! [[edge.modbus.devices.tags]]
//! name = "speed"
//! area = "holding"        # coil | discrete_input | holding | input
//! address = 100           # wire address, 0-based
//! type = "float32"        # bool bit int16 uint16 int32 uint32 int64 uint64 float32 float64 string
//! order = "cdab"          # abcd (big-endian) | dcba | badc | cdab
//! scale = 0.1
//! eng_unit = "packs/min"
//! ```

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The four Modbus data tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Area {
    /// Read-write bits (function 1).
    Coil,
    /// Read-only bits (function 2).
    DiscreteInput,
    /// Read-write 16-bit registers (function 3).
    Holding,
    /// Read-only 16-bit registers (function 4).
    Input,
}

impl Area {
    /// Bit tables (coils, discrete inputs) as opposed to register tables.
    pub fn is_bits(self) -> bool {
        matches!(self, Area::Coil | Area::DiscreteInput)
    }
}

/// How a tag's registers are read as a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataType {
    /// A coil or discrete input.
    Bool,
    /// One bit (`bit`, 0 = least significant) of a register.
    Bit,
    /// Signed 16-bit.
    Int16,
    /// Unsigned 16-bit.
    Uint16,
    /// Signed 32-bit, two registers.
    Int32,
    /// Unsigned 32-bit, two registers.
    Uint32,
    /// Signed 64-bit, four registers.
    Int64,
    /// Unsigned 64-bit, four registers.
    Uint64,
    /// IEEE 754 single, two registers.
    Float32,
    /// IEEE 754 double, four registers.
    Float64,
    /// Text, two bytes per register (`length` registers), NUL or space padded.
    String,
}

impl DataType {
    /// Registers (or bits, for `bool`) the value spans.
    pub fn width(self, length: u16) -> u16 {
        match self {
            DataType::Bool | DataType::Bit | DataType::Int16 | DataType::Uint16 => 1,
            DataType::Int32 | DataType::Uint32 | DataType::Float32 => 2,
            DataType::Int64 | DataType::Uint64 | DataType::Float64 => 4,
            DataType::String => length,
        }
    }
}

/// Byte order of a multi-byte value, named by where the bytes of the
/// big-endian value `A B C D` sit on the wire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ByteOrder {
    /// Big-endian: the Modbus standard.
    #[default]
    Abcd,
    /// Little-endian: words reversed and bytes swapped.
    Dcba,
    /// Bytes swapped within each word.
    Badc,
    /// Words reversed ("word swap"), common on PLCs.
    Cdab,
}

impl ByteOrder {
    /// The registers come least significant word first.
    pub fn words_reversed(self) -> bool {
        matches!(self, ByteOrder::Dcba | ByteOrder::Cdab)
    }
    /// Each register holds its two bytes low byte first.
    pub fn bytes_swapped(self) -> bool {
        matches!(self, ByteOrder::Dcba | ByteOrder::Badc)
    }
}

/// One value read from a device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusTag {
    /// Tag name, unique on the device; becomes the reading's `tag`.
    pub name: String,
    /// Asset the tag belongs to; the device's `asset` when absent.
    #[serde(default)]
    pub asset: Option<String>,
    /// Which table.
    pub area: Area,
    /// Wire address of the first register or bit (0-based, as sent).
    pub address: u16,
    /// How to read it.
    #[serde(rename = "type")]
    pub data_type: DataType,
    /// Byte order of multi-register values.
    #[serde(default)]
    pub order: ByteOrder,
    /// Bit index for `type = "bit"`, 0..=15.
    #[serde(default)]
    pub bit: u8,
    /// Registers of a `string`.
    #[serde(default)]
    pub length: u16,
    /// Engineering value = raw × scale + offset (numbers only).
    #[serde(default = "one")]
    pub scale: f64,
    /// See `scale`.
    #[serde(default)]
    pub offset: f64,
    /// Engineering unit written into each reading.
    #[serde(default)]
    pub eng_unit: Option<String>,
}

fn one() -> f64 {
    1.0
}

impl ModbusTag {
    /// A tag with the defaults: big-endian, no scaling, the device's asset.
    pub fn new(name: impl Into<String>, area: Area, address: u16, data_type: DataType) -> Self {
        ModbusTag {
            name: name.into(),
            asset: None,
            area,
            address,
            data_type,
            order: ByteOrder::Abcd,
            bit: 0,
            length: 0,
            scale: 1.0,
            offset: 0.0,
            eng_unit: None,
        }
    }

    /// Registers or bits this tag spans.
    pub fn width(&self) -> u16 {
        self.data_type.width(self.length)
    }
}

/// A Modbus TCP device polled by the edge.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModbusDevice {
    /// Device name: the readings' `source` is `modbus:<name>`.
    pub name: String,
    /// `host:port` of the device or gateway.
    pub address: String,
    /// Unit identifier (slave id), 0-247; 255 or 0 for plain TCP devices.
    pub unit_id: u8,
    /// Default asset of its tags.
    pub asset: String,
    /// Time between polls of all tags, ms.
    pub poll_interval_ms: u64,
    /// Time allowed for one request, ms.
    pub timeout_ms: u64,
    /// Unused registers (or bits) read to join two tags into one request.
    pub max_gap: u16,
    /// Largest register read (the protocol allows 125).
    pub max_registers: u16,
    /// Largest bit read (the protocol allows 2,000).
    pub max_bits: u16,
    /// Longest pause between reconnect attempts, ms.
    pub max_backoff_ms: u64,
    /// The register map.
    pub tags: Vec<ModbusTag>,
}

impl Default for ModbusDevice {
    fn default() -> Self {
        ModbusDevice {
            name: String::new(),
            address: String::new(),
            unit_id: 1,
            asset: String::new(),
            poll_interval_ms: 1000,
            timeout_ms: 2000,
            max_gap: 16,
            max_registers: 125,
            max_bits: 2000,
            max_backoff_ms: 30_000,
            tags: Vec::new(),
        }
    }
}

/// The `[edge.modbus]` section.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModbusConfig {
    /// Devices to poll.
    pub devices: Vec<ModbusDevice>,
}

impl ModbusConfig {
    /// Checks every device and tag; errors name the field, e.g.
    /// `edge.modbus.devices[0].tags[3].bit`.
    pub fn validate(&self) -> Result<()> {
        let mut names = HashSet::new();
        for (d, dev) in self.devices.iter().enumerate() {
            let at = |f: &str| format!("edge.modbus.devices[{d}].{f}");
            if dev.name.is_empty() {
                return Err(Error::invalid(at("name"), "must not be empty"));
            }
            if !names.insert(dev.name.as_str()) {
                return Err(Error::invalid(
                    at("name"),
                    format!("`{}` is used twice", dev.name),
                ));
            }
            if dev
                .address
                .rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
            {
                return Err(Error::invalid(
                    at("address"),
                    format!("`{}` is not host:port, e.g. 127.0.0.1:502", dev.address),
                ));
            }
            if !(1..=125).contains(&dev.max_registers) {
                return Err(Error::invalid(
                    at("max_registers"),
                    "must be 1..=125 (the protocol's limit)",
                ));
            }
            if !(1..=2000).contains(&dev.max_bits) {
                return Err(Error::invalid(
                    at("max_bits"),
                    "must be 1..=2000 (the protocol's limit)",
                ));
            }
            if dev.poll_interval_ms == 0 || dev.timeout_ms == 0 {
                return Err(Error::invalid(
                    at("poll_interval_ms"),
                    "intervals and timeouts must be > 0",
                ));
            }
            if dev.tags.is_empty() {
                return Err(Error::invalid(
                    at("tags"),
                    "a device needs at least one tag",
                ));
            }
            let mut tags = HashSet::new();
            for (t, tag) in dev.tags.iter().enumerate() {
                let at = |f: &str| format!("edge.modbus.devices[{d}].tags[{t}].{f}");
                let asset = tag.asset.as_deref().unwrap_or(&dev.asset);
                if tag.name.is_empty() || !tags.insert((asset, tag.name.as_str())) {
                    return Err(Error::invalid(
                        at("name"),
                        format!(
                            "`{}` is empty or used twice for asset `{asset}` on the device",
                            tag.name
                        ),
                    ));
                }
                let bits = tag.area.is_bits();
                match tag.data_type {
                    DataType::Bool if !bits => {
                        return Err(Error::invalid(
                            at("type"),
                            "`bool` reads a coil or discrete_input; use `bit` for a bit of a register",
                        ));
                    }
                    DataType::Bool => {}
                    _ if bits => {
                        return Err(Error::invalid(at("type"), format!("`{:?}` needs a holding or input register; coils and discrete inputs are `bool`", tag.data_type).to_lowercase()));
                    }
                    DataType::Bit if tag.bit > 15 => {
                        return Err(Error::invalid(
                            at("bit"),
                            format!("{} is not a bit of a 16-bit register (0..=15)", tag.bit),
                        ));
                    }
                    DataType::String if tag.length == 0 => {
                        return Err(Error::invalid(
                            at("length"),
                            "a string needs its length in registers (>= 1)",
                        ));
                    }
                    _ => {}
                }
                let limit = if bits {
                    dev.max_bits
                } else {
                    dev.max_registers
                };
                if tag.width() > limit {
                    return Err(Error::invalid(
                        at("length"),
                        format!(
                            "spans {} registers, more than max_registers {limit}",
                            tag.width()
                        ),
                    ));
                }
                if u32::from(tag.address) + u32::from(tag.width()) > 65_536 {
                    return Err(Error::invalid(
                        at("address"),
                        "runs past the last address 65535",
                    ));
                }
                if !tag.scale.is_finite() || !tag.offset.is_finite() {
                    return Err(Error::invalid(
                        at("scale"),
                        "scale and offset must be finite numbers",
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(toml: &str) -> Result<ModbusConfig> {
        let c: ModbusConfig = figment::Figment::from({
            use figment::providers::Format;
            figment::providers::Toml::string(toml)
        })
        .extract()
        .map_err(|e| Error::invalid("toml", e.to_string()))?;
        c.validate().map(|()| c)
    }

    const GOOD: &str = r#"
        [[devices]]
        name = "meter"
        address = "127.0.0.1:502"
        [[devices.tags]]
        name = "energy"
        area = "input"
        address = 0
        type = "float64"
        order = "dcba"
        [[devices.tags]]
        name = "running"
        area = "holding"
        address = 10
        type = "bit"
        bit = 3
        [[devices.tags]]
        name = "door"
        area = "discrete_input"
        address = 5
        type = "bool"
    "#;

    #[test]
    fn a_register_map_loads() {
        let c = cfg(GOOD).unwrap();
        let t = &c.devices[0].tags;
        assert_eq!(t[0].width(), 4);
        assert_eq!(t[0].order, ByteOrder::Dcba);
        assert_eq!(t[0].scale, 1.0);
        assert_eq!(t[1].bit, 3);
        assert_eq!(c.devices[0].max_registers, 125);
    }

    #[test]
    fn errors_name_the_tag_and_field() {
        let e = cfg(&GOOD.replace("bit = 3", "bit = 16"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("edge.modbus.devices[0].tags[1].bit"), "{e}");
        let e = cfg(&GOOD.replace("type = \"bool\"", "type = \"int16\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("tags[2].type"), "{e}");
        let e = cfg(&GOOD.replace("127.0.0.1:502", "nowhere"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("devices[0].address"), "{e}");
        let e = cfg(&GOOD.replace("address = 0", "address = 65534"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("tags[0].address"), "{e}");
        let e = cfg(&GOOD.replace("order = \"dcba\"", "order = \"bacd\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("bacd") && e.contains("abcd"), "{e}");
    }

    #[test]
    fn a_tag_name_repeats_across_assets_but_not_within_one() {
        let base = cfg(GOOD).unwrap();
        let mut dev = base.devices[0].clone();
        let mut twin = dev.tags[0].clone();
        twin.asset = Some("line-2".into());
        dev.tags.push(twin.clone());
        let ok = ModbusConfig {
            devices: vec![dev.clone()],
        };
        ok.validate().unwrap();
        twin.asset = None;
        dev.tags.push(twin);
        let e = ModbusConfig { devices: vec![dev] }
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("used twice for asset"), "{e}");
    }
}
