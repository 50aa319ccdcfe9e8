//! Which whole configuration the agent runs: one pure choice over what the kernel said of each
//! hook ([`Trials`]). A configuration is a kind (where per-socket state lives and how it is
//! sampled), a send hook that keeps that state, the lifetime hooks it needs, and the best
//! reconcile passes the kernel runs. Kinds, best first:
//!
//! 1. **storage-walk**: a BTF send hook keeps state in socket storage; one kernel walk of the
//!    storage map per pass samples every tracked socket (`iter/bpf_sk_storage_map`);
//! 2. **storage-diag**: the same send hook and storage; the sockets reach the agent by their
//!    send hook's announcements (`Tracked`, and `Waiting` once per agent epoch) and are sampled
//!    through sock_diag, for kernels that refuse the walk;
//! 3. **hash-map**: a classic tracepoint or kprobe keeps state in the `SOCKS` hash map, which
//!    the close hook empties; sampled through sock_diag.
//!
//! The agent tries every hook once, chooses here, loads the chosen configuration whole, and if
//! the kernel refuses a piece of it there, chooses again with that refusal known
//! (`Trials::fail`): `detector run` and `detector check` go through the same steps.
use std::collections::HashMap;

use detector_common::SendHook;
use serde::{Deserialize, Serialize};

use super::hooks::{HookId, HookState, spec};

/// Where per-socket state lives and how tracked sockets are sampled; best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    StorageWalk,
    StorageDiag,
    HashMap,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::StorageWalk, Kind::StorageDiag, Kind::HashMap];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::StorageWalk => "storage-walk",
            Kind::StorageDiag => "storage-diag",
            Kind::HashMap => "hash-map",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Kind::StorageWalk => "socket storage, sampled by the kernel's walk of it",
            Kind::StorageDiag => "socket storage, sampled through sock_diag (sockets announced by their send hook)",
            Kind::HashMap => "the SOCKS hash map (emptied by the close hook), sampled through sock_diag",
        }
    }

    /// Whether its send hooks keep state in socket storage (else in the hash map).
    pub fn socket_storage(self) -> bool {
        self != Kind::HashMap
    }

    /// Whether the kernel walk samples (else sock_diag).
    pub fn walks(self) -> bool {
        self == Kind::StorageWalk
    }

    /// What it cannot run without, beyond a send hook of its storage.
    fn required(self) -> &'static [HookId] {
        match self {
            Kind::StorageWalk => &[HookId::Walk],
            Kind::StorageDiag => &[],
            Kind::HashMap => &[HookId::SetState],
        }
    }

    /// The other send paths' hooks it runs when the kernel has them, each path's best first;
    /// `send` is the main hook (whose program may serve a path itself).
    fn paths(self, send: SendHook) -> [&'static [HookId]; 2] {
        use SendHook::*;
        let pages: &[HookId] = if self.socket_storage() { &[HookId::Path(FentryDoTcpSendpages)] } else { &[HookId::Path(KprobeDoTcpSendpages)] };
        // The sock_send_length programs take MPTCP sockets themselves.
        let mptcp: &[HookId] = match (self.socket_storage(), send) {
            (_, SockSendLengthBtf | SockSendLength) => &[],
            (true, _) => &[HookId::Path(FentryMptcpSendmsg), HookId::Path(SockSendLengthBtfMptcp)],
            (false, _) => &[HookId::Path(KprobeMptcpSendmsg)],
        };
        [pages, mptcp]
    }

    /// Lifetime hooks it runs when the kernel has them.
    fn optional_lifetime(self) -> &'static [HookId] {
        if self.socket_storage() { &[HookId::RetransmitBtf] } else { &[HookId::Retransmit] }
    }

    /// The start-up reconcile's pass over each namespace, best first (without one, sock_diag
    /// dumps). Adopting into socket storage only helps where the walk samples it.
    fn startup(self) -> &'static [HookId] {
        if self.walks() { &[HookId::ScanAdopt, HookId::Scan] } else { &[HookId::Scan] }
    }

    /// The later reconciles' pass over every process's files, best first (without one, each
    /// namespace is passed over again).
    fn later(self) -> &'static [HookId] {
        if self.walks() { &[HookId::ScanFilesAdopt, HookId::ScanFiles] } else { &[HookId::ScanFiles] }
    }
}

