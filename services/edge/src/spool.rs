//! The edge's disk spool: records the broker could not take yet, kept in
//! order on local disk until it acknowledges them.
//!
//! librdkafka gives up on a queued message after `message.timeout.ms`
//! (300 s by default), so an outage longer than that would lose data held
//! only in memory. The spool takes over: records go to append-only segment
//! files (`<dir>/<id>.seg`), and a head file (`<dir>/head`) records how far
//! the broker has acknowledged. Only when a batch is acknowledged does the
//! head move; only whole consumed segments are deleted. After a crash the
//! spool reopens at the head and sends again what was not acknowledged (the
//! event ids make a resend recognisable downstream).
//!
//! Each record is framed as `len: u32 LE | crc32: u32 LE | body`, body =
//! `topic_len: u16 LE | topic | key_len: u32 LE | key | value`. A torn
//! record at the end of the newest segment (power lost mid-write) is cut
//! off on open; a bad checksum anywhere else is an error naming the file and
//! offset, never skipped silently.
//!
//! Written by hand: the crates that offer a persistent queue either keep
//! everything in memory, lack a size bound, or bring a database; this needs
//! ~300 lines and one checksum crate.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::cursor::write_atomic;

/// When appended records are forced to disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fsync {
    /// After every append: nothing acknowledged to the source is lost on
    /// power failure.
    Always,
    /// At most every `fsync_interval_ms`: a power failure loses at most that
    /// window (a process crash loses nothing; the OS has the data).
    Interval,
    /// Leave it to the OS.
    Never,
}

/// Spool settings.
#[derive(Clone, Debug, PartialEq)]
pub struct SpoolConfig {
    /// Largest total size of the segments; an append beyond it is refused
    /// with [`SpoolError::Full`].
    pub max_bytes: u64,
    /// Size at which a new segment is started.
    pub segment_bytes: u64,
    /// When to fsync.
    pub fsync: Fsync,
    /// For [`Fsync::Interval`].
    pub fsync_interval: Duration,
}

impl SpoolConfig {
    /// From the validated `[edge.spool]` section.
    pub fn from_config(c: &marktwin_core::config::SpoolConfig) -> Self {
        SpoolConfig {
            max_bytes: c.max_bytes,
            segment_bytes: c.segment_bytes,
            fsync: match c.fsync.as_str() {
                "always" => Fsync::Always,
                "never" => Fsync::Never,
                _ => Fsync::Interval,
            },
            fsync_interval: Duration::from_millis(c.fsync_interval_ms),
        }
    }
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            max_bytes: 1 << 30,
            segment_bytes: 16 << 20,
            fsync: Fsync::Interval,
            fsync_interval: Duration::from_millis(200),
        }
    }
}

/// One spooled record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Destination topic.
    pub topic: String,
    /// Record key.
    pub key: Vec<u8>,
    /// Record value.
    pub value: Vec<u8>,
}

/// A place in the spool: segment id and byte offset in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    /// Segment id.
    pub segment: u64,
    /// Byte offset in the segment.
    pub offset: u64,
}

/// What can go wrong with the spool.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The spool holds `max_bytes`: the caller must stop taking new input
    /// until the broker drains it (backpressure).
    #[error("spool full: {used} of {max} bytes used; waiting for the broker to take records")]
    Full {
        /// Bytes in use.
        used: u64,
        /// The limit.
        max: u64,
    },
    /// A record failed its checksum or framing.
    #[error("spool segment {path} is corrupt at byte {offset}: {detail}")]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Where.
        offset: u64,
        /// What.
        detail: String,
    },
    /// Disk I/O, e.g. the disk is full.
    #[error("spool {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

type Result<T> = std::result::Result<T, SpoolError>;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_owned(),
        source,
    }
}

const HEADER: u64 = 8;

/// An open spool directory.
pub struct Spool {
    dir: PathBuf,
    cfg: SpoolConfig,
    /// `(id, length)` of every segment, oldest first; the last is written.
    segments: VecDeque<(u64, u64)>,
    writer: File,
    head: Position,
    last_sync: Instant,
    dirty: bool,
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.seg"))
}

