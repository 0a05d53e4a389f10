//! The `pier` command line: parse it, load the config, and hand over to
//! `pier::daemon::run` (the daemon) or to the local API's client (the
//! tables). The library has typed errors.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tracing::error;

use pier::api::{client, table};
use pier::config::Config;

/// EX_USAGE from sysexits.h: bad configuration, nothing was started.
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "pier",
    about = "Load-balancer gateway for bare-metal Kubernetes",
    version
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway daemon.
    Run {
        #[arg(long, short, default_value = "/etc/pier/pier.toml")]
        config: PathBuf,
        /// Log format (overrides `gateway.log_format`).
        #[arg(long, value_enum)]
        log_format: Option<LogFormat>,
    },
    /// Validate a configuration file: exit 0 when valid, 64 listing every error.
    Check {
        #[arg(long, short, default_value = "/etc/pier/pier.toml")]
        config: PathBuf,
    },
    /// Print the version.
    Version,
    /// Summary of the running daemon.
    Status(ClientArgs),
    /// Services with their IPs, or why they are pending.
    Services(ClientArgs),
    /// Pools with their usage.
    Pools(ClientArgs),
    /// BGP peers and their sessions.
    Peers(ClientArgs),
    /// Kernel routes and forwarding counters pier installed.
    Routes(ClientArgs),
    /// Nodes, whether they are next hops, and failing probes.
    Nodes(ClientArgs),
}

#[derive(clap::Args)]
struct ClientArgs {
    /// Print the raw JSON.
    #[arg(long)]
    json: bool,
    /// The daemon's API socket.
    #[arg(long, default_value = "/run/pier/pier.sock")]
    socket: PathBuf,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!("pier {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Status(a) => query(a, "/v1/status", table::status),
        Command::Services(a) => query(a, "/v1/services", table::services),
        Command::Pools(a) => query(a, "/v1/pools", table::pools),
        Command::Peers(a) => query(a, "/v1/peers", table::peers),
        Command::Routes(a) => query(a, "/v1/routes", table::routes),
        Command::Nodes(a) => query(a, "/v1/nodes", table::nodes),
        Command::Check { config } => match Config::load(&config) {
            Ok(c) => {
                println!(
                    "{}: valid ({} pools, {} peers, {} static services)",
                    config.display(),
                    c.pools.len(),
                    c.bgp.as_ref().map_or(0, |b| b.peers.len()),
                    c.static_services.len()
                );
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                eprintln!("{}: {} error(s)", config.display(), errors.0.len());
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Run { config, log_format } => {
            let cfg = match Config::load(&config) {
                Ok(c) => c,
                Err(errors) => {
                    eprintln!("{errors}");
                    eprintln!(
                        "{}: {} error(s); not starting",
                        config.display(),
                        errors.0.len()
                    );
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            init_tracing(log_format.or(match cfg.gateway.log_format {
                pier::config::LogFormat::Json => Some(LogFormat::Json),
                pier::config::LogFormat::Text => None,
            }));
            // One TLS crypto provider for the whole process, chosen here:
            // kube's and plain rustls's defaults differ.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    error!(error = %e, "cannot start the runtime");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(pier::daemon::run(config, cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    error!("{e:#}");
                    eprintln!("pier: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn query(args: ClientArgs, path: &str, render: fn(&serde_json::Value) -> String) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pier: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(client::get(&args.socket, path)) {
        Ok(v) => {
            if args.json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                print!("{}", render(&v));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pier: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: Option<LogFormat>) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PIER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only on a terminal: a file, a pipe or journald gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        Some(LogFormat::Json) => builder.json().init(),
        _ => builder.init(),
    }
}
