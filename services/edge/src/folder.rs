//! The drop folder: ERP and other systems export files (`*.csv`, `*.json`,
//! `*.jsonl` / `*.ndjson`, UTF-8) into a folder; the edge reads each file's
//! records, cleans and stores them like any source's, then moves the file to
//! `done/`.
//!
//! - A file is taken once it is complete: names starting with `.` or ending
//!   in `.tmp` / `.part` are ignored (write, then rename), and a file is
//!   read only when its size and modification time were the same on two
//!   scans in a row.
//! - Progress (file, size, mtime, records stored) is stored after every
//!   acknowledged batch, so a restart resumes inside a file without
//!   repeating or skipping records.
//! - A bad record (a CSV row with the wrong number of fields, a JSON line
//!   that does not parse, a value cleaning rejects) goes to the dead-letter
//!   topic naming the file and row; the rest of the file goes on.
//! - A file that cannot be read at all (not UTF-8 JSON, unknown extension)
//!   moves to `failed/` with a `<name>.reason` beside it, and a dead letter
//!   names it.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use marktwin_core::Config;
use marktwin_core::backoff::Backoff;
use marktwin_core::health::Readiness;
use marktwin_core::sources::DropFolder;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::EdgeMetrics;
use crate::cursor::CursorStore;
use crate::error::Result;
use crate::map::{Reject, lookup, path as field_path};
use crate::records::{Outputs, RecordsOut};

/// How far into which file the folder got.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Progress {
    file: Option<String>,
    size: u64,
    mtime_ms: i64,
    records: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Csv,
    Json,
    JsonLines,
}

fn format_of(name: &str) -> Option<Format> {
    let ext = name.rsplit_once('.')?.1.to_ascii_lowercase();
    match ext.as_str() {
        "csv" => Some(Format::Csv),
        "json" => Some(Format::Json),
        "jsonl" | "ndjson" => Some(Format::JsonLines),
        _ => None,
    }
}

fn ignored(name: &str) -> bool {
    name.starts_with('.') || name.ends_with(".tmp") || name.ends_with(".part")
}

/// `(size, mtime ms)` of a file.
fn stamp(path: &Path) -> std::io::Result<(u64, i64)> {
    let m = std::fs::metadata(path)?;
    let t = m
        .modified()?
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default();
    Ok((m.len(), t))
}

/// One record of a file, or why it is not one.
type Item = std::result::Result<Value, (Value, Reject)>;

/// The records of a file, one at a time (CSV and JSON lines stream; a JSON
/// document is read whole).
fn open(
    path: &Path,
    format: Format,
    cfg: &DropFolder,
) -> std::result::Result<Box<dyn Iterator<Item = Item> + Send>, String> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_owned();
    let file = File::open(path).map_err(|e| e.to_string())?;
    match format {
        Format::Csv => {
            let mut rdr = csv::ReaderBuilder::new()
                .delimiter(cfg.csv_delimiter.as_bytes()[0])
                .from_reader(file);
            let headers: Vec<String> = rdr
                .headers()
                .map_err(|e| format!("CSV header: {e}"))?
                .iter()
                .map(|h| h.trim_start_matches('\u{feff}').trim().to_owned())
                .collect();
            if headers.iter().all(String::is_empty) {
                return Err("CSV file has no header row".into());
            }
            Ok(Box::new(rdr.into_records().enumerate().map(
                move |(i, r)| {
                    // Row numbers count the header as row 1.
                    let row = i + 2;
                    match r {
                        Ok(rec) => {
                            let mut o = Map::new();
                            for (h, v) in headers.iter().zip(rec.iter()) {
                                o.insert(h.clone(), Value::from(v));
                            }
                            Ok(Value::Object(o))
                        }
                        Err(e) => Err((
                            json!({"file": name, "row": row}),
                            Reject::new("decode", format!("{name} row {row}: {e}")),
                        )),
                    }
                },
            )))
        }
        Format::JsonLines => Ok(Box::new(
            BufReader::new(file)
                .lines()
                .enumerate()
                .filter(|(_, l)| l.as_ref().map_or(true, |l| !l.trim().is_empty()))
                .map(move |(i, l)| {
                    let line = i + 1;
                    let text = l.map_err(|e| {
                        (
                            json!({"file": name, "line": line}),
                            Reject::new("decode", format!("{name} line {line}: {e}")),
                        )
                    })?;
                    serde_json::from_str::<Value>(&text).map_err(|e| {
                        (
                            json!({"file": name, "line": line, "text": text}),
                            Reject::new("decode", format!("{name} line {line}: {e}")),
                        )
                    })
                }),
        )),
        Format::Json => {
            let v: Value = serde_json::from_reader(BufReader::new(file))
                .map_err(|e| format!("not a JSON document: {e}"))?;
            let records = match v {
                Value::Array(a) => a,
                other => lookup(&other, &field_path(&cfg.records_field))
                    .and_then(Value::as_array)
                    .cloned()
                    .ok_or_else(|| {
                        format!(
                            "neither an array nor an object with an array at `{}`",
                            cfg.records_field
                        )
                    })?,
            };
            Ok(Box::new(records.into_iter().map(Ok)))
        }
    }
}

