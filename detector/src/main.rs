//! `detector`: the agent (`detector run`) and its CLI.
use std::process::ExitCode;

use clap::Parser as _;

use detector::{
    agent,
    api::{Request, StalledSocket, TrackedSocket, client},
    cli::{ActionChoice, Cli, Command, Output, QueryArgs},
    output,
    reaper::config::Policy,
};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
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
            let policy = match &a.policy {
                Some(path) => {
                    if a.action != ActionChoice::Report {
                        anyhow::bail!("--action and --policy both given: put the action in the policy file");
                    }
                    let mut p = Policy::load(path, a.grace)?;
                    p.dry_run |= a.dry_run;
                    p
                }
                None => Policy::from_flags(a.action.as_str(), &a.signal, a.rpc_url.as_deref(), a.dry_run)?,
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()?;
            rt.block_on(agent::run(agent::Options {
                grace: a.grace,
                interval: a.interval,
                api_socket: a.api_socket,
                metrics_addr: a.metrics_addr.0,
                max_sockets: a.max_sockets,
                ring_buffer_bytes: a.ring_buffer_bytes,
                send_hook: a.send_hook.hook(),
                pod_logs_dir: a.pod_logs_dir,
                policy,
            }))
        }
        Command::Stalled(q) => watch(&q, || {
            let data = client::call(&q.api_socket, &Request::Stalled)?;
            render(&q, &data, |v| {
                let rows: Vec<StalledSocket> = serde_json::from_value(v.clone())?;
                Ok(output::stalled_table(&rows))
            })
        }),
        Command::Sockets(a) => watch(&a.q, || {
            let data = client::call(&a.q.api_socket, &Request::Sockets)?;
            let rows: Vec<TrackedSocket> = serde_json::from_value(data)?;
            let rows: Vec<TrackedSocket> = rows.into_iter().filter(|r| a.keep(r)).collect();
            render(&a.q, &serde_json::to_value(&rows)?, |_| Ok(output::sockets_table(&rows)))
        }),
        Command::Explain { id, q } => watch(&q, || {
            let data = client::call(&q.api_socket, &Request::Explain { id })?;
            render(&q, &data, |v| Ok(output::explain(v)))
        }),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "detector", &mut std::io::stdout());
            Ok(())
        }
        Command::Scan(a) => {
            let rows = detector::scan::run(a.grace, a.interval, a.pod_logs_dir)?;
            match a.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
                Output::Table => print!("{}", output::stalled_table(&rows)),
            }
            Ok(())
        }
        Command::Check(o) => {
            let checks = detector::check::run();
            match o.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&checks)?),
                Output::Table => print!("{}", detector::check::table(&checks)),
            }
            if !detector::check::can_run(&checks) {
                anyhow::bail!("the agent cannot run on this machine (see above)");
            }
            Ok(())
        }
        Command::BenchControl { hook } => {
            let hook = hook.hook().ok_or_else(|| anyhow::anyhow!("name a hook"))?;
            let attached = detector::agent::attach_control(hook)?;
            println!("attached");
            detector::agent::wait_for_termination();
            // What the kernel accounted for it (kernel.bpf_stats_enabled), for the benchmark.
            let (runs, ns) = detector::agent::program_runs(&attached);
            println!("run_count={runs} run_time_ns={ns}");
            Ok(())
        }
        Command::Status(q) => watch(&q, || {
            let data = client::call(&q.api_socket, &Request::Status)?;
            render(&q, &data, |v| Ok(serde_json::to_string_pretty(v)? + "\n"))
        }),
    }
}

fn render(
    q: &QueryArgs,
    data: &serde_json::Value,
    table: impl Fn(&serde_json::Value) -> anyhow::Result<String>,
) -> anyhow::Result<String> {
    Ok(match q.output {
        Output::Json => serde_json::to_string_pretty(data)? + "\n",
        Output::Table => table(data)?,
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