fn encode(e: &Entry, out: &mut Vec<u8>) {
    let body_len = 2 + e.topic.len() + 4 + e.key.len() + e.value.len();
    let start = out.len();
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(e.topic.len() as u16).to_le_bytes());
    out.extend_from_slice(e.topic.as_bytes());
    out.extend_from_slice(&(e.key.len() as u32).to_le_bytes());
    out.extend_from_slice(&e.key);
    out.extend_from_slice(&e.value);
    let crc = crc32fast::hash(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn decode_body(body: &[u8]) -> Option<Entry> {
    let tl = usize::from(u16::from_le_bytes(body.get(0..2)?.try_into().ok()?));
    let topic = std::str::from_utf8(body.get(2..2 + tl)?).ok()?.to_owned();
    let k0 = 2 + tl;
    let kl = u32::from_le_bytes(body.get(k0..k0 + 4)?.try_into().ok()?) as usize;
    let key = body.get(k0 + 4..k0 + 4 + kl)?.to_vec();
    let value = body.get(k0 + 4 + kl..)?.to_vec();
    Some(Entry { topic, key, value })
}

/// Reads one record at the reader's position: `Ok(None)` at a clean end,
/// `Err((offset, detail))` for a torn or corrupt record.
fn read_record(
    r: &mut impl Read,
    offset: u64,
) -> std::result::Result<Option<(Entry, u64)>, (u64, String)> {
    let mut h = [0u8; 8];
    match r.read_exact(&mut h) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err((offset, e.to_string())),
    }
    let len = u64::from(u32::from_le_bytes(h[0..4].try_into().expect("4 bytes")));
    let crc = u32::from_le_bytes(h[4..8].try_into().expect("4 bytes"));
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body)
        .map_err(|_| (offset, format!("record of {len} bytes is cut short")))?;
    if crc32fast::hash(&body) != crc {
        return Err((offset, "checksum mismatch".into()));
    }
    let e = decode_body(&body).ok_or((offset, "bad record framing".to_owned()))?;
    Ok(Some((e, offset + HEADER + len)))
}

