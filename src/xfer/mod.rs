//! Page server and client (issue #7): a small framed protocol over TCP through which a lazy
//! restore on one machine gets the manifest and the pages of an image set held by another.
//!
//! Frames: `u32` length (little-endian, counting the kind byte and the payload), one kind
//! byte, the payload. The server reads a hello of at most [`MAX_HELLO`] bytes and requests of
//! at most [`MAX_REQUEST`], refusing a longer one from its length alone (its body is never
//! read); a client reads answers of at most [`MAX_FRAME`]. A connection starts with `Hello`
//! (magic, version, token), due within a few seconds, answered by `HelloOk` or `Error`;
//! connections waiting for it are few, the oldest dropped for a new one, and do not count
//! against those served. Then requests: `GetManifest(set)` →
//! `Manifest(bytes)`, `GetPages(set, [(addr, id)])` → `Pages(4096 × n)`, and (protocol 2)
//! `Done(set)` → `DoneOk(message)`: the client has every page of the set resident. Every refusal is an
//! `Error` frame with a message, after which the server closes that connection; other
//! connections are not affected. The server checks the token before anything else and serves
//! only the sets it was started for (or the final dumps of the jobs it was started for), and
//! only pages those sets reference at the address asked.
//!
//! Versions: protocol 2 added `Done`. A server speaks 1 and 2 and answers `HelloOk` with the
//! version the connection uses (the client's); a client that meets a protocol-1 server says
//! hello again with 1 and then has nothing to send `Done` to. A *source-mode* server (a lazy
//! final dump served by the frozen process itself, `haul dump --lazy`) only accepts protocol 2:
//! a client that cannot say `Done` would leave it to be thawed after `source_timeout` while its
//! restored copy runs on. On `Done` it kills the source and answers with what it did; a
//! store-backed server answers `Done` with "nothing to release".
//!
//! Store-to-store sync (`sync`) copies a set into another store, sending only the pages that
//! store lacks: from a local store (`haul images push`) or from a page server (`haul images
//! pull`).

mod client;
mod requests;
mod server;
mod sync;

pub use client::{Client, RemoteSource};
pub use server::{LivePages, PageServer, ServerOptions, SourceEvent, SourceServing};
pub use sync::{copy_set, pull, push, SyncReport};

use std::io::{Read, Write};

/// Errors of the `xfer` module.
#[derive(Debug, thiserror::Error)]
pub enum XferError {
    /// A socket operation failed; `context` says which and with whom.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The peer broke the protocol (bad magic, oversized frame, unexpected kind, bad page).
    #[error("{peer}: protocol error: {message}")]
    Protocol { peer: String, message: String },
    /// The server refused a request and said why.
    #[error("{peer} refused: {message}")]
    Refused { peer: String, message: String },
    /// The server cannot start as asked.
    #[error("page server: {0}")]
    Setup(String),
    /// A store operation of a sync failed; `context` says which.
    #[error("page server: {context}: {source}")]
    Store {
        context: String,
        #[source]
        source: Box<crate::store::StoreError>,
    },
    /// The local store of a push or pull failed (opening, creating or reading it).
    #[error(transparent)]
    LocalStore(Box<crate::store::StoreError>),
    /// A set to serve cannot be loaded from the store.
    #[error("page server: set {set}: {source}")]
    Set {
        set: String,
        #[source]
        source: Box<crate::store::StoreError>,
    },
    /// A set's manifest cannot be encoded for the wire.
    #[error("page server: set {set}: {source}")]
    Manifest {
        set: String,
        #[source]
        source: Box<crate::image::encode::EncodeError>,
    },
    /// A job to serve the final dumps of has a name the store refuses.
    #[error("page server: job {job:?}: {source}")]
    Job {
        job: String,
        #[source]
        source: Box<crate::store::StoreError>,
    },
    /// A thread of the server could not be started.
    #[error("page server: cannot start the {what} thread: {source}")]
    Thread {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// A thread panicked while holding the page source's connection (a bug in haul).
    #[error("page source lock poisoned by a panicked thread")]
    Poisoned,
    /// `Done` could not be said within the timeout: the source may resume (rolled back)
    /// while the restored copy runs.
    #[error(
        "telling {addr} that every page is resident{}: {source}",
        if *sent { " (sent once; the answer was lost, so the source may be gone)" } else { "" }
    )]
    Done {
        addr: String,
        sent: bool,
        #[source]
        source: Box<XferError>,
    },
    /// An address (`--listen`, `--from`) that does not parse, resolve, or belong to this
    /// machine: bad input.
    #[error("bad address {addr:?}: {why}")]
    BadAddress {
        addr: String,
        why: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// A listen address other than loopback without a token: bad input.
    #[error("{addr} is not a loopback address: a token file is required (--token-file)")]
    TokenRequired { addr: String },
}

