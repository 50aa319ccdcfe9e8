//! Rendering query answers for people (table) or programs (json).
use crate::api::{StalledSocket, TrackedSocket};

pub fn stalled_table(rows: &[StalledSocket]) -> String {
    if rows.is_empty() {
        return "no stalled sockets\n".into();
    }
    let header = [
        "PID", "COMM", "FD", "POD", "LOCAL", "REMOTE", "STATE", "QUEUED", "STALLED", "REASON", "RETRANS", "PROBES",
    ];
    let cells: Vec<[String; 12]> = rows
        .iter()
        .map(|r| {
            [
                r.pid.map_or("-".into(), |p| p.to_string()),
                r.comm.clone().unwrap_or_else(|| format!("? (sent: {})", r.sender_comm)),
                r.fd.map_or("-".into(), |f| f.to_string()),
                match (&r.pod_namespace, &r.pod_name) {
                    (Some(ns), Some(n)) => format!("{ns}/{n}"),
                    _ => "-".into(),
                },
                r.local.clone(),
                r.remote.clone(),
                r.state.clone(),
                r.queued_bytes.to_string(),
                format!("{:.1}s", r.stalled_for_ms as f64 / 1e3),
                r.reason.clone(),
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
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let cells: Vec<[String; 10]> = rows
        .iter()
        .map(|r| {
            [
                r.id.to_string(),
                r.sender_pid.to_string(),
                r.sender_comm.clone(),
                opt(r.pod.clone()),
                r.local.clone(),
                r.remote.clone(),
                r.state.clone(),
                opt(r.queued_bytes.map(|q| q.to_string())),
                opt(r.bytes_acked.map(|q| q.to_string())),
                if r.stalled { "yes" } else { "no" }.into(),
            ]
        })
        .collect();
    render(&header, &cells)
}

/// `detector explain` for people.
pub fn explain(v: &serde_json::Value) -> String {
    let mut out = format!(
        "socket {}  {} -> {}  sender pid {} ({})\n",
        v["id"], v["local"].as_str().unwrap_or(""), v["remote"].as_str().unwrap_or(""), v["sender_pid"], v["sender_comm"].as_str().unwrap_or("")
    );
    let verdict = &v["verdict"];
    if verdict["stalled"] == true {
        out.push_str(&format!(
            "verdict: STALLED ({}) for {:.1}s (grace {:.1}s)\n",
            verdict["reason"].as_str().unwrap_or(""),
            verdict["stalled_for_ms"].as_f64().unwrap_or(0.0) / 1e3,
            v["grace_ms"].as_f64().unwrap_or(0.0) / 1e3
        ));
    } else if let Some(stuck) = verdict["stuck_for_ms"].as_f64() {
        out.push_str(&format!(
            "verdict: not stalled yet: stuck for {:.1}s of a {:.1}s grace\n",
            stuck / 1e3,
            v["grace_ms"].as_f64().unwrap_or(0.0) / 1e3
        ));
    } else {
        out.push_str(&format!("verdict: healthy (recovered {} times)\n", v["recoveries"]));
    }
    if let Some(onset) = verdict["onset"].as_str() {
        out.push_str(&format!("onset fixed by: {onset}\n"));
    }
    if let Some(k) = v["kernel"].as_object() {
        out.push_str(&format!(
            "kernel side: tracked for {:.1}s, {} retransmits seen{}\n",
            k["tracked_for_ms"].as_f64().unwrap_or(0.0) / 1e3,
            k["retransmits"],
            k["last_retransmit_ms_ago"].as_f64().map_or(String::new(), |a| format!(", the last {:.1}s ago", a / 1e3))
        ));
    }
    out.push_str("\nrecent samples (newest last):\n");
    let header = ["AGE", "STATE", "QUEUED", "ACKED", "IN_FLIGHT", "PEER_WND", "RETRANS", "PROBES", "LAST_ACK", "LAST_DATA", "RTO"];
    let cells: Vec<[String; 11]> = v["samples"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|s| {
            let n = |k: &str| s[k].as_u64().map_or("-".into(), |x| x.to_string());
            [
                format!("{:.1}s", s["age_ms"].as_f64().unwrap_or(0.0) / 1e3),
                s["state"].as_str().unwrap_or("").into(),
                n("queued_bytes"),
                n("bytes_acked"),
                n("in_flight_segments"),
                n("peer_window"),
                n("total_retransmits"),
                n("unanswered_probes"),
                format!("{}ms", n("last_ack_ms_ago")),
                format!("{}ms", n("last_data_sent_ms_ago")),
                format!("{}ms", n("rto_ms")),
            ]
        })
        .collect();
    out.push_str(&render(&header, &cells));
    out.push_str("\nverdict changes:\n");
    for c in v["changes"].as_array().map(|a| a.as_slice()).unwrap_or_default() {
        out.push_str(&format!("  {:.1}s ago: {}\n", c["age_ms"].as_f64().unwrap_or(0.0) / 1e3, c["what"].as_str().unwrap_or("")));
    }
    out
}

fn render<const N: usize>(header: &[&str; N], cells: &[[String; N]]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
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

    #[test]
    fn table_has_a_header_and_one_line_per_socket() {
        let r = StalledSocket {
            pid: Some(7),
            comm: Some("server".into()),
            fd: None,
            owner_known: true,
            holders: vec![],
            exe: None,
            cmdline: None,
            start_time: None,
            sender_pid: 7,
            sender_tid: 7,
            sender_comm: "server".into(),
            cgroup_id: 1,
            cgroup: None,
            container_id: None,
            pod_uid: None,
            pod_namespace: None,
            pod_name: None,
            local: "127.0.0.1:80".into(),
            remote: "127.0.0.1:5000".into(),
            state: "ESTABLISHED".into(),
            queued_bytes: 100,
            notsent_bytes: 0,
            stalled_for_ms: 31_500,
            reason: "peer_not_reading".into(),
            retransmits: 0,
            zero_window_probes: 2,
            peer_window: Some(0),
            socket_cookie: 9,
            inode: 1,
            netns: 1,
        };
        let t = stalled_table(&[r]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("PID"));
        assert!(lines[1].contains("server") && lines[1].contains("31.5s") && lines[1].contains(" - "));
        assert_eq!(stalled_table(&[]), "no stalled sockets\n");
    }
}
