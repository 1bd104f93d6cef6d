//! Starts the configured `[[listener]]`s: STARTTLS (587-style), implicit
//! TLS (465-style) and plaintext restricted to an IP allow-list, each
//! served by the shared SMTP shell with a [`SubmissionPolicy`] for that
//! listener. Everything is checked, loaded and bound before any listener
//! starts serving, so a bad entry leaves nothing half-started.

use super::allow_list::{AllowList, CidrError};
use super::networks::Network;
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
    #[error("network {network:?}: addrs: {source}")]
    NetworkAddrs { network: String, source: CidrError },
    #[error(
        "listener {addr}: network {network:?} has addresses its allow_ips does not admit ({blocks}); add them to allow_ips, or narrow the network"
    )]
    NetworkOutside {
        addr: String,
        network: String,
        blocks: String,
    },
    #[error(
        "listener {addr}: networks (submission without AUTH) needs allow_ips, so that only those networks can connect"
    )]
    OpenNetworks { addr: String },
    #[error(
        "listener {addr}: allow_ips contains {block}, which admits every address; a {what} listener must be restricted to the networks that need it (e.g. \"192.168.10.0/24\")"
    )]
    AdmitsEveryone {
        addr: String,
        block: String,
        what: &'static str,
    },
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
        let networks = config
            .networks
            .iter()
            .map(|network| {
                Network::from_config(network)
                    .map(Arc::new)
                    .map_err(|source| ListenerError::NetworkAddrs {
                        network: network.name.clone(),
                        source,
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut prepared = Vec::with_capacity(config.listeners.len());
        for listener in &config.listeners {
            prepared.push(prepare(listener, &networks).await?);
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

async fn prepare(
    listener: &ListenerConfig,
    networks: &[Arc<Network>],
) -> Result<Prepared, ListenerError> {
    let addr = listener.addr.clone();
    let allow =
        AllowList::parse(&listener.allow_ips).map_err(|source| ListenerError::AllowIps {
            addr: addr.clone(),
            source,
        })?;
    // The allow-list is what makes a plaintext or AUTH-less listener safe
    // (DESIGN.md contracts 5 and 8); one that admits everyone is none.
    let what = match (listener.tls, listener.networks.is_empty()) {
        (TlsMode::None, _) => Some("plaintext"),
        (_, false) => Some("submission-without-AUTH"),
        _ => None,
    };
    if let (Some(what), Some(block)) = (what, allow.admits_everyone()) {
        return Err(ListenerError::AdmitsEveryone {
            addr,
            block: block.to_string(),
            what,
        });
    }
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
    let access = access
        .with_networks(listener_networks(listener, networks)?)
        .ok_or_else(|| ListenerError::OpenNetworks { addr: addr.clone() })?;
    let socket = crate::listen::bind(&addr)
        .await
        .map_err(|source| ListenerError::Bind {
            addr: addr.clone(),
            source,
        })?;
    let local = socket.local_addr().map_err(|source| ListenerError::Bind {
        addr: addr.clone(),
        source,
    })?;
    let mut access = access;
    access.postmaster = listener.postmaster.as_ref().map(|m| m.as_str().to_string());
    Ok(Prepared {
        socket,
        addr: local,
        tls,
        mode: listener.tls,
        access,
    })
}

/// The networks `listener` names, each wholly inside its allow-list: a
/// network partly outside would look mapped and yet be refused at connect.
fn listener_networks(
    listener: &ListenerConfig,
    networks: &[Arc<Network>],
) -> Result<Vec<Arc<Network>>, ListenerError> {
    let allow =
        AllowList::parse(&listener.allow_ips).map_err(|source| ListenerError::AllowIps {
            addr: listener.addr.clone(),
            source,
        })?;
    listener
        .networks
        .iter()
        .filter_map(|name| networks.iter().find(|n| &n.name == name))
        .map(|network| {
            let outside = allow.uncovered(&network.addrs);
            if outside.is_empty() {
                Ok(network.clone())
            } else {
                Err(ListenerError::NetworkOutside {
                    addr: listener.addr.clone(),
                    network: network.name.clone(),
                    blocks: outside
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                })
            }
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NetworkConfig;

    fn listener(allow_ips: &[&str]) -> ListenerConfig {
        ListenerConfig {
            addr: "0.0.0.0:25".into(),
            tls: TlsMode::None,
            cert: None,
            key: None,
            allow_ips: allow_ips.iter().map(|s| s.to_string()).collect(),
            networks: vec!["printers".into()],
            postmaster: None,
        }
    }

    fn printers(addrs: &[&str]) -> Vec<Arc<Network>> {
        let config = NetworkConfig {
            name: "printers".into(),
            addrs: addrs.iter().map(|s| s.to_string()).collect(),
            account: "office".into(),
            allowed_from: vec!["scanner@contoso.com".into()],
            check_header_from: true,
        };
        vec![Arc::new(Network::from_config(&config).expect("network"))]
    }

    #[tokio::test]
    async fn an_allow_list_that_admits_everyone_is_refused_where_it_matters() {
        for (tls, networks, allow) in [
            (TlsMode::None, vec![], "0.0.0.0/0"),
            (TlsMode::None, vec![], "::/0"),
            (TlsMode::Starttls, vec!["printers".to_string()], "0.0.0.0/0"),
        ] {
            let config = ListenerConfig {
                tls,
                networks,
                allow_ips: vec!["10.0.0.0/8".into(), allow.into()],
                ..listener(&[])
            };
            let error = prepare(&config, &printers(&["10.1.0.0/16"]))
                .await
                .err()
                .expect("refused");
            assert!(
                matches!(error, ListenerError::AdmitsEveryone { .. }),
                "{error}"
            );
            assert!(error.to_string().contains(allow), "{error}");
        }
    }

    #[test]
    fn a_network_must_lie_inside_the_listeners_allow_list() {
        let inside = listener_networks(
            &listener(&["192.168.10.0/24"]),
            &printers(&["192.168.10.0/28"]),
        )
        .expect("inside");
        assert_eq!(inside.len(), 1);
        assert_eq!(inside[0].submitter.name, "network:printers");
        let error = listener_networks(
            &listener(&["192.168.10.0/24"]),
            &printers(&["192.168.10.0/28", "10.1.0.0/16"]),
        )
        .expect_err("partly outside")
        .to_string();
        assert_eq!(
            error,
            "listener 0.0.0.0:25: network \"printers\" has addresses its allow_ips does not admit (10.1.0.0/16); add them to allow_ips, or narrow the network"
        );
    }
}
