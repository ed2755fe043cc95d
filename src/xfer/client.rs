//! The client side: manifests and pages from a page server; [`RemoteSource`] is a page source
//! of the lazy daemon (and of the eager part of a lazy restore).

use std::io::{BufReader, BufWriter};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{hello_payload, kind, put16, read_frame, write_frame, FrameError, XferError};
use super::{DONE_VERSION, MAX_FRAME, MAX_PAGES, MIN_VERSION, VERSION};
use crate::image::{ImageSet, PageId, PageRef, PAGE_SIZE};
use crate::lazy::{LazySource, NextPush, PushStream, SourceError};
use crate::store::StreamBatch;

/// One connection to a page server.
pub struct Client {
    peer: String,
    r: BufReader<TcpStream>,
    w: BufWriter<TcpStream>,
    /// Bytes received (frames included).
    pub bytes: u64,
    /// The protocol version of this connection.
    version: u16,
}

impl Client {
    /// Connects to `addr` (`host:port`) within `timeout` and says hello with `token`. Reads
    /// time out after `timeout` too. A server that speaks only protocol 1 gets a second hello
    /// with 1 (the connection then cannot say `Done`, which such a server has no use for).
    pub fn connect(addr: &str, token: &[u8], timeout: Duration) -> Result<Client, XferError> {
        match Self::connect_with(addr, token, timeout, VERSION) {
            Err(XferError::Refused { message, .. })
                if message.starts_with("protocol version")
                    && message.ends_with(&format!("(server speaks {MIN_VERSION})")) =>
            {
                Self::connect_with(addr, token, timeout, MIN_VERSION)
            }
            r => r,
        }
    }

