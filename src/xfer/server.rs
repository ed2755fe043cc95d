//! The page server: serves the manifests and pages of the sets it was started for; in source
//! mode ([`PageServer::serve_source`]), the lazy pages of one set from the frozen process that
//! holds them.

use std::collections::{HashMap, VecDeque};
use std::io::{BufReader, BufWriter, Read};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::requests::{check_hello, page_count};
use super::{kind, read_frame, write_frame, Cur, FrameError, XferError, MAX_HELLO, MAX_REQUEST};
use crate::image::{ImageSet, PageId, PageRef, PAGE_SIZE};
use crate::store::Store;

/// How the server runs.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Required for any non-loopback address; checked before anything is sent.
    pub token: Option<Vec<u8>>,
    /// Connections that said hello served at once; more are refused with an error frame.
    pub max_connections: usize,
    /// Connections waiting for their hello, at most; a new one beyond drops the oldest. They
    /// do not count against `max_connections`.
    pub max_pending: usize,
    /// A connection that has not said hello this long after it was accepted is closed.
    pub hello_timeout: Duration,
    /// A connection silent this long after its hello is closed.
    pub idle_timeout: Duration,
    /// Jobs whose final dumps are served too, including those dumped after the server
    /// started (loaded when first asked for): the source side of a migration can start the
    /// server before the dump exists.
    pub jobs: Vec<String>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            token: None,
            max_connections: 32,
            max_pending: 64,
            hello_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            jobs: Vec::new(),
        }
    }
}

/// A set being served: its page table and its encoded manifest.
struct Served {
    set: ImageSet,
    manifest: Vec<u8>,
}

impl Served {
    fn load(store: &Store, s: &str) -> Result<Served, XferError> {
        let set = store.load_set(s).map_err(|source| XferError::Set {
            set: s.to_string(),
            source: Box::new(source),
        })?;
        if set.process.is_none() {
            return Err(XferError::Setup(format!(
                "set {s} is a pre-dump; serve its job's final dump"
            )));
        }
        let manifest =
            crate::image::encode::encode_manifest(&set).map_err(|source| XferError::Manifest {
                set: s.to_string(),
                source: Box::new(source),
            })?;
        // Serving from a bucket: its frames are fetched ahead of the clients' requests.
        store.prefetch_set_in_background(&set);
        Ok(Served { set, manifest })
    }
}

/// Reads pages of a live (frozen) process: the source of a lazy final dump.
pub trait LivePages: Send + Sync {
    /// The page at each of `addrs`, into `out` (`addrs.len()` × 4096 bytes). The error, with
    /// its chain of causes, is the message of the refusal the client gets.
    fn read_pages(&self, addrs: &[u64], out: &mut [u8]) -> Result<(), crate::restore::BoxError>;
}

/// What a source-mode server tells the holder of the frozen source.
pub enum SourceEvent {
    /// A client said hello (protocol 2).
    Connected,
    /// A connection that had said hello ended.
    Disconnected,
    /// A client has every page resident. Send what became of the source on `reply` (it is
    /// the `DoneOk` message); `written` says when the answer is on its way.
    Done {
        reply: Sender<String>,
        written: Receiver<()>,
    },
}

/// Source mode: the pages recorded `Lazy` come from the frozen process.
struct SourceMode {
    live: Arc<dyn LivePages>,
    events: Sender<SourceEvent>,
}

struct Shared {
    store: Arc<Store>,
    sets: RwLock<HashMap<String, Arc<Served>>>,
    opts: ServerOptions,
    /// Connections that said hello.
    live: AtomicUsize,
    /// Connections waiting for their hello.
    pending: Mutex<Pending>,
    source: Option<SourceMode>,
}

/// The connections waiting for their hello, oldest first (see [`Shared::admit`]).
#[derive(Default)]
struct Pending {
    next: u64,
    conns: VecDeque<PendingConn>,
}

struct PendingConn {
    id: u64,
    /// The same socket as the connection's thread holds: shut for reading when dropped.
    stream: TcpStream,
    dropped: Arc<AtomicBool>,
}

/// A connection's place in the pool of those waiting for hello; leaves it when dropped.
struct Slot {
    shared: Arc<Shared>,
    id: u64,
    /// Set when the pool dropped this connection to make room.
    dropped: Arc<AtomicBool>,
}

