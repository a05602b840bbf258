//! The Modbus connector against a Modbus server we did not write (pymodbus):
//! every type and byte order decodes to the value the peer holds, a joined
//! read over a missing address falls back to single reads, a missing tag is
//! reported Bad with exception 2 without hiding the others, and a peer that
//! is killed and restarted is read again with no action.

use std::collections::BTreeMap;

use marktwin_core::events::{Quality, TelemetryReading};
use marktwin_core::modbus::{Area, ByteOrder, DataType, ModbusDevice, ModbusTag};
use marktwin_edge::modbus::reader::{DeviceReader, STATUS_NO_RESPONSE};
use marktwin_tests::{Peer, free_port};

fn tag(name: &str, area: Area, address: u16, data_type: DataType, order: ByteOrder) -> ModbusTag {
    ModbusTag {
        name: name.into(),
        asset: None,
        area,
        address,
        data_type,
        order,
        bit: 0,
        length: 0,
        scale: 1.0,
        offset: 0.0,
        eng_unit: None,
    }
}

fn device(port: u16) -> ModbusDevice {
    use Area::*;
    use ByteOrder::*;
    use DataType::*;
    let mut tags = vec![
        tag("i16", Holding, 0, Int16, Abcd),
        tag("f32", Holding, 10, Float32, Cdab),
        tag("bit3", Holding, 14, Bit, Abcd),
        tag("beyond_hole", Holding, 16, Int16, Abcd),
        tag("f64", Holding, 20, Float64, Dcba),
        tag("name", Holding, 30, String, Abcd),
        tag("counter", Holding, 40, Uint16, Abcd),
        tag("missing", Holding, 200, Int16, Abcd),
        tag("u32", Input, 0, Uint32, Abcd),
        tag("coil0", Coil, 0, Bool, Abcd),
        tag("coil1", Coil, 1, Bool, Abcd),
        tag("door", DiscreteInput, 5, Bool, Abcd),
    ];
    tags[2].bit = 3;
    tags[5].length = 3;
    tags[0].scale = 0.5;
    ModbusDevice {
        name: "peer".into(),
        address: format!("127.0.0.1:{port}"),
        unit_id: 1,
        asset: "line-1".into(),
        timeout_ms: 1000,
        tags,
        ..ModbusDevice::default()
    }
}

fn by_tag(readings: Vec<TelemetryReading>) -> BTreeMap<String, TelemetryReading> {
    readings.into_iter().map(|r| (r.tag.clone(), r)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_every_type_from_pymodbus_and_survives_a_peer_restart() {
    let port = free_port();
    let port_s = port.to_string();
    let peer = Peer::start("modbus_server.py", &[&port_s]);
    let mut reader = DeviceReader::new(device(port));
    let joined = reader.reads().len();

    let c = reader.cycle().await;
    assert!(!c.disconnected);
    let r = by_tag(c.readings);
    assert_eq!(r.len(), 12, "one reading per tag: {:?}", r.keys());
    for x in r.values() {
        eprintln!(
            "{} {:?} {:?} {:?} {:?}",
            x.tag, x.quality, x.value, x.text, x.status_code
        );
    }
    let v = |t: &str| {
        assert_eq!(r[t].quality, Quality::Good, "{t}: {:?}", r[t]);
        r[t].value.unwrap()
    };
    assert_eq!(v("i16"), -1234.0 * 0.5);
    assert!((v("f32") - 123.456).abs() < 1e-4);
    assert_eq!(v("bit3"), 1.0);
    assert_eq!(v("beyond_hole"), 7.0);
    assert_eq!(v("f64"), -2.5e10);
    assert_eq!(v("u32"), 4e9);
    assert_eq!((v("coil0"), v("coil1"), v("door")), (1.0, 0.0, 1.0));
    assert_eq!(r["name"].text.as_deref(), Some("LN-1"));
    assert_eq!(r["missing"].quality, Quality::Bad);
    assert_eq!(r["missing"].status_code, Some(2), "IllegalDataAddress");
    assert_eq!(r["i16"].asset, "line-1");
    // The refused joined read was split: the next cycle reads without
    // exceptions and gets the same values.
    assert!(
        reader.reads().len() > joined,
        "the read over undefined addresses was split"
    );
    let c2 = reader.cycle().await;
    assert_eq!(
        c2.requests,
        reader.reads().len() as u64,
        "no refused read is tried again"
    );
    let r2 = by_tag(c2.readings);
    assert_eq!(r2["beyond_hole"].value, Some(7.0));
    assert!(r2["counter"].value.is_some());

    // Kill the peer: every tag is reported Bad, nothing hangs.
    peer.kill();
    let c = reader.cycle().await;
    assert!(c.disconnected);
    assert_eq!(c.readings.len(), 12);
    assert!(
        c.readings
            .iter()
            .all(|r| r.quality == Quality::Bad && r.status_code == Some(STATUS_NO_RESPONSE)),
        "{:?}",
        c.readings
    );

    // Restart it on the same port: the reader reconnects by itself.
    let _peer = Peer::start("modbus_server.py", &[&port_s]);
    let mut good = None;
    for _ in 0..50 {
        let c = reader.cycle().await;
        if !c.disconnected {
            good = Some(by_tag(c.readings));
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let r = good.expect("the reader reconnected to the restarted peer");
    assert_eq!(r["f64"].value, Some(-2.5e10));
    assert_eq!(r["counter"].quality, Quality::Good);
}
