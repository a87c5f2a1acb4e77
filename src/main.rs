//! The `portico` binary: parses flags once, sets up logging and signals, and runs the chosen program.

use std::process::ExitCode;

use clap::Parser;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use portico::config::{
    Cli, Command, EventsCommand, EventsTailArgs, GatewayArgs, HealthcheckArgs, ServeArgs, UserServiceArgs,
};
use portico::proto::DESCRIPTOR_POOL;
use portico::user_service::UserServiceConfig;
use portico::{gateway, telemetry, user_service};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let mut cli = Cli::parse();
    let command = cli.command.take().unwrap_or_else(|| Command::Serve(ServeArgs::default_from_env()));
    let telemetry = match telemetry::init(cli.log_format, cli.trace_config(&command).as_ref()) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("portico: {error}");
            return ExitCode::FAILURE;
        }
    };
    raise_open_files_limit();
    let code = match run(command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error}");
            eprintln!("portico: {error}");
            ExitCode::FAILURE
        }
    };
    telemetry.shutdown().await;
    code
}

async fn run(command: Command) -> Result<(), BoxError> {
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    match command {
        Command::Serve(args) => serve(args, shutdown).await,
        Command::Gateway(args) => run_gateway(args, shutdown).await,
        Command::UserService(args) => run_user_service(args, shutdown).await,
        Command::Healthcheck(args) => healthcheck(&args).await,
        Command::Events(args) => match args.command {
            EventsCommand::Tail(args) => tail_events(&args, shutdown).await,
        },
        Command::Openapi => {
            print!("{}", gateway::openapi::document_json(&gateway::rules::RouteTable::from_pool(&DESCRIPTOR_POOL)?)?);
            Ok(())
        }
    }
}

async fn run_user_service(args: UserServiceArgs, shutdown: CancellationToken) -> Result<(), BoxError> {
    let mut config = UserServiceConfig::try_from(&args.options)?;
    config.auth = args.auth.config()?;
    config.auth_reflection = args.auth.jwt_protect_reflection;
    config.tls = args.tls.config()?;
    let listener = bind(args.listen).await?;
    serve_admin(args.admin_listen, telemetry::metrics::router(), &shutdown).await?;
    tracing::info!(addr = %listener.local_addr()?, db = %user_service::store::redact_password(&config.database_url), "user service listening");
    user_service::serve(&config, listener, shutdown).await?;
    tracing::info!("user service stopped");
    Ok(())
}

async fn run_gateway(args: GatewayArgs, shutdown: CancellationToken) -> Result<(), BoxError> {
    let config = args.config()?;
    let listener = bind(args.listen).await?;
    let started = gateway::start(&DESCRIPTOR_POOL, config.clone(), shutdown.clone()).await?;
    gateway::catalog::reload::reload_on_sighup(&started.catalog, &shutdown);
    serve_admin(args.gateway.admin_listen, started.admin.clone(), &shutdown).await?;
    tracing::info!(
        addr = %listener.local_addr()?,
        upstreams = ?config.upstreams,
        tls = started.tls.is_some(),
        workers = config.workers,
        pin_connections = config.pin_connections,
        "gateway listening"
    );
    serve_public(listener, started, &config, shutdown).await?;
    tracing::info!("gateway stopped");
    Ok(())
}

/// The UserService and the gateway in one process; the gateway's upstream is the UserService's address.
async fn serve(args: ServeArgs, shutdown: CancellationToken) -> Result<(), BoxError> {
    let mut user_config = UserServiceConfig::try_from(&args.user_service)?;
    user_config.auth = args.auth.config()?;
    user_config.auth_reflection = args.auth.jwt_protect_reflection;
    let grpc_listener = bind(args.grpc_listen).await?;
    let grpc_addr = grpc_listener.local_addr()?;
    let upstream = format!("http://{}", loopback_for(grpc_addr));
    let mut gateway_config = args.gateway.config(vec![upstream], user_config.drain_timeout)?;
    gateway_config.auth.clone_from(&user_config.auth);
    gateway_config.tls = args.tls.config()?;
    let http_listener = bind(args.listen).await?;
    let started = gateway::start(&DESCRIPTOR_POOL, gateway_config.clone(), shutdown.clone()).await?;
    serve_admin(args.gateway.admin_listen, started.admin.clone(), &shutdown).await?;
    tracing::info!(addr = %grpc_addr, db = %user_service::store::redact_password(&user_config.database_url), "user service listening");
    tracing::info!(
        addr = %http_listener.local_addr()?,
        tls = started.tls.is_some(),
        workers = gateway_config.workers,
        pin_connections = gateway_config.pin_connections,
        "gateway listening"
    );

    let user_service = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { user_service::serve(&user_config, grpc_listener, shutdown).await }
    });
    let served = serve_public(http_listener, started, &gateway_config, shutdown.clone()).await;
    // The gateway has drained (or could not start, which stops the UserService too); the UserService drains
    // its own calls (watches end at once).
    shutdown.cancel();
    user_service.await??;
    served?;
    tracing::info!("stopped");
    Ok(())
}

