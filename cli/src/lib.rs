//! `leakwatch`: the collector's command line (`serve`, `sql`, `admin`,
//! `ballista`) and `demo`, which runs the agent's pipeline against a
//! collector. The collector library knows nothing of the agent; this crate
//! joins them, and holds their end-to-end tests and benchmarks.
//!
//! [`flags`] is the command line as parsed, [`settings`] what it resolves
//! to, [`run`] what each command does.

pub mod demo;
pub mod flags;
pub mod settings;

use leakwatch_collector::admin;
use leakwatch_collector::server::Server;
use leakwatch_collector::sql;

use crate::demo::DemoOptions;
#[cfg(feature = "ballista")]
use crate::flags::BallistaRole;
use crate::flags::{AdminCommand, Cli, Command};
use crate::settings::serve_config;

/// Errors of the command line: the collector's and the agent's, each kept
/// whole (with its classification by fault), and bad flags.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad flags (the caller's fault).
    #[error("{0}")]
    Config(String),
    /// The store a flag names cannot be opened.
    #[error("{flag}: {source}")]
    Store {
        /// The flag.
        flag: &'static str,
        /// Why.
        #[source]
        source: leakwatch_query::StoreError,
    },
    /// The collector failed.
    #[error(transparent)]
    Collector(#[from] leakwatch_collector::Error),
    /// The agent's pipeline failed (demo).
    #[error(transparent)]
    Agent(#[from] leakwatch_agent::Error),
}

impl From<leakwatch_query::Error> for Error {
    fn from(e: leakwatch_query::Error) -> Self {
        Self::Collector(e.into())
    }
}

/// Result with the command line's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Registers for SIGTERM and SIGINT at once, so a signal that arrives
/// while the server starts or just after its banner is not lost to the
/// default action (which kills the process without a flush), and returns
/// the wait for either.
fn stop_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Runs the command line.
pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve(args) => {
            let stop = stop_signal();
            if args.open_enrollment {
                tracing::warn!("Open enrollment: any agent that can reach this collector may report");
            }
            let config = args.settings()?;
            let server = Server::start(config).await?;
            println!("leakwatch collector: gRPC on {}, HTTP on http://{}", server.grpc_addr, server.http_addr);
            stop.await;
            tracing::info!("Stopping: draining requests and flushing");
            Ok(server.shutdown().await?)
        }
        Command::Sql(args) => {
            if args.rules {
                print!("{}", sql::describe_rules());
                return Ok(());
            }
            let scratch = tempfile::tempdir().map_err(|e| Error::Config(format!("temporary directory: {e}")))?;
            let backend = match (&args.connect, &args.token) {
                (Some(url), Some(token)) => sql::Backend::connect(url, token, args.ca_file.as_deref()).await?,
                _ => sql::open_sessions(&args.data_dir.data_dir, scratch.path(), args.query.config())?.into(),
            };
            let statements: Vec<String> = if let Some(name) = &args.rule {
                vec![sql::rule_sql(name, &sql::parse_params(&args.params)?)?]
            } else if let Some(statement) = &args.command {
                vec![statement.clone()]
            } else if let Some(file) = &args.file {
                let script =
                    std::fs::read_to_string(file).map_err(|e| Error::Config(format!("-f {}: {e}", file.display())))?;
                sql::split_statements(&script)
            } else {
                return Ok(sql::console(&backend, args.format).await?);
            };
            for statement in &statements {
                let batches = backend.query(statement).await?;
                match &args.out {
                    Some(path) => {
                        sql::write_out(&batches, path)?;
                        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
                        eprintln!("wrote {rows} rows to {}", path.display());
                    }
                    None => sql::print_result(&leakwatch_query::format::render(&batches, args.format)?),
                }
            }
            Ok(())
        }
        Command::Admin(args) => {
            let action = match args.action {
                AdminCommand::EnrollCode { max_uses, expires, code } => admin::AdminAction::EnrollCode {
                    code: code.unwrap_or_default(),
                    max_uses,
                    expires_at_s: admin::parse_expiry(&expires, chrono::Utc::now().timestamp())?,
                },
                AdminCommand::Revoke { agent_id } => admin::AdminAction::Revoke { agent_id },
                AdminCommand::SqlToken { name, expires } => admin::AdminAction::SqlToken {
                    name,
                    expires_at_s: admin::parse_expiry(&expires, chrono::Utc::now().timestamp())?,
                },
                AdminCommand::SqlTokens => admin::AdminAction::SqlTokens,
                AdminCommand::Agents => {
                    admin::AdminAction::Agents { stored: sql::agent_records(&args.data_dir.data_dir).await? }
                }
                AdminCommand::RevokeSqlToken { name, token } => admin::AdminAction::RevokeSqlToken {
                    name: name.unwrap_or_default(),
                    token: token.unwrap_or_default(),
                },
            };
            println!("{}", admin::run(&args.data_dir.data_dir, action).await?);
            Ok(())
        }
        Command::Mud(args) => {
            println!("{}", mud(&args.data_dir.data_dir, args.action)?);
            Ok(())
        }
        Command::Ballista(args) => ballista(args).await,
        Command::Demo(args) => {
            demo::run(DemoOptions {
                data_dir: args.data_dir.clone(),
                once: args.once,
                devices: args.devices,
                seed: args.seed,
                serve: serve_config(args.data_dir, true, &args.listen),
            })
            .await
        }
    }
}