impl XferError {
    /// Whether the error is the user's input (an address, a missing token) rather than a
    /// failure: `main` exits with its bad-input code then.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            XferError::BadAddress { .. } | XferError::TokenRequired { .. }
        )
    }
}

/// The socket addresses `addr` (`HOST:PORT`) names, at least one.
pub(crate) fn resolve(addr: &str) -> std::io::Result<Vec<std::net::SocketAddr>> {
    use std::net::ToSocketAddrs;
    let v: Vec<_> = addr.to_socket_addrs()?.collect();
    if v.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "it names no address",
        ));
    }
    Ok(v)
}

/// Checks a listen address before anything is done with it: it must parse and resolve
/// (`HOST:PORT`), and without a token it must be loopback only. Returns its addresses.
pub fn check_listen(addr: &str, has_token: bool) -> Result<Vec<std::net::SocketAddr>, XferError> {
    let v = resolve(addr).map_err(|source| XferError::BadAddress {
        addr: addr.to_string(),
        why: "expected HOST:PORT to listen on, e.g. 127.0.0.1:7411",
        source,
    })?;
    if !has_token {
        if let Some(a) = v.iter().find(|a| !a.ip().is_loopback()) {
            return Err(XferError::TokenRequired {
                addr: a.to_string(),
            });
        }
    }
    Ok(v)
}

/// Protocol version this build speaks (2: `Done`).
pub const VERSION: u16 = 2;
/// Oldest protocol version still accepted (1: no `Done`).
pub const MIN_VERSION: u16 = 1;
/// First protocol version with `Done`.
pub const DONE_VERSION: u16 = 2;
/// Magic of the hello frame.
pub const MAGIC: &[u8; 8] = b"HAULXFER";
/// Largest frame a client accepts (kind byte + payload): room for [`MAX_PAGES`] pages and a
/// header, or a manifest.
pub const MAX_FRAME: u32 = 64 << 20;
/// Most pages one `GetPages` may ask for.
pub const MAX_PAGES: u32 = 2048;
/// Longest set name or token.
pub const MAX_NAME: usize = 1024;
/// Largest hello the server reads (kind, magic, version, token): before a client has said
/// who it is, the server holds no more than this for it.
pub const MAX_HELLO: u32 = 1 + 8 + 2 + 2 + MAX_NAME as u32;
/// Largest request the server reads (kind, set name, count, [`MAX_PAGES`] × (address, id)).
pub const MAX_REQUEST: u32 = 1 + 2 + MAX_NAME as u32 + 4 + MAX_PAGES * 24;

pub(crate) mod kind {
    pub const HELLO: u8 = 1;
    pub const HELLO_OK: u8 = 2;
    pub const ERROR: u8 = 3;
    pub const GET_MANIFEST: u8 = 4;
    pub const MANIFEST: u8 = 5;
    pub const GET_PAGES: u8 = 6;
    pub const PAGES: u8 = 7;
    /// Protocol 2: the client has every page of the set resident.
    pub const DONE: u8 = 8;
    pub const DONE_OK: u8 = 9;
}

/// Why reading a frame failed.
pub(crate) enum FrameError {
    Io(std::io::Error),
    TooLarge(u32),
}