/// A watched drop folder.
pub struct FolderSource {
    cfg: DropFolder,
    out: RecordsOut,
    store: CursorStore,
    metrics: EdgeMetrics,
    readiness: Readiness,
    seen: HashMap<String, (u64, i64)>,
}

impl FolderSource {
    /// The folder of `src` (validated config).
    pub fn new(cfg: &Config, src: DropFolder, outputs: &Outputs) -> Result<Self> {
        let out = outputs.records(cfg, &src.source, src.map.as_ref())?;
        for sub in ["done", "failed"] {
            std::fs::create_dir_all(src.dir.join(sub))?;
        }
        outputs.readiness.set(
            format!("source_{}", src.source),
            true,
            format!("watching {}", src.dir.display()),
        );
        Ok(FolderSource {
            out,
            store: CursorStore::new(&cfg.data_dir, &src.source)?,
            metrics: outputs.metrics.clone(),
            readiness: outputs.readiness.clone(),
            seen: HashMap::new(),
            cfg: src,
        })
    }

    /// Watches the folder until `shutdown`.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Result<()> {
        let source = self.cfg.source.clone();
        info!(source, dir = %self.cfg.dir.display(), "Drop folder watched.");
        let interval = Duration::from_millis(self.cfg.poll_interval_ms);
        while !*shutdown.borrow() {
            match self.scan() {
                Ok(ready) => {
                    for name in ready {
                        if !self.import(&name, &mut shutdown).await? {
                            return Ok(());
                        }
                    }
                }
                Err(e) => {
                    warn!(source, dir = %self.cfg.dir.display(), error = %e, "Cannot list the drop folder.");
                    self.readiness.set(
                        format!("source_{source}"),
                        false,
                        format!("cannot list {}: {e}", self.cfg.dir.display()),
                    );
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                r = shutdown.changed() => if r.is_err() { break },
            }
        }
        Ok(())
    }

    /// The files complete now, oldest first: the same size and mtime as on
    /// the previous scan. The file the stored progress names comes first.
    fn scan(&mut self) -> std::io::Result<Vec<String>> {
        let progress: Progress = self.store.load_json()?;
        let mut files = Vec::new();
        let mut now_seen = HashMap::new();
        for entry in std::fs::read_dir(&self.cfg.dir)? {
            let entry = entry?;
            if !entry.file_type()?.is_file() {
                continue;
            }
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if ignored(&name) || name.ends_with(".reason") {
                continue;
            }
            let s = stamp(&entry.path())?;
            let stable =
                self.seen.get(&name) == Some(&s) || progress.file.as_deref() == Some(name.as_str());
            now_seen.insert(name.clone(), s);
            if stable {
                files.push((progress.file.as_deref() != Some(name.as_str()), s.1, name));
            }
        }
        self.seen = now_seen;
        files.sort();
        Ok(files.into_iter().map(|(_, _, n)| n).collect())
    }

    /// Imports one file; false when shutdown came first.
    async fn import(&mut self, name: &str, shutdown: &mut watch::Receiver<bool>) -> Result<bool> {
        let path = self.cfg.dir.join(name);
        let source = self.cfg.source.clone();
        let Some(format) = format_of(name) else {
            self.fail(
                name,
                "unknown extension; expected .csv, .json, .jsonl or .ndjson",
                shutdown,
            )
            .await?;
            return Ok(true);
        };
        let (size, mtime_ms) = stamp(&path)?;
        let mut progress: Progress = self.store.load_json()?;
        let resume = progress.file.as_deref() == Some(name)
            && progress.size == size
            && progress.mtime_ms == mtime_ms;
        if !resume {
            progress = Progress {
                file: Some(name.to_owned()),
                size,
                mtime_ms,
                records: 0,
            };
        }
        let mut items = match open(&path, format, &self.cfg) {
            Ok(it) => it.skip(progress.records as usize),
            Err(why) => {
                self.fail(name, &why, shutdown).await?;
                return Ok(true);
            }
        };
        info!(
            source,
            file = name,
            from_record = progress.records,
            "Importing a dropped file."
        );
        let mut totals = crate::records::Stored::default();
        loop {
            if *shutdown.borrow() {
                info!(
                    source,
                    file = name,
                    records = progress.records,
                    "Import paused for shutdown; it resumes here."
                );
                return Ok(false);
            }
            let mut batch = Vec::with_capacity(self.cfg.batch_size);
            let mut taken = 0u64;
            for item in items.by_ref().take(self.cfg.batch_size) {
                taken += 1;
                match item {
                    Ok(v) => batch.push(v),
                    Err((raw, why)) => self.out.reject(&raw, why),
                }
            }
            if taken == 0 {
                break;
            }
            let Some(stored) = self.store_batch(&batch, shutdown).await else {
                return Ok(false);
            };
            totals.good += stored.good;
            totals.rejected += stored.rejected;
            totals.duplicates += stored.duplicates;
            progress.records += taken;
            self.store.store_json(&progress)?;
        }
        let done = unique(&self.cfg.dir.join("done"), name);
        std::fs::rename(&path, &done)?;
        self.store.store_json(&Progress::default())?;
        self.metrics
            .files
            .with_label_values(&[&source, "done"])
            .inc();
        info!(
            source,
            file = name,
            records = progress.records,
            good = totals.good,
            rejected = totals.rejected,
            duplicates = totals.duplicates,
            "Dropped file imported."
        );
        Ok(true)
    }