/// `leakwatch mud`: what it did, to print.
fn mud(data_dir: &std::path::Path, action: flags::MudCommand) -> Result<String> {
    use leakwatch_query::mud::{LoadedMud, MudLibrary, parse};
    let library = MudLibrary::new(leakwatch_collector::server::DataDir::new(data_dir.to_path_buf()).mud());
    let io = |e: std::io::Error| Error::Config(format!("{}: {e}", library.dir().display()));
    match action {
        flags::MudCommand::Load { file, vendor, model } => {
            let size = std::fs::metadata(&file).map_err(|e| Error::Config(format!("{}: {e}", file.display())))?.len();
            if size > leakwatch_query::mud::MAX_MUD_BYTES {
                return Err(Error::Config(format!(
                    "{}: {size} bytes, more than the {} MiB a MUD file may have; nothing loaded",
                    file.display(),
                    leakwatch_query::mud::MAX_MUD_BYTES >> 20
                )));
            }
            let bytes = std::fs::read(&file).map_err(|e| Error::Config(format!("{}: {e}", file.display())))?;
            let policy = parse(&bytes)
                .map_err(|e| Error::Config(format!("{}: refused, nothing loaded: {e}", file.display())))?;
            let name = |given: Option<String>, found: &Option<String>, flag: &str, key: &str| {
                given.or_else(|| found.clone()).filter(|v| !v.trim().is_empty()).ok_or_else(|| {
                    Error::Config(format!("{}: the file has no {key}; name it with {flag}", file.display()))
                })
            };
            let vendor = name(vendor, &policy.mfg_name, "--vendor", "mfg-name")?;
            let model = name(model, &policy.model_name, "--model", "model-name")?;
            let entries = policy.allowed.len();
            let loaded = LoadedMud { vendor, model, policy };
            library.put(&loaded).map_err(io)?;
            Ok(format!(
                "loaded {} for {} {}: {entries} accepted from-device entries ({:?} shape); `leakwatch sql --rule outside_mud` lists what its devices contact beyond them",
                loaded.policy.mud_url, loaded.vendor, loaded.model, loaded.policy.shape
            ))
        }
        flags::MudCommand::List => {
            let all = library.all();
            if all.is_empty() {
                return Ok("no MUD files loaded".into());
            }
            Ok(all
                .iter()
                .map(|m| format!("{}\t{}\t{}\t{} entries", m.vendor, m.model, m.policy.mud_url, m.policy.allowed.len()))
                .collect::<Vec<_>>()
                .join("\n"))
        }
        flags::MudCommand::Remove { vendor, model } => Ok(if library.remove(&vendor, &model).map_err(io)? {
            format!("removed the MUD file of {vendor} {model}")
        } else {
            format!("{vendor} {model} had no MUD file")
        }),
    }
}

/// `leakwatch ballista`: a process of a Ballista cluster.
#[cfg(feature = "ballista")]
async fn ballista(args: flags::BallistaArgs) -> Result<()> {
    let flows = args.flow_store()?;
    match args.role {
        BallistaRole::Scheduler { listen } => {
            eprintln!("Ballista scheduler on {listen}, reading {flows}");
            Ok(leakwatch_query::ballista::run_scheduler(listen, flows).await?)
        }
        BallistaRole::Executor { scheduler, listen, grpc_port, external_host, vcores, work_dir } => {
            let (host, port) = scheduler
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
                .ok_or_else(|| Error::Config(format!("--scheduler {scheduler:?}: expected HOST:PORT")))?;
            let vcores = vcores.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            let grpc_port = grpc_port.unwrap_or_else(|| listen.port().saturating_add(1));
            eprintln!(
                "Ballista executor on {listen} (gRPC port {grpc_port}, task slots: {vcores}) for {scheduler}, reading {flows}"
            );
            let options = leakwatch_query::ballista::ExecutorOptions {
                scheduler: (host, port),
                bind: listen,
                grpc_port,
                external_host,
                vcores,
                work_dir,
            };
            Ok(leakwatch_query::ballista::run_executor(options, flows).await?)
        }
    }
}

/// `leakwatch ballista` in a build without the `ballista` feature.
#[cfg(not(feature = "ballista"))]
async fn ballista(_: flags::BallistaArgs) -> Result<()> {
    Err(Error::Config(format!("leakwatch ballista: {}", leakwatch_query::NO_BALLISTA)))
}
