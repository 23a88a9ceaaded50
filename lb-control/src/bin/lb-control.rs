//! `lb-control`: the load balancer daemon, and the backends' decap helper.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};
use lb_common::format_mac;
use lb_control::{
    api::{self, AppState},
    attachment,
    config::Config,
    controller::{self, Controller},
    dataplane::{detach_all, Decap, XdpMode},
    lock::{LockError, PinDirLock},
    netlink::MacWatch,
    server::{self, ServerLimits},
};
use sd_notify::NotifyState;
use tokio::signal::unix::{signal, SignalKind};

#[derive(Parser)]
#[command(version, about = "XDP layer-4 load balancer daemon")]
struct Cli {
    /// The config file.
    #[arg(long, short, global = true, default_value = "/etc/xdp-lb/lb.toml", env = "LB_CONFIG")]
    config: PathBuf,
    /// Log lines as text or as JSON objects (one per line, for a log
    /// collector); RUST_LOG filters either.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "LB_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (the default).
    Run,
    /// Validate the config file and exit.
    Check,
    /// Detach the balancer and remove its pinned maps: drops every
    /// connection the balancer tracks. Refused while a daemon runs on the
    /// pin directory (stop it first). With `[bgp]` enabled, first withdraws
    /// the VIPs through BIRD and waits for the router to move the flows to
    /// the other balancers.
    Detach {
        /// Seconds between the withdrawal and the detach (BGP propagation).
        #[arg(long, default_value_t = 3)]
        withdraw_wait: u64,
        /// Detach even though a daemon holds the pin directory (it notices,
        /// and re-attaches or stays detached as its config's `reattach`
        /// says), or BIRD does not confirm the withdrawal (flows the router
        /// still sends here are then lost until BGP or BFD notices).
        #[arg(long)]
        force: bool,
    },
    /// Backends: attach the decap program, which strips the balancer's
    /// IP-in-IP header from packets to ADDRs and passes the inner packet up.
    Decap {
        #[arg(long)]
        iface: String,
        /// This host's addresses the balancer tunnels to.
        #[arg(long = "addr", required = true)]
        addrs: Vec<IpAddr>,
        #[arg(long, value_enum, default_value_t = XdpMode::Native)]
        mode: XdpMode,
        /// bpffs directory for the decap program's pins.
        #[arg(long, default_value = "/sys/fs/bpf/xdp-lb-decap")]
        pin_dir: PathBuf,
    },
    /// Backends: remove the decap program's pins (detaches it).
    DecapDetach {
        #[arg(long, default_value = "/sys/fs/bpf/xdp-lb-decap")]
        pin_dir: PathBuf,
    },
    /// Write lb-control's man pages (lb-control.1, lb-control-run.1, ...)
    /// into a directory.
    Man {
        #[arg(long)]
        dir: PathBuf,
    },
}

fn init_logs(format: LogFormat) {
    let logs = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_target(false)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
        // Fields at the top level of each object, next to level and message.
        LogFormat::Json => logs.json().flatten_event(true).with_current_span(false).init(),
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    match cli.command.unwrap_or(Command::Run) {
        Command::Check => check(&cli.config),
        Command::Run => {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            rt.block_on(run(cli.config))
        }
        Command::Detach { withdraw_wait, force } => {
            let config = load(&cli.config)?;
            // Holding the lock keeps a daemon from starting mid-detach.
            let _lock = match PinDirLock::acquire(&config.pin_dir) {
                Ok(lock) => Some(lock),
                Err(e @ (LockError::HeldBy { .. } | LockError::HeldByUnknown { .. })) if force => {
                    tracing::warn!(error = %e, "detaching anyway (--force)");
                    None
                }
                Err(e @ (LockError::HeldBy { .. } | LockError::HeldByUnknown { .. })) => {
                    bail!("{e}, or pass --force to detach behind its back")
                }
                Err(e) => return Err(e.into()),
            };
            if config.bgp.enabled {
                match withdraw(&config.bgp) {
                    Ok(()) => {
                        println!("VIPs withdrawn through BIRD; waiting {withdraw_wait} s before detaching");
                        std::thread::sleep(Duration::from_secs(withdraw_wait));
                    }
                    Err(e) if force => {
                        tracing::error!(error = %e, "withdrawal not confirmed; detaching anyway (--force)")
                    }
                    Err(e) => bail!("{e}; the balancer stays attached (fix BIRD, or pass --force)"),
                }
            }
            let removed = detach_all(&config.pin_dir)?;
            println!("removed {} pins under {}", removed.len(), config.pin_dir.display());
            Ok(())
        }
        Command::Decap { iface, addrs, mode, pin_dir } => {
            let mut decap = Decap::open(Some(&pin_dir))?;
            for a in &addrs {
                decap.add_addr(*a)?;
            }
            decap.attach(&iface, mode, Some(&pin_dir))?;
            println!("decap attached to {iface} for {addrs:?} (pinned under {})", pin_dir.display());
            Ok(())
        }
        Command::Man { dir } => {
            let cmd = <Cli as clap::CommandFactory>::command();
            for p in lb_control::manpages::write_man_pages(cmd, &dir)? {
                println!("{}", p.display());
            }
            Ok(())
        }
        Command::DecapDetach { pin_dir } => {
            let removed = detach_all(&pin_dir)?;
            println!("removed {} pins under {}", removed.len(), pin_dir.display());
            Ok(())
        }
    }
}

