//! Dovecot's submission service (`dovecot-submissiond`, Dovecot 2.3 on
//! Debian 12) as an OAuth2-enforcing upstream that nobody here wrote.
//!
//! Each test runs its own instance: `dovecot -F -c CONFIG` as a child
//! process in its own process group (killed as a group when the test ends,
//! however it ends), with the config, `base_dir`, `state_dir`, the log, the
//! TLS certificate and the token-validation settings in a temp dir, and
//! listeners on free ports of 127.0.0.1: `submission` (STARTTLS) and
//! `submissions` (implicit TLS). Its `oauth2` passdb validates tokens one of
//! two ways (Dovecot 2.3's `introspection_mode`):
//!
//! - `local`: the JWT signature against public keys in
//!   `local_validation_key_dict`. With `fs:posix:prefix=DIR/` the key for
//!   a token is the file `DIR/<azp>/<alg>/<kid>` holding the key as PEM
//!   (`default` when the token has no `azp`; `/` and `%` in azp and kid
//!   escaped as `%2f`/`%25`); see `oauth2_lookup_pubkey` in Dovecot's
//!   `src/lib-oauth2/oauth2-jwt.c`. The PEM is made here from the JWKS.
//! - `post`: RFC 7662 introspection, `token=...&client_id=...&client_secret=...`
//!   in the body (`client_secret_post`); a revoked token comes back
//!   `active: false` and Dovecot refuses it.
//!
//! Accepted mail is relayed (`submission_relay_host`) to a [`super::sink::Sink`].
//!
//! Facts about Dovecot 2.3.19 these tests rely on or met:
//! - submission-login reads an AUTH command line of at most 1,030 octets
//!   before CRLF (command parameters are limited to `LOGIN_MAX_INBUF_SIZE`,
//!   1,026 octets); longer gets `500 5.5.2 Line too long`. A SASL response
//!   on its own line (after `334 `) may be 8,192 octets
//!   (`LOGIN_MAX_AUTH_BUF_SIZE`). So a 2,000-character token fits only when
//!   the client sends the initial response after the `334 ` (RFC 4954
//!   section 4), never on the AUTH line.
//! - Local validation requires the JWT header `typ` to be exactly `JWT`
//!   (`oauth2_jwt_header_process`: "Cannot find 'typ' field"), so RFC 9068
//!   access tokens (`typ: at+jwt`) are refused; Dovecot 2.4 dropped the
//!   check.
//! - Failed logins are delayed by the anvil "auth penalty" (2 s, doubling);
//!   the test instances turn it off (`anvil-auth-penalty` listener with
//!   mode 0) so recovery tests take milliseconds. `auth_failure_delay` is
//!   0 for the same reason.

use super::WAIT;
use super::tools::{free_port, redact, wait_for_port, write_private};
use oxirelay::sandbox::certs::SandboxCa;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// How the oauth2 passdb checks a token.
pub enum Validation {
    /// The signature, against these keys (and `iss` against `issuer`).
    Local { keys: Vec<DictKey>, issuer: String },
    /// RFC 7662 introspection at `url`, as `client_id`.
    Introspection {
        url: String,
        client_id: String,
        client_secret: String,
    },
}

pub struct DovecotOptions {
    pub validation: Validation,
    /// SASL mechanisms offered, in Dovecot's names (`xoauth2`, `oauthbearer`).
    pub mechanisms: Vec<&'static str>,
    /// The scope a token must carry.
    pub scope: String,
    /// Where accepted mail is relayed (a plain SMTP server).
    pub relay_to: SocketAddr,
}

/// A running Dovecot submission server.
pub struct Dovecot {
    child: Child,
    /// Port 587's role: STARTTLS required before AUTH.
    pub starttls: SocketAddr,
    /// Port 465's role: TLS from the first byte.
    pub implicit: SocketAddr,
    /// The CA that signed the server certificate (for clients' `ca_file`).
    pub ca_file: PathBuf,
    log: PathBuf,
    stderr: PathBuf,
    dir: tempfile::TempDir,
}

/// One public key for `local_validation_key_dict`.
pub struct DictKey {
    pub azp: String,
    pub alg: String,
    pub kid: String,
    pub pem: String,
}

