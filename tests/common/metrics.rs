//! Reading a Prometheus `/metrics` page, for the tests of both processes' metrics and of the trace exporter's
//! counters.

use std::net::SocketAddr;

use super::process::Error;
use super::rest::get;

/// The page at `GET /metrics` on an admin listener, checked to be Prometheus text.
pub async fn scrape(admin: SocketAddr) -> Result<String, Error> {
    let reply = get(admin, "/metrics").await?;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    Ok(reply.text())
}

/// The value of the sample `name{labels}` on the page, 0 when absent.
pub fn sample(page: &str, series: &str) -> f64 {
    page.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or(0.0)
}