/// Withdraws every VIP address through BIRD: the include file without
/// routes, then `configure`, a few attempts.
fn withdraw(bgp: &lb_control::config::Bgp) -> Result<()> {
    let text = lb_control::bgp::render(&Default::default(), &bgp.communities);
    let bird = lb_control::bgp::Bird { socket: bgp.bird_socket.clone() };
    let mut last = None;
    for attempt in 0..WITHDRAW_ATTEMPTS {
        if attempt > 0 {
            std::thread::sleep(lb_control::bgp::RETRY_MIN * attempt);
        }
        match lb_control::bgp::apply(&bgp.include_file, &bird, &text) {
            Ok(_) => return Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, attempt, "withdrawing through BIRD failed");
                last = Some(e);
            }
        }
    }
    Err(anyhow::anyhow!("BIRD did not confirm the withdrawal: {}", last.expect("at least one attempt")))
}

const WITHDRAW_ATTEMPTS: u32 = 4;

/// The one validation path of `check`, start-up and SIGHUP; its errors
/// name the file, line, column and key.
fn load(path: &Path) -> Result<Config> {
    Ok(Config::load(path)?)
}

fn check(path: &Path) -> Result<()> {
    let config = load(path)?;
    let backends: std::collections::BTreeSet<_> = config.vips.values().flat_map(|s| s.backends.keys()).collect();
    println!("{}: ok ({} VIPs, {} backends)", path.display(), config.vips.len(), backends.len());
    Ok(())
}

