//! Reading a device's register map: one poll cycle at a time, over a
//! connection that is opened again whenever it breaks.

use std::net::SocketAddr;
use std::time::Duration;

use marktwin_core::events::{Quality, TelemetryReading};
use marktwin_core::modbus::{Area, ModbusDevice, ModbusTag};
use marktwin_core::now_ms;
use tokio_modbus::client::{Context, Reader, tcp};
use tokio_modbus::{ExceptionCode, Slave};
use tracing::{info, warn};

use super::decode::{TagValue, decode_bit, decode_registers};
use super::plan::{Read, plan};

/// Status code written into a reading when the device could not be reached
/// or did not answer in time (not a Modbus exception code, which are < 256).
pub const STATUS_NO_RESPONSE: u32 = 0x100;

/// What one cycle saw.
#[derive(Debug, Default)]
pub struct Cycle {
    /// One reading per tag: Good with a value, or Bad with the exception
    /// code or [`STATUS_NO_RESPONSE`].
    pub readings: Vec<TelemetryReading>,
    /// Requests sent.
    pub requests: u64,
    /// The connection broke during the cycle (it is reopened next cycle).
    pub disconnected: bool,
}

/// A device's reader: its plan, its connection, and which tags the device
/// refused to serve inside a joined read.
pub struct DeviceReader {
    dev: ModbusDevice,
    isolated: Vec<bool>,
    reads: Vec<Read>,
    ctx: Option<Context>,
}

enum Outcome {
    Registers(Vec<u16>),
    Bits(Vec<bool>),
}

impl DeviceReader {
    /// A reader for `dev` (validated config); it connects on first use.
    pub fn new(dev: ModbusDevice) -> Self {
        let isolated = vec![false; dev.tags.len()];
        let reads = plan(
            &dev.tags,
            dev.max_registers,
            dev.max_bits,
            dev.max_gap,
            &isolated,
        );
        DeviceReader {
            dev,
            isolated,
            reads,
            ctx: None,
        }
    }

    /// The device's config.
    pub fn device(&self) -> &ModbusDevice {
        &self.dev
    }

    /// Reads planned for the next cycle.
    pub fn reads(&self) -> &[Read] {
        &self.reads
    }

    /// Whether a connection is open.
    pub fn connected(&self) -> bool {
        self.ctx.is_some()
    }

    /// Opens the connection if none is open.
    pub async fn connect(&mut self) -> Result<(), String> {
        if self.ctx.is_some() {
            return Ok(());
        }
        let addr: SocketAddr = tokio::net::lookup_host(&self.dev.address)
            .await
            .map_err(|e| format!("{}: {e}", self.dev.address))?
            .next()
            .ok_or_else(|| format!("{}: no address", self.dev.address))?;
        let t = Duration::from_millis(self.dev.timeout_ms);
        let ctx = tokio::time::timeout(t, tcp::connect_slave(addr, Slave(self.dev.unit_id)))
            .await
            .map_err(|_| format!("{addr}: connect timed out after {t:?}"))?
            .map_err(|e| format!("{addr}: {e}"))?;
        info!(device = %self.dev.name, %addr, "Modbus device connected.");
        self.ctx = Some(ctx);
        Ok(())
    }

    async fn request(
        &mut self,
        area: Area,
        start: u16,
        count: u16,
    ) -> Result<Result<Outcome, ExceptionCode>, String> {
        let t = Duration::from_millis(self.dev.timeout_ms);
        let ctx = self.ctx.as_mut().ok_or("not connected")?;
        let call = async {
            match area {
                Area::Coil => ctx
                    .read_coils(start, count)
                    .await
                    .map(|r| r.map(Outcome::Bits)),
                Area::DiscreteInput => ctx
                    .read_discrete_inputs(start, count)
                    .await
                    .map(|r| r.map(Outcome::Bits)),
                Area::Holding => ctx
                    .read_holding_registers(start, count)
                    .await
                    .map(|r| r.map(Outcome::Registers)),
                Area::Input => ctx
                    .read_input_registers(start, count)
                    .await
                    .map(|r| r.map(Outcome::Registers)),
            }
        };
        match tokio::time::timeout(t, call).await {
            Err(_) => Err(format!("no answer within {t:?}")),
            Ok(Err(e)) => Err(e.to_string()),
            Ok(Ok(Ok(o))) => {
                let got = match &o {
                    Outcome::Registers(r) => r.len(),
                    Outcome::Bits(b) => b.len(),
                };
                if got < usize::from(count) {
                    return Err(format!("asked for {count} at {start}, got {got}"));
                }
                Ok(Ok(o))
            }
            Ok(Ok(Err(code))) => Ok(Err(code)),
        }
    }

