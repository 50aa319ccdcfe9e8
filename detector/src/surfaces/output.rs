//! Rendering answers for people (tables). Process names, command lines and pod names are
//! chosen by whoever runs the process (`prctl(PR_SET_NAME)`), so every such field is escaped:
//! a control character prints as `\x1b`, never reaching the terminal.
pub use crate::escape::printable;
use crate::{
    report::{Explain, StalledSocket, TrackedSocket},
    surfaces::api::Status,
};

fn opt(v: Option<impl ToString>) -> String {
    v.map_or_else(|| "-".into(), |x| x.to_string())
}

pub fn stalled_table(rows: &[StalledSocket]) -> String {
    if rows.is_empty() {
        return "no stalled sockets\n".into();
    }
    let header = ["PID", "COMM", "FD", "POD", "LOCAL", "REMOTE", "STATE", "QUEUED", "STALLED", "REASON", "RETRANS", "PROBES"];
    let cells: Vec<[String; 12]> = rows
        .iter()
        .map(|r| {
            [
                opt(r.pid),
                r.comm.as_deref().map_or_else(|| format!("? (sent: {})", printable(&r.sender_comm)), |c| printable(c).into_owned()),
                opt(r.fd),
                match (&r.pod_namespace, &r.pod_name) {
                    (Some(ns), Some(n)) => printable(&format!("{ns}/{n}")).into_owned(),
                    _ => "-".into(),
                },
                r.local.to_string(),
                r.remote.to_string(),
                r.state.to_string(),
                r.queued_bytes.to_string(),
                format!("{:.1}s", r.stalled_for_ms as f64 / 1e3),
                r.reason.as_str().into(),
                r.retransmits.to_string(),
                r.zero_window_probes.to_string(),
            ]
        })
        .collect();
    render(&header, &cells)
}

pub fn sockets_table(rows: &[TrackedSocket]) -> String {
    if rows.is_empty() {
        return "no tracked sockets\n".into();
    }
    let header = ["ID", "SENDER", "COMM", "POD", "LOCAL", "REMOTE", "STATE", "QUEUED", "ACKED", "STALLED"];
    let cells: Vec<[String; 10]> = rows
        .iter()
        .map(|r| {
            [
                r.id.to_string(),
                r.sender_pid.to_string(),
                printable(&r.sender_comm).into_owned(),
                opt(r.pod.as_deref().map(printable)),
                r.local.to_string(),
                r.remote.to_string(),
                r.state.to_string(),
                opt(r.queued_bytes),
                opt(r.bytes_acked),
                if r.stalled { "yes" } else { "no" }.into(),
            ]
        })
        .collect();
    render(&header, &cells)
}

/// `detector explain` for people.
pub fn explain(e: &Explain) -> String {
    let mut out = format!("socket {}  {} -> {}  sender pid {} ({})\n", e.id, e.local, e.remote, e.sender_pid, printable(&e.sender_comm));
    let v = &e.verdict;
    let grace = e.grace_ms as f64 / 1e3;
    match (v.stalled, v.stalled_for_ms, v.stuck_for_ms) {
        (true, Some(ms), _) => {
            out.push_str(&format!("verdict: STALLED ({}) for {:.1}s (grace {grace:.1}s)\n", v.reason.map_or("", |r| r.as_str()), ms as f64 / 1e3))
        }
        (false, _, Some(ms)) => out.push_str(&format!("verdict: not stalled yet: stuck for {:.1}s of a {grace:.1}s grace\n", ms as f64 / 1e3)),
        _ => out.push_str(&format!("verdict: healthy (recovered {} times)\n", e.recoveries)),
    }
    if let Some(onset) = &v.onset {
        out.push_str(&format!("onset fixed by: {onset}\n"));
    }
    if let Some(d) = &v.drain {
        out.push_str(&format!(
            "trickle: {} bytes drained in {:.0}s ({:.1} B/s; the floor is {} B/s)\n",
            d.bytes,
            d.over_ms as f64 / 1e3,
            d.bytes_per_s(),
            d.floor_bytes_per_s
        ));
    }
    if let Some(k) = &e.kernel {
        let last = k.last_retransmit_ms_ago.map_or(String::new(), |a| format!(", the last {:.1}s ago", a as f64 / 1e3));
        out.push_str(&format!(
            "kernel side: tracked for {:.1}s by {}{}\n",
            k.tracked_for_ms as f64 / 1e3,
            k.send_hook.as_deref().unwrap_or("?"),
            k.retransmits.map_or(String::new(), |r| format!(", {r} retransmits seen{last}"))
        ));
    }
    out.push_str("\nrecent samples (newest last):\n");
    let header = ["AGE", "STATE", "QUEUED", "ACKED", "IN_FLIGHT", "PEER_WND", "RETRANS", "PROBES", "LAST_ACK", "LAST_DATA", "RTO"];
    let cells: Vec<[String; 11]> = e
        .samples
        .iter()
        .map(|s| {
            [
                format!("{:.1}s", s.age_ms as f64 / 1e3),
                s.state.to_string(),
                s.queued_bytes.to_string(),
                s.bytes_acked.to_string(),
                s.in_flight_segments.to_string(),
                opt(s.peer_window),
                s.total_retransmits.to_string(),
                s.unanswered_probes.to_string(),
                format!("{}ms", s.last_ack_ms_ago),
                format!("{}ms", s.last_data_sent_ms_ago),
                format!("{}ms", s.rto_ms),
            ]
        })
        .collect();
    out.push_str(&render(&header, &cells));
    out.push_str("\nverdict changes:\n");
    for c in &e.changes {
        out.push_str(&format!("  {:.1}s ago: {}\n", c.age_ms as f64 / 1e3, printable(&c.what)));
    }
    out
}