/// Reads one frame: (kind, payload). The length is checked before any allocation.
pub(crate) fn read_frame(r: &mut impl Read, max: u32) -> Result<(u8, Vec<u8>), FrameError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).map_err(FrameError::Io)?;
    let len = u32::from_le_bytes(len);
    if len == 0 || len > max {
        return Err(FrameError::TooLarge(len));
    }
    let mut k = [0u8; 1];
    r.read_exact(&mut k).map_err(FrameError::Io)?;
    let mut payload = vec![0u8; len as usize - 1];
    r.read_exact(&mut payload).map_err(FrameError::Io)?;
    Ok((k[0], payload))
}

/// Writes one frame.
pub(crate) fn write_frame(w: &mut impl Write, k: u8, payload: &[u8]) -> std::io::Result<()> {
    let len =
        u32::try_from(payload.len() + 1).map_err(|_| std::io::Error::other("frame too large"))?;
    let mut head = [0u8; 5];
    head[..4].copy_from_slice(&len.to_le_bytes());
    head[4] = k;
    w.write_all(&head)?;
    w.write_all(payload)?;
    w.flush()
}

/// A cursor over a payload that never reads past its end.
pub(crate) struct Cur<'a>(pub &'a [u8]);

impl<'a> Cur<'a> {
    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    pub fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    pub fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    pub fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    /// A `u16`-length-prefixed byte string of at most [`MAX_NAME`] bytes.
    pub fn bytes16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()? as usize;
        if n > MAX_NAME {
            return None;
        }
        self.take(n)
    }
}

/// Appends a `u16`-length-prefixed byte string.
pub(crate) fn put16(v: &mut Vec<u8>, b: &[u8]) {
    v.extend_from_slice(&(b.len().min(u16::MAX as usize) as u16).to_le_bytes());
    v.extend_from_slice(&b[..b.len().min(u16::MAX as usize)]);
}

/// The hello payload: magic, version, token.
pub(crate) fn hello_payload(version: u16, token: &[u8]) -> Vec<u8> {
    let mut v = MAGIC.to_vec();
    v.extend_from_slice(&version.to_le_bytes());
    put16(&mut v, token);
    v
}

/// Runs the body of a thread nobody joins (a connection, a read-ahead): a panic in it (a bug
/// in haul) is logged as an error with `meaning`, what it means for the user, instead of
/// going by as the panic hook's line alone. Returns whether the body ended normally.
pub(crate) fn run_detached(meaning: &str, body: impl FnOnce()) -> bool {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        Ok(()) => true,
        Err(p) => {
            tracing::error!("{meaning} (a bug in haul: {})", panic_message(&*p));
            false
        }
    }
}

/// The message a panic was raised with, when it has one.
pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = p.downcast_ref::<&str>() {
        s
    } else if let Some(s) = p.downcast_ref::<String>() {
        s
    } else {
        "a panic without a message"
    }
}

/// Reads a token file: its content without the trailing newline; refused when empty.
pub fn read_token_file(path: &std::path::Path) -> Result<Vec<u8>, XferError> {
    let t = std::fs::read(path).map_err(|e| XferError::Io {
        context: format!("reading token file {}", path.display()),
        source: e,
    })?;
    let t = t.trim_ascii_end().to_vec();
    if t.is_empty() || t.len() > MAX_NAME {
        return Err(XferError::Setup(format!(
            "token file {} must hold 1 to {MAX_NAME} bytes",
            path.display()
        )));
    }
    Ok(t)
}

