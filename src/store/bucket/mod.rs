//! Stores on S3-compatible object storage (`s3://bucket/prefix`): the bucket holds the same
//! files as a local store, as objects, and every host that opens it keeps a local cache store.
//!
//! ```text
//! s3://bucket/prefix/
//!   HAUL-STORE                    the marker, as on disk (created only if absent)
//!   packs/ab/<id>.pack            packs, named by the BLAKE3 of their bytes: written once
//!   sets/<job>/<set id>           manifests, created only if absent, after their packs
//!   locks/<kind>-<host>-<pid>-<n> lock objects: writers `shared`, gc `exclusive` (see [`lock`])
//! ```
//!
//! The local cache (see [`cache_dir`]) is a local store: it holds the index segments of every
//! pack of the bucket (rebuilt from each pack's footer, read by range), a copy of every
//! manifest, and the packs this host wrote. Packs it lacks are read from the bucket by ranges,
//! only the frames wanted. A set is visible to other hosts once its manifest object exists, and
//! that object is created only after every pack it needs is in the bucket.
//!
//! Network calls are not syscalls: this module talks to the bucket through `object_store`
//! (signing, retries with backoff, conditional create, multipart upload, range reads), on a
//! small tokio runtime that the blocking store code waits on.

pub(crate) mod fetch;
pub(crate) mod lock;
pub(crate) mod maint;
pub(crate) mod sync;

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjPath;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
    RetryConfig, WriteMultipart,
};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

/// The scheme of a bucket store's location.
pub const SCHEME: &str = "s3://";
/// Packs larger than this are uploaded in parts.
const MULTIPART_ABOVE: usize = 16 << 20;
/// Size of one part of a multipart upload.
const PART: usize = 8 << 20;
/// Parts of one pack in flight at once.
const PARTS_IN_FLIGHT: usize = 4;
/// How long a request is retried (with exponential backoff) before it fails.
pub const RETRY_TIMEOUT: Duration = Duration::from_secs(20);
/// Ranges closer than this are fetched by one request.
const COALESCE_GAP: u64 = 256 << 10;
/// One request of merged ranges fetches at most this much.
const COALESCE_MAX: u64 = 8 << 20;
/// Range requests in flight at once.
const REQUESTS_IN_FLIGHT: usize = 8;
/// Retries of one request at most.
const MAX_RETRIES: usize = 6;