impl Slot {
    /// Leaves the pool; false when the connection had been dropped from it already.
    fn leave(&self) -> bool {
        let mut p = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match p.conns.iter().position(|c| c.id == self.id) {
            Some(i) => {
                p.conns.remove(i);
                true
            }
            None => false,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.leave();
    }
}

impl Shared {
    /// Puts a connection just accepted into the pool of those waiting for hello. When the
    /// pool is full the oldest there is dropped: its socket is shut for reading, so its
    /// thread stops waiting, says why and ends. A crowd of silent connections thus keeps no
    /// one out: each new client pushes the oldest silent one out, and none stays longer than
    /// `hello_timeout`.
    fn admit(self: &Arc<Self>, stream: &TcpStream) -> std::io::Result<Slot> {
        let handle = stream.try_clone()?;
        let dropped = Arc::new(AtomicBool::new(false));
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        while p.conns.len() >= self.opts.max_pending.max(1) {
            let Some(old) = p.conns.pop_front() else {
                break;
            };
            old.dropped.store(true, Ordering::SeqCst);
            let _ = old.stream.shutdown(Shutdown::Read);
        }
        let id = p.next;
        p.next += 1;
        p.conns.push_back(PendingConn {
            id,
            stream: handle,
            dropped: dropped.clone(),
        });
        Ok(Slot {
            shared: self.clone(),
            id,
            dropped,
        })
    }

    /// The set `name` if it is served: one of the sets the server was started for, or a final
    /// dump of one of `opts.jobs` (loaded on first request).
    fn served(&self, name: &str) -> Option<Arc<Served>> {
        if let Some(s) = self.sets.read().ok()?.get(name) {
            return Some(s.clone());
        }
        if self.opts.jobs.is_empty() {
            return None;
        }
        let loaded = match Served::load(&self.store, name) {
            Ok(s) if self.opts.jobs.contains(&s.set.job) => Arc::new(s),
            Ok(_) => return None,
            Err(e) => {
                tracing::info!("page server: {e}");
                return None;
            }
        };
        let mut g = self.sets.write().ok()?;
        Some(g.entry(name.to_string()).or_insert(loaded).clone())
    }
}

/// A bound page server; [`PageServer::serve`] runs it.
pub struct PageServer {
    listener: TcpListener,
    shared: Arc<Shared>,
}

impl PageServer {
    /// Binds `addr` and loads `sets` from `store` (each must be a final dump there). A
    /// non-loopback address without a token is refused.
    pub fn bind(
        addr: &str,
        store: Arc<Store>,
        sets: &[String],
        opts: ServerOptions,
    ) -> Result<PageServer, XferError> {
        if sets.is_empty() && opts.jobs.is_empty() {
            return Err(XferError::Setup("no set (or job) to serve".into()));
        }
        Self::bind_inner(addr, store, sets, opts)
    }

    /// Binds `addr` for a source-mode server, before the lazy dump it will serve exists (so a
    /// bad address is refused before the process is frozen). Same address rule as
    /// [`PageServer::bind`]; [`PageServer::serve_source`] starts it.
    pub fn bind_source(
        addr: &str,
        store: Arc<Store>,
        opts: ServerOptions,
    ) -> Result<PageServer, XferError> {
        Self::bind_inner(addr, store, &[], opts)
    }

    fn bind_inner(
        addr: &str,
        store: Arc<Store>,
        sets: &[String],
        opts: ServerOptions,
    ) -> Result<PageServer, XferError> {
        let addrs = super::check_listen(addr, opts.token.is_some())?;
        let listener = TcpListener::bind(&addrs[..]).map_err(|e| match e.kind() {
            std::io::ErrorKind::AddrNotAvailable => XferError::BadAddress {
                addr: addr.to_string(),
                why: "not an address of this machine",
                source: e,
            },
            _ => XferError::Io {
                context: format!("binding {addr}"),
                source: e,
            },
        })?;
        let local = listener.local_addr().map_err(|e| XferError::Io {
            context: format!("address of {addr}"),
            source: e,
        })?;
        if !local.ip().is_loopback() && opts.token.is_none() {
            return Err(XferError::TokenRequired {
                addr: local.to_string(),
            });
        }
        for j in &opts.jobs {
            crate::store::check_job_name(j).map_err(|source| XferError::Job {
                job: j.clone(),
                source: Box::new(source),
            })?;
        }
        let mut loaded = HashMap::new();
        for s in sets {
            loaded.insert(s.clone(), Arc::new(Served::load(&store, s)?));
        }
        Ok(PageServer {
            listener,
            shared: Arc::new(Shared {
                store,
                sets: RwLock::new(loaded),
                opts,
                live: AtomicUsize::new(0),
                pending: Mutex::default(),
                source: None,
            }),
        })
    }

