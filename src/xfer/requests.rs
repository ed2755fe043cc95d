//! What the page server accepts from a client, checked before anything is served: the hello
//! (magic, protocol version, token) and the shape of a page request.

use super::{kind, Cur, DONE_VERSION, MAGIC, MAX_PAGES, MIN_VERSION, VERSION};

/// Why a hello or a request is refused; its text is the `Error` frame the client gets (a
/// client matches on the version refusal's wording: keep it).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(super) enum Refusal {
    #[error("not a haul page client (bad hello)")]
    BadHello,
    #[error("protocol version {0} not supported (server speaks {MIN_VERSION} to {VERSION})")]
    Version(u16),
    #[error(
        "this server serves a frozen source process, which needs protocol {DONE_VERSION} \
         (the client says when every page is resident); the client speaks {0}: upgrade it"
    )]
    NeedsDone(u16),
    #[error("wrong token")]
    WrongToken,
    #[error("bad page request ({pages} pages, {bytes} bytes)")]
    BadPageRequest { pages: u32, bytes: usize },
}

/// Checks a hello frame (kind `k`, `payload`): magic, a protocol version this server speaks
/// (a source-mode server needs one with `Done`), and the token when one is required. Returns
/// the connection's version, or the refusal to send.
pub(super) fn check_hello(
    k: u8,
    payload: &[u8],
    source_mode: bool,
    want_token: Option<&[u8]>,
) -> Result<u16, Refusal> {
    let mut c = Cur(payload);
    if k != kind::HELLO || c.take(8) != Some(&MAGIC[..]) {
        return Err(Refusal::BadHello);
    }
    let version = c.u16().unwrap_or(0);
    if !(MIN_VERSION..=VERSION).contains(&version) {
        return Err(Refusal::Version(version));
    }
    if source_mode && version < DONE_VERSION {
        return Err(Refusal::NeedsDone(version));
    }
    let token = c.bytes16().unwrap_or(&[]);
    if let Some(want) = want_token {
        if !same_token(token, want) {
            return Err(Refusal::WrongToken);
        }
    }
    Ok(version)
}

/// The number of pages a `GetPages` asks for, read from `c` (the payload after the set name):
/// 1 to [`MAX_PAGES`], and exactly 24 bytes (address, id) each left in the payload. The
/// refusal to send otherwise.
pub(super) fn page_count(c: &mut Cur<'_>) -> Result<usize, Refusal> {
    let n = c.u32().unwrap_or(0);
    if n == 0 || n > MAX_PAGES || c.0.len() != n as usize * 24 {
        return Err(Refusal::BadPageRequest {
            pages: n,
            bytes: c.0.len(),
        });
    }
    Ok(n as usize)
}

/// Compares without an early exit, so the time does not tell how much of a token was right.
pub(super) fn same_token(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xfer::hello_payload;

    #[test]
    fn a_hello_in_each_spoken_version_is_taken_with_its_version() {
        for v in MIN_VERSION..=VERSION {
            let p = hello_payload(v, b"");
            assert_eq!(check_hello(kind::HELLO, &p, false, None), Ok(v));
        }
    }

    #[test]
    fn a_hello_with_bad_magic_the_wrong_kind_or_an_unknown_version_is_refused() {
        let mut p = hello_payload(VERSION, b"");
        p[0] = b'X';
        let bad = check_hello(kind::HELLO, &p, false, None).unwrap_err();
        assert_eq!(bad, Refusal::BadHello);
        let p = hello_payload(VERSION, b"");
        assert!(check_hello(kind::GET_PAGES, &p, false, None).is_err());
        assert!(check_hello(kind::HELLO, &p[..5], false, None).is_err());
        let e = check_hello(kind::HELLO, &hello_payload(VERSION + 1, b""), false, None)
            .unwrap_err()
            .to_string();
        // A client retries with protocol 1 on exactly this shape of refusal.
        assert!(e.starts_with("protocol version"), "{e}");
        assert!(e.ends_with(&format!("(server speaks {MIN_VERSION} to {VERSION})")));
        assert!(check_hello(kind::HELLO, &hello_payload(0, b""), false, None).is_err());
    }

    #[test]
    fn a_source_mode_server_refuses_a_client_that_cannot_say_done() {
        let old = hello_payload(DONE_VERSION - 1, b"");
        assert!(check_hello(kind::HELLO, &old, false, None).is_ok());
        let e = check_hello(kind::HELLO, &old, true, None).unwrap_err();
        assert_eq!(e, Refusal::NeedsDone(DONE_VERSION - 1));
        assert!(e.to_string().contains("frozen source"), "{e}");
        let new = hello_payload(DONE_VERSION, b"");
        assert_eq!(check_hello(kind::HELLO, &new, true, None), Ok(DONE_VERSION));
    }

    #[test]
    fn the_token_must_match_exactly_when_one_is_required() {
        let want = Some(&b"s3cret"[..]);
        for t in [&b""[..], b"s3cre", b"s3cret!", b"S3cret"] {
            let p = hello_payload(VERSION, t);
            assert_eq!(
                check_hello(kind::HELLO, &p, false, want),
                Err(Refusal::WrongToken),
                "{t:?}"
            );
        }
        let p = hello_payload(VERSION, b"s3cret");
        assert_eq!(check_hello(kind::HELLO, &p, false, want), Ok(VERSION));
        // No token required: whatever the client sends is fine.
        assert_eq!(check_hello(kind::HELLO, &p, false, None), Ok(VERSION));
    }

    #[test]
    fn a_page_request_needs_one_to_max_pages_of_exactly_24_bytes_each() {
        let req = |n: u32, bytes: usize| {
            let mut v = n.to_le_bytes().to_vec();
            v.resize(4 + bytes, 0);
            v
        };
        assert_eq!(page_count(&mut Cur(&req(3, 72))), Ok(3));
        assert_eq!(
            page_count(&mut Cur(&req(MAX_PAGES, MAX_PAGES as usize * 24))),
            Ok(MAX_PAGES as usize)
        );
        for (n, bytes) in [
            (0, 0),
            (3, 71),
            (3, 73),
            (MAX_PAGES + 1, (MAX_PAGES as usize + 1) * 24),
        ] {
            let e = page_count(&mut Cur(&req(n, bytes))).unwrap_err();
            assert_eq!(
                e,
                Refusal::BadPageRequest { pages: n, bytes },
                "{n} {bytes}"
            );
        }
        assert!(page_count(&mut Cur(&[1, 0])).is_err(), "no count at all");
    }

    #[test]
    fn tokens_are_the_same_only_when_every_byte_and_the_length_are() {
        assert!(same_token(b"abc", b"abc"));
        assert!(same_token(b"", b""));
        assert!(!same_token(b"abc", b"abd"));
        assert!(!same_token(b"abc", b"ab"));
        assert!(!same_token(b"xbc", b"abc"));
    }
}
