//! `detector`: the agent (`detector run`) and its CLI.
use std::process::ExitCode;

use clap::Parser as _;
use serde::de::DeserializeOwned;

use detector::{
    agent::Options,
    kernel::configuration::Want,
    reaper::{Action, config::Policy},
    report::{Explain, StalledSocket, TrackedSocket},
    surfaces::api::{Request, Status, client},
    surfaces::cli::{Cli, Command, Output, QueryArgs, RunArgs},
    surfaces::output,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    detector::logging::init(cli.log_format == detector::surfaces::cli::LogFormat::Json);
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(a) => {
            let opts = options(a)?;
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
            rt.block_on(detector::surfaces::daemon::run(opts))
        }
        Command::Stalled(q) => watch(&q, || {
            let rows: Vec<StalledSocket> = ask(&q, &Request::Stalled)?;
            render(&q, rows.as_slice(), output::stalled_table)
        }),
        Command::Sockets(a) => watch(&a.q, || {
            let rows: Vec<TrackedSocket> = ask(&a.q, &Request::Sockets)?;
            let rows: Vec<TrackedSocket> = rows.into_iter().filter(|r| a.keep(r)).collect();
            render(&a.q, rows.as_slice(), output::sockets_table)
        }),
        Command::Explain { id, q } => watch(&q, || {
            let e: Explain = ask(&q, &Request::Explain { id })?;
            render(&q, &e, output::explain)
        }),
        Command::Status(q) => watch(&q, || {
            let s: Status = ask(&q, &Request::Status)?;
            render(&q, &s, output::status)
        }),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "detector", &mut std::io::stdout());
            Ok(())
        }
        Command::Scan(a) => {
            let rows = detector::surfaces::scan::run(a.grace, a.interval, a.pod_logs_dir)?;
            match a.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
                Output::Table => print!("{}", output::stalled_table(&rows)),
            }
            Ok(())
        }
        Command::Check(c) => {
            let checks = detector::surfaces::check::run();
            match c.o.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&checks)?),
                Output::Table => print!("{}", detector::surfaces::check::table(&checks, c.verbose)),
            }
            if !detector::surfaces::check::can_run(&checks) {
                anyhow::bail!("the agent cannot run on this machine (see above)");
            }
            Ok(())
        }
        #[cfg(feature = "bench-control")]
        Command::BenchControl { hook } => {
            let hook = hook.hook().ok_or_else(|| anyhow::anyhow!("name a hook"))?;
            let attached = detector::agent::attach_control(hook)?;
            println!("attached");
            detector::surfaces::daemon::wait_for_termination();
            // What the kernel accounted for it (kernel.bpf_stats_enabled), for the benchmark.
            let (runs, ns) = detector::agent::program_runs(&attached);
            println!("run_count={runs} run_time_ns={ns}");
            Ok(())
        }
    }
}

fn options(a: RunArgs) -> anyhow::Result<Options> {
    let policy = match &a.policy {
        Some(path) => {
            if a.action != Action::Report {
                anyhow::bail!("--action and --policy both given: put the action in the policy file");
            }
            let mut p = Policy::load(path, a.grace)?;
            p.dry_run |= a.dry_run;
            p
        }
        None => Policy::from_flags(a.action, a.signal.as_deref(), a.rpc_url.as_deref(), a.dry_run)?,
    };
    Ok(Options {
        grace: a.grace,
        close_wait_grace: a.close_wait_grace,
        trickle: detector::verdict::TrickleRule { window_ms: a.trickle_window.as_millis() as u64, floor_bytes_per_s: a.trickle_floor },
        interval: a.interval,
        reconcile_cpu: a.reconcile_cpu,
        api_socket: a.api_socket,
        metrics_addr: a.metrics_addr.0,
        max_sockets: a.max_sockets,
        max_tracked: a.max_tracked,
        ring_buffer_bytes: a.ring_buffer_bytes,
        want: Want { send: a.send_hook.hook(), kind: a.configuration.kind(), no_mptcp: a.mptcp == detector::surfaces::cli::OnOff::Off },
        pod_logs_dir: a.pod_logs_dir,
        pod_metrics_max_series: a.pod_metrics_max_series as usize,
        state_file: (a.state_file.as_os_str() != "off").then_some(a.state_file),
        policy,
    })
}

/// Asks the agent and reads its answer as `T`.
fn ask<T: DeserializeOwned>(q: &QueryArgs, req: &Request) -> anyhow::Result<T> {
    let data = client::call(&q.api_socket, req)?;
    serde_json::from_value(data)
        .map_err(|e| anyhow::anyhow!("the agent's answer is not what this CLI expects ({e}); are the agent and the CLI the same version?"))
}

fn render<T: serde::Serialize + ?Sized>(q: &QueryArgs, data: &T, table: impl Fn(&T) -> String) -> anyhow::Result<String> {
    Ok(match q.output {
        Output::Json => serde_json::to_string_pretty(data)? + "\n",
        Output::Table => table(data),
    })
}

/// Prints once, or with --watch, redraws every interval until interrupted.
fn watch(q: &QueryArgs, once: impl Fn() -> anyhow::Result<String>) -> anyhow::Result<()> {
    let Some(every) = q.watch else {
        print!("{}", once()?);
        return Ok(());
    };
    loop {
        let text = once()?;
        // Clear the screen and home the cursor, as `watch` does.
        print!("\x1b[2J\x1b[H{}", text);
        std::thread::sleep(every);
    }
}