    /// Source mode: serves `set` (a lazy final dump just committed) and nothing else, its
    /// `Lazy` pages read from `live` (the frozen process), each checked against its id; its
    /// `Stored` pages from the store. Only protocol-2 clients are accepted (they say `Done`).
    /// Accepts in a thread until the returned [`SourceServing`] is dropped; its `events` say
    /// who connects, leaves, and when a client is done.
    pub fn serve_source(
        self,
        set: ImageSet,
        live: Arc<dyn LivePages>,
    ) -> Result<SourceServing, XferError> {
        let addr = self.local_addr()?;
        let manifest =
            crate::image::encode::encode_manifest(&set).map_err(|source| XferError::Manifest {
                set: set.id.clone(),
                source: Box::new(source),
            })?;
        let mut sh = Arc::try_unwrap(self.shared)
            .map_err(|_| XferError::Setup("the page server is already serving".into()))?;
        let name = set.id.clone();
        sh.opts.jobs.clear();
        sh.sets = RwLock::new(HashMap::from([(name, Arc::new(Served { set, manifest }))]));
        let (tx, rx) = channel();
        sh.source = Some(SourceMode { live, events: tx });
        let shared = Arc::new(sh);
        let stop = Arc::new(AtomicBool::new(false));
        self.listener
            .set_nonblocking(true)
            .map_err(|e| XferError::Io {
                context: format!("listener on {addr}"),
                source: e,
            })?;
        let listener = self.listener;
        let st = stop.clone();
        let thread = std::thread::Builder::new()
            .name("haul-source-accept".into())
            .spawn(move || {
                while !st.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let _ = stream.set_nonblocking(false);
                            spawn_connection(&shared, stream);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        Err(e) => {
                            tracing::warn!("accept: {e}");
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                }
            })
            .map_err(|source| XferError::Thread {
                what: "accept",
                source,
            })?;
        Ok(SourceServing {
            events: rx,
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> Result<SocketAddr, XferError> {
        self.listener.local_addr().map_err(|e| XferError::Io {
            context: "local address".into(),
            source: e,
        })
    }

    /// Accepts connections forever, one thread each.
    pub fn serve(self) -> Result<(), XferError> {
        for conn in self.listener.incoming() {
            match conn {
                Ok(s) => spawn_connection(&self.shared, s),
                Err(e) => {
                    // Out of descriptors, say: give the connections a moment to end.
                    tracing::warn!("accept: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
        Ok(())
    }
}

/// A source-mode server accepting in a thread (see [`PageServer::serve_source`]). Dropping it
/// stops accepting; connections already open end with the process.
pub struct SourceServing {
    /// Connections, disconnections and `Done`, in order.
    pub events: Receiver<SourceEvent>,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SourceServing {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for SourceServing {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            if let Err(p) = t.join() {
                tracing::error!(
                    "page server: the accept thread panicked (a bug in haul: {}); it took no \
                     new connection since",
                    super::panic_message(&*p)
                );
            }
        }
    }
}

/// Serves one accepted connection in a thread of its own. It waits for its hello in the pool
/// of such connections (see [`Shared::admit`]); only then does it count against
/// `max_connections`.
fn spawn_connection(shared: &Arc<Shared>, stream: TcpStream) {
    let slot = match shared.admit(&stream) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("page server: cannot take a connection: {e}");
            return;
        }
    };
    let spawned = std::thread::Builder::new()
        .name("haul-page-conn".into())
        .spawn(move || {
            let peer = stream
                .peer_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "?".into());
            let meaning = format!(
                "page server: the connection of {peer} panicked; that client sees its \
                 connection closed (a restore's daemon reconnects), the others go on"
            );
            super::run_detached(&meaning, || {
                if let Err(e) = connection(stream, slot) {
                    tracing::info!("page server: {peer}: {e}");
                }
            });
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot start a connection thread: {e}");
    }
}

/// Counts a connection that said hello in `live` while it lasts.
struct Live<'a>(&'a AtomicUsize);

impl Drop for Live<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The reader of a hello: each read within the hello deadline, and none once the pool has
/// dropped the connection. Unbuffered: what follows the hello stays in the socket.
struct HelloReader<'a> {
    stream: &'a TcpStream,
    until: Instant,
    dropped: &'a AtomicBool,
}

impl Read for HelloReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let dropped = || std::io::Error::from(std::io::ErrorKind::ConnectionAborted);
        if self.dropped.load(Ordering::SeqCst) {
            return Err(dropped());
        }
        let left = self.until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        let mut s = self.stream;
        let n = s.read(buf)?;
        if n == 0 && self.dropped.load(Ordering::SeqCst) {
            return Err(dropped());
        }
        Ok(n)
    }
}

/// Reads the hello frame of a connection in `slot`: at most [`MAX_HELLO`] bytes, within
/// `hello_timeout`; refuses it on `w` otherwise. `Ok(None)`: the client left without a word.
fn read_hello(
    sh: &Shared,
    stream: &TcpStream,
    slot: &Slot,
    w: &mut impl std::io::Write,
) -> Result<Option<(u8, Vec<u8>)>, ConnEnd> {
    let mut r = HelloReader {
        stream,
        until: Instant::now() + sh.opts.hello_timeout,
        dropped: &slot.dropped,
    };
    let why = match read_frame(&mut r, MAX_HELLO) {
        Ok(f) => return Ok(Some(f)),
        Err(FrameError::Io(_)) if slot.dropped.load(Ordering::SeqCst) => format!(
            "too many connections waiting for hello ({}): this one was the oldest",
            sh.opts.max_pending
        ),
        Err(FrameError::Io(e)) => match e.kind() {
            std::io::ErrorKind::UnexpectedEof => return Ok(None),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                format!("no hello within {:?}", sh.opts.hello_timeout)
            }
            _ => format!("bad hello: reading: {e}"),
        },
        Err(FrameError::TooLarge(n)) => {
            format!("bad hello: frame of {n} bytes (a hello is at most {MAX_HELLO})")
        }
    };
    refuse(w, why).map(|()| None)
}

/// Tells the source's holder that a client connection ended (when dropped).
struct ClientGuard<'a>(&'a Sender<SourceEvent>);