/// Errors of a bucket store, each naming the bucket and the object.
#[derive(Debug, thiserror::Error)]
pub enum BucketError {
    #[error("{url:?} is not a bucket store location: {reason} (expected s3://BUCKET[/PREFIX][?endpoint=URL&region=NAME&path_style=true|false])")]
    BadUrl { url: String, reason: String },
    #[error("{url}: {reason}")]
    Config { url: String, reason: String },
    #[error("{url}: {op} {key}: {}", explain(source))]
    Request {
        url: String,
        op: &'static str,
        key: String,
        #[source]
        source: Box<object_store::Error>,
    },
    #[error("{url}: reading {path}: {source}")]
    Local {
        url: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{url}: cannot start the S3 client's runtime: {source}")]
    Runtime {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{url}: object {key} is damaged: {problem}")]
    Damaged {
        url: String,
        key: String,
        problem: String,
    },
}

/// What a failed request means for the user, in words (the source chain follows in logs).
fn explain(e: &object_store::Error) -> String {
    use object_store::Error as E;
    match e {
        E::NotFound { .. } => "not found (is the bucket there? haul does not create buckets)".into(),
        E::PermissionDenied { .. } => {
            "permission denied: check the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or the credentials file) and the bucket's policy".into()
        }
        E::Unauthenticated { .. } => {
            "the server does not accept these credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or the credentials file)".into()
        }
        E::AlreadyExists { .. } | E::Precondition { .. } => "it exists already".into(),
        other => {
            // object_store's messages carry the retries and the underlying cause.
            let mut s = other.to_string();
            let mut src = std::error::Error::source(other);
            while let Some(c) = src {
                let m = c.to_string();
                if !s.contains(&m) {
                    s.push_str(": ");
                    s.push_str(&m);
                }
                src = c.source();
            }
            s
        }
    }
}

impl BucketError {
    /// True when the object was not there.
    pub fn is_not_found(&self) -> bool {
        matches!(self, BucketError::Request { source, .. }
            if matches!(**source, object_store::Error::NotFound { .. }))
    }
}

/// A parsed `s3://` location.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketUrl {
    pub bucket: String,
    /// Key prefix inside the bucket, without leading or trailing slash ("" for the top).
    pub prefix: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Path-style requests (`http://host/bucket/key`): the default with an endpoint, since
    /// self-hosted servers (MinIO, Ceph, Garage) mostly expect it.
    pub path_style: Option<bool>,
    /// The local cache directory, when not the default.
    pub cache: Option<PathBuf>,
}

/// True when a store location names a bucket rather than a directory.
pub fn is_bucket(loc: &Path) -> bool {
    loc.to_str().is_some_and(|s| s.starts_with(SCHEME))
}

impl BucketUrl {
    /// Parses `s3://bucket[/prefix][?endpoint=..&region=..&path_style=..&cache=..]`.
    pub fn parse(loc: &str) -> Result<BucketUrl, BucketError> {
        let bad = |reason: &str| BucketError::BadUrl {
            url: loc.into(),
            reason: reason.into(),
        };
        let rest = loc
            .strip_prefix(SCHEME)
            .ok_or_else(|| bad("it does not start with s3://"))?;
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        let (bucket, prefix) = match path.split_once('/') {
            Some((b, p)) => (b, p.trim_matches('/')),
            None => (path, ""),
        };
        if bucket.is_empty() {
            return Err(bad("it names no bucket"));
        }
        if !bucket
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.'))
            || bucket.len() < 3
            || bucket.len() > 63
        {
            return Err(bad(
                "a bucket name is 3 to 63 lowercase letters, digits, '-' and '.'",
            ));
        }
        if prefix.split('/').any(|s| s == "." || s == "..") || prefix.contains("//") {
            return Err(bad("the prefix has an empty, '.' or '..' part"));
        }
        let mut u = BucketUrl {
            bucket: bucket.into(),
            prefix: prefix.into(),
            endpoint: None,
            region: None,
            path_style: None,
            cache: None,
        };
        for kv in query.unwrap_or("").split('&').filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let v = unescape(v);
            match k {
                "endpoint" => u.endpoint = Some(v),
                "region" => u.region = Some(v),
                "path_style" => {
                    u.path_style = Some(match v.as_str() {
                        "true" => true,
                        "false" => false,
                        _ => return Err(bad("path_style is true or false")),
                    })
                }
                "cache" => u.cache = Some(PathBuf::from(v)),
                k if is_secret_key(k) => {
                    return Err(bad(
                        "credentials are never taken from a store location; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment, or use a credentials file (AWS_SHARED_CREDENTIALS_FILE, ~/.aws/credentials)",
                    ))
                }
                k => {
                    return Err(bad(&format!(
                        "unknown setting {k:?} (known: endpoint, region, path_style, cache)"
                    )))
                }
            }
        }
        Ok(u)
    }

    /// The location as a string that [`BucketUrl::parse`] reads back, settings included.
    pub fn to_location(&self) -> String {
        let mut s = self.display();
        let mut q = Vec::new();
        if let Some(e) = &self.endpoint {
            q.push(format!("endpoint={}", escape(e)));
        }
        if let Some(r) = &self.region {
            q.push(format!("region={}", escape(r)));
        }
        if let Some(p) = self.path_style {
            q.push(format!("path_style={p}"));
        }
        if let Some(c) = &self.cache {
            q.push(format!("cache={}", escape(&c.to_string_lossy())));
        }
        if !q.is_empty() {
            s.push('?');
            s.push_str(&q.join("&"));
        }
        s
    }

