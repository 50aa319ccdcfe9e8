//! What a process's cgroup path says about it: container id and Kubernetes pod UID.
//!
//! Pure string parsing of `/proc/<pid>/cgroup`, covering the names the common runtimes and
//! the kubelet's two cgroup drivers produce, on cgroup v1 and v2:
//!
//! | runtime / driver | path component |
//! | --- | --- |
//! | containerd, systemd driver | `cri-containerd-<id>.scope` |
//! | CRI-O, systemd driver | `crio-<id>.scope` (`crio-conmon-<id>.scope` is the monitor) |
//! | Docker, systemd driver | `docker-<id>.scope` |
//! | cgroupfs driver (any runtime) | `/kubepods/<qos>/pod<uid>/<id>`, `/docker/<id>` |
//! | kubelet pod, systemd driver | `kubepods-<qos>-pod<uid with _>.slice` |
//! | kubelet pod, cgroupfs driver | `pod<uid>` |

/// The cgroup v2 path of a process (the `0::` line), else the first v1 path that names a
/// container (v1 controllers can sit in different places).
pub fn primary_path(proc_cgroup: &str) -> Option<String> {
    let mut v1 = None;
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(_ctrl), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if id == "0" && !path.is_empty() && path != "/" {
            return Some(path.to_string());
        }
        if v1.is_none() && container_id(path).is_some() {
            v1 = Some(path.to_string());
        }
    }
    v1.or_else(|| proc_cgroup.lines().find_map(|l| l.strip_prefix("0::").map(str::to_string)))
}

fn is_hex_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The container id (64 hex digits) a cgroup path names, if any.
pub fn container_id(path: &str) -> Option<String> {
    for comp in path.rsplit('/') {
        let base = comp.strip_suffix(".scope").unwrap_or(comp);
        if base.starts_with("crio-conmon-") {
            continue;
        }
        let id = ["cri-containerd-", "crio-", "docker-", "libpod-", "containerd-"].iter().find_map(|p| base.strip_prefix(p)).unwrap_or(base);
        if is_hex_id(id) {
            return Some(id.to_string());
        }
    }
    None
}

/// The Kubernetes pod UID a cgroup path names, if any (with dashes, as the API shows it).
pub fn pod_uid(path: &str) -> Option<String> {
    for comp in path.split('/') {
        let base = comp.strip_suffix(".slice").unwrap_or(comp);
        // systemd driver: kubepods-burstable-pod<uid_with_underscores>
        let after = match base.rfind("pod") {
            Some(i) if base[..i].is_empty() || base[..i].ends_with('-') => &base[i + 3..],
            _ => continue,
        };
        let uid = after.replace('_', "-");
        if is_uuid(&uid) {
            return Some(uid);
        }
    }
    None
}

fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5 && groups.iter().zip([8, 4, 4, 4, 12]).all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f1b9a0c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f90";
    const UID: &str = "1b2c3d4e-5f60-4a1b-9c8d-7e6f5a4b3c2d";

    #[test]
    fn containerd_systemd_driver_v2() {
        let uid_ = UID.replace('-', "_");
        let p = format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{ID}.scope");
        assert_eq!(container_id(&p).as_deref(), Some(ID));
        assert_eq!(pod_uid(&p).as_deref(), Some(UID));
        assert_eq!(primary_path(&format!("0::{p}\n")).as_deref(), Some(p.as_str()));
    }

    #[test]
    fn crio_and_its_monitor() {
        let p = format!("/kubepods.slice/kubepods-pod{}.slice/crio-{ID}.scope", UID.replace('-', "_"));
        assert_eq!(container_id(&p).as_deref(), Some(ID));
        assert_eq!(pod_uid(&p).as_deref(), Some(UID));
        let conmon = format!("/kubepods.slice/crio-conmon-{ID}.scope");
        assert_eq!(container_id(&conmon), None);
    }

    #[test]
    fn cgroupfs_driver_and_docker_on_v1() {
        let proc_cgroup = format!(
            "12:pids:/kubepods/besteffort/pod{UID}/{ID}\n11:memory:/kubepods/besteffort/pod{UID}/{ID}\n1:name=systemd:/kubepods/besteffort/pod{UID}/{ID}\n"
        );
        let p = primary_path(&proc_cgroup).unwrap();
        assert_eq!(container_id(&p).as_deref(), Some(ID));
        assert_eq!(pod_uid(&p).as_deref(), Some(UID));
        assert_eq!(container_id(&format!("/docker/{ID}")).as_deref(), Some(ID));
        assert_eq!(container_id(&format!("/system.slice/docker-{ID}.scope")).as_deref(), Some(ID));
        assert_eq!(pod_uid(&format!("/docker/{ID}")), None);
    }

    #[test]
    fn host_processes_have_neither() {
        let p = primary_path("0::/user.slice/user-0.slice/session-1.scope\n").unwrap();
        assert_eq!(container_id(&p), None);
        assert_eq!(pod_uid(&p), None);
        // "pod" inside another word is not a pod.
        assert_eq!(pod_uid("/system.slice/podman.service"), None);
        assert_eq!(primary_path("0::/\n").as_deref(), Some("/"));
    }
}