impl Drop for ClientGuard<'_> {
    fn drop(&mut self) {
        let _ = self.0.send(SourceEvent::Disconnected);
    }
}

/// Sends an error frame and ends the connection with `message`.
fn refuse(w: &mut impl std::io::Write, message: String) -> Result<(), ConnEnd> {
    let _ = write_frame(w, kind::ERROR, message.as_bytes());
    Err(ConnEnd::Refused(message))
}

/// Why the server ended a connection early (logged; a refusal was sent to the client too).
#[derive(Debug, thiserror::Error)]
enum ConnEnd {
    #[error("refused: {0}")]
    Refused(String),
    #[error("writing: {0}")]
    Write(#[source] std::io::Error),
}

fn connection(stream: TcpStream, slot: Slot) -> Result<(), ConnEnd> {
    let shared = slot.shared.clone();
    let sh = &*shared;
    let _ = stream.set_nodelay(true);
    // A client that does not read its refusal does not hold the thread either.
    let _ = stream.set_write_timeout(Some(sh.opts.hello_timeout));
    let mut w = BufWriter::new(&stream);
    // Hello first, small and soon; the token is checked before anything else is sent.
    let Some(hello) = read_hello(sh, &stream, &slot, &mut w)? else {
        return Ok(());
    };
    let version = match check_hello(
        hello.0,
        &hello.1,
        sh.source.is_some(),
        sh.opts.token.as_deref(),
    ) {
        Ok(v) => v,
        Err(why) => return refuse(&mut w, why.to_string()),
    };
    if !slot.leave() {
        return refuse(
            &mut w,
            "too many connections waiting for hello: this one was dropped".into(),
        );
    }
    if sh.live.fetch_add(1, Ordering::SeqCst) >= sh.opts.max_connections {
        sh.live.fetch_sub(1, Ordering::SeqCst);
        return refuse(&mut w, "too many connections".into());
    }
    let _live = Live(&sh.live);
    let _ = stream.set_read_timeout(Some(sh.opts.idle_timeout));
    let _ = stream.set_write_timeout(Some(sh.opts.idle_timeout));
    let mut r = BufReader::new(&stream);
    let frame = |r: &mut BufReader<&TcpStream>| match read_frame(r, MAX_REQUEST) {
        Ok(f) => Ok(Some(f)),
        Err(FrameError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(FrameError::Io(e)) => Err(format!("reading: {e}")),
        Err(FrameError::TooLarge(n)) => Err(format!(
            "frame of {n} bytes (a request is at most {MAX_REQUEST})"
        )),
    };
    write_frame(&mut w, kind::HELLO_OK, &version.to_le_bytes()).map_err(ConnEnd::Write)?;
    if sh.source.is_some() {
        // A restore's daemon may be silent for a long time (no faults before its idle push)
        // and still be there: closing its connection would make the source look abandoned
        // and thaw it while the restored copy runs. Once it said hello, only a dead peer ends
        // its connection; keepalive finds one within about 11 s.
        let _ = stream.set_read_timeout(None);
        let _ = stream.set_write_timeout(None);
        if let Err(e) = crate::sys::net::set_tcp_keepalive(
            &stream,
            Duration::from_secs(5),
            Duration::from_secs(2),
            3,
        ) {
            tracing::warn!("page server: {e}");
        }
    }
    let _client = sh.source.as_ref().map(|s| {
        let _ = s.events.send(SourceEvent::Connected);
        ClientGuard(&s.events)
    });
    let mut out = Vec::new();
    let mut live_addrs: Vec<(usize, u64, PageId)> = Vec::new();
    let mut live_buf: Vec<u8> = Vec::new();
    loop {
        let (k, p) = match frame(&mut r) {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(()),
            Err(e) => return refuse(&mut w, e),
        };
        let mut c = Cur(&p);
        let name = c.bytes16().map(|b| String::from_utf8_lossy(b).into_owned());
        let Some(name) = name else {
            return refuse(&mut w, "truncated request (no set name)".into());
        };
        let Some(served) = sh.served(&name) else {
            return refuse(&mut w, format!("set {name:?} is not served here"));
        };
        match k {
            kind::GET_MANIFEST => {
                write_frame(&mut w, kind::MANIFEST, &served.manifest).map_err(ConnEnd::Write)?;
            }
            kind::GET_PAGES => {
                let n = match page_count(&mut c) {
                    Ok(n) => n,
                    Err(why) => return refuse(&mut w, why.to_string()),
                };
                out.clear();
                out.reserve(n * PAGE_SIZE);
                live_addrs.clear();
                for i in 0..n {
                    let addr = c.u64().unwrap_or(0);
                    let id = c
                        .take(16)
                        .and_then(|b| b.try_into().ok())
                        .map(PageId)
                        .unwrap_or(PageId([0; 16]));
                    let from_source = match served.set.pages.get(addr) {
                        Some(PageRef::Stored(s)) if s == id => false,
                        Some(PageRef::Lazy(s)) if s == id => sh.source.is_some(),
                        _ => {
                            return refuse(
                                &mut w,
                                format!("set {name} has no page {id} at {addr:#x}"),
                            )
                        }
                    };
                    if from_source {
                        // Filled from the frozen process below.
                        live_addrs.push((i, addr, id));
                        out.resize(out.len() + PAGE_SIZE, 0);
                        continue;
                    }
                    match sh.store.read_page_at(&id, &name, addr) {
                        Ok(b) => out.extend_from_slice(&b),
                        Err(e) => return refuse(&mut w, e.to_string()),
                    }
                }
                if let (Some(src), false) = (&sh.source, live_addrs.is_empty()) {
                    let addrs: Vec<u64> = live_addrs.iter().map(|l| l.1).collect();
                    live_buf.clear();
                    live_buf.resize(addrs.len() * PAGE_SIZE, 0);
                    if let Err(e) = src.live.read_pages(&addrs, &mut live_buf) {
                        let e = crate::util::error_chain(e.as_ref());
                        return refuse(&mut w, format!("the source process: {e}"));
                    }
                    for (j, &(i, addr, id)) in live_addrs.iter().enumerate() {
                        let page = &live_buf[j * PAGE_SIZE..(j + 1) * PAGE_SIZE];
                        if PageId::of(page) != id {
                            return refuse(
                                &mut w,
                                format!(
                                    "the source's page at {addr:#x} no longer hashes to {id}: \
                                     it changed after the dump"
                                ),
                            );
                        }
                        out[i * PAGE_SIZE..(i + 1) * PAGE_SIZE].copy_from_slice(page);
                    }
                }
                write_frame(&mut w, kind::PAGES, &out).map_err(ConnEnd::Write)?;
            }
            kind::DONE => {
                let Some(src) = &sh.source else {
                    write_frame(
                        &mut w,
                        kind::DONE_OK,
                        b"nothing to release: this server serves a store",
                    )
                    .map_err(ConnEnd::Write)?;
                    continue;
                };
                let (reply, answer) = channel();
                let (wrote, written) = channel();
                if src
                    .events
                    .send(SourceEvent::Done { reply, written })
                    .is_err()
                {
                    return refuse(&mut w, "the source is no longer served".into());
                }
                let msg = answer
                    .recv_timeout(Duration::from_secs(60))
                    .unwrap_or_else(|_| "the source did not answer".into());
                let r = write_frame(&mut w, kind::DONE_OK, msg.as_bytes());
                let _ = wrote.send(());
                r.map_err(ConnEnd::Write)?;
                return Ok(());
            }
            other => return refuse(&mut w, format!("unknown request kind {other}")),
        }
    }
}
