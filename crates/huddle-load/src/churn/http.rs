//! The server's live counts, `GET /api/info`: a one-request HTTP/1.1 client written by hand (the
//! load generator has no HTTP client among its dependencies, and needs one request on loopback).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::report::LiveCounts;
use crate::LoadError;

/// `host:port` of a `ws://host:port/...` URL.
pub(super) fn authority(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("ws://")?;
    Some(rest.split('/').next().unwrap_or(rest)).filter(|a| !a.is_empty())
}

/// The server's live counts from `GET /api/info` (HTTP/1.1 on loopback); `Ok(None)` when it
/// gives none.
pub async fn fetch_live_counts(signaling_url: &str) -> Result<Option<LiveCounts>, LoadError> {
    let addr = authority(signaling_url)
        .ok_or_else(|| LoadError::Plan(format!("not a ws:// URL: {signaling_url}")))?;
    let io = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let req = format!("GET /api/info HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        s.take(256 * 1024).read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(5), io)
        .await
        .map_err(|_| LoadError::Signaling(format!("GET /api/info at {addr}: no answer in 5 s")))??;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| LoadError::Signaling("GET /api/info: no HTTP answer".into()))?;
    if !head.starts_with("HTTP/1.1 200") {
        let status = head.lines().next().unwrap_or("");
        return Err(LoadError::Signaling(format!("GET /api/info: {status}")));
    }
    let v: serde_json::Value =
        serde_json::from_str(body.trim()).map_err(|e| LoadError::Signaling(format!("GET /api/info: {e}")))?;
    Ok(v.get("live").and_then(|l| serde_json::from_value(l.clone()).ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_of_ws_urls() {
        assert_eq!(authority("ws://127.0.0.1:7880/ws"), Some("127.0.0.1:7880"));
        assert_eq!(authority("ws://[::1]:1"), Some("[::1]:1"));
        assert_eq!(authority("http://x"), None);
    }
}
