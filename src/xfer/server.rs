//! The page server: serves the manifests and pages of the sets it was started for.

use std::collections::HashMap;
use std::io::{BufReader, BufWriter};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use super::{kind, read_frame, write_frame, Cur, FrameError, XferError, MAGIC, MAX_FRAME};
use super::{MAX_PAGES, VERSION};
use crate::image::{ImageSet, PageId, PageRef, PAGE_SIZE};
use crate::store::Store;

/// How the server runs.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Required for any non-loopback address; checked before anything is sent.
    pub token: Option<Vec<u8>>,
    /// Connections served at once; more are refused with an error frame.
    pub max_connections: usize,
    /// A connection silent this long is closed.
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
        let set = store
            .load_set(s)
            .map_err(|e| XferError::Setup(format!("set {s}: {e}")))?;
        if set.process.is_none() {
            return Err(XferError::Setup(format!(
                "set {s} is a pre-dump; serve its job's final dump"
            )));
        }
        let manifest = crate::image::encode::encode_manifest(&set)
            .map_err(|e| XferError::Setup(format!("set {s}: {e}")))?;
        Ok(Served { set, manifest })
    }
}

struct Shared {
    store: Arc<Store>,
    sets: RwLock<HashMap<String, Arc<Served>>>,
    opts: ServerOptions,
    live: AtomicUsize,
}

impl Shared {
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
        let listener = TcpListener::bind(addr).map_err(|e| XferError::Io {
            context: format!("binding {addr}"),
            source: e,
        })?;
        let local = listener.local_addr().map_err(|e| XferError::Io {
            context: format!("address of {addr}"),
            source: e,
        })?;
        if !local.ip().is_loopback() && opts.token.is_none() {
            return Err(XferError::Setup(format!(
                "{local} is not a loopback address: a token file is required"
            )));
        }
        if sets.is_empty() && opts.jobs.is_empty() {
            return Err(XferError::Setup("no set (or job) to serve".into()));
        }
        for j in &opts.jobs {
            crate::store::check_job_name(j)
                .map_err(|e| XferError::Setup(format!("job {j:?}: {e}")))?;
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
            }),
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
            let stream = match conn {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    continue;
                }
            };
            let shared = self.shared.clone();
            if shared.live.fetch_add(1, Ordering::SeqCst) >= shared.opts.max_connections {
                shared.live.fetch_sub(1, Ordering::SeqCst);
                let mut w = &stream;
                let _ = write_frame(&mut w, kind::ERROR, b"too many connections");
                continue;
            }
            let spawned = std::thread::Builder::new()
                .name("haul-page-conn".into())
                .spawn(move || {
                    let peer = stream
                        .peer_addr()
                        .map(|a| a.to_string())
                        .unwrap_or_else(|_| "?".into());
                    if let Err(e) = connection(&shared, stream) {
                        tracing::info!("page server: {peer}: {e}");
                    }
                    shared.live.fetch_sub(1, Ordering::SeqCst);
                });
            if let Err(e) = spawned {
                self.shared.live.fetch_sub(1, Ordering::SeqCst);
                tracing::warn!("cannot start a connection thread: {e}");
            }
        }
        Ok(())
    }
}

/// Sends an error frame and ends the connection with `message`.
fn refuse(w: &mut impl std::io::Write, message: String) -> Result<(), String> {
    let _ = write_frame(w, kind::ERROR, message.as_bytes());
    Err(message)
}

/// Compares without an early exit, so the time does not tell how much of a token was right.
fn same_token(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn connection(sh: &Shared, stream: TcpStream) -> Result<(), String> {
    let _ = stream.set_read_timeout(Some(sh.opts.idle_timeout));
    let _ = stream.set_nodelay(true);
    let mut r = BufReader::new(&stream);
    let mut w = BufWriter::new(&stream);
    let frame = |r: &mut BufReader<&TcpStream>| match read_frame(r, MAX_FRAME) {
        Ok(f) => Ok(Some(f)),
        Err(FrameError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(FrameError::Io(e)) => Err(format!("reading: {e}")),
        Err(FrameError::TooLarge(n)) => Err(format!("frame of {n} bytes")),
    };
    // Hello first; the token is checked before anything else is sent.
    let hello = match frame(&mut r) {
        Ok(Some(f)) => f,
        Ok(None) => return Ok(()),
        Err(e) => return refuse(&mut w, format!("bad hello: {e}")),
    };
    let mut c = Cur(&hello.1);
    if hello.0 != kind::HELLO || c.take(8) != Some(&MAGIC[..]) {
        return refuse(&mut w, "not a haul page client (bad hello)".into());
    }
    let version = c.u16().unwrap_or(0);
    if version != VERSION {
        return refuse(
            &mut w,
            format!("protocol version {version} not supported (server speaks {VERSION})"),
        );
    }
    let token = c.bytes16().unwrap_or(&[]);
    if let Some(want) = &sh.opts.token {
        if !same_token(token, want) {
            return refuse(&mut w, "wrong token".into());
        }
    }
    write_frame(&mut w, kind::HELLO_OK, &VERSION.to_le_bytes()).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
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
                write_frame(&mut w, kind::MANIFEST, &served.manifest).map_err(|e| e.to_string())?;
            }
            kind::GET_PAGES => {
                let n = c.u32().unwrap_or(0);
                if n == 0 || n > MAX_PAGES || c.0.len() != n as usize * 24 {
                    return refuse(
                        &mut w,
                        format!("bad page request ({n} pages, {} bytes)", c.0.len()),
                    );
                }
                out.clear();
                out.reserve(n as usize * PAGE_SIZE);
                for _ in 0..n {
                    let addr = c.u64().unwrap_or(0);
                    let id = c
                        .take(16)
                        .and_then(|b| b.try_into().ok())
                        .map(PageId)
                        .unwrap_or(PageId([0; 16]));
                    match served.set.pages.get(addr) {
                        Some(PageRef::Stored(s)) | Some(PageRef::Lazy(s)) if s == id => {}
                        _ => {
                            return refuse(
                                &mut w,
                                format!("set {name} has no page {id} at {addr:#x}"),
                            )
                        }
                    }
                    match sh.store.read_page_at(&id, &name, addr) {
                        Ok(b) => out.extend_from_slice(&b),
                        Err(e) => return refuse(&mut w, e.to_string()),
                    }
                }
                write_frame(&mut w, kind::PAGES, &out).map_err(|e| e.to_string())?;
            }
            other => return refuse(&mut w, format!("unknown request kind {other}")),
        }
    }
}