    /// `s3://bucket/prefix`, for messages.
    pub fn display(&self) -> String {
        if self.prefix.is_empty() {
            format!("{SCHEME}{}", self.bucket)
        } else {
            format!("{SCHEME}{}/{}", self.bucket, self.prefix)
        }
    }
}

/// Keys that would carry credentials: refused wherever a location or a job names them.
pub fn is_secret_key(k: &str) -> bool {
    let k = k.to_ascii_lowercase().replace('-', "_");
    [
        "access_key",
        "access_key_id",
        "secret",
        "secret_key",
        "secret_access_key",
        "aws_access_key_id",
        "aws_secret_access_key",
        "session_token",
        "token",
        "password",
        "credentials",
    ]
    .contains(&k.as_str())
}

fn escape(s: &str) -> String {
    s.replace('%', "%25")
        .replace('&', "%26")
        .replace('?', "%3F")
        .replace('=', "%3D")
}

fn unescape(s: &str) -> String {
    s.replace("%3D", "=")
        .replace("%3F", "?")
        .replace("%26", "&")
        .replace("%25", "%")
}

/// Where the local cache of a bucket store lives: the location's `cache=`, else
/// `$HAUL_CACHE_DIR/s3/<key>`, `$XDG_CACHE_HOME/haul/s3/<key>`, `$HOME/.cache/haul/s3/<key>`,
/// or `/var/cache/haul/s3/<key>`; the key is the bucket, the prefix and a hash of the endpoint.
pub fn cache_dir(u: &BucketUrl) -> PathBuf {
    if let Some(c) = &u.cache {
        return c.clone();
    }
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let root = env("HAUL_CACHE_DIR")
        .or_else(|| env("XDG_CACHE_HOME").map(|p| p.join("haul")))
        .or_else(|| env("HOME").map(|p| p.join(".cache").join("haul")))
        .unwrap_or_else(|| PathBuf::from("/var/cache/haul"));
    let id = blake3::hash(
        format!(
            "{}\n{}\n{}",
            u.endpoint.as_deref().unwrap_or(""),
            u.bucket,
            u.prefix
        )
        .as_bytes(),
    );
    let name = format!(
        "{}{}{}-{}",
        u.bucket,
        if u.prefix.is_empty() { "" } else { "_" },
        u.prefix.replace('/', "_"),
        crate::util::hex(&id.as_bytes()[..4])
    );
    root.join("s3").join(name)
}

/// Credentials from a credentials file, when the environment has none: the profile
/// `AWS_PROFILE` (default `default`) of `AWS_SHARED_CREDENTIALS_FILE` or `~/.aws/credentials`.
fn file_credentials() -> Option<(String, String, Option<String>)> {
    let path = std::env::var_os("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".aws/credentials")))?;
    let text = std::fs::read_to_string(path).ok()?;
    let profile = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into());
    let mut in_profile = false;
    let (mut id, mut secret, mut token) = (None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_profile = name.trim() == profile;
            continue;
        }
        if !in_profile {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim().to_string();
            match k.trim() {
                "aws_access_key_id" => id = Some(v),
                "aws_secret_access_key" => secret = Some(v),
                "aws_session_token" => token = Some(v),
                _ => {}
            }
        }
    }
    Some((id?, secret?, token))
}

/// One object as listed.
#[derive(Clone, Debug)]
pub struct Listed {
    /// Key relative to the store's prefix.
    pub key: String,
    pub size: u64,
    pub modified: SystemTime,
}

/// An open connection to a bucket store.
pub struct Remote {
    rt: tokio::runtime::Runtime,
    s3: AmazonS3,
    prefix: String,
    /// `s3://bucket/prefix`, for messages.
    pub url: String,
    /// Bytes sent in request bodies and received in responses.
    sent: AtomicU64,
    received: AtomicU64,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Remote({})", self.url)
    }
}

