//! The `filesync` binary: parse, set up logging, call the library, map errors to one line.

use std::io::IsTerminal;

use clap::Parser;
use filesync::cli::LogFormat;
use tracing_subscriber::EnvFilter;

fn main() {
    let cli = filesync::cli::Cli::parse();
    let default_level = match (cli.quiet, cli.verbose) {
        (true, _) => "error".to_owned(),
        // Warnings, and the lifecycle lines a user watches for.
        (false, 0) => format!("warn,{}=info", filesync::agent::LIFECYCLE),
        (false, 1) => "info".to_owned(),
        (false, _) => "debug".to_owned(),
    };
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(cli.verbose > 0);
    match cli.log_format {
        LogFormat::Json => subscriber.json().init(),
        LogFormat::Text => subscriber.with_ansi(colour()).init(),
    }
    let runtime = match build_runtime(&cli.command) {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("filesync: cannot start the runtime: {err}");
            std::process::exit(2);
        }
    };
    let code = match runtime.block_on(filesync::cli::run(cli)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("filesync: {err:#}");
            2
        }
    };
    // Blocking work (a master's worker mid-scan) must not hold up the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    std::process::exit(code);
}

/// A slave is one pipeline (read the log, apply, answer) whose tasks hand messages to each
/// other all the time; on one thread they do so without waking another thread for each
/// reply, which W2 measured as a large part of the slave's time after the file system
/// itself. Everything else gets a thread per core.
fn build_runtime(command: &filesync::cli::Command) -> std::io::Result<tokio::runtime::Runtime> {
    match command {
        filesync::cli::Command::Slave(_) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        _ => tokio::runtime::Runtime::new(),
    }
}

/// Colour only for a person at a terminal who has not asked for none (no-color.org: a
/// non-empty `NO_COLOR`): journald, pipes and files get plain text.
fn colour() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
