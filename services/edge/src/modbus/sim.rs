//! A Modbus TCP simulator of packing-line PLCs and a site energy meter, for
//! `marktwin up` and tests. Every value is a pure function of the time since
//! the simulator's start and of the line number, so two reads at the same
//! moment agree and counters only grow.
//!
//! Holding registers, line `l` (0-based) at base `100 × l`:
//!
//! | offset | type | meaning |
//! |---|---|---|
//! | 0-1 | float32, CDAB | speed, packs/min (0 unless running) |
//! | 2-3 | uint32 | good packs since start |
//! | 4-5 | uint32 | rejected packs since start |
//! | 6 | uint16 | state: 1 running, 2 idle, 3 fault, 4 changeover |
//! | 7 | int16 | motor temperature × 10, °C |
//! | 8 | uint16 | status bits: 0 running, 1 fault |
//!
//! Input registers 0-3: site energy, float64 DCBA, kWh. Coil `l`: line `l`
//! running. With [`PlantSim::with_bench_registers`], input registers from
//! 1000 hold uint16s that change every 100 ms (benchmark load). Every other
//! address answers IllegalDataAddress.
//!
//! Each line runs a 600 s cycle (offset by 137 s per line): 480 s running,
//! 40 s changeover, 50 s idle, 30 s fault.

use std::future;
use std::net::SocketAddr;
use std::sync::Arc;

use marktwin_core::modbus::{Area, ByteOrder, DataType, ModbusDevice, ModbusTag};
use marktwin_core::now_ms;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_modbus::server::tcp::{Server, accept_tcp_connection};
use tokio_modbus::{ExceptionCode, Request, Response};
use tracing::warn;

const CYCLE_S: f64 = 600.0;
const RUN_S: f64 = 480.0;
const CHANGEOVER_S: f64 = 40.0;
const IDLE_S: f64 = 50.0;
const NOMINAL_PPM: f64 = 400.0;
const REJECT_SHARE: f64 = 0.012;

/// The simulated plant.
#[derive(Clone, Debug)]
pub struct PlantSim {
    start_ms: i64,
    lines: u16,
    bench: u16,
}

/// First input register of the benchmark block.
pub const BENCH_BASE: u16 = 1_000;

impl PlantSim {
    /// `lines` lines whose clocks start at `start_ms`.
    pub fn new(start_ms: i64, lines: u16) -> Self {
        PlantSim {
            start_ms,
            lines,
            bench: 0,
        }
    }

    /// Adds `n` input registers from [`BENCH_BASE`], each a uint16 that
    /// changes every 100 ms: the load source for the benchmark.
    pub fn with_bench_registers(mut self, n: u16) -> Self {
        self.bench = n.min(u16::MAX - BENCH_BASE);
        self
    }

    fn phase(&self, line: u16, t: f64) -> (f64, f64) {
        let t = t + f64::from(line) * 137.0;
        ((t / CYCLE_S).floor(), t.rem_euclid(CYCLE_S))
    }

    /// State code of `line` at `t` seconds.
    pub fn state(&self, line: u16, t: f64) -> u16 {
        let (_, p) = self.phase(line, t);
        if p < RUN_S {
            1
        } else if p < RUN_S + CHANGEOVER_S {
            4
        } else if p < RUN_S + CHANGEOVER_S + IDLE_S {
            2
        } else {
            3
        }
    }

    /// Seconds `line` has been running in `[0, t]`.
    fn running_seconds(&self, line: u16, t: f64) -> f64 {
        let offset = f64::from(line) * 137.0;
        let run_until = |x: f64| {
            let (cycles, p) = self.phase(0, x);
            cycles * RUN_S + p.min(RUN_S)
        };
        (run_until(t + offset) - run_until(offset)).max(0.0)
    }

    fn speed(&self, line: u16, t: f64) -> f64 {
        if self.state(line, t) != 1 {
            return 0.0;
        }
        NOMINAL_PPM + 15.0 * (t / 37.0 + f64::from(line)).sin()
    }