/// `detector status` for people.
pub fn status(s: &Status) -> String {
    let a = &s.setup;
    let mut out = format!(
        "detector {} on kernel {}, up {}s\nconfiguration: {}\n{}send hook: {} ({})\nsampling: {}\ngrace {:.1}s, interval {:.1}s, max sockets {}\nsocket destroy: {}\npolicy: {} selector(s){}\n",
        a.version,
        a.kernel,
        s.uptime_s,
        a.configuration_detail,
        not_best(&a.not_best),
        a.send_hook,
        a.storage,
        a.sampling,
        a.grace_ms as f64 / 1e3,
        a.interval_ms as f64 / 1e3,
        a.max_sockets,
        a.destroy_detail,
        a.selectors.len(),
        if a.dry_run { ", dry run" } else { "" }
    );
    out.push_str(&format!(
        "sockets: {} tracked, {} stalled{}{}; {} passes, the last {:.1} ms; reconcile every {:.1} s, the last {:.1} ms of CPU\n\nhooks:\n",
        s.sockets_tracked,
        s.sockets_stalled,
        if s.sockets_stalled_undetailed > 0 { format!(" ({} past the detail cap: counted, not listed)", s.sockets_stalled_undetailed) } else { String::new() },
        s.kernel_map_entries.map_or(String::new(), |n| format!(", {n} in the kernel's map")),
        s.sweeps,
        s.last_sweep_ms,
        s.reconcile_every_ms as f64 / 1e3,
        s.reconcile_cpu_ms
    ));
    let cells: Vec<[String; 4]> = s.hooks.iter().map(|h| [h.role.clone(), h.hook.clone(), h.state.clone(), h.why.clone().unwrap_or_default()]).collect();
    out.push_str(&render(&["ROLE", "HOOK", "STATE", "WHY"], &cells));
    if !s.programs.is_empty() {
        out.push_str("\nprograms (kernel accounting, with kernel.bpf_stats_enabled=1):\n");
        let cells: Vec<[String; 5]> = s
            .programs
            .iter()
            .map(|p| [p.name.clone(), p.run_count.to_string(), p.run_time_ns.to_string(), format!("{:.0}", p.avg_ns), p.recursion_misses.to_string()])
            .collect();
        out.push_str(&render(&["PROGRAM", "RUNS", "NS", "NS/RUN", "SKIPPED"], &cells));
    }
    out
}

/// Why the configuration is not the best, one line each (escaped: kernel text).
fn not_best(why: &[String]) -> String {
    if why.is_empty() {
        return "(the best configuration the agent knows)\n".into();
    }
    why.iter().map(|w| format!("  not the best: {}\n", crate::escape::printable(w))).collect()
}

fn render<const N: usize>(header: &[&str; N], cells: &[[String; N]]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cols: &mut dyn Iterator<Item = &str>| {
        let parts: Vec<String> = cols.zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(parts.join("  ").trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in cells {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::Reason;

    fn row(comm: &str) -> StalledSocket {
        let mut s = StalledSocket::example();
        (s.pid, s.comm, s.fd, s.sender_comm) = (Some(7), Some(comm.into()), None, comm.into());
        (s.local, s.remote) = ("127.0.0.1:80".parse().unwrap(), "127.0.0.1:5000".parse().unwrap());
        (s.reason, s.queued_bytes, s.pod_namespace, s.pod_name) = (Reason::PeerNotReading, 100, None, None);
        s
    }

    #[test]
    fn table_has_a_header_and_one_line_per_socket() {
        let t = stalled_table(&[row("server")]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("PID"));
        assert!(lines[1].contains("server") && lines[1].contains("31.5s") && lines[1].contains(" - ") && lines[1].contains("peer_not_reading"));
        assert_eq!(stalled_table(&[]), "no stalled sockets\n");
    }

    #[test]
    fn hostile_process_names_print_inert() {
        let t = stalled_table(&[row("evil\x1b[2J\x07\n\\")]);
        assert!(!t.contains('\x1b') && !t.contains('\x07'), "{t:?}");
        assert!(t.contains("evil\\x1b[2J\\x07\\x0a\\\\"), "{t}");
        assert_eq!(t.lines().count(), 2, "a newline in a name does not make a row");
        assert_eq!(printable("plain"), std::borrow::Cow::Borrowed("plain"));
    }
}
