//! The Modbus connector against a Modbus server we did not write (pymodbus):
//! every type and byte order decodes to the value the peer holds, a joined
//! read over a missing address falls back to single reads, a missing tag is
//! reported Bad with exception 2 without hiding the others, and a peer that
//! is killed and restarted is read again with no action.

use std::collections::BTreeMap;

use marktwin_core::events::{Quality, TelemetryReading};
use marktwin_core::modbus::{Area, ByteOrder, DataType, ModbusDevice, ModbusTag};
use marktwin_edge::modbus::reader::{DeviceReader, STATUS_NO_RESPONSE};
use marktwin_tests::{Peer, free_port, telemetry_on};

fn tag(name: &str, area: Area, address: u16, data_type: DataType, order: ByteOrder) -> ModbusTag {
    ModbusTag {
        order,
        ..ModbusTag::new(name, area, address, data_type)
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

/// Waits until readiness check `name` is `want`.
async fn wait_ready(r: &marktwin_core::health::Readiness, name: &str, want: bool) {
    for _ in 0..300 {
        if r.report().iter().any(|(n, ok, _)| n == name && *ok == want) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("{name} never became {want}: {:?}", r.report());
}

/// The whole edge path: `marktwin up`'s broker and Modbus poller read the
/// pymodbus peer into the telemetry topic; the peer is killed (its tags turn
/// Bad, the source not ready) and restarted, and Good readings resume with
/// no action. Every reading is on the topic once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_reach_the_telemetry_topic_and_resume_after_a_peer_restart() {
    let port = free_port();
    let port_s = port.to_string();
    let peer = Peer::start("modbus_server.py", &[&port_s]);
    let dir = tempfile::tempdir().unwrap();
    let mut dev = device(port);
    dev.poll_interval_ms = 200;
    dev.max_backoff_ms = 500;
    let (broker, running, cfg) =
        marktwin_tests::start_edge(dir.path(), |c| c.edge.modbus.devices = vec![dev]).await;
    let check = "source_modbus:peer";
    wait_ready(&running.readiness, check, true).await;
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let killed_at = marktwin_core::now_ms();
    peer.kill();
    wait_ready(&running.readiness, check, false).await;
    let _peer = Peer::start("modbus_server.py", &[&port_s]);
    wait_ready(&running.readiness, check, true).await;
    let back_at = marktwin_core::now_ms();
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;

    running.shutdown().await;
    let envs = telemetry_on(broker.bootstrap(), cfg.topic_name("telemetry")).await;
    broker.stop().await;
    assert!(
        envs.iter()
            .all(|e| e.source == "modbus:peer" && e.key == "line-1")
    );
    let f64_at = |good: bool, from: i64, to: i64| {
        envs.iter().any(|e| {
            let p = &e.payload;
            let t = p.source_time_ms.unwrap();
            p.tag == "f64" && (p.quality == Quality::Good) == good && t >= from && t < to
        })
    };
    assert!(f64_at(true, 0, killed_at), "Good readings before the kill");
    assert!(
        f64_at(false, killed_at, back_at),
        "Bad readings while the peer is down"
    );
    assert!(
        f64_at(true, back_at, i64::MAX),
        "Good readings again after the restart"
    );
    assert!(
        envs.iter()
            .any(|e| e.payload.tag == "missing" && e.payload.status_code == Some(2))
    );
}