    fn holding(&self, line: u16, off: u16, t: f64) -> Option<u16> {
        let packs = self.running_seconds(line, t) * NOMINAL_PPM / 60.0;
        let rejects = (packs * REJECT_SHARE).floor();
        let good = (packs - rejects).floor();
        let f = (self.speed(line, t) as f32).to_be_bytes();
        let u32_at = |v: f64, i: u16| ((v as u32) >> (16 * (1 - i))) as u16;
        Some(match off {
            0 => u16::from_be_bytes([f[2], f[3]]), // CDAB: low word first
            1 => u16::from_be_bytes([f[0], f[1]]),
            2 | 3 => u32_at(good, off - 2),
            4 | 5 => u32_at(rejects, off - 4),
            6 => self.state(line, t),
            7 => ((62.0 + 8.0 * (t / 300.0).sin()) * 10.0) as i16 as u16,
            8 => match self.state(line, t) {
                1 => 0b01,
                3 => 0b10,
                _ => 0,
            },
            _ => return None,
        })
    }

    fn energy_kwh(&self, t: f64) -> f64 {
        1_000.0 + t * 0.05 * f64::from(self.lines)
    }

    fn now_s(&self) -> f64 {
        ((now_ms() - self.start_ms) as f64 / 1000.0).max(0.0)
    }

    fn read(&self, req: &Request<'_>) -> Result<Response, ExceptionCode> {
        let t = self.now_s();
        let range = |a: u16, n: u16| u32::from(a)..u32::from(a) + u32::from(n);
        match *req {
            Request::ReadHoldingRegisters(a, n) => range(a, n)
                .map(|addr| {
                    let (line, off) = ((addr / 100) as u16, (addr % 100) as u16);
                    (line < self.lines)
                        .then(|| self.holding(line, off, t))
                        .flatten()
                        .ok_or(ExceptionCode::IllegalDataAddress)
                })
                .collect::<Result<_, _>>()
                .map(Response::ReadHoldingRegisters),
            Request::ReadInputRegisters(a, n) => {
                let raw = self.energy_kwh(t).to_le_bytes(); // DCBA
                let bench = u32::from(BENCH_BASE)..u32::from(BENCH_BASE) + u32::from(self.bench);
                let tick = (t * 10.0) as u32;
                range(a, n)
                    .map(|addr| match addr {
                        0..=3 => {
                            let i = addr as usize * 2;
                            Ok(u16::from_be_bytes([raw[i], raw[i + 1]]))
                        }
                        a if bench.contains(&a) => Ok((tick.wrapping_add(a) & 0xFFFF) as u16),
                        _ => Err(ExceptionCode::IllegalDataAddress),
                    })
                    .collect::<Result<_, _>>()
                    .map(Response::ReadInputRegisters)
            }
            Request::ReadCoils(a, n) => range(a, n)
                .map(|addr| {
                    u16::try_from(addr)
                        .ok()
                        .filter(|l| *l < self.lines)
                        .map(|l| self.state(l, t) == 1)
                        .ok_or(ExceptionCode::IllegalDataAddress)
                })
                .collect::<Result<_, _>>()
                .map(Response::ReadCoils),
            _ => Err(ExceptionCode::IllegalFunction),
        }
    }

    /// The register map of this simulator as a device config at `address`.
    pub fn device(&self, name: &str, address: &str) -> ModbusDevice {
        let tag = |name: String, asset: String, area, address, data_type, order| ModbusTag {
            asset: Some(asset),
            order,
            ..ModbusTag::new(name, area, address, data_type)
        };
        let mut tags = Vec::new();
        for l in 0..self.lines {
            let asset = format!("line-{}", l + 1);
            let b = l * 100;
            let mut speed = tag(
                "speed".into(),
                asset.clone(),
                Area::Holding,
                b,
                DataType::Float32,
                ByteOrder::Cdab,
            );
            speed.eng_unit = Some("packs/min".into());
            tags.push(speed);
            tags.push(tag(
                "good_count".into(),
                asset.clone(),
                Area::Holding,
                b + 2,
                DataType::Uint32,
                ByteOrder::Abcd,
            ));
            tags.push(tag(
                "reject_count".into(),
                asset.clone(),
                Area::Holding,
                b + 4,
                DataType::Uint32,
                ByteOrder::Abcd,
            ));
            tags.push(tag(
                "state".into(),
                asset.clone(),
                Area::Holding,
                b + 6,
                DataType::Uint16,
                ByteOrder::Abcd,
            ));
            let mut temp = tag(
                "motor_temp".into(),
                asset.clone(),
                Area::Holding,
                b + 7,
                DataType::Int16,
                ByteOrder::Abcd,
            );
            temp.scale = 0.1;
            temp.eng_unit = Some("°C".into());
            tags.push(temp);
            let mut fault = tag(
                "fault".into(),
                asset.clone(),
                Area::Holding,
                b + 8,
                DataType::Bit,
                ByteOrder::Abcd,
            );
            fault.bit = 1;
            tags.push(fault);
            tags.push(tag(
                "running".into(),
                asset,
                Area::Coil,
                l,
                DataType::Bool,
                ByteOrder::Abcd,
            ));
        }
        let mut energy = tag(
            "energy".into(),
            "site".into(),
            Area::Input,
            0,
            DataType::Float64,
            ByteOrder::Dcba,
        );
        energy.eng_unit = Some("kWh".into());
        tags.push(energy);
        for i in 0..self.bench {
            tags.push(tag(
                format!("bench.{i}"),
                "bench".into(),
                Area::Input,
                BENCH_BASE + i,
                DataType::Uint16,
                ByteOrder::Abcd,
            ));
        }
        ModbusDevice {
            name: name.into(),
            address: address.into(),
            asset: "site".into(),
            tags,
            ..ModbusDevice::default()
        }
    }
}

