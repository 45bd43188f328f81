//! Field-section syntax shared by heads and chunked trailers (RFC 9112 §2.2,
//! §5): line ends, obs-fold, and turning httparse's fields into a HeaderMap.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};

/// Outcome of [`scan_section`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scan {
    /// The section ends at this index (just past the CRLF of the empty line).
    Complete(usize),
    /// No empty line yet; tells whether the first line was terminated.
    Partial { first_line_done: bool },
}

/// Scans lines from `start` for the empty line closing a head or trailer
/// section. RFC 9112 §2.2 lets recipients accept a bare LF, and httparse
/// does, but a front-end and a back-end disagreeing on line ends is a
/// smuggling vector, so only CRLF is accepted; a bare CR is rejected too.
/// obs-fold (§5.2) is rejected because this proxy would have to rewrite it.
pub(crate) fn scan_section(buf: &[u8], start: usize) -> Result<Scan, &'static str> {
    let mut line_start = start;
    let mut first_line_done = false;
    while line_start < buf.len() {
        if line_start > start && matches!(buf[line_start], b' ' | b'\t') {
            return Err("obsolete line folding");
        }
        let Some(off) = buf[line_start..].iter().position(|&b| b == b'\r' || b == b'\n') else {
            break;
        };
        let at = line_start + off;
        if buf[at] == b'\n' {
            return Err("bare LF");
        }
        match buf.get(at + 1) {
            None => break,
            Some(b'\n') => {}
            Some(_) => return Err("bare CR"),
        }
        if at == line_start {
            return Ok(Scan::Complete(at + 2));
        }
        first_line_done = true;
        line_start = at + 2;
    }
    Ok(Scan::Partial { first_line_done })
}

/// Turns httparse's fields into a HeaderMap (names lower-cased, repeats
/// kept). Values are slices of `shared` when given (it must hold the bytes
/// the fields point into), else copies.
pub(crate) fn build_header_map(
    fields: &[httparse::Header<'_>],
    shared: Option<&Bytes>,
) -> Result<HeaderMap, &'static str> {
    let mut map = HeaderMap::with_capacity(fields.len());
    for field in fields {
        let name = HeaderName::from_bytes(field.name.as_bytes()).map_err(|_| "invalid field name")?;
        let value = match shared {
            Some(bytes) => HeaderValue::from_maybe_shared(bytes.slice_ref(field.value)),
            None => HeaderValue::from_bytes(field.value),
        };
        map.append(name, value.map_err(|_| "invalid field value")?);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_empty_line() {
        assert_eq!(scan_section(b"A: b\r\nC: d\r\n\r\nbody", 0), Ok(Scan::Complete(14)));
        assert_eq!(scan_section(b"\r\n", 0), Ok(Scan::Complete(2)));
        assert_eq!(scan_section(b"GET / HTTP/1.1\r\n\r\n", 0), Ok(Scan::Complete(18)));
        assert_eq!(scan_section(b"xx\r\nGET / HTTP/1.1\r\n\r\n", 4), Ok(Scan::Complete(22)));
    }

    #[test]
    fn reports_partial_input() {
        let partial = |first_line_done| Ok(Scan::Partial { first_line_done });
        assert_eq!(scan_section(b"", 0), partial(false));
        assert_eq!(scan_section(b"GET /", 0), partial(false));
        assert_eq!(scan_section(b"GET /\r", 0), partial(false));
        assert_eq!(scan_section(b"GET /\r\n", 0), partial(true));
        assert_eq!(scan_section(b"GET /\r\nA: b\r\n\r", 0), partial(true));
    }

    #[test]
    fn rejects_bad_line_structure() {
        assert_eq!(scan_section(b"A: b\n\r\n", 0), Err("bare LF"));
        assert_eq!(scan_section(b"A: b\rC: d\r\n\r\n", 0), Err("bare CR"));
        assert_eq!(scan_section(b"A: b\r\n c\r\n\r\n", 0), Err("obsolete line folding"));
        assert_eq!(scan_section(b"A: b\r\n\tc\r\n\r\n", 0), Err("obsolete line folding"));
    }

    #[test]
    fn builds_header_maps() {
        let fields = [
            httparse::Header { name: "X-A", value: b"1" },
            httparse::Header { name: "x-a", value: b"2" },
            httparse::Header { name: "X-Bin", value: b"\xff" },
        ];
        let map = build_header_map(&fields, None).map_err(str::to_owned);
        let map = map.as_ref().map(|m| m.get_all("x-a").iter().count());
        assert_eq!(map, Ok(2));
        let bad = [httparse::Header { name: "X", value: b"a\x7f" }];
        assert_eq!(build_header_map(&bad, None).map(|_| ()), Err("invalid field value"));
    }
}
