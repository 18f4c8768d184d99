//! `studio`: parse the command line, start logging, build the app, run it until
//! ctrl-c or SIGTERM. Client commands talk to a running server.

use std::process::ExitCode;

use clap::Parser;
use studio_core::app::App;
use studio_core::cli::{self, Cli, Command, unknown_studio_env};
use studio_core::config::{Role, ServerArgs};
use studio_core::telemetry;

// glibc's malloc spent about a fifth of the API's CPU under load (its arenas
// and consolidation); mimalloc's thread-local free lists cost a fraction of it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let threads = match &cli.command {
        Some(Command::Serve(a) | Command::Api(a) | Command::Worker(a)) => a.runtime_threads(),
        // The client commands wait on one server at a time.
        _ => 1,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("studio: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match cli
        .command
        .unwrap_or_else(|| Command::Serve(ServerArgs::default()))
    {
        Command::Serve(args) => runtime.block_on(server(Role::Serve, args)),
        Command::Api(args) => runtime.block_on(server(Role::Api, args)),
        Command::Worker(args) => runtime.block_on(server(Role::Worker, args)),
        Command::Generate(args) => runtime.block_on(cli::generate(args)),
        Command::Status(args) => runtime.block_on(cli::status(args)),
        Command::Cancel(args) => runtime.block_on(cli::cancel(args)),
        Command::Jobs(args) => runtime.block_on(cli::jobs(args)),
        Command::Workflows(args) => runtime.block_on(cli::workflows(args)),
        Command::Keys(args) => runtime.block_on(cli::keys::keys(args)),
        Command::Admin(args) => runtime.block_on(cli::admin::admin(args)),
        Command::Usage(args) => runtime.block_on(cli::usage::usage(args)),
        Command::Mcp(args) => runtime.block_on(cli::mcp(args)),
        Command::WebhookSecret => {
            println!("{}", studio_core::webhooks::Secret::generate());
            ExitCode::SUCCESS
        }
    }
}

async fn server(role: Role, args: ServerArgs) -> ExitCode {
    let rotation = telemetry::LogRotation {
        max_bytes: args.log_max_size,
        keep: args.log_files,
    };
    let _telemetry = match telemetry::init(&args.log_file(), rotation) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("studio: {e:#}");
            return ExitCode::from(2);
        }
    };
    let store = args.store_choice();
    tracing::info!(
        "Studio Core {} starting ({}); store: {store}",
        env!("CARGO_PKG_VERSION"),
        role.as_str()
    );
    for var in unknown_studio_env() {
        tracing::warn!("environment variable {var} is not a Studio Core setting; ignored");
    }
    let app = match App::build(role, &args).await {
        Ok(app) => app,
        Err(e) => {
            tracing::error!("cannot start: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    match app.run_until_stopped(shutdown_signal()).await {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("stopped on error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Completes on ctrl-c or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("ctrl-c: shutting down"),
        _ = term => tracing::info!("SIGTERM: shutting down"),
    }
}