/// Serves the gateway's public router, over TLS when it has a certificate.
async fn serve_public(
    listener: TcpListener,
    started: gateway::Gateway,
    config: &gateway::GatewayConfig,
    shutdown: CancellationToken,
) -> Result<(), gateway::workers::StartError> {
    match started.tls {
        Some(tls) => gateway::serve_tls(listener, started.public, tls, config, shutdown).await,
        None => gateway::serve(listener, started.public, config, shutdown).await,
    }
}

/// Serves the admin view on its own listener, when one is configured, until shutdown.
async fn serve_admin(
    addr: Option<std::net::SocketAddr>,
    router: axum::Router,
    shutdown: &CancellationToken,
) -> Result<(), BoxError> {
    let Some(addr) = addr else { return Ok(()) };
    let listener = bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "admin listening");
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        let served =
            axum::serve(without_nagle(listener), router).with_graceful_shutdown(shutdown.cancelled_owned()).await;
        if let Err(error) = served {
            tracing::warn!(%error, "admin listener failed");
        }
    });
    Ok(())
}

/// `portico events tail`: prints events until the limit, the end of the connection, or a signal.
async fn tail_events(args: &EventsTailArgs, shutdown: CancellationToken) -> Result<(), BoxError> {
    let (nats, names) = args.target()?;
    let mut out = std::io::stdout();
    tokio::select! {
        result = user_service::relay::tail(&nats, &names, args.options(), &mut out) => Ok(result?),
        () = shutdown.cancelled() => Ok(()),
    }
}

/// One plain HTTP/1.1 GET; Ok when the answer's status is 200. Small on purpose: container images need no
/// curl for their HEALTHCHECK.
async fn healthcheck(args: &HealthcheckArgs) -> Result<(), BoxError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let uri: http::Uri = args.url.parse()?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("{} is not an http:// URL", args.url).into());
    }
    let host = uri.host().ok_or("the URL has no host")?;
    let port = uri.port_u16().unwrap_or(80);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect((host, port)).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut head = [0u8; 32];
        let read = stream.read(&mut head).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&head[..read]).into_owned())
    };
    let head = tokio::time::timeout(args.timeout, probe)
        .await
        .map_err(|_| format!("no answer from {} within {:?}", args.url, args.timeout))??;
    let status = head.split_whitespace().nth(1).unwrap_or_default().to_string();
    if status == "200" { Ok(()) } else { Err(format!("{} answered {status:?}", args.url).into()) }
}

/// Raises the soft limit on open files to the hard limit. Every client connection and every open SSE or NDJSON
/// stream holds a descriptor, and the usual soft limit of 1024 would cap a gateway at about a thousand
/// watchers, while the hard limit is what the administrator allows (systemd's `LimitNOFILE=`, `ulimit -Hn`).
fn raise_open_files_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current == limit.maximum {
        return;
    }
    match setrlimit(Resource::Nofile, Rlimit { current: limit.maximum, maximum: limit.maximum }) {
        Ok(()) => tracing::debug!(from = ?limit.current, to = ?limit.maximum, "raised the open-files limit"),
        Err(error) => tracing::warn!(%error, limit = ?limit.current, "cannot raise the open-files limit"),
    }
}

/// A wildcard listen address is reached over loopback.
fn loopback_for(addr: std::net::SocketAddr) -> std::net::SocketAddr {
    let mut addr = addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    addr
}

/// The admin listener's connections with Nagle's algorithm off, as the gateway's and the UserService's have
/// them: axum leaves it on, and a `/metrics` answer that goes out in more than one write would wait for the
/// scraper's delayed ACK.
fn without_nagle(
    listener: TcpListener,
) -> impl axum::serve::Listener<Io = tokio::net::TcpStream, Addr = std::net::SocketAddr> {
    use axum::serve::ListenerExt;
    listener.tap_io(|stream| {
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot turn Nagle's algorithm off on an admin connection");
        }
    })
}

async fn bind(addr: std::net::SocketAddr) -> Result<TcpListener, BoxError> {
    TcpListener::bind(addr).await.map_err(|e| format!("cannot listen on {addr}: {e}").into())
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

#[cfg(test)]
mod tests {
    use axum::serve::Listener;

    use super::*;

    #[tokio::test]
    async fn admin_connections_have_nagle_off() -> Result<(), BoxError> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let mut admin = without_nagle(listener);
        let _client = tokio::net::TcpStream::connect(address).await?;
        let (accepted, _) = admin.accept().await;
        assert!(accepted.nodelay()?, "TCP_NODELAY is set on the accepted socket");
        Ok(())
    }
}