struct Service(Arc<PlantSim>);

impl tokio_modbus::server::Service for Service {
    type Request = Request<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = future::Ready<Result<Response, ExceptionCode>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        future::ready(self.0.read(&req))
    }
}

/// Serves `sim` on `listener` until `shutdown` turns true.
pub async fn serve(listener: TcpListener, sim: PlantSim, mut shutdown: watch::Receiver<bool>) {
    let sim = Arc::new(sim);
    let server = Server::new(listener);
    let on_connected = |stream, addr: SocketAddr| {
        let sim = sim.clone();
        async move { accept_tcp_connection(stream, addr, move |_| Ok(Some(Service(sim.clone())))) }
    };
    let stop = async move {
        let _ = shutdown.wait_for(|v| *v).await;
    };
    if let Err(e) = server
        .serve_until(
            &on_connected,
            |e| warn!(error = %e, "Modbus simulator connection failed."),
            stop,
        )
        .await
    {
        warn!(error = %e, "Modbus simulator stopped.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modbus::reader::DeviceReader;
    use marktwin_core::events::Quality;

    #[test]
    fn counters_grow_only_while_running_and_states_cycle() {
        let s = PlantSim::new(0, 2);
        let mut last = 0.0;
        let mut states = std::collections::BTreeSet::new();
        for t in (0..1200).map(f64::from) {
            let r = s.running_seconds(0, t);
            assert!(r >= last, "counters never go back");
            if t > 0.0 && s.state(0, t) != 1 && s.state(0, t - 1.0) != 1 {
                assert_eq!(r, last, "no packs while stopped (t = {t})");
            }
            last = r;
            states.insert(s.state(0, t));
        }
        assert_eq!(states.into_iter().collect::<Vec<_>>(), vec![1, 2, 3, 4]);
        assert_eq!(s.running_seconds(0, 600.0), RUN_S);
    }

    #[tokio::test]
    async fn the_reader_reads_the_simulator_through_its_own_device_map() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sim = PlantSim::new(now_ms() - 100_000, 2);
        let dev = sim.device("plant", &addr.to_string());
        marktwin_core::modbus::ModbusConfig {
            devices: vec![dev.clone()],
        }
        .validate()
        .unwrap();
        let (tx, rx) = watch::channel(false);
        let server = tokio::spawn(serve(listener, sim, rx));
        let mut reader = DeviceReader::new(dev);
        let c = reader.cycle().await;
        assert!(!c.disconnected);
        assert_eq!(c.readings.len(), 15);
        assert!(
            c.readings.iter().all(|r| r.quality == Quality::Good),
            "{:?}",
            c.readings
        );
        let get = |asset: &str, n: &str| {
            c.readings
                .iter()
                .find(|r| r.asset == asset && r.tag == n)
                .unwrap()
                .value
                .unwrap()
        };
        // 100 s in, line 1 runs (phase 100 s) at about 400 packs/min.
        assert_eq!(get("line-1", "state"), 1.0);
        assert!((get("line-1", "speed") - 400.0).abs() <= 15.0);
        assert!(get("line-1", "good_count") > 600.0);
        assert_eq!(get("line-1", "running"), 1.0);
        assert!(get("site", "energy") > 1000.0);
        assert!((get("line-1", "motor_temp") - 62.0).abs() <= 8.1);
        tx.send(true).unwrap();
        server.await.unwrap();
    }
}
