//! The `potok` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use potok::storage::io::{OpenMode, OsVfs, Vfs};
use potok::storage::verify::{find_log_dirs, inspect_segment, verify_log_dir, InspectOptions};

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

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let outcome = match cli.command {
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