/// A whole configuration: everything the agent attaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Configuration {
    pub kind: Kind,
    pub send: SendHook,
    /// The other send paths' hooks (pages before 6.5, MPTCP), where the kernel has them.
    pub paths: Vec<HookId>,
    /// Lifetime hooks (retransmit counts; with the hash map, the close hook).
    pub lifetime: Vec<HookId>,
    /// The start-up reconcile's pass over each namespace (`None`: sock_diag dumps).
    pub startup: Option<HookId>,
    /// The later reconciles' pass over every process's files (`None`: each namespace again).
    pub later: Option<HookId>,
}

impl Configuration {
    /// Every hook it attaches.
    pub fn hooks(&self) -> Vec<HookId> {
        let mut v = vec![HookId::Send(self.send)];
        v.extend(self.paths.iter().copied());
        v.extend(self.lifetime.iter().copied());
        if self.kind.walks() {
            v.push(HookId::Walk);
        }
        v.extend(self.startup);
        v.extend(self.later);
        v
    }

    /// Whether it follows Multipath TCP sends (a path hook, or the sock_send_length programs,
    /// which take MPTCP sockets themselves): their records are announced again per epoch.
    pub fn mptcp(&self) -> bool {
        matches!(self.send, SendHook::SockSendLengthBtf | SendHook::SockSendLength) || self.paths.iter().any(|p| matches!(p, HookId::Path(h) if h.mptcp()))
    }

    /// Whether the configuration cannot run without `id` (else it does without it, or with a
    /// lesser variant).
    pub fn requires(&self, id: HookId) -> bool {
        id == HookId::Send(self.send) || self.kind.required().contains(&id)
    }

    /// One line for people.
    pub fn describe(&self) -> String {
        let pass = |p: Option<HookId>, none: &str| p.map_or(none.to_string(), |h| spec(h).label.to_string());
        let paths: Vec<&str> = self.paths.iter().map(|&h| spec(h).label).collect();
        format!(
            "{} ({}): send hook {}{}; reconcile at start-up: {}, after: {}",
            self.kind.as_str(),
            self.kind.describe(),
            spec(HookId::Send(self.send)).label,
            if paths.is_empty() { String::new() } else { format!(" with {}", paths.join(", ")) },
            pass(self.startup, "sock_diag dumps"),
            pass(self.later, "each namespace again"),
        )
    }
}

/// What the kernel said of each hook: the answers of trying each alone, and what it refused
/// since as part of a whole configuration (a piece that loads alone may be refused with that
/// configuration's settings).
#[derive(Debug, Clone, Default)]
pub struct Trials {
    states: HashMap<HookId, HookState>,
    failed: Vec<(Kind, HookId, String)>,
}

impl Trials {
    pub fn new(states: impl IntoIterator<Item = (HookId, HookState)>) -> Self {
        Trials { states: states.into_iter().collect(), failed: Vec::new() }
    }

    pub fn state(&self, id: HookId) -> HookState {
        self.states.get(&id).cloned().unwrap_or(HookState::NotTried("not tried"))
    }

    /// `id` was refused when `kind` was loaded whole.
    pub fn fail(&mut self, kind: Kind, id: HookId, why: String) {
        self.failed.push((kind, id, why));
    }

    /// What loading whole configurations refused: (kind, hook, why).
    pub fn failures(&self) -> &[(Kind, HookId, String)] {
        &self.failed
    }

    fn works_in(&self, kind: Kind, id: HookId) -> bool {
        self.state(id).works() && !self.failed.iter().any(|(k, i, _)| *k == kind && *i == id)
    }

