//! The `potok` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use potok::protocol::resp::output::parse_memory;
use potok::server::{self, ServerConfig};
use potok::storage::io::{OpenMode, OsVfs, Vfs};
use potok::storage::verify::{find_log_dirs, inspect_segment, verify_log_dir, InspectOptions};
use potok::storage::Durability;

#[derive(Parser)]
#[command(
    name = "potok",
    version,
    about = "A durable, log-structured message broker"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server. Settings come from flags, else environment variables, else the config
    /// file, else the defaults.
    Serve(Box<ServeArgs>),
    /// Check every batch's CRC, offset continuity and the indexes of every log under DIR.
    /// Exits 0 only when everything is clean.
    Verify {
        /// A data directory (searched recursively for logs) or one log directory.
        dir: PathBuf,
    },
    /// Print a segment's batches and records in readable form.
    Inspect {
        /// A segment file (`<20-digit base offset>.log`).
        segment: PathBuf,
        /// Print batch headers only.
        #[arg(long)]
        batches_only: bool,
        /// Body bytes shown per record.
        #[arg(long, default_value_t = 64)]
        body_bytes: usize,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// A TOML file with any of: data_dir, resp_addr, amqp_addr, fsync, password,
    /// amqp_user, amqp_password, maxclients, amqp_connection_max, client_output_buffer_limit,
    /// maxmemory_clients, open_files_max.
    #[arg(long, env = "POTOK_CONFIG")]
    config: Option<PathBuf>,
    /// Where data lives [default: ./data].
    #[arg(long, env = "POTOK_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// RESP listen address [default: 127.0.0.1:6379].
    #[arg(long, env = "POTOK_RESP_ADDR")]
    resp_addr: Option<String>,
    /// AMQP 0-9-1 listen address [default: 127.0.0.1:5672].
    #[arg(long, env = "POTOK_AMQP_ADDR")]
    amqp_addr: Option<String>,
    /// The AMQP user [default: guest, which may only connect over loopback, as in RabbitMQ].
    #[arg(long, env = "POTOK_AMQP_USER")]
    amqp_user: Option<String>,
    /// The AMQP user's password [default: guest].
    #[arg(long, env = "POTOK_AMQP_PASSWORD", hide_env_values = true)]
    amqp_password: Option<String>,
    /// Durability of appends: always, never, or an interval like 100ms [default: always].
    #[arg(long, env = "POTOK_FSYNC")]
    fsync: Option<Durability>,
    /// Require clients to AUTH with this password (Redis's requirepass).
    #[arg(long, env = "POTOK_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// RESP clients served at once (Redis's maxclients) [default: 10000].
    #[arg(long, env = "POTOK_MAXCLIENTS")]
    maxclients: Option<usize>,
    /// AMQP connections served at once (RabbitMQ's connection_max); more wait unaccepted
    /// [default: 10000].
    #[arg(long, env = "POTOK_AMQP_CONNECTION_MAX")]
    amqp_connection_max: Option<usize>,
    /// Output buffer limits per client class, in Redis's form, e.g. "pubsub 32mb 8mb 60"
    /// [default: normal 0 0 0 slave 256mb 64mb 60 pubsub 32mb 8mb 60].
    #[arg(long, env = "POTOK_CLIENT_OUTPUT_BUFFER_LIMIT")]
    client_output_buffer_limit: Option<String>,
    /// Bytes held for all clients (both protocols) and not yet written, e.g. 1gb; 0 for no
    /// total [default: 1gb].
    #[arg(long, env = "POTOK_MAXMEMORY_CLIENTS")]
    maxmemory_clients: Option<String>,
    /// Segment files of streams, topics and queues kept open at once; idle ones are closed
    /// and reopened on demand [default: a quarter of the descriptor limit, 16..4096].
    #[arg(long, env = "POTOK_OPEN_FILES_MAX")]
    open_files_max: Option<usize>,
}

/// The config file's keys; unknown keys are an error, so typos do not pass silently.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    resp_addr: Option<String>,
    amqp_addr: Option<String>,
    fsync: Option<String>,
    password: Option<String>,
    amqp_user: Option<String>,
    amqp_password: Option<String>,
    maxclients: Option<usize>,
    amqp_connection_max: Option<usize>,
    client_output_buffer_limit: Option<String>,
    maxmemory_clients: Option<String>,
    open_files_max: Option<usize>,
}