impl Spool {
    /// Opens (or creates) the spool in `dir`: finds the segments and the
    /// head, and cuts a torn record off the end of the newest segment.
    pub fn open(dir: &Path, cfg: SpoolConfig) -> Result<Spool> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut ids: Vec<u64> = std::fs::read_dir(dir)
            .map_err(io_err(dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let n = e.file_name().into_string().ok()?;
                n.strip_suffix(".seg")?.parse().ok()
            })
            .collect();
        ids.sort_unstable();
        let head_path = dir.join("head");
        let head = match std::fs::read_to_string(&head_path) {
            Ok(t) => {
                let (s, o) = t
                    .trim()
                    .split_once(':')
                    .ok_or_else(|| SpoolError::Corrupt {
                        path: head_path.clone(),
                        offset: 0,
                        detail: format!("`{}` is not segment:offset", t.trim()),
                    })?;
                let parse = |v: &str| {
                    v.parse::<u64>().map_err(|_| SpoolError::Corrupt {
                        path: head_path.clone(),
                        offset: 0,
                        detail: format!("`{}` is not segment:offset", t.trim()),
                    })
                };
                Position {
                    segment: parse(s)?,
                    offset: parse(o)?,
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Position {
                segment: ids.first().copied().unwrap_or(0),
                offset: 0,
            },
            Err(e) => return Err(io_err(&head_path)(e)),
        };
        // Segments wholly before the head were consumed; a crash may have
        // left them behind.
        for &id in ids.iter().filter(|&&id| id < head.segment) {
            let p = segment_path(dir, id);
            std::fs::remove_file(&p).map_err(io_err(&p))?;
        }
        ids.retain(|&id| id >= head.segment);
        if ids.is_empty() {
            ids.push(head.segment);
        }
        let mut segments = VecDeque::new();
        for (n, &id) in ids.iter().enumerate() {
            let p = segment_path(dir, id);
            let mut len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
            if n + 1 == ids.len() {
                len = Self::valid_length(&p)?;
            }
            segments.push_back((id, len));
        }
        let (last, last_len) = *segments.back().expect("at least one segment");
        let p = segment_path(dir, last);
        let writer = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .map_err(io_err(&p))?;
        writer.set_len(last_len).map_err(io_err(&p))?;
        Ok(Spool {
            dir: dir.to_owned(),
            cfg,
            segments,
            writer,
            head,
            last_sync: Instant::now(),
            dirty: false,
        })
    }

    /// The length of the well-formed records at the start of `p`.
    fn valid_length(p: &Path) -> Result<u64> {
        let f = match File::open(p) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io_err(p)(e)),
        };
        let mut r = BufReader::new(f);
        let mut at = 0;
        loop {
            match read_record(&mut r, at) {
                Ok(Some((_, next))) => at = next,
                Ok(None) => return Ok(at),
                Err((off, detail)) => {
                    tracing::warn!(segment = %p.display(), offset = off, detail, "Cutting a torn record off the spool's newest segment.");
                    return Ok(off);
                }
            }
        }
    }

    /// Bytes of records not acknowledged yet: what `max_bytes` bounds.
    pub fn bytes(&self) -> u64 {
        self.segments
            .iter()
            .map(|&(id, len)| {
                if id == self.head.segment {
                    len.saturating_sub(self.head.offset)
                } else {
                    len
                }
            })
            .sum()
    }

    /// True when everything appended has been acknowledged.
    pub fn is_empty(&self) -> bool {
        let (last, len) = *self.segments.back().expect("at least one segment");
        self.head
            >= Position {
                segment: last,
                offset: len,
            }
    }

    /// Appends `entries` in order, or none of them when they do not fit.
    pub fn append(&mut self, entries: &[Entry]) -> Result<()> {
        let mut buf = Vec::new();
        for e in entries {
            encode(e, &mut buf);
        }
        let used = self.bytes();
        if used + buf.len() as u64 > self.cfg.max_bytes {
            return Err(SpoolError::Full {
                used,
                max: self.cfg.max_bytes,
            });
        }
        let (last, len) = *self.segments.back().expect("at least one segment");
        if len > 0 && len + buf.len() as u64 > self.cfg.segment_bytes {
            self.sync()?;
            let id = last + 1;
            let p = segment_path(&self.dir, id);
            self.writer = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&p)
                .map_err(io_err(&p))?;
            self.segments.push_back((id, 0));
        }
        let (last, _) = *self.segments.back().expect("at least one segment");
        let p = segment_path(&self.dir, last);
        if let Err(e) = self.writer.write_all(&buf) {
            // Leave no half record behind: cut back to the last whole one.
            let len = self.segments.back().expect("at least one segment").1;
            let _ = self.writer.set_len(len);
            return Err(io_err(&p)(e));
        }
        self.segments.back_mut().expect("at least one segment").1 += buf.len() as u64;
        self.dirty = true;
        match self.cfg.fsync {
            Fsync::Always => self.sync()?,
            Fsync::Interval if self.last_sync.elapsed() >= self.cfg.fsync_interval => {
                self.sync()?
            }
            _ => {}
        }
        Ok(())
    }

    /// Forces appended records to disk.
    pub fn sync(&mut self) -> Result<()> {
        if self.dirty {
            let last = self.segments.back().expect("at least one segment").0;
            self.writer
                .sync_data()
                .map_err(io_err(&segment_path(&self.dir, last)))?;
            self.dirty = false;
        }
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Up to `max` records from the head, in order, and the position after
    /// them (pass it to [`Spool::ack`] once the broker has them all).
    pub fn peek(&mut self, max: usize) -> Result<(Vec<Entry>, Position)> {
        let mut out = Vec::new();
        let mut pos = self.head;
        for &(id, len) in self.segments.iter().filter(|s| s.0 >= self.head.segment) {
            let start = if id == self.head.segment {
                self.head.offset
            } else {
                0
            };
            if start >= len {
                pos = Position {
                    segment: id,
                    offset: len,
                };
                continue;
            }
            let p = segment_path(&self.dir, id);
            let mut f = File::open(&p).map_err(io_err(&p))?;
            f.seek(SeekFrom::Start(start)).map_err(io_err(&p))?;
            let mut r = BufReader::new(f).take(len - start);
            let mut at = start;
            while out.len() < max && at < len {
                match read_record(&mut r, at) {
                    Ok(Some((e, next))) => {
                        out.push(e);
                        at = next;
                    }
                    Ok(None) => break,
                    Err((offset, detail)) => {
                        return Err(SpoolError::Corrupt {
                            path: p,
                            offset,
                            detail,
                        });
                    }
                }
            }
            pos = Position {
                segment: id,
                offset: at,
            };
            if out.len() >= max {
                break;
            }
        }
        Ok((out, pos))
    }

    /// Marks everything before `upto` as acknowledged: stores the head and
    /// deletes segments that are wholly behind it.
    pub fn ack(&mut self, upto: Position) -> Result<()> {
        if upto <= self.head {
            return Ok(());
        }
        let head_path = self.dir.join("head");
        write_atomic(
            &head_path,
            format!("{}:{}", upto.segment, upto.offset).as_bytes(),
        )
        .map_err(io_err(&head_path))?;
        self.head = upto;
        while self.segments.len() > 1 && self.segments[0].0 < upto.segment {
            let (id, _) = self.segments.pop_front().expect("checked");
            let p = segment_path(&self.dir, id);
            std::fs::remove_file(&p).map_err(io_err(&p))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: usize) -> Entry {
        Entry {
            topic: "marktwin.telemetry".into(),
            key: format!("k{i}").into_bytes(),
            value: format!("{{\"i\":{i}}}").repeat(1 + i % 7).into_bytes(),
        }
    }

    fn small() -> SpoolConfig {
        SpoolConfig {
            max_bytes: 1 << 20,
            segment_bytes: 4096,
            fsync: Fsync::Always,
            fsync_interval: Duration::ZERO,
        }
    }

    fn drain(s: &mut Spool, batch: usize) -> Vec<Entry> {
        let mut all = Vec::new();
        loop {
            let (got, pos) = s.peek(batch).unwrap();
            if got.is_empty() {
                return all;
            }
            all.extend(got);
            s.ack(pos).unwrap();
        }
    }

    #[test]
    fn records_come_out_in_order_across_segments_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let want: Vec<Entry> = (0..500).map(entry).collect();
        {
            let mut s = Spool::open(dir.path(), small()).unwrap();
            assert!(s.is_empty());
            for chunk in want.chunks(7) {
                s.append(chunk).unwrap();
            }
            assert!(!s.is_empty());
            // Take and acknowledge the first 100, then "crash".
            let (got, pos) = s.peek(100).unwrap();
            assert_eq!(got, want[..100]);
            s.ack(pos).unwrap();
            let (got, _) = s.peek(50).unwrap();
            assert_eq!(got, want[100..150], "peeked but not acknowledged");
        }
        let segs = std::fs::read_dir(dir.path()).unwrap().count();
        assert!(segs > 3, "several segments were written: {segs}");
        let mut s = Spool::open(dir.path(), small()).unwrap();
        assert_eq!(
            drain(&mut s, 33),
            want[100..],
            "resumes at the head, nothing lost, nothing twice"
        );
        assert!(s.is_empty());
        // Consumed segments are gone; one (the one being written) is left.
        let segs: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
            .collect();
        assert_eq!(segs.len(), 1);
        s.append(&[entry(9)]).unwrap();
        assert_eq!(drain(&mut s, 10), vec![entry(9)]);
    }

    #[test]
    fn a_full_spool_refuses_whole_batches_and_takes_more_once_drained() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = small();
        cfg.max_bytes = 3000;
        cfg.segment_bytes = 1000;
        let mut s = Spool::open(dir.path(), cfg).unwrap();
        let mut n = 0;
        loop {
            match s.append(&[entry(n), entry(n + 1)]) {
                Ok(()) => n += 2,
                Err(SpoolError::Full { used, max }) => {
                    assert!(used <= max);
                    break;
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(n > 10);
        let got = drain(&mut s, 5);
        assert_eq!(got.len(), n, "the refused batch was not half written");
        assert_eq!(s.bytes(), 0, "acknowledged records do not count");
        for i in 0..n {
            s.append(&[entry(i)]).unwrap();
        }
    }

    #[test]
    fn a_torn_tail_is_cut_and_corruption_elsewhere_is_named() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = Spool::open(dir.path(), small()).unwrap();
            s.append(&[entry(1), entry(2)]).unwrap();
        }
        let seg = segment_path(dir.path(), 0);
        let whole = std::fs::metadata(&seg).unwrap().len();
        // Power lost while writing a third record: half of it is there.
        let mut torn = Vec::new();
        encode(&entry(3), &mut torn);
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&torn[..torn.len() / 2]).unwrap();
        drop(f);
        let mut s = Spool::open(dir.path(), small()).unwrap();
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), whole);
        s.append(&[entry(4)]).unwrap();
        assert_eq!(drain(&mut s, 10), vec![entry(1), entry(2), entry(4)]);

        // A flipped byte inside an unacknowledged record is an error that
        // names the file and offset.
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), small()).unwrap();
        s.append(&[entry(1), entry(2), entry(3)]).unwrap();
        let seg = segment_path(dir.path(), 0);
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes[12] ^= 0xff;
        std::fs::write(&seg, bytes).unwrap();
        let e = s.peek(10).unwrap_err().to_string();
        assert!(
            e.contains(".seg") && e.contains("byte 0") && e.contains("checksum"),
            "{e}"
        );
    }

    #[test]
    fn a_bad_head_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("head"), "x").unwrap();
        let e = Spool::open(dir.path(), small()).err().unwrap().to_string();
        assert!(e.contains("head") && e.contains("segment:offset"), "{e}");
    }
}
