//! HTTP on loopback: receivers the tests serve, raw requests, API key entries.

use std::net::TcpStream;
use std::time::Duration;

/// Serve `app` (axum) on `addr`, or a free loopback port, from a thread of its own; returns
/// the address. Receivers for delivery tests and benches.
pub fn http_server(addr: Option<std::net::SocketAddr>, app: axum::Router) -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind(addr.unwrap_or(([127, 0, 0, 1], 0).into())).unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(l, app).await.unwrap();
        });
    });
    addr
}

/// An `[[api.keys]]` entry of a config file: the key's name, its SHA-256, its roles.
pub fn api_key_entry(name: &str, key: &str, roles: &[&str]) -> String {
    use sha2::Digest;
    format!(
        "[[api.keys]]\nname = \"{name}\"\nsha256 = \"{}\"\nroles = {roles:?}\n",
        hex::encode(sha2::Sha256::digest(key.as_bytes()))
    )
}

/// `GET path` over a plain TCP connection (no client library between the test and the
/// server): the answer's status line, if one came within 5 s.
pub fn http_get_status_line(addr: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: vigil\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.lines().next().map(str::to_owned)
}
