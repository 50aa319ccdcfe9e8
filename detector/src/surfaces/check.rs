//! `detector check`: can the agent run here? The same start as `detector run` (every hook
//! tried, the best configuration chosen and loaded whole, stepping down where the kernel
//! refuses a piece), without starting the agent; then every other configuration this kernel
//! runs, loaded whole too. Exit 0 exactly when `detector run` with no flags would start.
use serde::Serialize;

use crate::{
    agent::{self, Probed},
    kernel::{
        self,
        btf::KernelBtf,
        caps,
        configuration::{self, Configuration, Want},
        hooks::{self, HookId, HookState},
        loader,
        tracefs::Tracefs,
    },
};

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    /// Without it the agent cannot run.
    pub required: bool,
    pub detail: String,
    /// For a send hook or a configuration: the `--send-hook` value that forces its send hook.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_hook: Option<&'static str>,
    /// For a configuration: its `--configuration` value, and whether `run` would choose it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub configuration: Option<&'static str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub chosen: bool,
    /// The verifier's log of a refused hook (`--verbose`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
}

fn check(name: impl Into<String>, required: bool, r: Result<String, String>) -> Check {
    let (ok, detail) = match r {
        Ok(d) => (true, d),
        Err(d) => (false, d),
    };
    Check { name: name.into(), ok, required, detail, send_hook: None, configuration: None, chosen: false, log: None }
}

/// Small maps: `check` proves the programs load and attach, it tracks nothing.
const SIZES: loader::Sizes = loader::Sizes { max_sockets: 1024, ring_buffer_bytes: 4096 * 4 };

pub fn run() -> Vec<Check> {
    let mut out = vec![check("kernel", false, Ok(kernel::kernel_release()))];
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let caps = caps::check(caps::parse_cap_eff(&status).unwrap_or(0)).map_err(|e| e.to_string());
    out.push(check("capabilities", true, caps.clone().map(|()| "all present".into())));
    let btf = KernelBtf::load().map_err(|e| e.to_string()).and_then(|b| b.sock_offsets().map_err(|e| e.to_string()));
    out.push(check("btf", true, btf.clone().map(|o| format!("{} (struct sock_common: family at {}, ports at {})", kernel::btf::VMLINUX, o.family, o.dport))));
    let tracefs = Tracefs::find_or_mount().map(|t| t.root().display().to_string()).map_err(|e| format!("{e}: the classic tracepoints cannot be used"));
    out.push(check("tracefs", false, tracefs));
    let bpffs = std::fs::read_to_string("/proc/mounts").unwrap_or_default().lines().any(|l| l.split_whitespace().nth(2) == Some("bpf"));
    out.push(check("bpffs", false, if bpffs { Ok("mounted".into()) } else { Err("not mounted (not needed: the agent pins nothing)".into()) }));
    if caps.is_ok() && btf.is_ok() {
        match agent::probe_kernel() {
            Ok(mut p) => configurations(&mut p, &mut out),
            Err(e) => out.push(check("configuration", true, Err(format!("{e:#}")))),
        }
    }
    out.push(check("socket destroy", false, crate::reaper::probe_destroy().map(|()| "supported (sock_diag SOCK_DESTROY)".into())));
    out
}

/// The configuration `run` would start (loaded whole, then detached), every hook's state, why
/// it is not the best, and each other configuration this kernel runs, loaded whole too.
fn configurations(p: &mut Probed, out: &mut Vec<Check>) {
    let k = match p.start(Want::default(), SIZES) {
        Ok(k) => k,
        Err(e) => {
            for h in &p.hooks {
                out.push(hook_check(h));
            }
            out.push(check("configuration", true, Err(format!("{e:#}"))));
            return;
        }
    };
    for h in &k.hooks {
        out.push(hook_check(h));
    }
    let chosen = k.loaded.configuration.clone();
    out.push(Check { chosen: true, ..configuration_check(&chosen, true, Ok(format!("the agent would run {}", chosen.describe()))) });
    for why in &k.not_best {
        out.push(check("not the best", false, Err(why.clone())));
    }
    // Detaches the chosen configuration before loading the others.
    drop(k);
    for want in configuration::alternatives(&p.trials, &chosen) {
        let label = format!("--configuration {}", want.kind.map_or("auto", |k| k.as_str()));
        match p.start(want, SIZES) {
            Ok(k) => out.push(configuration_check(&k.loaded.configuration, false, Ok(format!("also runs ({label}): {}", k.loaded.configuration.describe())))),
            Err(e) => out.push(check(format!("configuration {label}"), false, Err(format!("{e:#}")))),
        }
    }
}

fn configuration_check(c: &Configuration, required: bool, r: Result<String, String>) -> Check {
    let mut x = check(format!("configuration {}", c.kind.as_str()), required, r);
    x.configuration = Some(c.kind.as_str());
    x.send_hook = hooks::spec(HookId::Send(c.send)).flag;
    x
}

fn hook_check(h: &hooks::HookStatus) -> Check {
    let refused = matches!(h.state, HookState::Refused(_));
    let mut c =
        check(format!("hook {} ({})", h.hook, h.role.as_str()), false, if refused { Err(hooks::describe(&h.state)) } else { Ok(hooks::describe(&h.state)) });
    c.send_hook = hooks::spec(h.id).flag;
    c.log = h.log.clone();
    c
}

/// Whether the agent could run: every required check passed.
pub fn can_run(checks: &[Check]) -> bool {
    checks.iter().all(|c| c.ok || !c.required)
}

/// The checks for people: one line each; with `verbose`, each refusal's verifier log under it.
pub fn table(checks: &[Check], verbose: bool) -> String {
    let w = checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    let mut s = String::new();
    for c in checks {
        let mark = match (c.ok, c.required) {
            (true, _) => "ok  ",
            (false, true) => "FAIL",
            (false, false) => "warn",
        };
        let detail = crate::escape::printable(&c.detail);
        s.push_str(&format!("{mark}  {:<w$}  {}\n", c.name, detail.replace('\n', &format!("\n      {:w$}  ", ""))));
        if let Some(log) = c.log.as_deref().filter(|_| verbose) {
            for line in log.lines() {
                s.push_str(&format!("      {:w$}    | {}\n", "", crate::escape::printable(line)));
            }
        }
    }
    s.push_str(if can_run(checks) { "\nthe agent can run here\n" } else { "\nthe agent cannot run here: fix the FAIL lines\n" });
    if !verbose && checks.iter().any(|c| c.log.is_some()) {
        s.push_str("(`detector check --verbose` adds the verifier's log of each refused hook)\n");
    }
    s
}