    fn reading(
        &self,
        i: usize,
        at_ms: i64,
        value: Option<TagValue>,
        status: Option<u32>,
    ) -> TelemetryReading {
        let tag: &ModbusTag = &self.dev.tags[i];
        let (value, text, quality) = match value {
            Some(TagValue::Number(v)) => (Some(v), None, Quality::Good),
            Some(TagValue::Text(s)) => (None, Some(s), Quality::Good),
            None => (None, None, Quality::Bad),
        };
        TelemetryReading {
            tag: tag.name.clone(),
            asset: tag.asset.clone().unwrap_or_else(|| self.dev.asset.clone()),
            value,
            text,
            quality,
            status_code: status,
            // Modbus carries no timestamps: the time of the answer is the
            // sample's time.
            source_time_ms: Some(at_ms),
            server_time_ms: None,
            eng_unit: tag.eng_unit.clone(),
        }
    }

    /// A Bad reading carrying the device's exception code.
    fn refused(&self, i: usize, code: ExceptionCode) -> TelemetryReading {
        self.reading(i, now_ms(), None, Some(u32::from(u8::from(code))))
    }

    fn decode(
        &self,
        read_tags: &[(usize, u16)],
        o: &Outcome,
        at_ms: i64,
        out: &mut Vec<TelemetryReading>,
    ) {
        for &(i, off) in read_tags {
            let off = usize::from(off);
            let v = match o {
                Outcome::Registers(r) => decode_registers(&self.dev.tags[i], &r[off..]),
                Outcome::Bits(b) => decode_bit(b[off]),
            };
            out.push(self.reading(i, at_ms, Some(v), None));
        }
    }

    /// Reads every tag once. A joined read that the device answers with an
    /// exception (an address in the gap does not exist) is retried tag by
    /// tag, and those tags are read alone from then on, so one bad address
    /// never hides the others and is not asked for again in every cycle.
    /// A transport error or timeout closes the connection; the tags not
    /// read are reported Bad with [`STATUS_NO_RESPONSE`].
    pub async fn cycle(&mut self) -> Cycle {
        let mut c = Cycle::default();
        if let Err(e) = self.connect().await {
            warn!(device = %self.dev.name, error = %e, "Modbus connect failed.");
            let at = now_ms();
            c.readings = (0..self.dev.tags.len())
                .map(|i| self.reading(i, at, None, Some(STATUS_NO_RESPONSE)))
                .collect();
            c.disconnected = true;
            return c;
        }
        let reads = self.reads.clone();
        let mut replan = false;
        for (n, read) in reads.iter().enumerate() {
            c.requests += 1;
            match self.request(read.area, read.start, read.count).await {
                Ok(Ok(o)) => self.decode(&read.tags, &o, now_ms(), &mut c.readings),
                Ok(Err(code)) if read.tags.len() > 1 => {
                    warn!(device = %self.dev.name, start = read.start, count = read.count, exception = ?code, "Joined read refused; reading its tags one by one.");
                    replan = true;
                    for &(i, _) in &read.tags {
                        self.isolated[i] = true;
                        let tag = &self.dev.tags[i];
                        c.requests += 1;
                        match self.request(tag.area, tag.address, tag.width()).await {
                            Ok(Ok(o)) => self.decode(&[(i, 0)], &o, now_ms(), &mut c.readings),
                            Ok(Err(code)) => c.readings.push(self.refused(i, code)),
                            Err(e) => {
                                self.broken(&e, &reads[n..], &mut c);
                                return c;
                            }
                        }
                    }
                }
                Ok(Err(code)) => {
                    c.readings.push(self.refused(read.tags[0].0, code));
                }
                Err(e) => {
                    self.broken(&e, &reads[n..], &mut c);
                    return c;
                }
            }
        }
        if replan {
            self.reads = plan(
                &self.dev.tags,
                self.dev.max_registers,
                self.dev.max_bits,
                self.dev.max_gap,
                &self.isolated,
            );
        }
        c
    }

    /// The connection failed: drop it and report the unread tags as Bad.
    fn broken(&mut self, error: &str, unread: &[Read], c: &mut Cycle) {
        warn!(device = %self.dev.name, error, "Modbus request failed; reconnecting.");
        self.ctx = None;
        c.disconnected = true;
        let at = now_ms();
        let done: std::collections::HashSet<String> =
            c.readings.iter().map(|r| r.tag.clone()).collect();
        for r in unread {
            for &(i, _) in &r.tags {
                if !done.contains(&self.dev.tags[i].name) {
                    c.readings
                        .push(self.reading(i, at, None, Some(STATUS_NO_RESPONSE)));
                }
            }
        }
    }
}
