//! A real S3-compatible server on loopback for the bucket-store tests: moto's server
//! (installed by ./install-deps into its own virtualenv), started by the test under its
//! [`crate::common::tree::Session`] (so it is killed when the test ends) on a free port, with
//! its buckets made by plain HTTP requests and its objects read or overwritten the same way.
//!
//! Included by tests/bucket.rs with `#[path]`, not by every test binary.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::wait_for;

/// Where install-deps puts moto's server.
const MOTO: &str = "/opt/haul-test/moto/bin/moto_server";

pub struct S3Server {
    pub child: Child,
    pub port: u16,
    pub log: PathBuf,
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

impl S3Server {
    /// Starts the server (None, after saying why, when moto is not installed: a failure
    /// under CI) and waits until it answers.
    pub fn start(test: &str, dir: &Path) -> Option<S3Server> {
        let moto = std::env::var_os("HAUL_TEST_MOTO")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(MOTO));
        if !moto.is_file() {
            crate::common::skip(
                test,
                &format!("{} is missing (./install-deps)", moto.display()),
            );
            return None;
        }
        Some(S3Server::start_at(&moto, free_port(), dir))
    }

    /// Starts moto on `port` (again, after a kill: an empty server).
    pub fn start_at(moto: &Path, port: u16, dir: &Path) -> S3Server {
        let log = dir.join(format!("s3-{port}.log"));
        let out = std::fs::File::create(&log).expect("s3 log");
        let mut cmd = Command::new(moto);
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        haul::sys::spawn::close_inherited_fds(&mut cmd);
        let child = cmd.spawn().expect("start moto_server");
        let s = S3Server { child, port, log };
        assert!(
            wait_for(Duration::from_secs(30), || s
                .request("GET", "/", &[])
                .is_some()),
            "moto_server did not answer on port {port}: {}",
            std::fs::read_to_string(&s.log).unwrap_or_default()
        );
        s
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `s3://bucket/prefix?endpoint=...`
    pub fn location(&self, bucket: &str, prefix: &str) -> String {
        format!("s3://{bucket}/{prefix}?endpoint={}", self.endpoint())
    }

    /// One plain HTTP/1.1 request; (status, body). moto checks that a request is
    /// authenticated, not its signature: a made-up `Authorization` header does.
    pub fn request(&self, method: &str, path: &str, body: &[u8]) -> Option<(u16, Vec<u8>)> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAuthorization: AWS test:test\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.port,
            body.len()
        );
        s.write_all(head.as_bytes()).ok()?;
        s.write_all(body).ok()?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).ok()?;
        let end = resp.windows(4).position(|w| w == b"\r\n\r\n")?;
        let status: u16 = std::str::from_utf8(&resp[..end])
            .ok()?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        let head = String::from_utf8_lossy(&resp[..end]).to_ascii_lowercase();
        let mut body = resp[end + 4..].to_vec();
        if head.contains("transfer-encoding: chunked") {
            body = dechunk(&body);
        }
        Some((status, body))
    }

    pub fn make_bucket(&self, bucket: &str) {
        let (st, body) = self
            .request("PUT", &format!("/{bucket}"), &[])
            .expect("PUT bucket");
        assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
    }

    /// Keys under `prefix` of `bucket`, with sizes.
    pub fn keys(&self, bucket: &str, prefix: &str) -> Vec<(String, u64)> {
        let (st, body) = self
            .request(
                "GET",
                &format!("/{bucket}?list-type=2&prefix={prefix}"),
                &[],
            )
            .expect("LIST");
        assert_eq!(st, 200);
        let text = String::from_utf8_lossy(&body).into_owned();
        let mut out = Vec::new();
        for part in text.split("<Contents>").skip(1) {
            let key = between(part, "<Key>", "</Key>").unwrap_or_default();
            let size = between(part, "<Size>", "</Size>")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            out.push((key.to_string(), size));
        }
        out
    }

    pub fn get(&self, bucket: &str, key: &str) -> Vec<u8> {
        let (st, body) = self
            .request("GET", &format!("/{bucket}/{key}"), &[])
            .expect("GET");
        assert_eq!(st, 200, "GET {key}");
        body
    }

    pub fn put(&self, bucket: &str, key: &str, bytes: &[u8]) {
        let (st, _) = self
            .request("PUT", &format!("/{bucket}/{key}"), bytes)
            .expect("PUT");
        assert_eq!(st, 200, "PUT {key}");
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn between<'a>(s: &'a str, a: &str, b: &str) -> Option<&'a str> {
    let i = s.find(a)? + a.len();
    let j = s[i..].find(b)? + i;
    Some(&s[i..j])
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let n = usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap_or("0").trim(), 16)
            .unwrap_or(0);
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[eol + 2 + n + 2..];
    }
}
