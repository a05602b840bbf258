//! The incremental HTTP JSON poller for business systems: ERP, CRM, SCM,
//! cloud POS.
//!
//! One poll: ask for a page from the stored position, clean each record
//! ([`crate::clean`]), store the good ones, the rejects and any fused events
//! through the sink (acknowledged, or spooled), and only then store the new
//! position durably. A crash or an outage between two steps repeats the
//! page; it never skips one, and the repeated records carry the same event
//! ids, so they are recognised downstream.
//!
//! Two ways of paging ([`Paging`]):
//!
//! - `cursor`: the answer carries the next cursor (any JSON scalar, kept as
//!   text) and optionally a "more waiting" flag;
//! - `updated_since`: the API answers records modified at or after a
//!   watermark, oldest first (ties in a stable order). The position is the
//!   newest last-modified value stored and the records stored at exactly
//!   that value (by content hash); the next request asks from the
//!   watermark, with `offset` = how many records at the watermark were
//!   stored, so a batch job stamping ten thousand records with one time
//!   pages through them rather than looping on the first page.
//!
//! Failures are retried with jittered, capped backoff, for ever; `429` and
//! `503` answers with `Retry-After` are waited out as asked. Requests are
//! spaced to stay within `max_requests_per_sec`.

use std::time::{Duration, Instant};

use chrono::Offset;
use marktwin_core::Config;
use marktwin_core::backoff::Backoff;
use marktwin_core::health::Readiness;
use marktwin_core::sources::{HttpSource, Paging, RecordMap};
use reqwest::StatusCode;
use reqwest::header::RETRY_AFTER;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::EdgeMetrics;
use crate::cursor::CursorStore;
use crate::error::{Error, Result};
use crate::map::{Reject, lookup, path, time_ms};
use crate::records::{Outputs, RecordsOut};

/// Where a source stands, stored after every acknowledged page.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Position {
    /// `cursor` paging: the cursor to ask for next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// `updated_since` paging: the newest last-modified value stored, as
    /// the API wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark: Option<String>,
    /// The watermark in ms since the epoch.
    #[serde(default)]
    pub watermark_ms: i64,
    /// Content hashes of the records stored at exactly the watermark.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub at_watermark: Vec<String>,
}

impl Position {
    /// Reads a stored position; a bare number is a cursor (the format the
    /// first POS poller wrote).
    fn parse(text: &str) -> std::result::Result<Self, serde_json::Error> {
        let t = text.trim();
        if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
            return Ok(Position {
                cursor: Some(t.to_owned()),
                ..Position::default()
            });
        }
        serde_json::from_str(t)
    }
}

/// A failed poll and how long the source asked us to wait.
struct Failed {
    error: Error,
    retry_after: Option<Duration>,
}

impl From<Error> for Failed {
    fn from(error: Error) -> Self {
        Failed {
            error,
            retry_after: None,
        }
    }
}

/// A running HTTP source.
pub struct HttpPoller {
    cfg: HttpSource,
    http: reqwest::Client,
    auth_env: Option<String>,
    out: RecordsOut,
    store: CursorStore,
    metrics: EdgeMetrics,
    readiness: Readiness,
    next_request: Instant,
    offset: chrono::FixedOffset,
    /// The configured field names as paths, split once.
    records_path: Vec<String>,
    next_cursor_path: Vec<String>,
    has_more_path: Vec<String>,
    updated_path: Vec<String>,
}

