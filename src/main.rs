//! The `portico` binary: parses flags once, sets up logging and signals, and runs the chosen program.

use std::process::ExitCode;

use clap::Parser;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use portico::config::{Cli, Command, UserServiceArgs, UserServiceConfig};
use portico::{telemetry, user_service};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    let command = cli.command.unwrap_or_else(|| Command::UserService(UserServiceArgs::default_from_env()));
    match run(command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error}");
            eprintln!("portico: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<(), Box<dyn std::error::Error>> {
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    match command {
        Command::UserService(args) => {
            let config = UserServiceConfig::try_from(&args)?;
            let listener =
                TcpListener::bind(args.listen).await.map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
            tracing::info!(addr = %listener.local_addr()?, db = %config.database_url, "user service listening");
            user_service::serve(&config, listener, shutdown).await?;
            tracing::info!("user service stopped");
        }
    }
    Ok(())
}

/// Cancels `shutdown` on SIGTERM or SIGINT (Ctrl-C), which starts the drain.
async fn cancel_on_signal(shutdown: CancellationToken) {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => tracing::info!("SIGINT received; draining"),
        () = terminate => tracing::info!("SIGTERM received; draining"),
    }
    shutdown.cancel();
}
