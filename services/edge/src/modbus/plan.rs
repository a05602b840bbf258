//! Coalescing tags into as few requests as the protocol allows.
//!
//! Tags of one table are sorted by address and joined into one read while
//! the read stays within `max_registers` (125) or `max_bits` (2,000) and the
//! unused addresses between two tags are at most `max_gap`. A device that
//! answers a joined read with an exception (some addresses in the gap do not
//! exist) gets its tags read one by one instead: see [`split`].

use marktwin_core::modbus::{Area, ModbusTag};

/// One request: a table, a start address, a count, and the tags it serves
/// with their offset into the response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Read {
    /// The table.
    pub area: Area,
    /// First address.
    pub start: u16,
    /// Registers or bits.
    pub count: u16,
    /// `(index into the device's tags, offset into the response)`.
    pub tags: Vec<(usize, u16)>,
}

/// Plans the reads for `tags`; `isolated` tags always get a read of their
/// own.
pub fn plan(
    tags: &[ModbusTag],
    max_registers: u16,
    max_bits: u16,
    max_gap: u16,
    isolated: &[bool],
) -> Vec<Read> {
    let mut order: Vec<usize> = (0..tags.len()).collect();
    order.sort_by_key(|&i| (tags[i].area, tags[i].address, i));
    let mut reads: Vec<Read> = Vec::new();
    for i in order {
        let t = &tags[i];
        let (start, end) = (
            u32::from(t.address),
            u32::from(t.address) + u32::from(t.width()),
        );
        let limit = u32::from(if t.area.is_bits() {
            max_bits
        } else {
            max_registers
        });
        let alone = isolated.get(i).copied().unwrap_or(false);
        if let Some(r) = reads.last_mut().filter(|r| {
            let r_start = u32::from(r.start);
            let r_end = r_start + u32::from(r.count);
            !alone
                && r.area == t.area
                && !r
                    .tags
                    .iter()
                    .any(|&(j, _)| isolated.get(j).copied().unwrap_or(false))
                && start <= r_end + u32::from(max_gap)
                && end.max(r_end) - r_start <= limit
        }) {
            let r_end = u32::from(r.start) + u32::from(r.count);
            r.count = (end.max(r_end) - u32::from(r.start)) as u16;
            r.tags.push((i, t.address - r.start));
            continue;
        }
        reads.push(Read {
            area: t.area,
            start: t.address,
            count: t.width(),
            tags: vec![(i, 0)],
        });
    }
    reads
}

#[cfg(test)]
mod tests {
    use super::*;
    use marktwin_core::modbus::DataType;

    fn tag(area: Area, address: u16, data_type: DataType) -> ModbusTag {
        ModbusTag {
            length: 10,
            ..ModbusTag::new(format!("{area:?}{address}"), area, address, data_type)
        }
    }

    #[test]
    fn neighbours_join_gaps_split_and_tables_never_mix() {
        let tags = vec![
            tag(Area::Holding, 10, DataType::Float32), // 10..12
            tag(Area::Holding, 0, DataType::Uint16),   // 0..1
            tag(Area::Holding, 14, DataType::Int16),   // gap of 2 → joined
            tag(Area::Holding, 100, DataType::Int16),  // gap of 85 → new read
            tag(Area::Input, 11, DataType::Int16),     // another table
            tag(Area::Coil, 0, DataType::Bool),
            tag(Area::Coil, 1999, DataType::Bool), // far away: its own read
            tag(Area::Coil, 2000, DataType::Bool), // next to it: joined
        ];
        let reads = plan(&tags, 125, 2000, 16, &[]);
        let summary: Vec<_> = reads
            .into_iter()
            .map(|r| (r.area, r.start, r.count, r.tags))
            .collect();
        assert_eq!(
            summary,
            vec![
                (Area::Coil, 0, 1, vec![(5, 0)]),
                (Area::Coil, 1999, 2, vec![(6, 0), (7, 1)]),
                (Area::Holding, 0, 15, vec![(1, 0), (0, 10), (2, 14)]),
                (Area::Holding, 100, 1, vec![(3, 0)]),
                (Area::Input, 11, 1, vec![(4, 0)]),
            ]
        );
    }

    #[test]
    fn reads_stay_within_125_registers_and_cover_every_tag() {
        // 300 consecutive float32 tags: 600 registers, in reads of <= 125.
        let tags: Vec<ModbusTag> = (0..300u16)
            .map(|i| tag(Area::Holding, i * 2, DataType::Float32))
            .collect();
        let reads = plan(&tags, 125, 2000, 0, &[]);
        assert!(reads.iter().all(|r| r.count <= 125));
        assert_eq!(reads.len(), 5, "600 registers in reads of 124 (62 floats)");
        let mut covered: Vec<usize> = reads
            .iter()
            .flat_map(|r| r.tags.iter().map(|t| t.0))
            .collect();
        covered.sort_unstable();
        assert_eq!(covered, (0..300).collect::<Vec<_>>());
        for r in &reads {
            for &(i, off) in &r.tags {
                assert_eq!(r.start + off, tags[i].address);
                assert!(off + tags[i].width() <= r.count);
            }
        }
    }

    #[test]
    fn reads_stay_within_2000_bits() {
        let tags: Vec<ModbusTag> = (0..2001u16)
            .map(|i| tag(Area::Coil, i, DataType::Bool))
            .collect();
        let reads = plan(&tags, 125, 2000, 0, &[]);
        let spans: Vec<(u16, u16)> = reads.iter().map(|r| (r.start, r.count)).collect();
        assert_eq!(spans, vec![(0, 2000), (2000, 1)]);
    }

    #[test]
    fn isolated_tags_get_their_own_read() {
        let tags = vec![
            tag(Area::Holding, 0, DataType::Int16),
            tag(Area::Holding, 1, DataType::Int16),
            tag(Area::Holding, 2, DataType::Int16),
        ];
        let reads = plan(&tags, 125, 2000, 16, &[false, true, false]);
        let spans: Vec<(u16, u16)> = reads.iter().map(|r| (r.start, r.count)).collect();
        assert_eq!(spans, vec![(0, 1), (1, 1), (2, 1)]);
    }
}