    /// Why `id` cannot serve in `kind`, in one line.
    fn why_not(&self, kind: Kind, id: HookId) -> String {
        let label = spec(id).label;
        if let Some((_, _, why)) = self.failed.iter().find(|(k, i, _)| *k == kind && *i == id) {
            return format!("{label}: refused when loaded with the rest: {why}");
        }
        match self.state(id) {
            HookState::Refused(why) => format!("{label}: refused: {why}"),
            HookState::NotTried(why) => format!("{label}: not tried: {why}"),
            HookState::Attached | HookState::Available => format!("{label}: works"),
        }
    }
}

/// What the operator asked for; `Want::default()` lets the agent choose.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Want {
    pub send: Option<SendHook>,
    pub kind: Option<Kind>,
    /// `--mptcp off`: no hook of its own for Multipath TCP sends.
    pub no_mptcp: bool,
}

impl Want {
    fn allows(&self, kind: Kind, send: SendHook) -> bool {
        self.kind.is_none_or(|k| k == kind) && self.send.is_none_or(|s| s == send)
    }
}

/// No configuration can run: what each one lacks, and what would fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.text())]
pub struct NoConfiguration {
    pub want: Want,
    /// Per kind (those the flags allow): why it cannot run.
    pub missing: Vec<(Kind, String)>,
}

impl NoConfiguration {
    fn text(&self) -> String {
        let mut s = String::from("no configuration of the agent can run on this kernel");
        if let Some(h) = self.want.send {
            s.push_str(&format!(" with --send-hook {}", spec(HookId::Send(h)).flag.unwrap_or("?")));
        }
        if let Some(k) = self.want.kind {
            s.push_str(&format!(" with --configuration {}", k.as_str()));
        }
        s.push(':');
        for (k, why) in &self.missing {
            s.push_str(&format!("\n  - {} ({}): {why}", k.as_str(), k.describe()));
        }
        if self.want != Want::default() {
            s.push_str("\nwithout the flags, the agent chooses among every configuration this kernel runs (see `detector check`)");
        } else {
            s.push_str(
                "\nwhat would fix it: a kernel built with BTF (CONFIG_DEBUG_INFO_BTF=y) whose verifier loads BTF tracepoints or fentry (Linux 5.11+ for socket storage), or the tracepoint sock:sock_send_length with tracefs readable and bpf_probe_read_kernel allowed (no lockdown=confidentiality), or kprobes (CONFIG_KPROBES=y)",
            );
        }
        s
    }
}

/// The best configuration the trials allow within `want`: the best kind first, then its best
/// send hook; its optional pieces are the best of each that works.
pub fn choose(t: &Trials, want: Want) -> Result<Configuration, NoConfiguration> {
    let mut missing = Vec::new();
    for kind in Kind::ALL.into_iter().filter(|k| want.kind.is_none_or(|w| w == *k)) {
        match best_of(t, kind, want) {
            Ok(c) => return Ok(c),
            Err(why) => missing.push((kind, why)),
        }
    }
    Err(NoConfiguration { want, missing })
}