fn notify(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

async fn run(config_path: PathBuf) -> Result<()> {
    let config = load(&config_path)?;
    let token = match &config.api.token_file {
        Some(p) => Some(api::read_token(p)?),
        None => None,
    };
    // Signal handlers first: a reload or stop sent the moment systemd hears
    // READY must not hit the default action (termination).
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let listen = config.api.listen;
    let max_body = config.api.max_body_bytes;
    let mut server_limits = ServerLimits::from(&config.api);
    server_limits.max_connections = server::fit_connections_to_fd_limit(server_limits.max_connections);
    let override_macs = (config.gateway.mac, config.gateway.interface_mac);
    let interfaces = config.interfaces.clone();
    let pin_dir = config.pin_dir.clone();
    let started = std::time::Instant::now();

    // One daemon per pin directory, and nothing touched unless this one can
    // serve: the lock, then the API's port, then the maps.
    let lock = PinDirLock::acquire(&config.pin_dir).context("taking the pin directory")?;
    let listener =
        tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding the API to {listen}"))?;

    let ctl = tokio::task::block_in_place(|| -> Result<Controller> {
        let forwarding = controller::forwarding(&config)?;
        let bgp = config.bgp.clone();
        let mut ctl = Controller::open(config, forwarding)?;
        if bgp.enabled {
            // Announces once attached (and on every change after that).
            let bird = lb_control::bgp::Bird { socket: bgp.bird_socket };
            ctl.set_announcer(lb_control::bgp::Announcer::spawn(bgp.include_file, bird));
        }
        ctl.attach()?;
        Ok(ctl)
    })?;
    let state = Arc::new(AppState::new(ctl, token));
    // Health checks need the probes' TC program; without it the daemon
    // still serves (no backend leaves the ring by health), and says so:
    // every checked backend reads "unknown" with the reason, and
    // `xdp_lb_health_checks_running` is 0.
    let health_checker = match lb_control::health::spawn(state.clone(), &interfaces, &pin_dir) {
        Ok(task) => Some(task),
        Err(e) => {
            let reason = format!("health checks unavailable: {e}");
            tracing::error!(error = %e, "health checks unavailable");
            state.health.set_unavailable(reason);
            None
        }
    };
    tracing::info!(%listen, elapsed_ms = started.elapsed().as_millis() as u64, "API listening; ready");
    notify(&[NotifyState::Ready, NotifyState::Status("serving")]);

    if let Some(interval) = sd_notify::watchdog_enabled() {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval / 2);
            loop {
                tick.tick().await;
                notify(&[NotifyState::Watchdog]);
            }
        });
    }

    // Detached behind our back? Noticed within a period; the controller
    // logs it, answers not ready, and re-attaches if the config says so.
    let lock = Arc::new(Mutex::new(lock));
    let watcher = {
        let s = state.clone();
        let lock = lock.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(attachment::CHECK_PERIOD);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let (s, lock) = (s.clone(), lock.clone());
                let checked = tokio::task::spawn_blocking(move || {
                    let mut ctl = s.ctl.lock().unwrap_or_else(|p| p.into_inner());
                    ctl.check_attachment(&mut lock.lock().unwrap_or_else(|p| p.into_inner()));
                    // Second chance: previous tables whose window passed go
                    // (within a period of it).
                    if let Err(e) = ctl.expire_second_chance() {
                        tracing::warn!(error = %e, "second chance: a previous table could not be let go");
                    }
                })
                .await;
                if let Err(e) = checked {
                    tracing::error!(error = %e, "attachment check failed; no longer checking");
                    return;
                }
            }
        })
    };

    // The MACs can change (failover, a new router, a new NIC): follow them on
    // every interface, driven by the kernel's netlink notifications.
    if override_macs.0.is_none() || override_macs.1.is_none() {
        let s = state.clone();
        let watch = MacWatch {
            interfaces: interfaces.clone(),
            gateway_mac: override_macs.0,
            interface_mac: override_macs.1,
            neighbour_timeout: controller::NEIGHBOUR_TIMEOUT,
        };
        tokio::spawn(watch.run(move |iface, macs| {
            let mut ctl = s.ctl.lock().unwrap_or_else(|p| p.into_inner());
            // The data plane carries one MAC pair, the first interface's.
            if iface == interfaces[0] {
                match ctl.set_macs(macs.gw_mac, macs.if_mac) {
                    Ok(true) => tracing::info!(iface, gateway_mac = %format_mac(&macs.gw_mac), "gateway MAC changed"),
                    Ok(false) => {}
                    Err(e) => tracing::error!(error = %e, "updating MACs"),
                }
            } else if (ctl.forwarding_config().gw_mac, ctl.forwarding_config().if_mac) != (macs.gw_mac, macs.if_mac) {
                tracing::warn!(
                    iface,
                    gateway_mac = %format_mac(&macs.gw_mac),
                    interface_mac = %format_mac(&macs.if_mac),
                    "frames leaving this interface need other MACs than the first interface's, which the data plane uses"
                );
            }
        }));
    }

    let app = api::router(state.clone(), max_body);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut server = tokio::spawn(async move {
        server::serve(listener, app, server_limits, async {
            let _ = stop_rx.await;
        })
        .await
    });

    loop {
        tokio::select! {
            _ = hup.recv() => {
                // systemd wants RELOADING with the monotonic time of the request.
                match NotifyState::monotonic_usec_now() {
                    Ok(now) => notify(&[NotifyState::Reloading, now]),
                    Err(e) => {
                        tracing::warn!(error = %e, "reading the monotonic clock for sd_notify");
                        notify(&[NotifyState::Reloading]);
                    }
                }
                let s = state.clone();
                let path = config_path.clone();
                let result = tokio::task::block_in_place(|| -> Result<_> {
                    let new = load(&path)?;
                    let forwarding = controller::forwarding(&new)?;
                    let mut ctl = s.ctl.lock().unwrap_or_else(|p| p.into_inner());
                    Ok(ctl.reload(new, forwarding)?)
                });
                match result {
                    Ok(report) => tracing::info!(?report, "config reloaded"),
                    Err(e) => tracing::error!(error = %format!("{e:#}"), "config reload rejected; the running state is unchanged"),
                }
                notify(&[NotifyState::Ready]);
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
            res = &mut server => {
                res??;
                anyhow::bail!("the API server stopped unexpectedly");
            }
        }
    }
    notify(&[NotifyState::Stopping]);
    let _ = stop_tx.send(());
    // Let calls in flight finish, but never wait on a stalled client.
    if tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await.is_err() {
        tracing::warn!(grace = ?SHUTDOWN_GRACE, "API calls still open at shutdown; closing them");
        server.abort();
    }
    tracing::info!("stopped; the balancer stays attached with its pinned maps");
    watcher.abort();
    if let Some(task) = health_checker {
        task.abort();
    }
    // Held to the end: the pin directory is ours until the process exits.
    drop(lock);
    Ok(())
}

/// How long open API calls may take to finish once the daemon is asked to stop.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
