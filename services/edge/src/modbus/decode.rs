//! Turning raw registers and bits into tag values.

use marktwin_core::modbus::{ByteOrder, DataType, ModbusTag};

/// A decoded value: a number (after scale and offset; booleans are 0 or 1)
/// or text.
#[derive(Clone, Debug, PartialEq)]
pub enum TagValue {
    /// Numeric value in engineering units.
    Number(f64),
    /// String tag.
    Text(String),
}

/// The value's bytes in big-endian order (`A B C D ...`), from registers
/// laid out in `order`.
pub fn ordered_bytes(regs: &[u16], order: ByteOrder) -> Vec<u8> {
    let mut out = Vec::with_capacity(regs.len() * 2);
    let mut push = |w: u16| {
        let [hi, lo] = w.to_be_bytes();
        if order.bytes_swapped() {
            out.extend([lo, hi]);
        } else {
            out.extend([hi, lo]);
        }
    };
    if order.words_reversed() {
        regs.iter().rev().copied().for_each(&mut push);
    } else {
        regs.iter().copied().for_each(&mut push);
    }
    out
}

/// Decodes a register tag from exactly `tag.width()` registers.
///
/// # Panics
/// When `regs` is shorter than the tag; the planner guarantees it is not.
pub fn decode_registers(tag: &ModbusTag, regs: &[u16]) -> TagValue {
    let regs = &regs[..usize::from(tag.width())];
    if tag.data_type == DataType::String {
        // Text is a byte stream: word order does not apply, byte swap does.
        let order = if tag.order.bytes_swapped() {
            ByteOrder::Badc
        } else {
            ByteOrder::Abcd
        };
        let bytes = ordered_bytes(regs, order);
        let text = String::from_utf8_lossy(&bytes);
        return TagValue::Text(text.trim_end_matches(['\0', ' ']).to_owned());
    }
    let b = ordered_bytes(regs, tag.order);
    let raw = match tag.data_type {
        DataType::Bit => f64::from((regs[0] >> tag.bit) & 1),
        DataType::Int16 => f64::from(i16::from_be_bytes([b[0], b[1]])),
        DataType::Uint16 => f64::from(u16::from_be_bytes([b[0], b[1]])),
        DataType::Int32 => f64::from(i32::from_be_bytes([b[0], b[1], b[2], b[3]])),
        DataType::Uint32 => f64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]])),
        DataType::Float32 => f64::from(f32::from_be_bytes([b[0], b[1], b[2], b[3]])),
        DataType::Int64 => i64::from_be_bytes(b[..8].try_into().expect("4 registers")) as f64,
        DataType::Uint64 => u64::from_be_bytes(b[..8].try_into().expect("4 registers")) as f64,
        DataType::Float64 => f64::from_be_bytes(b[..8].try_into().expect("4 registers")),
        DataType::Bool | DataType::String => unreachable!("validated: not a register number"),
    };
    if tag.data_type == DataType::Bit {
        return TagValue::Number(raw);
    }
    TagValue::Number(raw * tag.scale + tag.offset)
}

/// Decodes a coil or discrete input.
pub fn decode_bit(on: bool) -> TagValue {
    TagValue::Number(if on { 1.0 } else { 0.0 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use marktwin_core::modbus::Area;

    fn tag(data_type: DataType, order: ByteOrder) -> ModbusTag {
        ModbusTag {
            order,
            length: 3,
            ..ModbusTag::new("t", Area::Holding, 0, data_type)
        }
    }

    /// Registers holding big-endian bytes `bytes` as a device with `order`
    /// stores them: the inverse of `ordered_bytes`, written independently.
    fn wire(bytes: &[u8], order: ByteOrder) -> Vec<u16> {
        let mut words: Vec<u16> = bytes
            .chunks(2)
            .map(|c| {
                if order.bytes_swapped() {
                    u16::from_be_bytes([c[1], c[0]])
                } else {
                    u16::from_be_bytes([c[0], c[1]])
                }
            })
            .collect();
        if order.words_reversed() {
            words.reverse();
        }
        words
    }

    const ORDERS: [ByteOrder; 4] = [
        ByteOrder::Abcd,
        ByteOrder::Dcba,
        ByteOrder::Badc,
        ByteOrder::Cdab,
    ];

    #[test]
    fn the_four_orders_of_a_float32_as_documented_by_vendors() {
        // 123.456f32 = 0x42F6E979: A=42 B=F6 C=E9 D=79.
        let cases = [
            (ByteOrder::Abcd, [0x42F6, 0xE979]),
            (ByteOrder::Dcba, [0x79E9, 0xF642]),
            (ByteOrder::Badc, [0xF642, 0x79E9]),
            (ByteOrder::Cdab, [0xE979, 0x42F6]),
        ];
        for (order, regs) in cases {
            let TagValue::Number(v) = decode_registers(&tag(DataType::Float32, order), &regs)
            else {
                panic!()
            };
            assert!((v - 123.456).abs() < 1e-4, "{order:?}: {v}");
        }
    }

    #[test]
    fn every_type_in_every_order_round_trips() {
        for order in ORDERS {
            let check = |t: DataType, bytes: &[u8], want: f64| {
                let got = decode_registers(&tag(t, order), &wire(bytes, order));
                assert_eq!(got, TagValue::Number(want), "{t:?} {order:?}");
            };
            check(DataType::Int16, &(-1234i16).to_be_bytes(), -1234.0);
            check(DataType::Uint16, &54321u16.to_be_bytes(), 54321.0);
            check(
                DataType::Int32,
                &(-123_456_789i32).to_be_bytes(),
                -123_456_789.0,
            );
            check(DataType::Uint32, &4_000_000_000u32.to_be_bytes(), 4e9);
            check(
                DataType::Int64,
                &(-9_007_199_254_740_993i64).to_be_bytes(),
                -9_007_199_254_740_993i64 as f64,
            );
            check(
                DataType::Uint64,
                &12_345_678_901_234u64.to_be_bytes(),
                12_345_678_901_234.0,
            );
            check(DataType::Float32, &1.5f32.to_be_bytes(), 1.5);
            check(DataType::Float64, &(-2.25e300f64).to_be_bytes(), -2.25e300);
        }
    }

    #[test]
    fn scale_offset_bits_and_strings() {
        let mut t = tag(DataType::Int16, ByteOrder::Abcd);
        t.scale = 0.1;
        t.offset = -40.0;
        assert_eq!(
            decode_registers(&t, &[650]),
            TagValue::Number(650.0 * 0.1 - 40.0)
        );
        let mut b = tag(DataType::Bit, ByteOrder::Abcd);
        b.bit = 15;
        b.scale = 10.0; // not applied to a bit
        assert_eq!(decode_registers(&b, &[0x8000]), TagValue::Number(1.0));
        b.bit = 0;
        assert_eq!(decode_registers(&b, &[0x8000]), TagValue::Number(0.0));
        let s = tag(DataType::String, ByteOrder::Abcd);
        assert_eq!(
            decode_registers(
                &s,
                &[u16::from_be_bytes(*b"LN"), u16::from_be_bytes(*b"-1"), 0]
            ),
            TagValue::Text("LN-1".into())
        );
        let s = tag(DataType::String, ByteOrder::Badc);
        assert_eq!(
            decode_registers(
                &s,
                &[
                    u16::from_be_bytes(*b"NL"),
                    u16::from_be_bytes(*b"1-"),
                    0x2020
                ]
            ),
            TagValue::Text("LN-1".into())
        );
        assert_eq!(decode_bit(true), TagValue::Number(1.0));
    }
}
