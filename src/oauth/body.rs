//! Response bodies of OAuth endpoints, read with a bound. A token,
//! device-authorization or introspection answer is a few kilobytes and a
//! discovery document or JWKS tens; an endpoint that streams more (broken,
//! or hostile) must not make the relay buffer it without end.

/// Token, device authorization and introspection answers.
pub const MAX_OAUTH_RESPONSE: usize = 256 * 1024;
/// Discovery documents and JWKS (large tenants publish many keys).
pub const MAX_METADATA_RESPONSE: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error(
        "the response is larger than {limit} bytes, more than any OAuth endpoint sends; check that the URL is the endpoint itself"
    )]
    TooLarge { limit: usize },
    #[error("reading the response failed: {0}")]
    Read(String),
}

/// The whole body of `response`, or an error once it passes `limit` bytes
/// (without reading further).
pub async fn read_bounded(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, BodyError> {
    if response
        .content_length()
        .is_some_and(|length| length > limit as u64)
    {
        return Err(BodyError::TooLarge { limit });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| BodyError::Read(crate::oauth::grant::describe_reqwest_error(&e)))?
    {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An HTTP server on loopback that answers every request with `body`
    /// of `length` bytes, announced (`Content-Length`) or not (chunked).
    async fn serve(length: usize, announced: bool) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request).await;
            let head = if announced {
                format!("HTTP/1.1 200 OK\r\nContent-Length: {length}\r\n\r\n")
            } else {
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_string()
            };
            let _ = stream.write_all(head.as_bytes()).await;
            let chunk = vec![b'x'; 64 * 1024];
            let mut left = length;
            while left > 0 {
                let n = left.min(chunk.len());
                let piece = if announced {
                    chunk[..n].to_vec()
                } else {
                    [
                        format!("{n:x}\r\n").into_bytes(),
                        chunk[..n].to_vec(),
                        b"\r\n".to_vec(),
                    ]
                    .concat()
                };
                if stream.write_all(&piece).await.is_err() {
                    return;
                }
                left -= n;
            }
            if !announced {
                let _ = stream.write_all(b"0\r\n\r\n").await;
            }
        });
        addr
    }

    async fn fetch(addr: std::net::SocketAddr, limit: usize) -> Result<Vec<u8>, BodyError> {
        let response = crate::oauth::grant::http_client(true)
            .get(format!("http://{addr}/"))
            .send()
            .await
            .expect("response");
        read_bounded(response, limit).await
    }

    #[tokio::test]
    async fn bodies_are_read_up_to_the_limit_and_no_further() {
        let small = fetch(serve(1000, false).await, 4096).await.expect("small");
        assert_eq!(small.len(), 1000);
        for announced in [true, false] {
            let error = fetch(
                serve(3 * 1024 * 1024, announced).await,
                MAX_METADATA_RESPONSE,
            )
            .await
            .expect_err("too large");
            assert!(matches!(error, BodyError::TooLarge { .. }), "{error}");
        }
    }
}