impl From<crate::store::StoreError> for XferError {
    fn from(e: crate::store::StoreError) -> Self {
        XferError::LocalStore(Box::new(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_round_trips_and_oversized_length_is_refused_before_allocation() {
        let mut b = Vec::new();
        write_frame(&mut b, kind::PAGES, b"abc").unwrap();
        let (k, p) = read_frame(&mut &b[..], MAX_FRAME).ok().unwrap();
        assert_eq!((k, p.as_slice()), (kind::PAGES, &b"abc"[..]));
        let huge = [0xff, 0xff, 0xff, 0xff, 1];
        assert!(matches!(
            read_frame(&mut &huge[..], MAX_FRAME),
            Err(FrameError::TooLarge(u32::MAX))
        ));
    }

    #[test]
    fn a_zero_length_frame_is_refused_and_a_truncated_one_is_an_io_error() {
        assert!(matches!(
            read_frame(&mut &[0u8, 0, 0, 0, 1][..], MAX_FRAME),
            Err(FrameError::TooLarge(0))
        ));
        let mut b = Vec::new();
        write_frame(&mut b, kind::PAGES, &[7; 100]).unwrap();
        b.truncate(50);
        match read_frame(&mut &b[..], MAX_FRAME) {
            Err(FrameError::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof),
            _ => panic!("a truncated frame must not be read as a frame"),
        }
    }

    #[test]
    fn the_largest_hello_and_page_request_fit_their_limits_and_one_byte_more_does_not() {
        // The longest token a hello can carry.
        let hello = hello_payload(VERSION, &[b't'; MAX_NAME]);
        assert_eq!(1 + hello.len() as u32, MAX_HELLO);
        // GetPages of the longest set name and MAX_PAGES pages.
        let mut req = Vec::new();
        put16(&mut req, &[b's'; MAX_NAME]);
        req.extend_from_slice(&MAX_PAGES.to_le_bytes());
        req.resize(req.len() + MAX_PAGES as usize * 24, 0);
        let mut b = Vec::new();
        write_frame(&mut b, kind::GET_PAGES, &req).unwrap();
        assert!(read_frame(&mut &b[..], MAX_REQUEST).is_ok());
        req.push(0);
        let mut b = Vec::new();
        write_frame(&mut b, kind::GET_PAGES, &req).unwrap();
        assert!(matches!(
            read_frame(&mut &b[..], MAX_REQUEST),
            Err(FrameError::TooLarge(n)) if n == MAX_REQUEST + 1
        ));
    }

    #[test]
    fn a_listen_address_off_loopback_needs_a_token_and_a_malformed_one_is_bad_input() {
        assert!(check_listen("127.0.0.1:0", false).is_ok());
        assert!(check_listen("[::1]:0", false).is_ok());
        let e = check_listen("0.0.0.0:0", false).unwrap_err();
        assert!(matches!(e, XferError::TokenRequired { .. }), "{e}");
        assert!(e.is_bad_input());
        assert!(check_listen("0.0.0.0:0", true).is_ok());
        let e = check_listen("no-port-here", true).unwrap_err();
        assert!(matches!(e, XferError::BadAddress { .. }), "{e}");
        assert!(e.is_bad_input());
    }

    #[test]
    fn a_token_file_loses_its_trailing_newline_and_an_empty_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        std::fs::write(&p, "s3cret\n").unwrap();
        assert_eq!(read_token_file(&p).unwrap(), b"s3cret");
        std::fs::write(&p, "\n").unwrap();
        assert!(read_token_file(&p).is_err());
        let e = read_token_file(&dir.path().join("missing")).unwrap_err();
        assert!(matches!(e, XferError::Io { .. }), "{e}");
    }

    #[test]
    fn a_panic_in_a_detached_body_is_caught_with_its_message() {
        assert!(run_detached("test", || {}));
        assert!(!run_detached("test", || panic!("boom {}", 1)));
        let p = std::panic::catch_unwind(|| panic!("static")).unwrap_err();
        assert_eq!(panic_message(&*p), "static");
        let p = std::panic::catch_unwind(|| panic!("formatted {}", 2)).unwrap_err();
        assert_eq!(panic_message(&*p), "formatted 2");
        let p = std::panic::catch_unwind(|| std::panic::panic_any(7u8)).unwrap_err();
        assert_eq!(panic_message(&*p), "a panic without a message");
    }

    #[test]
    fn cursor_never_reads_past_the_payload() {
        let mut c = Cur(&[5, 0, 1, 2]);
        assert_eq!(c.bytes16(), None);
        let mut c = Cur(&[1, 0, 7]);
        assert_eq!(c.bytes16(), Some(&[7u8][..]));
        assert_eq!(c.u32(), None);
    }
}