fn content_hash(v: &Value) -> String {
    let h = Sha256::digest(v.to_string().as_bytes());
    hex::encode(&h[..8])
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl HttpPoller {
    /// Builds the poller of `src` (validated config). A credential named by
    /// `auth_env` must be set now: a missing one is a setup error.
    pub fn new(cfg: &Config, src: HttpSource, outputs: &Outputs) -> Result<Self> {
        let err = |detail: String| Error::Source {
            source_name: src.source.clone(),
            detail,
        };
        let auth_env = match &src.auth_env {
            Some(var) => Some(
                std::env::var(var)
                    .map_err(|_| err(format!("auth_env names `{var}`, which is not set")))?,
            ),
            None => None,
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(src.timeout_ms))
            .build()
            .map_err(|e| err(e.to_string()))?;
        let out = outputs.records(cfg, &src.source, src.map.as_ref())?;
        outputs.readiness.set(
            readiness_name(&src.source),
            false,
            format!("source {} not polled yet", src.source),
        );
        Ok(HttpPoller {
            store: CursorStore::new(&cfg.data_dir, &src.source)?,
            offset: src
                .map
                .as_ref()
                .map_or(chrono::Utc.fix(), RecordMap::utc_offset),
            records_path: path(&src.records_field),
            next_cursor_path: path(&src.next_cursor_field),
            has_more_path: path(&src.has_more_field),
            updated_path: path(&src.updated_field),
            http,
            auth_env,
            out,
            metrics: outputs.metrics.clone(),
            readiness: outputs.readiness.clone(),
            next_request: Instant::now(),
            cfg: src,
        })
    }

    fn load(&self) -> Result<Position> {
        match self.store.load()? {
            None => Ok(Position::default()),
            Some(t) => Position::parse(&t).map_err(|e| {
                Error::Io(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: {e}", self.store.path().display()),
                ))
            }),
        }
    }

    /// Polls until `shutdown` turns true. Failures are retried with jittered
    /// backoff for ever; only a broken local position file stops it.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Result<()> {
        let mut pos = self.load()?;
        let source = self.cfg.source.clone();
        info!(source, kind = self.out.kind().as_str(), url = %self.cfg.url, position = ?pos, "HTTP source starting.");
        let mut backoff = Backoff::new(
            Duration::from_millis(200),
            Duration::from_millis(self.cfg.max_backoff_ms),
        );
        let interval = Duration::from_millis(self.cfg.poll_interval_ms);
        let name = readiness_name(&source);
        while !*shutdown.borrow() {
            let started = Instant::now();
            let wait = match self.poll_once(&pos).await {
                Ok((next, has_more)) => {
                    self.metrics
                        .duration
                        .with_label_values(&[&source])
                        .observe(started.elapsed().as_secs_f64());
                    self.metrics.up.with_label_values(&[&source]).set(1);
                    self.readiness
                        .set(name.clone(), true, format!("source {source} polled"));
                    pos = next;
                    backoff.reset();
                    if has_more { Duration::ZERO } else { interval }
                }
                Err(Failed {
                    error: Error::Io(e),
                    ..
                }) => return Err(Error::Io(e)),
                Err(Failed { error, retry_after }) => {
                    self.metrics.errors.with_label_values(&[&source]).inc();
                    self.metrics.up.with_label_values(&[&source]).set(0);
                    self.readiness
                        .set(name.clone(), false, format!("source {source}: {error}"));
                    let d = retry_after.unwrap_or_else(|| backoff.next_delay());
                    warn!(source, error = %error, retry_in_ms = d.as_millis() as u64, attempt = backoff.attempts(), "Poll failed; retrying.");
                    d
                }
            };
            if !wait.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    // A dropped sender means the process is going away.
                    r = shutdown.changed() => if r.is_err() { break },
                }
            }
        }
        info!(source, position = ?pos, "HTTP source stopped.");
        Ok(())
    }

    fn credential(&self) -> Result<Option<String>> {
        let raw = match (&self.auth_env, &self.cfg.auth_file) {
            (Some(v), _) => v.trim().to_owned(),
            (None, Some(f)) => std::fs::read_to_string(f)
                .map_err(|e| Error::Source {
                    source_name: self.cfg.source.clone(),
                    detail: format!("cannot read auth_file {}: {e}", f.display()),
                })?
                .trim()
                .to_owned(),
            (None, None) => return Ok(None),
        };
        Ok(Some(match &self.cfg.auth_scheme {
            Some(s) => format!("{s} {raw}"),
            None => raw,
        }))
    }

    async fn fetch(&mut self, query: &[(String, String)]) -> std::result::Result<Value, Failed> {
        let src = |detail: String| Error::Source {
            source_name: self.cfg.source.clone(),
            detail,
        };
        if self.cfg.max_requests_per_sec > 0.0 {
            tokio::time::sleep_until(self.next_request.into()).await;
            self.next_request =
                Instant::now() + Duration::from_secs_f64(1.0 / self.cfg.max_requests_per_sec);
        }
        let mut req = self.http.get(&self.cfg.url).query(query);
        if let Some(c) = self.credential()? {
            req = req.header(self.cfg.auth_header.as_str(), c);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| src(format!("request failed: {e}")))?;
        let status = resp.status();
        if !status.is_success() {
            let retry_after = resp
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|s| Duration::from_secs(s.min(3600)));
            let hint = match status {
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    "; check the credential (auth_env / auth_file, auth_header, auth_scheme)"
                }
                StatusCode::TOO_MANY_REQUESTS => "; lower max_requests_per_sec",
                _ => "",
            };
            return Err(Failed {
                error: src(format!("answered HTTP {status}{hint}")),
                retry_after,
            });
        }
        Ok(resp
            .json()
            .await
            .map_err(|e| src(format!("answer is not JSON: {e}")))?)
    }

    fn records<'a>(&self, answer: &'a Value) -> Result<&'a Vec<Value>> {
        lookup(answer, &self.records_path)
            .and_then(Value::as_array)
            .ok_or_else(|| Error::Source {
                source_name: self.cfg.source.clone(),
                detail: format!(
                    "answer has no array at records_field `{}`",
                    self.cfg.records_field
                ),
            })
    }

    async fn poll_once(&mut self, pos: &Position) -> std::result::Result<(Position, bool), Failed> {
        match self.cfg.paging {
            Paging::Cursor => self.poll_cursor(pos).await,
            Paging::UpdatedSince => self.poll_since(pos).await,
        }
    }

    async fn poll_cursor(
        &mut self,
        pos: &Position,
    ) -> std::result::Result<(Position, bool), Failed> {
        let mut q = vec![(self.cfg.limit_param.clone(), self.cfg.page_size.to_string())];
        if let Some(c) = &pos.cursor {
            q.push((self.cfg.cursor_param.clone(), c.clone()));
        }
        let answer = self.fetch(&q).await?;
        let records = self.records(&answer)?;
        let next = lookup(&answer, &self.next_cursor_path).and_then(scalar_text);
        if next.is_none() && !records.is_empty() {
            return Err(Error::Source {
                source_name: self.cfg.source.clone(),
                detail: format!(
                    "answer has records but no next cursor at next_cursor_field `{}`",
                    self.cfg.next_cursor_field
                ),
            }
            .into());
        }
        let has_more = if self.cfg.has_more_field.is_empty() {
            records.len() >= self.cfg.page_size as usize
        } else {
            lookup(&answer, &self.has_more_path)
                .and_then(Value::as_bool)
                .unwrap_or(false)
        };
        self.out.store(records).await?;
        let mut next_pos = pos.clone();
        if let Some(n) = next
            && pos.cursor.as_ref() != Some(&n)
        {
            next_pos.cursor = Some(n);
            self.store.store_json(&next_pos).map_err(Error::Io)?;
        }
        Ok((next_pos, has_more && !records.is_empty()))
    }

    async fn poll_since(
        &mut self,
        pos: &Position,
    ) -> std::result::Result<(Position, bool), Failed> {
        let mut q = vec![
            (self.cfg.limit_param.clone(), self.cfg.page_size.to_string()),
            (
                self.cfg.offset_param.clone(),
                pos.at_watermark.len().to_string(),
            ),
        ];
        if let Some(w) = &pos.watermark {
            q.push((self.cfg.since_param.clone(), w.clone()));
        }
        let answer = self.fetch(&q).await?;
        let records = self.records(&answer)?;
        let mut next = pos.clone();
        let mut fresh = Vec::with_capacity(records.len());
        for r in records {
            let raw = lookup(r, &self.updated_path);
            let ms = raw.and_then(|v| time_ms(v, self.offset));
            let (Some(raw), Some(ms)) = (raw.and_then(scalar_text), ms) else {
                // Without a last-modified time the record cannot be placed.
                self.out.reject(
                    r,
                    Reject::new(
                        "missing_field",
                        format!(
                            "`{}` (updated_field) is missing or not a time",
                            self.cfg.updated_field
                        ),
                    ),
                );
                continue;
            };
            let hash = content_hash(r);
            if ms < next.watermark_ms
                || (ms == next.watermark_ms && next.at_watermark.contains(&hash))
            {
                continue; // stored before
            }
            if ms > next.watermark_ms {
                next.watermark_ms = ms;
                next.watermark = Some(raw);
                next.at_watermark.clear();
            }
            next.at_watermark.push(hash);
            fresh.push(r.clone());
        }
        let full = records.len() >= self.cfg.page_size as usize;
        if full && fresh.is_empty() {
            return Err(Error::Source {
                source_name: self.cfg.source.clone(),
                detail: format!(
                    "a full page held only records stored before: the API seems to ignore `{}`",
                    self.cfg.offset_param
                ),
            }
            .into());
        }
        self.out.store(&fresh).await?;
        if next != *pos {
            self.store.store_json(&next).map_err(Error::Io)?;
        }
        Ok((next, full))
    }
}

/// The readiness check of HTTP source `source`.
pub fn readiness_name(source: &str) -> String {
    format!("source_{source}")
}