/// The best configuration of `kind`, or why there is none.
fn best_of(t: &Trials, kind: Kind, want: Want) -> Result<Configuration, String> {
    let sends: Vec<SendHook> = SendHook::ALL.into_iter().filter(|s| s.socket_storage() == kind.socket_storage() && want.allows(kind, *s)).collect();
    if sends.is_empty() {
        return Err("the send hook asked for keeps its state elsewhere".into());
    }
    if let Some(&id) = kind.required().iter().find(|&&id| !t.works_in(kind, id)) {
        return Err(format!("needs {}", t.why_not(kind, id)));
    }
    let Some(send) = sends.iter().copied().find(|&s| t.works_in(kind, HookId::Send(s))) else {
        let why: Vec<String> = sends.iter().map(|&s| t.why_not(kind, HookId::Send(s))).collect();
        return Err(format!("needs one of its send hooks; {}", why.join("; ")));
    };
    let mut lifetime: Vec<HookId> = kind.required().iter().copied().filter(|id| *id != HookId::Walk).collect();
    lifetime.extend(kind.optional_lifetime().iter().copied().filter(|&id| t.works_in(kind, id)));
    let first = |ids: &[HookId]| ids.iter().copied().find(|&id| t.works_in(kind, id));
    let [pages, mptcp] = kind.paths(send);
    let paths = [pages, if want.no_mptcp { &[] } else { mptcp }].into_iter().filter_map(first).collect();
    Ok(Configuration { kind, send, paths, lifetime, startup: first(kind.startup()), later: first(kind.later()) })
}

/// The other configurations worth proving on this kernel besides `chosen`: each other kind it
/// runs (with that kind's best send hook), then each send hook it runs that none of those uses
/// (with its best kind). `cargo xtask test` runs the scenarios again with each.
pub fn alternatives(t: &Trials, chosen: &Configuration) -> Vec<Want> {
    let mut out: Vec<(Kind, SendHook)> = Vec::new();
    for kind in Kind::ALL.into_iter().filter(|k| *k != chosen.kind) {
        if let Ok(c) = best_of(t, kind, Want::default()) {
            out.push((c.kind, c.send));
        }
    }
    for send in SendHook::ALL {
        if send != chosen.send
            && !out.iter().any(|(_, s)| *s == send)
            && let Ok(c) = choose(t, Want { send: Some(send), kind: None, ..Want::default() })
        {
            out.push((c.kind, c.send));
        }
    }
    out.into_iter().map(|(kind, send)| Want { kind: Some(kind), send: Some(send), ..Want::default() }).collect()
}

