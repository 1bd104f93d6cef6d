//! The loopback redirect receiver of a native app's authorization code flow
//! (RFC 8252 section 7.3): listen on 127.0.0.1 at a random port, wait for
//! the browser to come back with `?code=..&state=..`, answer it with a page
//! saying it can be closed, and hand the query string to the caller, who
//! checks `state` before anything else.
//!
//! A hand-written, minimal HTTP/1.1 reader: one request line is all that is
//! needed, and a server framework would be a lot of code for that.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Longest request head we read; a browser's is well under this.
const MAX_REQUEST: usize = 16 * 1024;
/// How long one connection may take to send its request line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum LoopbackError {
    #[error("cannot listen on 127.0.0.1 for the login redirect: {0}")]
    Bind(std::io::Error),
    #[error(
        "nobody came back to the login redirect within {0:?}; run the login again and finish it in the browser"
    )]
    Timeout(Duration),
    #[error("the login redirect listener failed: {0}")]
    Io(std::io::Error),
}

pub struct RedirectListener {
    listener: TcpListener,
    path: String,
}

impl RedirectListener {
    /// Binds 127.0.0.1 on a port the system picks.
    pub async fn bind(path: &str) -> Result<RedirectListener, LoopbackError> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .map_err(LoopbackError::Bind)?;
        Ok(RedirectListener {
            listener,
            path: path.to_string(),
        })
    }

    /// The redirect URI to register in the authorization request.
    pub fn redirect_uri(&self, host: &str) -> String {
        let port = self.listener.local_addr().map(|a| a.port()).unwrap_or(0);
        format!("http://{host}:{port}{}", self.path)
    }

    /// Waits for the request to the redirect path and returns its query.
    /// Other requests (a browser's favicon) get 404 and are ignored.
    pub async fn wait_for_query(&self, timeout: Duration) -> Result<String, LoopbackError> {
        tokio::time::timeout(timeout, self.accept_until_redirect())
            .await
            .map_err(|_| LoopbackError::Timeout(timeout))?
    }

    async fn accept_until_redirect(&self) -> Result<String, LoopbackError> {
        loop {
            let (mut stream, _) = self.listener.accept().await.map_err(LoopbackError::Io)?;
            let Ok(Ok(target)) =
                tokio::time::timeout(REQUEST_TIMEOUT, read_request_target(&mut stream)).await
            else {
                continue;
            };
            let (path, query) = target.split_once('?').unwrap_or((target.as_str(), ""));
            if path != self.path {
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    )
                    .await;
                continue;
            }
            let body = "<!doctype html><meta charset=utf-8><title>oxirelay</title>\
                        <p>oxirelay received the answer. You can close this window and return to the terminal.</p>";
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
            return Ok(query.to_string());
        }
    }
}

/// Reads up to the end of the request head and returns the request target
/// of a GET (`/path?query`).
async fn read_request_target(stream: &mut tokio::net::TcpStream) -> std::io::Result<String> {
    let mut head = Vec::with_capacity(1024);
    let mut buffer = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let read = stream.read(&mut buffer).await?;
        if read == 0 || head.len() + read > MAX_REQUEST {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "incomplete or oversized request",
            ));
        }
        head.extend_from_slice(&buffer[..read]);
    }
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let line = std::str::from_utf8(line)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8"))?;
    let mut parts = line.split(' ');
    match (parts.next(), parts.next()) {
        (Some("GET"), Some(target)) => Ok(target.to_string()),
        _ => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not a GET request",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn returns_the_query_of_the_redirect_and_ignores_other_paths() {
        let listener = RedirectListener::bind("/").await.expect("bind");
        let uri = listener.redirect_uri("127.0.0.1");
        let http = reqwest::Client::new();
        let favicon = format!("{}/favicon.ico", uri.trim_end_matches('/'));
        let (query, _) = tokio::join!(listener.wait_for_query(Duration::from_secs(10)), async {
            let status = http.get(&favicon).send().await.expect("favicon").status();
            assert_eq!(status.as_u16(), 404);
            let page = http
                .get(format!("{uri}?code=abc&state=xyz"))
                .send()
                .await
                .expect("redirect");
            assert!(
                page.text()
                    .await
                    .expect("body")
                    .contains("close this window")
            );
        });
        assert_eq!(query.expect("query"), "code=abc&state=xyz");
    }
}
