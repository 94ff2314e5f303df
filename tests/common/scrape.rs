//! The mount daemon's Prometheus endpoint, read the way a scraper does.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A loopback port nothing listens on (for `-o metrics=127.0.0.1:PORT`).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The daemon's /metrics page (HTTP/1.0: the server closes the connection after it).
pub fn scrape(port: u16) -> String {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("metrics endpoint");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).expect("reading /metrics");
    text
}

/// The sum of the samples of `name` whose labels include every one of `labels`
/// (`op="lookup"`); None if there is no such sample.
pub fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    let values: Vec<f64> = text
        .lines()
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let rest = series.strip_prefix(name)?;
            let matches = (rest.is_empty() || rest.starts_with('{'))
                && labels.iter().all(|want| rest.contains(want));
            matches.then(|| value.parse::<f64>().ok())?
        })
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// A counter of the daemon's, 0 while nothing has counted it.
pub fn counter(port: u16, name: &str, labels: &[&str]) -> u64 {
    sample(&scrape(port), name, labels).unwrap_or(0.0) as u64
}