/// Why the configuration in use is not the best the agent knows, one line per reason: each
/// better kind's first missing piece, each better send hook of its kind, and each better
/// variant of its optional pieces. Empty when it is the best.
pub fn not_best(t: &Trials, c: &Configuration) -> Vec<String> {
    let mut out = Vec::new();
    for kind in Kind::ALL.into_iter().filter(|k| *k < c.kind) {
        if let Err(why) = best_of(t, kind, Want::default()) {
            out.push(format!("{} ({}) {why}", kind.as_str(), kind.describe()));
        }
    }
    let better_sends = SendHook::ALL.into_iter().take_while(|s| *s != c.send).filter(|s| s.socket_storage() == c.kind.socket_storage());
    out.extend(better_sends.map(|s| t.why_not(c.kind, HookId::Send(s))));
    let lesser = |ids: &[HookId], used: Option<HookId>| -> Vec<HookId> { ids.iter().copied().take_while(|id| Some(*id) != used).collect() };
    for id in lesser(c.kind.startup(), c.startup).into_iter().chain(lesser(c.kind.later(), c.later)) {
        out.push(t.why_not(c.kind, id));
    }
    // A path's better hooks; one the kernel lacks altogether is no lesser configuration.
    for ids in c.kind.paths(c.send) {
        let used = ids.iter().copied().find(|id| c.paths.contains(id));
        for id in lesser(ids, used) {
            if !matches!(t.state(id), HookState::NotTried(_)) {
                out.push(t.why_not(c.kind, id));
            }
        }
    }
    for &id in c.kind.optional_lifetime().iter().filter(|id| !c.lifetime.contains(id)) {
        out.push(t.why_not(c.kind, id));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use HookId::*;
    use SendHook::*;

    fn refused(why: &str) -> HookState {
        HookState::Refused(why.into())
    }

    /// A kernel where `works` load and everything else is refused, but the page hooks, whose
    /// function a kernel from 6.5 lacks (not tried).
    fn kernel(works: &[HookId]) -> Trials {
        let all = super::super::hooks::HOOKS.iter().map(|h| h.id);
        Trials::new(all.map(|id| {
            let state = match id {
                _ if works.contains(&id) => HookState::Available,
                Path(FentryDoTcpSendpages | KprobeDoTcpSendpages) => HookState::NotTried("6.5+"),
                _ => refused("EPERM"),
            };
            (id, state)
        }))
    }

    const EVERY_ITER: [HookId; 5] = [Walk, ScanAdopt, Scan, ScanFilesAdopt, ScanFiles];

    #[test]
    fn a_kernel_that_runs_everything_gets_the_walk_and_the_adopting_passes() {
        // 6.18.44-fc-v657: tp_btf, classic and raw tracepoints, every iterator; no fentry, no kprobe.
        let mut works =
            vec![Send(TcpSendmsgLocked), Send(SockSendLengthBtf), Send(SockSendLength), Path(SockSendLengthBtfMptcp), RetransmitBtf, Retransmit, SetState];
        works.extend(EVERY_ITER);
        let t = kernel(&works);
        let c = choose(&t, Want::default()).unwrap();
        assert_eq!(
            c,
            Configuration {
                kind: Kind::StorageWalk,
                send: TcpSendmsgLocked,
                paths: vec![Path(SockSendLengthBtfMptcp)],
                lifetime: vec![RetransmitBtf],
                startup: Some(ScanAdopt),
                later: Some(ScanFilesAdopt)
            }
        );
        // MPTCP through sock_send_length, which runs on every send: fentry would cost less.
        assert_eq!(not_best(&t, &c), vec!["fentry mptcp_sendmsg: refused: EPERM".to_string()]);
        assert_eq!(c.hooks(), vec![Send(TcpSendmsgLocked), Path(SockSendLengthBtfMptcp), RetransmitBtf, Walk, ScanAdopt, ScanFilesAdopt]);
        // `--mptcp off` leaves the program on every send out.
        assert!(choose(&t, Want { no_mptcp: true, ..Want::default() }).unwrap().paths.is_empty());
        // The hash map's classic tracepoint takes MPTCP sockets itself.
        assert!(choose(&t, Want { kind: Some(Kind::HashMap), send: None, ..Want::default() }).unwrap().paths.is_empty());
    }

    #[test]
    fn a_build_that_refuses_the_map_iterator_samples_storage_through_sock_diag() {
        // 6.18.44-fc-v1252 and v1272: the map iterator refused before verification; the
        // adopting pass over files refused at its helper call; the plain one loads.
        let t = kernel(&[
            Send(TcpSendmsgLocked),
            Send(SockSendLengthBtf),
            Send(SockSendLength),
            Path(SockSendLengthBtfMptcp),
            RetransmitBtf,
            Retransmit,
            SetState,
            ScanAdopt,
            Scan,
            ScanFiles,
        ]);
        let c = choose(&t, Want::default()).unwrap();
        assert_eq!(
            c,
            Configuration {
                kind: Kind::StorageDiag,
                send: TcpSendmsgLocked,
                paths: vec![Path(SockSendLengthBtfMptcp)],
                lifetime: vec![RetransmitBtf],
                startup: Some(Scan),
                later: Some(ScanFiles)
            }
        );
        let why = not_best(&t, &c);
        assert_eq!(why.len(), 2, "{why:?}");
        assert!(why[0].starts_with("storage-walk") && why[0].contains("iter bpf_sk_storage_map: refused: EPERM"), "{why:?}");
        // Forcing the hash map still works there; forcing the walk names what it lacks.
        assert_eq!(choose(&t, Want { kind: Some(Kind::HashMap), send: None, ..Want::default() }).unwrap().send, SockSendLength);
        let e = choose(&t, Want { kind: Some(Kind::StorageWalk), send: None, ..Want::default() }).unwrap_err();
        assert!(e.to_string().contains("--configuration storage-walk") && e.to_string().contains("iter bpf_sk_storage_map"), "{e}");
    }

    #[test]
    fn debian_kernels_take_fentry_and_a_kernel_without_btf_hooks_the_hash_map() {
        // 6.1 / 6.12 in the VMs: fentry and kprobes, every iterator (6.1 lacks tp_btf
        // tcp_sendmsg_locked and sock_send_length); 6.1 sends pages through do_tcp_sendpages.
        let mut works = vec![Send(FentryTcpSendmsgLocked), Send(KprobeTcpSendmsgLocked), RetransmitBtf, Retransmit, SetState];
        works.extend([Path(FentryDoTcpSendpages), Path(KprobeDoTcpSendpages), Path(FentryMptcpSendmsg), Path(KprobeMptcpSendmsg)]);
        works.extend(EVERY_ITER);
        let c = choose(&kernel(&works), Want::default()).unwrap();
        assert_eq!((c.kind, c.send, c.paths.clone()), (Kind::StorageWalk, FentryTcpSendmsgLocked, vec![Path(FentryDoTcpSendpages), Path(FentryMptcpSendmsg)]));
        let c = choose(&kernel(&works), Want { kind: Some(Kind::HashMap), send: None, ..Want::default() }).unwrap();
        assert_eq!((c.send, c.paths), (KprobeTcpSendmsgLocked, vec![Path(KprobeDoTcpSendpages), Path(KprobeMptcpSendmsg)]));
        // No BTF program at all (no BTF, or a verifier refusing tracing programs).
        let c = choose(&kernel(&[Send(KprobeTcpSendmsgLocked), Retransmit, SetState, Scan]), Want::default()).unwrap();
        assert_eq!(
            c,
            Configuration {
                kind: Kind::HashMap,
                send: KprobeTcpSendmsgLocked,
                paths: vec![],
                lifetime: vec![SetState, Retransmit],
                startup: Some(Scan),
                later: None
            }
        );
        // The hash map cannot run without its close hook.
        let e = choose(&kernel(&[Send(KprobeTcpSendmsgLocked)]), Want::default()).unwrap_err();
        assert!(e.missing.iter().any(|(k, why)| *k == Kind::HashMap && why.contains("raw_tp inet_sock_set_state")), "{e}");
    }

    #[test]
    fn confidentiality_lockdown_keeps_the_btf_programs() {
        // 6.12 with lockdown=confidentiality: no tracefs and no probe reads, so neither the
        // classic tracepoints nor kprobes; BTF programs load.
        let mut works = vec![Send(FentryTcpSendmsgLocked), RetransmitBtf, SetState];
        works.extend(EVERY_ITER);
        let t = kernel(&works);
        let c = choose(&t, Want::default()).unwrap();
        assert_eq!((c.kind, c.send, c.startup, c.later), (Kind::StorageWalk, FentryTcpSendmsgLocked, Some(ScanAdopt), Some(ScanFilesAdopt)));
    }

    #[test]
    fn a_piece_refused_with_the_rest_steps_down_to_the_next_whole_configuration() {
        let t0 = kernel(&[Send(TcpSendmsgLocked), Send(SockSendLengthBtf), Send(SockSendLength), SetState, Walk, Scan, ScanFiles]);
        let mut t = t0.clone();
        assert_eq!(choose(&t, Want::default()).unwrap().kind, Kind::StorageWalk);
        // The walk could not start (its two clock reads gave no HZ Linux has).
        t.fail(Kind::StorageWalk, Walk, "no HZ".into());
        let c = choose(&t, Want::default()).unwrap();
        assert_eq!((c.kind, c.send), (Kind::StorageDiag, TcpSendmsgLocked));
        // The announcing send program refused: its next send hook in the same kind.
        t.fail(Kind::StorageDiag, Send(TcpSendmsgLocked), "too complex".into());
        let c = choose(&t, Want::default()).unwrap();
        assert_eq!((c.kind, c.send), (Kind::StorageDiag, SockSendLengthBtf));
        assert!(
            not_best(&t, &c).iter().any(|w| w.contains("tp_btf tcp_sendmsg_locked: refused when loaded with the rest: too complex")),
            "{:?}",
            not_best(&t, &c)
        );
        t.fail(Kind::StorageDiag, Send(SockSendLengthBtf), "x".into());
        assert_eq!(choose(&t, Want::default()).unwrap().kind, Kind::HashMap);
        // A failure in one kind says nothing of another.
        assert_eq!(t.failures().len(), 3);
        assert_eq!(choose(&t0, Want::default()).unwrap().kind, Kind::StorageWalk);
    }

    #[test]
    fn every_kind_and_every_send_hook_a_kernel_runs_is_an_alternative_once() {
        let want = |kind, send| Want { kind: Some(kind), send: Some(send), ..Want::default() };
        // v657: the walk with tcp_sendmsg_locked is chosen.
        let mut works = vec![Send(TcpSendmsgLocked), Send(SockSendLengthBtf), Send(SockSendLength), SetState, RetransmitBtf, Retransmit];
        works.extend(EVERY_ITER);
        let t = kernel(&works);
        let c = choose(&t, Want::default()).unwrap();
        assert_eq!(
            alternatives(&t, &c),
            vec![want(Kind::StorageDiag, TcpSendmsgLocked), want(Kind::HashMap, SockSendLength), want(Kind::StorageWalk, SockSendLengthBtf)]
        );
        // v1252: no walk.
        works.retain(|h| *h != Walk);
        let t = kernel(&works);
        let c = choose(&t, Want::default()).unwrap();
        assert_eq!(alternatives(&t, &c), vec![want(Kind::HashMap, SockSendLength), want(Kind::StorageDiag, SockSendLengthBtf)]);
    }

    #[test]
    fn a_forced_send_hook_picks_the_best_kind_that_keeps_its_state() {
        let mut works = vec![Send(TcpSendmsgLocked), Send(SockSendLengthBtf), Send(SockSendLength), SetState, RetransmitBtf, Retransmit];
        works.extend(EVERY_ITER);
        let t = kernel(&works);
        let c = choose(&t, Want { send: Some(SockSendLength), kind: None, ..Want::default() }).unwrap();
        assert_eq!((c.kind, c.lifetime.clone(), c.startup, c.later), (Kind::HashMap, vec![SetState, Retransmit], Some(Scan), Some(ScanFiles)));
        let c = choose(&t, Want { send: Some(SockSendLengthBtf), kind: Some(Kind::StorageDiag), ..Want::default() }).unwrap();
        assert_eq!((c.kind, c.send, c.startup), (Kind::StorageDiag, SockSendLengthBtf, Some(Scan)));
        let e = choose(&t, Want { send: Some(FentryTcpSendmsgLocked), kind: None, ..Want::default() }).unwrap_err();
        assert!(e.to_string().contains("--send-hook fentry") && e.to_string().contains("fentry tcp_sendmsg_locked: refused: EPERM"), "{e}");
        let e = choose(&t, Want { send: Some(SockSendLength), kind: Some(Kind::StorageWalk), ..Want::default() }).unwrap_err();
        assert!(e.to_string().contains("keeps its state elsewhere"), "{e}");
    }

    #[test]
    fn a_kernel_where_nothing_works_is_told_what_each_kind_lacks_and_what_would_fix_it() {
        let e = choose(&kernel(&[]), Want::default()).unwrap_err();
        assert_eq!(e.missing.iter().map(|(k, _)| *k).collect::<Vec<_>>(), Kind::ALL.to_vec());
        let text = e.to_string();
        for needle in [
            "storage-walk",
            "iter bpf_sk_storage_map: refused",
            "storage-diag",
            "tp_btf tcp_sendmsg_locked: refused",
            "hash-map",
            "what would fix it",
            "CONFIG_DEBUG_INFO_BTF",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
    }
}