fn server_config(args: ServeArgs) -> Result<ServerConfig, String> {
    let file: FileConfig = match &args.config {
        None => FileConfig::default(),
        Some(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?
        }
    };
    let defaults = ServerConfig::default();
    let file_fsync = file.fsync.map(|f| f.parse::<Durability>()).transpose()?;
    let counts = [
        ("maxclients", args.maxclients.or(file.maxclients)),
        (
            "amqp_connection_max",
            args.amqp_connection_max.or(file.amqp_connection_max),
        ),
        (
            "open_files_max",
            args.open_files_max.or(file.open_files_max),
        ),
    ];
    if let Some((name, _)) = counts.iter().find(|(_, value)| *value == Some(0)) {
        return Err(format!("{name} must be at least 1"));
    }
    let output_limits = match args
        .client_output_buffer_limit
        .or(file.client_output_buffer_limit)
    {
        Some(value) => defaults
            .output_limits
            .with_config(value.as_bytes())
            .map_err(|why| format!("client-output-buffer-limit: {why}"))?,
        None => defaults.output_limits,
    };
    let clients_output_bytes_max = match args.maxmemory_clients.or(file.maxmemory_clients) {
        Some(value) => parse_memory(value.as_bytes())
            .ok_or_else(|| format!("maxmemory-clients: not a memory value: {value}"))?,
        None => defaults.clients_output_bytes_max,
    };
    Ok(ServerConfig {
        data_dir: args.data_dir.or(file.data_dir).unwrap_or(defaults.data_dir),
        resp_addr: args
            .resp_addr
            .or(file.resp_addr)
            .unwrap_or(defaults.resp_addr),
        amqp_addr: args
            .amqp_addr
            .or(file.amqp_addr)
            .unwrap_or(defaults.amqp_addr),
        amqp_user: args
            .amqp_user
            .or(file.amqp_user)
            .unwrap_or(defaults.amqp_user),
        amqp_password: args
            .amqp_password
            .or(file.amqp_password)
            .unwrap_or(defaults.amqp_password),
        durability: args.fsync.or(file_fsync).unwrap_or(defaults.durability),
        password: args.password.or(file.password),
        clients_max: args
            .maxclients
            .or(file.maxclients)
            .unwrap_or(defaults.clients_max),
        amqp_connections_max: args
            .amqp_connection_max
            .or(file.amqp_connection_max)
            .unwrap_or(defaults.amqp_connections_max),
        output_limits,
        clients_output_bytes_max,
        open_files_max: args.open_files_max.or(file.open_files_max),
        ..defaults
    })
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn serve(args: ServeArgs) -> Result<ExitCode, String> {
    let config = server_config(args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime
        .block_on(server::run(config, shutdown_signal()))
        .map_err(|e| e.to_string())?;
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        // A log line that cannot be written (stderr on a full disk) is dropped, not a panic.
        .log_internal_errors(false)
        .init();
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Serve(args) => match serve(*args) {
            Ok(code) => Ok(code),
            Err(e) => {
                eprintln!("potok: {e}");
                return ExitCode::from(1);
            }
        },
        Command::Verify { dir } => verify(&dir),
        Command::Inspect {
            segment,
            batches_only,
            body_bytes,
        } => inspect(
            &segment,
            InspectOptions {
                show_records: !batches_only,
                body_preview_bytes: body_bytes,
            },
        ),
    };
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("potok: {e}");
            ExitCode::from(2)
        }
    }
}

fn verify(dir: &std::path::Path) -> std::io::Result<ExitCode> {
    let dirs = find_log_dirs(dir)?;
    if dirs.is_empty() {
        println!("no logs found under {}", dir.display());
        return Ok(ExitCode::SUCCESS);
    }
    let mut clean = true;
    for log_dir in dirs {
        let report = verify_log_dir(&OsVfs, &log_dir)?;
        let summary = format!(
            "{} segments, {} batches, {} records, {} bytes",
            report.segments, report.batches, report.records, report.bytes
        );
        if report.is_clean() {
            println!("clean   {}: {summary}", log_dir.display());
        } else {
            clean = false;
            println!("CORRUPT {}: {summary}", log_dir.display());
            for problem in &report.problems {
                println!("  {problem}");
            }
        }
    }
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn inspect(segment: &std::path::Path, options: InspectOptions) -> std::io::Result<ExitCode> {
    let bytes = OsVfs.open(segment, OpenMode::Read)?.map()?;
    let name = segment
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    print!("{}", inspect_segment(&bytes, name, options));
    Ok(ExitCode::SUCCESS)
}