impl Dovecot {
    /// Whether Dovecot with the submission service is installed; says
    /// SKIPPED when not.
    pub fn installed() -> bool {
        let version = Command::new("dovecot")
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
        let Some(version) = version.filter(|_| Path::new("/usr/lib/dovecot/submission").exists())
        else {
            eprintln!(
                "SKIPPED: dovecot (dovecot-core, dovecot-submissiond) is not installed; run scripts/install-test-tools"
            );
            return false;
        };
        // The config below is Dovecot 2.3's; 2.4 (Debian 13) changed the
        // syntax of most of it. Fail loudly rather than skip quietly.
        assert!(
            version.starts_with("2.3."),
            "Dovecot {version} is installed; these tests write a Dovecot 2.3 config: port tests/interop_common/dovecot.rs to it"
        );
        true
    }

    pub async fn start(options: DovecotOptions) -> Dovecot {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_path_buf();
        // Dovecot's unprivileged processes (submission-login, the mail
        // user's submission process) open sockets in base_dir inside it.
        set_mode(&root, 0o755);
        let users = Users::for_this_process(&root);

        let ca = SandboxCa::generate().expect("CA");
        let ca_file = root.join("ca.pem");
        ca.write_ca(&ca_file).expect("write CA");
        let (cert, key) = (root.join("cert.pem"), root.join("key.pem"));
        ca.write_leaf(&cert, &key)
            .expect("write the server certificate");

        let oauth2_conf = root.join("dovecot-oauth2.conf.ext");
        let mut oauth2 = format!(
            "username_attribute = sub\nscope = {scope}\n",
            scope = options.scope
        );
        match &options.validation {
            Validation::Local { keys, issuer } => {
                let key_dir = root.join("keys");
                for key in keys {
                    let path = key_dir
                        .join(escape_identifier(&key.azp))
                        .join(&key.alg)
                        .join(escape_identifier(&key.kid));
                    std::fs::create_dir_all(path.parent().expect("parent")).expect("key dir");
                    std::fs::write(&path, &key.pem).expect("write key");
                }
                oauth2.push_str(&format!(
                    "introspection_mode = local\nlocal_validation_key_dict = fs:posix:prefix={}/\nissuers = {issuer}\n",
                    key_dir.display()
                ));
            }
            Validation::Introspection {
                url,
                client_id,
                client_secret,
            } => {
                oauth2.push_str(&format!(
                    "introspection_mode = post\nintrospection_url = {url}\nclient_id = {client_id}\nclient_secret = {client_secret}\n"
                ));
            }
        }
        write_private(&oauth2_conf, oauth2.as_bytes());

        let starttls = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let implicit = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = root.join("dovecot.log");
        let mechanisms = options.mechanisms.join(" ");
        let config = format!(
            r#"# Written by the oxirelay interop tests.
instance_name = oxirelay-test-{port}
base_dir = {root}/run
state_dir = {root}/state
log_path = {log}
protocols = submission
listen = 127.0.0.1
ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
hostname = dovecot.test
auth_mechanisms = {mechanisms}
auth_verbose = yes
auth_failure_delay = 0
default_login_user = {login_user}
default_internal_user = {internal_user}
default_internal_group = {internal_group}
first_valid_uid = 1
mail_location = maildir:{root}/mail/%n
submission_relay_host = {relay_host}
submission_relay_port = {relay_port}
passdb {{
  driver = oauth2
  mechanisms = {mechanisms}
  args = {oauth2_conf}
}}
userdb {{
  driver = static
  args = uid={mail_uid} gid={mail_gid}
}}
# No chroot: a test instance may run unprivileged, where chroot() fails.
service submission-login {{
  chroot =
  inet_listener submission {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener submissions {{
    address = 127.0.0.1
    port = {implicit_port}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
"#,
            root = root.display(),
            log = log.display(),
            cert = cert.display(),
            key = key.display(),
            port = starttls.port(),
            implicit_port = implicit.port(),
            login_user = users.login,
            internal_user = users.internal,
            internal_group = users.internal_group,
            mail_uid = users.mail_uid,
            mail_gid = users.mail_gid,
            relay_host = options.relay_to.ip(),
            relay_port = options.relay_to.port(),
            oauth2_conf = oauth2_conf.display(),
        );
        let config_path = root.join("dovecot.conf");
        std::fs::write(&config_path, config).expect("write dovecot.conf");

        let stderr = root.join("dovecot.stderr");
        let mut command = Command::new("dovecot");
        command
            .arg("-F")
            .arg("-c")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::from(
                std::fs::File::create(root.join("dovecot.stdout")).expect("stdout file"),
            ))
            .stderr(Stdio::from(
                std::fs::File::create(&stderr).expect("stderr file"),
            ));
        #[cfg(unix)]
        {
            // Its own process group, so that the master and every process it
            // forked go together when the test ends.
            use std::os::unix::process::CommandExt;
            command.process_group(0);
        }
        let child = command.spawn().expect("dovecot starts");
        let mut dovecot = Dovecot {
            child,
            starttls,
            implicit,
            ca_file,
            log,
            stderr,
            dir,
        };
        for addr in [starttls, implicit] {
            let child = &mut dovecot.child;
            if !wait_for_port(addr, || matches!(child.try_wait(), Ok(None))).await {
                panic!(
                    "dovecot did not listen on {addr} within {WAIT:?}:\n{}",
                    dovecot.diagnostics()
                );
            }
        }
        dovecot
    }

    /// Dovecot's log (tokens redacted).
    pub fn log(&self) -> String {
        redact(&std::fs::read_to_string(&self.log).unwrap_or_default())
    }

    /// What to print when something went wrong: stderr and the log.
    pub fn diagnostics(&self) -> String {
        format!(
            "--- dovecot stderr\n{}\n--- dovecot log\n{}",
            redact(&std::fs::read_to_string(&self.stderr).unwrap_or_default()),
            self.log()
        )
    }

    /// Waits until the log has a line containing `needle` (the log is
    /// Dovecot's only report of why it refused a token).
    pub async fn wait_for_log(&self, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let log = self.log();
            if let Some(line) = log.lines().find(|line| line.contains(needle)) {
                return line.to_string();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "dovecot never logged {needle:?}:\n{}",
                self.diagnostics()
            );
            // Dovecot writes its log itself; a file has nothing to wait on
            // portably, so look again shortly.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// How many log lines contain `needle`.
    pub fn count_in_log(&self, needle: &str) -> usize {
        self.log().lines().filter(|l| l.contains(needle)).count()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        // The whole group: the master, auth, submission-login, submission.
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Which system users Dovecot's processes run as. As root (CI): login
/// processes as `dovenull` (Dovecot refuses to run them as root), internal
/// services as root (they read the key dict in the temp dir), mail
/// processes as `dovecot` (Dovecot refuses uid 0 for them). Otherwise
/// everything as the current user, which Dovecot allows for a private
/// instance.
struct Users {
    login: String,
    internal: String,
    internal_group: String,
    mail_uid: u32,
    mail_gid: u32,
}

impl Users {
    fn for_this_process(dir: &Path) -> Users {
        use std::os::unix::fs::MetadataExt;
        let probe = dir.join(".owner");
        std::fs::write(&probe, b"").expect("probe file");
        let metadata = std::fs::metadata(&probe).expect("probe metadata");
        let (uid, gid) = (metadata.uid(), metadata.gid());
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
        // name:password:uid:gid:...
        let user = |name: &str| {
            passwd.lines().find_map(|line| {
                let fields: Vec<&str> = line.split(':').collect();
                (fields.len() > 3 && fields[0] == name).then(|| {
                    (
                        fields[2].parse::<u32>().unwrap_or(0),
                        fields[3].parse::<u32>().unwrap_or(0),
                    )
                })
            })
        };
        let name_of = |table: &str, id: u32| {
            table
                .lines()
                .find_map(|line| {
                    let fields: Vec<&str> = line.split(':').collect();
                    (fields.len() > 2 && fields[2] == id.to_string()).then(|| fields[0].to_string())
                })
                .unwrap_or_else(|| panic!("no name for id {id} in /etc/passwd or /etc/group"))
        };
        if uid == 0 {
            let login = ["dovenull", "nobody"]
                .into_iter()
                .find(|name| user(name).is_some())
                .expect("a dovenull or nobody user");
            let (mail_uid, mail_gid) = user("dovecot")
                .or_else(|| user("nobody"))
                .expect("a dovecot or nobody user");
            Users {
                login: login.into(),
                internal: "root".into(),
                internal_group: name_of(&group, 0),
                mail_uid,
                mail_gid,
            }
        } else {
            Users {
                login: name_of(&passwd, uid),
                internal: name_of(&passwd, uid),
                internal_group: name_of(&group, gid),
                mail_uid: uid,
                mail_gid: gid,
            }
        }
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Dovecot's `escape_identifier`: `/` and `%` as `%2f` and `%25`.
fn escape_identifier(identifier: &str) -> String {
    identifier.replace('%', "%25").replace('/', "%2f")
}

/// The keys of a JWKS document as Dovecot's key dict wants them: one PEM
/// `PUBLIC KEY` (SubjectPublicKeyInfo) per JWK, under `default` (for tokens
/// without `azp`, as the sandbox's are today) and under each of `azps`
/// (Entra-shaped tokens name the client in `azp`).
pub fn keys_from_jwks(jwks: &serde_json::Value, azps: &[&str]) -> Vec<DictKey> {
    let keys = jwks["keys"].as_array().expect("a JWKS has keys");
    let azps: Vec<&str> = std::iter::once("default")
        .chain(azps.iter().copied())
        .collect();
    keys.iter()
        .flat_map(|jwk| azps.iter().map(move |azp| (jwk, *azp)))
        .map(|(jwk, azp)| {
            let field = |name: &str| {
                jwk[name]
                    .as_str()
                    .unwrap_or_else(|| panic!("JWK without {name}: {jwk}"))
            };
            let kid = field("kid");
            // fs dict keys may not contain "/." sequences; base64url kids
            // (RFC 7638 thumbprints) never have dots.
            assert!(!kid.contains('.'), "kid {kid} would need dict escaping");
            DictKey {
                azp: azp.into(),
                alg: field("alg").to_string(),
                kid: kid.to_string(),
                pem: jwk_to_pem(jwk),
            }
        })
        .collect()
}

/// A JWK (EC P-256 or RSA) as a PEM SubjectPublicKeyInfo.
pub fn jwk_to_pem(jwk: &serde_json::Value) -> String {
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    let part = |name: &str| {
        URL_SAFE_NO_PAD
            .decode(jwk[name].as_str().unwrap_or_default())
            .unwrap_or_else(|e| panic!("JWK member {name} is not base64url: {e}"))
    };
    let spki = match jwk["kty"].as_str() {
        Some("EC") => {
            assert_eq!(jwk["crv"], "P-256", "only P-256 EC keys here");
            let mut point = vec![0x04];
            point.extend(part("x"));
            point.extend(part("y"));
            // AlgorithmIdentifier: id-ecPublicKey, prime256v1.
            let algorithm = der(
                0x30,
                &[
                    der(0x06, &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01]),
                    der(0x06, &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]),
                ]
                .concat(),
            );
            der(0x30, &[algorithm, bit_string(&point)].concat())
        }
        Some("RSA") => {
            let public_key = der(
                0x30,
                &[der_unsigned(&part("n")), der_unsigned(&part("e"))].concat(),
            );
            // AlgorithmIdentifier: rsaEncryption, NULL parameters.
            let algorithm = der(
                0x30,
                &[
                    der(
                        0x06,
                        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01],
                    ),
                    der(0x05, &[]),
                ]
                .concat(),
            );
            der(0x30, &[algorithm, bit_string(&public_key)].concat())
        }
        other => panic!("unsupported JWK kty {other:?}"),
    };
    let body = STANDARD.encode(spki);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|chunk| std::str::from_utf8(chunk).expect("base64 is ASCII"))
        .collect();
    format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        lines.join("\n")
    )
}

/// One DER element (definite length).
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

fn bit_string(content: &[u8]) -> Vec<u8> {
    der(0x03, &[&[0u8][..], content].concat())
}

/// A non-negative INTEGER from big-endian magnitude bytes.
fn der_unsigned(magnitude: &[u8]) -> Vec<u8> {
    let trimmed: Vec<u8> = magnitude.iter().copied().skip_while(|b| *b == 0).collect();
    let mut content = Vec::with_capacity(trimmed.len() + 1);
    if trimmed.first().is_none_or(|b| b & 0x80 != 0) {
        content.push(0);
    }
    content.extend(trimmed);
    der(0x02, &content)
}
