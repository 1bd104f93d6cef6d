//! The relay's HTTP server (`[http]`): one listener for everything `serve`
//! offers over HTTP. Each part owns its routes in its own module and is
//! mounted in [`router`]; this module owns only the listener (HTTPS with
//! rustls, plain HTTP on loopback only, as `HttpConfig` checks), the state
//! the routes share, and a bounded stop.

mod health;

use crate::config::{Config, HttpConfig};
use crate::oauth::broker::Broker;
use crate::store::Store;
use axum::Router;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;

/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What every route may use: the store, the token broker (and through it
/// the audit log), the config, and the delivery engine's wake-up for new
/// mail.
#[derive(Clone)]
pub struct HttpState {
    pub store: Arc<dyn Store>,
    pub broker: Arc<Broker>,
    pub config: Arc<Config>,
    pub wake: Arc<Notify>,
}

/// Every route `serve` offers over HTTP.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .merge(health::routes(state.clone()))
        .merge(crate::metrics::routes(state.clone()))
        .merge(crate::api::routes(state.clone()))
        .merge(crate::console::routes(state))
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{0}")]
    Config(String),
    #[error("cannot listen for HTTP on {addr}: {source}; is another program using the port?")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("[http] TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// The client's address, for handlers that need it (rate limits, logs):
/// `axum::extract::ConnectInfo<PeerAddr>`, the same over HTTP and HTTPS.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TcpListener>>
    for PeerAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, TcpListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

impl
    axum::extract::connect_info::Connected<
        axum::serve::IncomingStream<'_, crate::tls::listener::TlsListener>,
    > for PeerAddr
{
    fn connect_info(
        stream: axum::serve::IncomingStream<'_, crate::tls::listener::TlsListener>,
    ) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

/// A server that is listening; [`RunningHttpServer::shutdown`] stops it.
pub struct RunningHttpServer {
    addr: SocketAddr,
    https: bool,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl RunningHttpServer {
    pub async fn start(config: &HttpConfig, router: Router) -> Result<Self, HttpError> {
        let addr = config.socket_addr().map_err(HttpError::Config)?;
        let listener = crate::listen::bind(addr)
            .await
            .map_err(|source| HttpError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| HttpError::Bind { addr, source })?;
        let tls = match (&config.cert, &config.key) {
            (Some(cert), Some(key)) => Some(tokio_rustls::TlsAcceptor::from(
                crate::tls::server_config_from_files(cert, key)?,
            )),
            _ => None,
        };
        let https = tls.is_some();
        let service = router.into_make_service_with_connect_info::<PeerAddr>();
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let task = tokio::spawn(async move {
            let served = match tls {
                Some(tls) => {
                    let listener =
                        crate::tls::listener::TlsListener::start(listener, tls, HANDSHAKE_TIMEOUT);
                    axum::serve(listener, service)
                        .with_graceful_shutdown(shutdown)
                        .await
                }
                None => {
                    axum::serve(listener, service)
                        .with_graceful_shutdown(shutdown)
                        .await
                }
            };
            if let Err(error) = served {
                tracing::error!(%error, "the HTTP server stopped");
            }
        });
        Ok(RunningHttpServer {
            addr,
            https,
            stop: Some(stop),
            task: Some(task),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://ADDR` or `http://ADDR`.
    pub fn base_url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Stops accepting, lets requests in progress finish for up to `grace`,
    /// then drops whatever is left (a client that keeps a connection open
    /// without finishing a request does not hold the stop).
    pub async fn shutdown(mut self, grace: Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(grace, &mut task).await.is_err()
        {
            task.abort();
        }
    }
}

impl Drop for RunningHttpServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