impl Remote {
    /// Builds the client: endpoint, region and path style from the location, else from the
    /// usual environment (`AWS_ENDPOINT_URL`, `AWS_REGION`, ...); credentials from the
    /// environment or the credentials file only. No request is made.
    pub fn connect(u: &BucketUrl) -> Result<Remote, BucketError> {
        let url = u.display();
        let mut b = AmazonS3Builder::from_env().with_bucket_name(&u.bucket);
        let endpoint = u
            .endpoint
            .clone()
            .or_else(|| std::env::var("AWS_ENDPOINT_URL_S3").ok())
            .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
            .filter(|e| !e.is_empty());
        if let Some(e) = &endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(BucketError::Config {
                    url,
                    reason: format!("endpoint {e:?} is not an http:// or https:// URL"),
                });
            }
            b = b.with_endpoint(e);
        }
        let region = u
            .region
            .clone()
            .or_else(|| std::env::var("AWS_REGION").ok())
            .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
            .unwrap_or_else(|| "us-east-1".into());
        b = b.with_region(region);
        let path_style = u.path_style.unwrap_or(endpoint.is_some());
        b = b.with_virtual_hosted_style_request(!path_style);
        if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
            if let Some((id, secret, token)) = file_credentials() {
                b = b.with_access_key_id(id).with_secret_access_key(secret);
                if let Some(t) = token {
                    b = b.with_token(t);
                }
            }
        }
        b = b
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(100),
                    max_backoff: Duration::from_secs(4),
                    base: 2.0,
                },
                max_retries: MAX_RETRIES,
                retry_timeout: RETRY_TIMEOUT,
            })
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(
                        endpoint
                            .as_deref()
                            .is_some_and(|e| e.starts_with("http://")),
                    )
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_timeout(Duration::from_secs(120)),
            );
        let s3 = b.build().map_err(|e| BucketError::Config {
            url: url.clone(),
            reason: explain(&e),
        })?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("haul-s3")
            .enable_all()
            .build()
            .map_err(|source| BucketError::Runtime {
                url: url.clone(),
                source,
            })?;
        Ok(Remote {
            rt,
            s3,
            prefix: u.prefix.clone(),
            url,
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
        })
    }

    fn path(&self, key: &str) -> ObjPath {
        if self.prefix.is_empty() {
            ObjPath::from(key)
        } else {
            ObjPath::from(format!("{}/{key}", self.prefix))
        }
    }

    fn err(&self, op: &'static str, key: &str) -> impl FnOnce(object_store::Error) -> BucketError {
        let url = self.url.clone();
        let key = key.to_string();
        move |source| BucketError::Request {
            url,
            op,
            key,
            source: Box::new(source),
        }
    }

    /// Bytes sent and received so far by this connection.
    pub fn traffic(&self) -> (u64, u64) {
        (
            self.sent.load(Ordering::Relaxed),
            self.received.load(Ordering::Relaxed),
        )
    }

    /// The whole object, or `None` when it does not exist.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BucketError> {
        let p = self.path(key);
        let r = self.rt.block_on(async {
            let g = self.s3.get(&p).await?;
            g.bytes().await
        });
        match r {
            Ok(b) => {
                self.received.fetch_add(b.len() as u64, Ordering::Relaxed);
                Ok(Some(b.to_vec()))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err("GET", key)(e)),
        }
    }

    /// Bytes `range` of an object.
    pub fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>, BucketError> {
        let p = self.path(key);
        let b = self
            .rt
            .block_on(self.s3.get_range(&p, range))
            .map_err(self.err("GET (range)", key))?;
        self.received.fetch_add(b.len() as u64, Ordering::Relaxed);
        Ok(b.to_vec())
    }

    /// Bytes `ranges` of an object, several requests in flight at once; ranges closer than
    /// [`COALESCE_GAP`] are fetched by one request (up to [`COALESCE_MAX`] bytes).
    pub fn get_ranges_parallel(
        &self,
        key: &str,
        ranges: &[Range<u64>],
    ) -> Result<Vec<Vec<u8>>, BucketError> {
        use futures::{StreamExt, TryStreamExt};
        let mut order: Vec<usize> = (0..ranges.len()).collect();
        order.sort_by_key(|&i| ranges[i].start);
        // Merged requests, each with the ranges it carries.
        let mut merged: Vec<(Range<u64>, Vec<usize>)> = Vec::new();
        for i in order {
            let r = &ranges[i];
            match merged.last_mut() {
                Some((m, members))
                    if r.start <= m.end + COALESCE_GAP
                        && r.end.max(m.end) - m.start <= COALESCE_MAX =>
                {
                    m.end = m.end.max(r.end);
                    members.push(i);
                }
                _ => merged.push((r.clone(), vec![i])),
            }
        }
        let p = self.path(key);
        let fetched: Vec<_> = self
            .rt
            .block_on(
                futures::stream::iter(merged.iter().map(|(m, _)| self.s3.get_range(&p, m.clone())))
                    .buffered(REQUESTS_IN_FLIGHT)
                    .try_collect::<Vec<_>>(),
            )
            .map_err(self.err("GET (ranges)", key))?;
        let mut out = vec![Vec::new(); ranges.len()];
        for ((m, members), b) in merged.iter().zip(fetched) {
            self.received.fetch_add(b.len() as u64, Ordering::Relaxed);
            for &i in members {
                let (s, e) = (
                    (ranges[i].start - m.start) as usize,
                    (ranges[i].end - m.start) as usize,
                );
                if e > b.len() {
                    return Err(BucketError::Damaged {
                        url: self.url.clone(),
                        key: key.into(),
                        problem: format!("shorter than the {} bytes asked for", ranges[i].end),
                    });
                }
                out[i] = b[s..e].to_vec();
            }
        }
        Ok(out)
    }

    /// Creates an object only if it does not exist yet. Returns false when it did exist.
    pub fn put_new(&self, key: &str, bytes: Vec<u8>) -> Result<bool, BucketError> {
        let p = self.path(key);
        let n = bytes.len() as u64;
        let r = self.rt.block_on(self.s3.put_opts(
            &p,
            PutPayload::from(bytes),
            PutOptions::from(PutMode::Create),
        ));
        match r {
            Ok(_) => {
                self.sent.fetch_add(n, Ordering::Relaxed);
                Ok(true)
            }
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Ok(false),
            Err(e) => Err(self.err("PUT (if absent)", key)(e)),
        }
    }

    /// Writes an object, replacing any (for lock objects, which only their owner writes).
    pub fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), BucketError> {
        let p = self.path(key);
        let n = bytes.len() as u64;
        self.rt
            .block_on(self.s3.put(&p, PutPayload::from(bytes)))
            .map_err(self.err("PUT", key))?;
        self.sent.fetch_add(n, Ordering::Relaxed);
        Ok(())
    }

    /// Uploads a local file (a committed pack) as `key`, in parts when it is large. Packs are
    /// named by the hash of their bytes, so a pack already there (same size) is not sent again,
    /// and two hosts uploading the same pack at once write the same bytes. A failed multipart
    /// upload is aborted: no part of it becomes visible.
    pub fn upload_file(&self, key: &str, file: &Path) -> Result<(), BucketError> {
        let local = |source| BucketError::Local {
            url: self.url.clone(),
            path: file.to_path_buf(),
            source,
        };
        let len = std::fs::metadata(file).map_err(local)?.len();
        if self.size_of(key)? == Some(len) {
            return Ok(());
        }
        if (len as usize) <= MULTIPART_ABOVE {
            let bytes = std::fs::read(file).map_err(local)?;
            // Created only if absent: a pack another host wrote meanwhile has the same bytes.
            self.put_new(key, bytes)?;
            return Ok(());
        }
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::open(file).map_err(local)?;
        let p = self.path(key);
        let r: Result<(), BucketError> = self.rt.block_on(async {
            let upload = self
                .s3
                .put_multipart(&p)
                .await
                .map_err(self.err("starting multipart upload of", key))?;
            let mut w = WriteMultipart::new_with_chunk_size(upload, PART);
            let mut off = 0u64;
            let mut buf = vec![0u8; PART];
            while off < len {
                let n = ((len - off) as usize).min(PART);
                if let Err(e) = f.read_exact_at(&mut buf[..n], off) {
                    w.abort().await.ok();
                    return Err(local(e));
                }
                if let Err(e) = w.wait_for_capacity(PARTS_IN_FLIGHT).await {
                    return Err(self.err("uploading a part of", key)(e));
                }
                w.write(&buf[..n]);
                off += n as u64;
            }
            w.finish()
                .await
                .map_err(self.err("completing multipart upload of", key))?;
            Ok(())
        });
        r?;
        self.sent.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }

    /// The size of an object, or `None` when it does not exist.
    pub fn size_of(&self, key: &str) -> Result<Option<u64>, BucketError> {
        let p = self.path(key);
        match self.rt.block_on(self.s3.head(&p)) {
            Ok(m) => Ok(Some(m.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err("HEAD", key)(e)),
        }
    }

    /// Every object under `dir` (a key prefix such as `packs/`).
    pub fn list(&self, dir: &str) -> Result<Vec<Listed>, BucketError> {
        use futures::TryStreamExt;
        let p = self.path(dir.trim_end_matches('/'));
        let strip = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let metas = self
            .rt
            .block_on(self.s3.list(Some(&p)).try_collect::<Vec<_>>())
            .map_err(self.err("LIST", dir))?;
        Ok(metas
            .into_iter()
            .filter_map(|m| {
                let k = m.location.as_ref().strip_prefix(&strip)?.to_string();
                let modified = SystemTime::UNIX_EPOCH
                    + Duration::from_micros(m.last_modified.timestamp_micros().max(0) as u64);
                Some(Listed {
                    key: k,
                    size: m.size,
                    modified,
                })
            })
            .collect())
    }

    /// Deletes an object; one already gone is not an error.
    pub fn delete(&self, key: &str) -> Result<(), BucketError> {
        let p = self.path(key);
        match self.rt.block_on(self.s3.delete(&p)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err("DELETE", key)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_and_print_back() {
        let u = BucketUrl::parse("s3://my-bucket/fleet/a?endpoint=http://127.0.0.1:9000&region=eu-west-1&path_style=true").unwrap();
        assert_eq!(u.bucket, "my-bucket");
        assert_eq!(u.prefix, "fleet/a");
        assert_eq!(u.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(u.region.as_deref(), Some("eu-west-1"));
        assert_eq!(u.path_style, Some(true));
        assert_eq!(BucketUrl::parse(&u.to_location()).unwrap(), u);
        assert_eq!(u.display(), "s3://my-bucket/fleet/a");
        let top = BucketUrl::parse("s3://bkt").unwrap();
        assert_eq!(top.prefix, "");
        assert_eq!(top.to_location(), "s3://bkt");
    }

    #[test]
    fn bad_locations_and_credentials_are_refused_by_name() {
        for (loc, want) in [
            ("s3://", "names no bucket"),
            ("s3://B/x", "lowercase"),
            ("s3://bkt/a/../b", "'..'"),
            ("s3://bkt?color=red", "unknown setting \"color\""),
            (
                "s3://bkt?secret_access_key=x",
                "never taken from a store location",
            ),
            ("s3://bkt?path_style=maybe", "true or false"),
        ] {
            let e = BucketUrl::parse(loc).unwrap_err().to_string();
            assert!(e.contains(want), "{loc}: {e}");
        }
    }

    #[test]
    fn caches_of_different_endpoints_differ() {
        let a = BucketUrl::parse("s3://bkt/p?endpoint=http://a:1").unwrap();
        let b = BucketUrl::parse("s3://bkt/p?endpoint=http://b:1").unwrap();
        assert_ne!(cache_dir(&a), cache_dir(&b));
        let c = BucketUrl::parse("s3://bkt/p?cache=/tmp/x").unwrap();
        assert_eq!(cache_dir(&c), PathBuf::from("/tmp/x"));
    }
}
