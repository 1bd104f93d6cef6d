//! `oxirelay tls pin HOST:PORT`: connect to an SMTP server, complete the
//! TLS handshake without trusting its certificate (only to read it) and
//! print the key's pin for `tls_pin_sha256`, with what the certificate says
//! about itself. The output says plainly that the pin must be checked out of
//! band: a connection that trusted nothing proves nothing about who answered.

use crate::config::parse_host_port;
use crate::smtp::client::Timeouts;
use crate::smtp::client::probe::{ProbeTls, read_server_certificates};
use crate::tls::{CA_AS_SERVER_CERTIFICATE, CertificateSummary};
use anyhow::Context as _;
use serde::Serialize;
use std::process::ExitCode;
use std::time::Duration;

#[derive(clap::Subcommand)]
pub enum TlsCommand {
    /// Print the pin (tls_pin_sha256) of the key an SMTP server presents, and its certificate.
    #[command(after_help = PIN_HELP)]
    Pin(PinArgs),
}

/// On the server, from its certificate file: the same pin, computed where
/// nobody can stand in between.
macro_rules! openssl_pin_command {
    () => {
        "openssl x509 -in cert.pem -pubkey -noout | openssl pkey -pubin -outform der \\\n    | openssl dgst -sha256 -binary | openssl enc -base64"
    };
}

const PIN_HELP: &str = concat!(
    "\
The handshake trusts no certificate: it only reads the one presented (the server
must still prove it holds the key). Anyone between you and the server could have
answered, so check the pin out of band before putting it in the config.

Examples:
  oxirelay tls pin mail.internal.example:587          # STARTTLS (the default except on 465)
  oxirelay tls pin 10.1.2.3:465                       # implicit TLS (the default on 465)
  oxirelay tls pin mail.internal.example:2525 --implicit
  oxirelay tls pin mail.internal.example:587 --json | jq -r .pin

On the server, the same pin comes from its certificate file:
  ",
    openssl_pin_command!()
);

#[derive(clap::Args)]
pub struct PinArgs {
    /// The server, as host:port ([v6]:port for an IPv6 address).
    #[arg(value_name = "HOST:PORT")]
    pub address: String,
    /// Plaintext first, then STARTTLS (the default for every port but 465).
    #[arg(long, conflicts_with = "implicit")]
    pub starttls: bool,
    /// TLS from the first byte (the default for port 465).
    #[arg(long)]
    pub implicit: bool,
    /// How long to wait for the connection and for each reply.
    #[arg(long, default_value = "20s", value_parser = super::parse_duration)]
    pub timeout: Duration,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// What `--json` prints.
#[derive(Serialize)]
struct PinReport<'a> {
    address: &'a str,
    tls: &'static str,
    /// Always false: this connection trusted nothing.
    verified: bool,
    #[serde(flatten)]
    certificate: &'a CertificateSummary,
    not_before_utc: String,
    not_after_utc: String,
    expired: bool,
    /// Certificates the server sent, its own first.
    chain_length: usize,
    check: &'static str,
}

const CHECK_OUT_OF_BAND: &str = "This connection trusted no certificate, so anyone between you and the server could have presented this key. Check the pin out of band (ask the server's administrator to compute it from the certificate file on the server) before putting it in tls_pin_sha256.";

pub async fn run(command: TlsCommand) -> anyhow::Result<ExitCode> {
    match command {
        TlsCommand::Pin(args) => pin(args).await,
    }
}

async fn pin(args: PinArgs) -> anyhow::Result<ExitCode> {
    let (host, port) = parse_host_port(&args.address).map_err(anyhow::Error::msg)?;
    let tls = if args.implicit || (port == 465 && !args.starttls) {
        ProbeTls::Implicit
    } else {
        ProbeTls::Starttls
    };
    let timeouts = Timeouts {
        connect: args.timeout,
        command: args.timeout,
        data: args.timeout,
    };
    let chain = read_server_certificates(
        &host,
        port,
        tls,
        crate::delivery::upstream::ehlo_name(),
        timeouts,
    )
    .await
    .with_context(|| format!("cannot read the certificate of {}", args.address))?;
    let end_entity = chain.first().with_context(|| {
        format!(
            "{} completed the handshake without presenting a certificate",
            args.address
        )
    })?;
    let certificate = CertificateSummary::parse(end_entity)
        .with_context(|| format!("the certificate {} presented", args.address))?;
    let tls_name = match tls {
        ProbeTls::Starttls => "starttls",
        ProbeTls::Implicit => "implicit",
    };
    let report = PinReport {
        address: &args.address,
        tls: tls_name,
        verified: false,
        certificate: &certificate,
        not_before_utc: crate::clock::format_unix(certificate.not_before),
        not_after_utc: crate::clock::format_unix(certificate.not_after),
        expired: certificate.is_expired_at(crate::clock::now_unix()),
        chain_length: chain.len(),
        check: CHECK_OUT_OF_BAND,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_text(&report);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_text(report: &PinReport<'_>) {
    let certificate = report.certificate;
    let yes_no = |value: bool| if value { "yes" } else { "no" };
    println!(
        "Certificate presented by {} ({}), NOT VERIFIED\n",
        report.address, report.tls
    );
    println!("  pin           {}", certificate.pin);
    println!("  subject       {}", or_none(&certificate.subject));
    println!("  issuer        {}", or_none(&certificate.issuer));
    println!(
        "  valid         {} to {}{}",
        report.not_before_utc,
        report.not_after_utc,
        if report.expired { " (EXPIRED)" } else { "" }
    );
    println!("  names         {}", or_none(&certificate.names.join(", ")));
    println!("  self-signed   {}", yes_no(certificate.self_signed));
    println!(
        "  CA            {}",
        if certificate.is_ca {
            format!("yes: {CA_AS_SERVER_CERTIFICATE}; pin it instead")
        } else {
            "no".to_string()
        }
    );
    println!("  chain         {} certificate(s)\n", report.chain_length);
    println!("{CHECK_OUT_OF_BAND} On the server:\n");
    println!(concat!("  ", openssl_pin_command!(), "\n"));
    println!("Then, in the account ([[account]]), with no ca_file:\n");
    println!("  tls_pin_sha256 = \"{}\"", certificate.pin);
}

fn or_none(text: &str) -> &str {
    if text.is_empty() { "(none)" } else { text }
}