    fn connect_with(
        addr: &str,
        token: &[u8],
        timeout: Duration,
        version: u16,
    ) -> Result<Client, XferError> {
        let io = |context: String| move |e| XferError::Io { context, source: e };
        // A malformed address is the user's input; a name that does not resolve (now) is not.
        let sa = super::resolve(addr).map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidInput => XferError::BadAddress {
                addr: addr.to_string(),
                why: "expected HOST:PORT of a page server",
                source: e,
            },
            _ => XferError::Io {
                context: format!("resolving {addr}"),
                source: e,
            },
        })?[0];
        let s = TcpStream::connect_timeout(&sa, timeout)
            .map_err(io(format!("connecting to {addr}")))?;
        s.set_read_timeout(Some(timeout))
            .and_then(|_| s.set_write_timeout(Some(timeout)))
            .and_then(|_| s.set_nodelay(true))
            .map_err(io(format!("socket options for {addr}")))?;
        let r = BufReader::new(s.try_clone().map_err(io(format!("socket of {addr}")))?);
        let mut c = Client {
            peer: addr.to_string(),
            r,
            w: BufWriter::new(s),
            bytes: 0,
            version,
        };
        c.send(kind::HELLO, &hello_payload(version, token))?;
        let ok = c.expect(kind::HELLO_OK)?;
        // The version the server uses for this connection (older servers send their own).
        if let Some(v) = ok.get(..2).and_then(|b| b.try_into().ok()) {
            c.version = u16::from_le_bytes(v).min(version);
        }
        Ok(c)
    }

    /// The protocol version this connection uses.
    pub fn version(&self) -> u16 {
        self.version
    }

    /// Says that every page of `set` is resident (`Done`). A source-mode server then kills
    /// the frozen source and answers what it did; a store-backed one has nothing to release.
    /// Returns the server's message.
    pub fn done(&mut self, set: &str) -> Result<String, XferError> {
        if self.version < DONE_VERSION {
            return Ok(format!(
                "{} speaks protocol {}: it has no source to release",
                self.peer, self.version
            ));
        }
        let mut p = Vec::new();
        put16(&mut p, set.as_bytes());
        self.send(kind::DONE, &p)?;
        let m = self.expect(kind::DONE_OK)?;
        Ok(String::from_utf8_lossy(&m).into_owned())
    }

    fn send(&mut self, k: u8, p: &[u8]) -> Result<(), XferError> {
        write_frame(&mut self.w, k, p).map_err(|e| XferError::Io {
            context: format!("sending to {}", self.peer),
            source: e,
        })
    }

    fn expect(&mut self, want: u8) -> Result<Vec<u8>, XferError> {
        let (k, p) = read_frame(&mut self.r, MAX_FRAME).map_err(|e| match e {
            FrameError::Io(e) => XferError::Io {
                context: format!("reading from {}", self.peer),
                source: e,
            },
            FrameError::TooLarge(n) => XferError::Protocol {
                peer: self.peer.clone(),
                message: format!("frame of {n} bytes"),
            },
        })?;
        self.bytes += 5 + p.len() as u64;
        if k == kind::ERROR {
            return Err(XferError::Refused {
                peer: self.peer.clone(),
                message: String::from_utf8_lossy(&p).into_owned(),
            });
        }
        if k != want {
            return Err(XferError::Protocol {
                peer: self.peer.clone(),
                message: format!("expected frame kind {want}, got {k}"),
            });
        }
        Ok(p)
    }

    /// The manifest of `set`.
    pub fn manifest(&mut self, set: &str) -> Result<ImageSet, XferError> {
        let mut p = Vec::new();
        put16(&mut p, set.as_bytes());
        self.send(kind::GET_MANIFEST, &p)?;
        let m = self.expect(kind::MANIFEST)?;
        crate::image::encode::decode_manifest(&m).map_err(|e| XferError::Protocol {
            peer: self.peer.clone(),
            message: format!("manifest of {set}: {e}"),
        })
    }

    /// The pages `(addr, id)` of `set`, appended to `out` in order; each is hashed and compared
    /// with its id.
    pub fn pages(
        &mut self,
        set: &str,
        pages: &[(u64, PageId)],
        out: &mut Vec<u8>,
    ) -> Result<(), XferError> {
        for chunk in pages.chunks(MAX_PAGES as usize) {
            let mut p = Vec::with_capacity(8 + set.len() + chunk.len() * 24);
            put16(&mut p, set.as_bytes());
            p.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
            for (a, id) in chunk {
                p.extend_from_slice(&a.to_le_bytes());
                p.extend_from_slice(&id.0);
            }
            self.send(kind::GET_PAGES, &p)?;
            let got = self.expect(kind::PAGES)?;
            if got.len() != chunk.len() * PAGE_SIZE {
                return Err(XferError::Protocol {
                    peer: self.peer.clone(),
                    message: format!("{} bytes for {} pages", got.len(), chunk.len()),
                });
            }
            for ((a, id), page) in chunk.iter().zip(got.chunks_exact(PAGE_SIZE)) {
                if PageId::of(page) != *id {
                    return Err(XferError::Protocol {
                        peer: self.peer.clone(),
                        message: format!("page at {a:#x} does not hash to {id}"),
                    });
                }
            }
            out.extend_from_slice(&got);
        }
        Ok(())
    }
}

/// A page server as the lazy daemon's source: reconnects when the connection breaks, and
/// gives up (source lost) once it has failed for `timeout`.
pub struct RemoteSource {
    addr: String,
    token: Vec<u8>,
    timeout: Duration,
    conn: Mutex<(Option<Client>, u64)>,
    /// The server's answer to `Done`, once given (it is given once).
    released: Mutex<Option<String>>,
    /// Bytes the push's read-ahead connection received.
    streamed: Arc<AtomicU64>,
}

impl RemoteSource {
    /// A source for `addr`; connects lazily.
    pub fn new(addr: &str, token: Vec<u8>, timeout: Duration) -> RemoteSource {
        RemoteSource {
            addr: addr.into(),
            token,
            timeout,
            conn: Mutex::new((None, 0)),
            released: Mutex::new(None),
            streamed: Arc::default(),
        }
    }

