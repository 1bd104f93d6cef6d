//! Starts the configured `[[listener]]`s: STARTTLS (587-style), implicit
//! TLS (465-style) and plaintext restricted to an IP allow-list, each
//! served by the shared SMTP shell with a [`SubmissionPolicy`] for that
//! listener. Everything is checked, loaded and bound before any listener
//! starts serving, so a bad entry leaves nothing half-started.

use super::allow_list::{AllowList, CidrError};
use super::policy::{ListenerAccess, SubmissionPolicy};
use crate::config::{Config, ListenerConfig, TlsMode};
use crate::smtp::server::{ServeError, ServerOptions, ShutdownSignal, serve};
use crate::tls::TlsError;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error("listener {addr}: allow_ips: {source}")]
    AllowIps { addr: String, source: CidrError },
    #[error(
        "listener {addr}: tls = \"none\" needs allow_ips; a plaintext listener open to every address would let passwords cross the network unencrypted"
    )]
    OpenPlaintext { addr: String },
    #[error("listener {addr}: tls = {mode:?} needs cert and key (PEM files)")]
    MissingCertificate { addr: String, mode: TlsMode },
    #[error("listener {addr}: cannot load its TLS certificate: {source}")]
    Tls { addr: String, source: TlsError },
    #[error(
        "cannot listen on {addr}: {source}; is another server using the port? Choose another addr"
    )]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("the listener on {addr} failed: {reason}")]
    Serve { addr: SocketAddr, reason: String },
}

/// A listener ready to serve: bound, with its TLS and access rules.
struct Prepared {
    socket: TcpListener,
    addr: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
    mode: TlsMode,
    access: ListenerAccess,
}

/// Entry point; see [`Listeners::start`].
pub struct Listeners;

impl Listeners {
    /// Binds every `[[listener]]` of `config` and serves each until
    /// `shutdown` is triggered.
    pub async fn start(
        config: &Config,
        policy: &SubmissionPolicy,
        shutdown: ShutdownSignal,
    ) -> Result<RunningListeners, ListenerError> {
        let mut prepared = Vec::with_capacity(config.listeners.len());
        for listener in &config.listeners {
            prepared.push(prepare(listener).await?);
        }
        let options = policy.options();
        let mut running = RunningListeners {
            addrs: Vec::new(),
            tasks: Vec::new(),
        };
        for listener in prepared {
            let server_options = ServerOptions {
                tls_mode: listener.mode,
                max_sessions: options.max_sessions,
                max_sessions_per_address: options.max_sessions_per_address,
                hostname: options.hostname.clone(),
                limits: options.limits.clone(),
                shutdown: options.shutdown.clone(),
            };
            let policy = Arc::new(policy.for_listener(listener.access));
            tracing::info!(addr = %listener.addr, tls = ?listener.mode, "submission listener started");
            running.addrs.push(listener.addr);
            running.tasks.push((
                listener.addr,
                tokio::spawn(serve(
                    listener.socket,
                    listener.tls,
                    policy,
                    server_options,
                    shutdown.clone(),
                )),
            ));
        }
        Ok(running)
    }
}

async fn prepare(listener: &ListenerConfig) -> Result<Prepared, ListenerError> {
    let addr = listener.addr.clone();
    let allow =
        AllowList::parse(&listener.allow_ips).map_err(|source| ListenerError::AllowIps {
            addr: addr.clone(),
            source,
        })?;
    let (tls, access) = match listener.tls {
        TlsMode::None => {
            let access = ListenerAccess::plaintext(allow)
                .ok_or_else(|| ListenerError::OpenPlaintext { addr: addr.clone() })?;
            (None, access)
        }
        mode => {
            let (Some(cert), Some(key)) = (&listener.cert, &listener.key) else {
                return Err(ListenerError::MissingCertificate { addr, mode });
            };
            let tls = crate::tls::server_config_from_files(cert, key).map_err(|source| {
                ListenerError::Tls {
                    addr: addr.clone(),
                    source,
                }
            })?;
            (Some(tls), ListenerAccess::tls(allow))
        }
    };
    let socket = TcpListener::bind(&addr)
        .await
        .map_err(|source| ListenerError::Bind {
            addr: addr.clone(),
            source,
        })?;
    let local = socket.local_addr().map_err(|source| ListenerError::Bind {
        addr: addr.clone(),
        source,
    })?;
    Ok(Prepared {
        socket,
        addr: local,
        tls,
        mode: listener.tls,
        access,
    })
}

/// The listeners, serving. Trigger the shutdown given to
/// [`Listeners::start`], then [`RunningListeners::wait`].
pub struct RunningListeners {
    addrs: Vec<SocketAddr>,
    tasks: Vec<(SocketAddr, JoinHandle<Result<(), ServeError>>)>,
}

impl RunningListeners {
    /// The bound addresses, in config order (useful with port 0).
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Waits until every listener has stopped and its sessions ended.
    pub async fn wait(self) -> Result<(), ListenerError> {
        let mut first_error = None;
        for (addr, task) in self.tasks {
            let outcome = match task.await {
                Ok(Ok(())) => continue,
                Ok(Err(error)) => error.to_string(),
                Err(error) => error.to_string(),
            };
            first_error.get_or_insert(ListenerError::Serve {
                addr,
                reason: outcome,
            });
        }
        first_error.map_or(Ok(()), Err)
    }
}
