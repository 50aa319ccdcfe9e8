//! `detector check`: can the agent run here? Every prerequisite, tried for real (hooks are
//! loaded and attached, then detached), without starting the agent.
use serde::Serialize;

use crate::kernel::{self, btf::KernelBtf, caps, loader, tracefs::Tracefs};

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    /// Without it the agent cannot run.
    pub required: bool,
    pub detail: String,
    /// For a send hook: the `--send-hook` value that forces it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_hook: Option<&'static str>,
}

fn check(name: impl Into<String>, required: bool, r: Result<String, String>) -> Check {
    let (ok, detail) = match r {
        Ok(d) => (true, d),
        Err(d) => (false, d),
    };
    Check { name: name.into(), ok, required, detail, send_hook: None }
}

pub fn run() -> Vec<Check> {
    let mut out = vec![check("kernel", false, Ok(kernel::kernel_release()))];
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    out.push(check("capabilities", true, caps::check(caps::parse_cap_eff(&status).unwrap_or(0)).map(|()| "all present".into()).map_err(|e| e.to_string())));
    let btf = KernelBtf::load();
    out.push(check(
        "btf",
        true,
        btf.as_ref()
            .map_err(|e| e.to_string())
            .and_then(|b| b.sock_offsets().map_err(|e| e.to_string()))
            .map(|o| format!("{} (struct sock_common: family at {}, ports at {})", kernel::btf::VMLINUX, o.family, o.dport)),
    ));
    let tracefs = Tracefs::find_or_mount();
    out.push(check("tracefs", true, tracefs.as_ref().map(|t| t.root().display().to_string()).map_err(|e| e.to_string())));
    let bpffs = std::fs::read_to_string("/proc/mounts").unwrap_or_default().lines().any(|l| l.split_whitespace().nth(2) == Some("bpf"));
    out.push(check("bpffs", false, if bpffs { Ok("mounted".into()) } else { Err("not mounted (not needed: the agent pins nothing)".into()) }));
    if let (Ok(t), Ok(b)) = (&tracefs, &btf) {
        match loader::kernel_config(t, b).map_err(|e| e.to_string()).and_then(|cfg| {
            loader::load(kernel::object(), &cfg, loader::Sizes { max_sockets: 1024, ring_buffer_bytes: 4096 * 4 }, None).map_err(|e| e.to_string())
        }) {
            Ok(loaded) => {
                for h in &loaded.hooks {
                    let mut detail = loader::describe(&h.state);
                    if h.program != loader::spec(h.id).program {
                        detail = format!("{detail} ({})", h.program);
                    }
                    let usable = h.state.works() || matches!(h.state, loader::HookState::NotTried(_));
                    let mut c = check(format!("hook {} ({})", h.hook, h.role.as_str()), false, if usable { Ok(detail) } else { Err(detail) });
                    c.send_hook = loader::spec(h.id).flag;
                    out.push(c);
                }
                let storage = if loaded.send_hook.socket_storage() { "socket storage" } else { "a hash map" };
                out.push(check("send hook", true, Ok(format!("the agent would use {}, with {storage}", loaded.send_label()))));
                // Dropping `loaded` detaches everything.
            }
            Err(e) => out.push(check("hooks", true, Err(e))),
        }
    }
    out.push(check("socket destroy", false, crate::reaper::probe_destroy().map(|()| "supported (sock_diag SOCK_DESTROY)".into())));
    out
}

/// Whether the agent could run: every required check passed.
pub fn can_run(checks: &[Check]) -> bool {
    checks.iter().all(|c| c.ok || !c.required)
}

pub fn table(checks: &[Check]) -> String {
    let w = checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    let mut s = String::new();
    for c in checks {
        let mark = match (c.ok, c.required) {
            (true, _) => "ok  ",
            (false, true) => "FAIL",
            (false, false) => "warn",
        };
        s.push_str(&format!("{mark}  {:<w$}  {}\n", c.name, c.detail));
    }
    s.push_str(if can_run(checks) { "\nthe agent can run here\n" } else { "\nthe agent cannot run here: fix the FAIL lines\n" });
    s
}