    /// Stores a batch, retrying with backoff until it is stored; `None` when
    /// shutdown came first.
    async fn store_batch(
        &mut self,
        batch: &[Value],
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<crate::records::Stored> {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        loop {
            match self.out.store(batch).await {
                Ok(s) => return Some(s),
                Err(e) => {
                    let d = backoff.next_delay();
                    warn!(source = self.cfg.source, error = %e, retry_in_ms = d.as_millis() as u64, "Cannot store records; import paused.");
                    tokio::select! {
                        _ = tokio::time::sleep(d) => {}
                        r = shutdown.changed() => if r.is_err() || *shutdown.borrow() { return None },
                    }
                }
            }
        }
    }

    /// Moves an unreadable file to `failed/` with the reason beside it, and
    /// dead-letters a record naming it.
    async fn fail(
        &mut self,
        name: &str,
        why: &str,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<()> {
        error!(
            source = self.cfg.source,
            file = name,
            reason = why,
            "Dropped file cannot be read; moved to failed/."
        );
        self.out.reject(
            &json!({"file": name}),
            Reject::new("unreadable_file", format!("{name}: {why}")),
        );
        if self.store_batch(&[], shutdown).await.is_none() {
            return Ok(());
        }
        let failed = unique(&self.cfg.dir.join("failed"), name);
        std::fs::rename(self.cfg.dir.join(name), &failed)?;
        let mut reason = failed.clone().into_os_string();
        reason.push(".reason");
        std::fs::write(PathBuf::from(reason), format!("{why}\n"))?;
        self.metrics
            .files
            .with_label_values(&[&self.cfg.source, "failed"])
            .inc();
        Ok(())
    }
}

/// `dir/name`, or `dir/<ms>-name` when that exists already.
fn unique(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    if p.exists() {
        dir.join(format!("{}-{name}", marktwin_core::now_ms()))
    } else {
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_temporary_names() {
        assert_eq!(format_of("a.CSV"), Some(Format::Csv));
        assert_eq!(format_of("a.ndjson"), Some(Format::JsonLines));
        assert_eq!(format_of("a.xlsx"), None);
        assert!(ignored(".a.csv") && ignored("a.csv.tmp") && ignored("a.part"));
    }

    #[test]
    fn csv_rows_become_objects_and_bad_rows_name_the_row() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.csv");
        std::fs::write(&p, "\u{feff}a, b\n1,2\n3\n4,5\n").unwrap();
        let cfg = DropFolder::default();
        let items: Vec<Item> = open(&p, Format::Csv, &cfg).unwrap().collect();
        assert_eq!(items[0].as_ref().unwrap(), &json!({"a":"1","b":"2"}));
        let (_, why) = items[1].as_ref().unwrap_err();
        assert!(why.detail.contains("x.csv row 3"), "{}", why.detail);
        assert_eq!(items[2].as_ref().unwrap(), &json!({"a":"4","b":"5"}));
    }

    #[test]
    fn json_documents_and_lines() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = DropFolder::default();
        let p = dir.path().join("x.json");
        std::fs::write(&p, r#"{"records":[{"a":1},{"a":2}]}"#).unwrap();
        assert_eq!(open(&p, Format::Json, &cfg).unwrap().count(), 2);
        std::fs::write(&p, "{oops").unwrap();
        assert!(
            open(&p, Format::Json, &cfg)
                .err()
                .unwrap()
                .contains("not a JSON")
        );
        let p = dir.path().join("x.jsonl");
        std::fs::write(&p, "{\"a\":1}\n\nnope\n{\"a\":3}\n").unwrap();
        let items: Vec<Item> = open(&p, Format::JsonLines, &cfg).unwrap().collect();
        assert_eq!(items.len(), 3);
        assert!(items[1].as_ref().unwrap_err().1.detail.contains("line 3"));
    }
}