    /// Says `Done` for `set` (every page is resident), once: later calls return the first
    /// answer. Reconnects and retries within the timeout when the connection breaks, since a
    /// source server that hears nothing thaws its source. A refusal, or no answer within the
    /// timeout, is an error: the source may then resume (rolled back) while the restored copy
    /// runs, which the caller must report (or end the restored copy).
    pub fn done(&self, set: &str) -> Result<String, XferError> {
        let mut released = self.released.lock().map_err(|_| XferError::Poisoned)?;
        if let Some(m) = released.as_ref() {
            return Ok(m.clone());
        }
        let mut g = self.conn.lock().map_err(|_| XferError::Poisoned)?;
        let start = Instant::now();
        let mut sent = false;
        loop {
            if g.0.is_none() {
                match Client::connect(&self.addr, &self.token, self.timeout) {
                    Ok(c) => g.0 = Some(c),
                    Err(e @ XferError::Refused { .. }) => return Err(e),
                    Err(e) if start.elapsed() >= self.timeout => {
                        return Err(XferError::Done {
                            addr: self.addr.clone(),
                            sent,
                            source: Box::new(e),
                        })
                    }
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                }
            }
            let Some(c) = g.0.as_mut() else { continue };
            sent = true;
            match c.done(set) {
                Ok(m) => {
                    // A source server ends after `Done`: this connection is spent.
                    g.0 = None;
                    *released = Some(m.clone());
                    return Ok(m);
                }
                Err(e @ (XferError::Refused { .. } | XferError::Protocol { .. })) => {
                    g.0 = None;
                    return Err(e);
                }
                Err(e) if start.elapsed() >= self.timeout => {
                    g.0 = None;
                    return Err(e);
                }
                Err(_) => {
                    g.0 = None;
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// Fetches the manifest of `set` (a fresh connection).
    pub fn manifest(&self, set: &str) -> Result<ImageSet, XferError> {
        Client::connect(&self.addr, &self.token, self.timeout)?.manifest(set)
    }

    fn fetch_retrying(
        &self,
        set: &str,
        pages: &[(u64, PageId)],
        out: &mut Vec<u8>,
    ) -> Result<(), SourceError> {
        let mut g = self.conn.lock().map_err(|_| SourceError::Poisoned)?;
        let first_failure = Instant::now();
        let mut last: Option<XferError> = None;
        let start_len = out.len();
        loop {
            if g.0.is_none() {
                match Client::connect(&self.addr, &self.token, self.timeout) {
                    Ok(c) => g.0 = Some(c),
                    Err(e @ XferError::Refused { .. }) => {
                        return Err(SourceError::Remote(Box::new(e)))
                    }
                    Err(e) => last = Some(e),
                }
            }
            if let Some(c) = g.0.as_mut() {
                let before = c.bytes;
                let r = c.pages(set, pages, out);
                let got = c.bytes - before;
                g.1 += got;
                match r {
                    Ok(()) => return Ok(()),
                    Err(e @ (XferError::Refused { .. } | XferError::Protocol { .. })) => {
                        return Err(SourceError::Remote(Box::new(e)))
                    }
                    Err(e) => {
                        last = Some(e);
                        out.truncate(start_len);
                        g.0 = None;
                    }
                }
            }
            // Every way here failed once at least, so `last` holds why.
            if first_failure.elapsed() >= self.timeout {
                if let Some(last) = last.take() {
                    return Err(SourceError::Unreachable {
                        addr: self.addr.clone(),
                        timeout: self.timeout,
                        last: Box::new(last),
                    });
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Pages one request of the push's read-ahead asks for (4 MiB).
const STREAM_PAGES: usize = 1024;

/// The push's read-ahead from a page server: a connection of its own, on which a thread asks
/// for [`STREAM_PAGES`] pages at a time (each page checked against its id by
/// [`Client::pages`]) while the daemon copies the previous answer in. Any failure just ends
/// the stream: the daemon then fetches what is missing through the source's own connection,
/// with its retries and its `source_timeout`.
struct RemoteStream {
    rx: std::sync::mpsc::Receiver<StreamBatch>,
}

impl RemoteStream {
    fn start(
        src: &RemoteSource,
        set: &str,
        pages: Vec<(u64, PageRef)>,
        streamed: Arc<AtomicU64>,
    ) -> RemoteStream {
        // Zero pages are not asked for: the batches hold the stored ones only.
        let pages: Vec<(u64, PageId)> = pages
            .into_iter()
            .filter_map(|(a, r)| match r {
                PageRef::Stored(id) | PageRef::Lazy(id) => Some((a, id)),
                PageRef::Zero => None,
            })
            .collect();
        let (tx, rx) = std::sync::mpsc::sync_channel(2);
        let (addr, token, timeout, set) = (
            src.addr.clone(),
            src.token.clone(),
            src.timeout,
            set.to_string(),
        );
        // Not joined: a thread blocked on the network ends on its own once the daemon has
        // dropped the receiver (its next send fails) or the connection times out.
        let spawned = std::thread::Builder::new()
            .name("haul-push-stream".into())
            .spawn(move || {
                let meaning = format!(
                    "the push read-ahead from {addr} panicked; the daemon fetches the pages \
                     still missing through its own connection"
                );
                super::run_detached(&meaning, || {
                    let mut c = match Client::connect(&addr, &token, timeout) {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::debug!("push read-ahead from {addr}: {e}");
                            return;
                        }
                    };
                    for chunk in pages.chunks(STREAM_PAGES) {
                        let mut bytes = Vec::with_capacity(chunk.len() * PAGE_SIZE);
                        let before = c.bytes;
                        let r = c.pages(&set, chunk, &mut bytes);
                        streamed.fetch_add(c.bytes - before, Ordering::Relaxed);
                        if let Err(e) = r {
                            tracing::debug!("push read-ahead from {addr} ends: {e}");
                            return;
                        }
                        let b = StreamBatch {
                            addrs: chunk.iter().map(|(a, _)| *a).collect(),
                            bytes,
                        };
                        if tx.send(b).is_err() {
                            return;
                        }
                    }
                });
            });
        if let Err(e) = spawned {
            tracing::debug!("no push read-ahead: {e}");
        }
        RemoteStream { rx }
    }
}

impl PushStream for RemoteStream {
    fn next_within(&mut self, wait: Duration) -> NextPush {
        match self.rx.recv_timeout(wait) {
            Ok(b) => NextPush::Batch(Ok(b)),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => NextPush::NotYet,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => NextPush::End,
        }
    }
}

/// The daemon's side of a [`RemoteSource`], owned or shared (`Arc`: shared between the daemon
/// and its owner, so that the owner can say `Done` itself once the daemon has ended; the
/// answer is given once, whoever asks first).
macro_rules! remote_lazy_source {
    ($t:ty) => {
        impl LazySource for $t {
            fn fetch(
                &mut self,
                set: &str,
                pages: &[(u64, PageId)],
                out: &mut Vec<u8>,
            ) -> Result<(), SourceError> {
                self.fetch_retrying(set, pages, out)
            }

            fn bytes_network(&self) -> u64 {
                self.conn.lock().map(|g| g.1).unwrap_or(0) + self.streamed.load(Ordering::Relaxed)
            }

            fn stream(
                &mut self,
                set: &str,
                pages: Vec<(u64, PageRef)>,
            ) -> Option<Box<dyn PushStream>> {
                Some(Box::new(RemoteStream::start(
                    self,
                    set,
                    pages,
                    self.streamed.clone(),
                )))
            }

            fn finished(&mut self, set: &str) -> Result<(), SourceError> {
                self.done(set)
                    .map(|m| tracing::info!(set, "page source released: {m}"))
                    .map_err(|e| SourceError::Remote(Box::new(e)))
            }
        }
    };
}

remote_lazy_source!(RemoteSource);
remote_lazy_source!(std::sync::Arc<RemoteSource>);

impl crate::restore::PageSource for RemoteSource {
    fn for_each_page(
        &self,
        set: &ImageSet,
        f: &mut dyn FnMut(u64, &[u8]) -> Result<(), crate::restore::BoxError>,
    ) -> Result<(), crate::restore::BoxError> {
        let mut run: Vec<(u64, PageId)> = Vec::new();
        let mut buf = Vec::new();
        let mut flush = |run: &mut Vec<(u64, PageId)>| -> Result<(), crate::restore::BoxError> {
            if let Some(&(start, _)) = run.first() {
                buf.clear();
                self.fetch_retrying(&set.id, run, &mut buf)
                    .map_err(crate::lazy::LazyError::Source)?;
                f(start, &buf)?;
            }
            run.clear();
            Ok(())
        };
        for (a, r) in set.pages.iter() {
            let (PageRef::Stored(id) | PageRef::Lazy(id)) = r else {
                continue;
            };
            let contiguous = run.last().map(|(l, _)| l + PAGE_SIZE as u64) == Some(a);
            if !contiguous || run.len() >= 256 {
                flush(&mut run)?;
            }
            run.push((a, id));
        }
        flush(&mut run)
    }
}
