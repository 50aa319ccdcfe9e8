//! Plain HTTP/1.1 to the agent's endpoints, and reading metrics text.

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `GET path` over plain HTTP/1.1; returns (status code, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    http_get_with(addr, path, "")
}

/// `http_get` with extra header lines (each ending in `\r\n`).
pub fn http_get_with(addr: &str, path: &str, headers: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connecting {addr}: {e}"));
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Connection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (code, body)
}

/// The value of the first sample line of `metric` (with its labels, e.g.
/// `detector_stalled_sockets{reason="peer_not_reading"}`) in an OpenMetrics text.
pub fn metric(text: &str, metric: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(metric).and_then(|r| r.strip_prefix(' '))).and_then(|v| v.split_whitespace().next()).and_then(|v| v.parse().ok())
}
