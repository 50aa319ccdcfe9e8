//! Pod UID → namespace and name, without the API server: the kubelet keeps each pod's logs
//! in `/var/log/pods/<namespace>_<name>_<uid>/`.
use std::{collections::HashMap, path::Path};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodName {
    pub namespace: String,
    pub name: String,
}

/// Parses a `/var/log/pods` directory name. Namespaces and pod names cannot contain `_`
/// (they are DNS labels/subdomains), so the split is unambiguous.
pub fn parse_dir(name: &str) -> Option<(String, PodName)> {
    let mut it = name.splitn(3, '_');
    let (ns, pod, uid) = (it.next()?, it.next()?, it.next()?);
    if ns.is_empty() || pod.is_empty() || uid.is_empty() {
        return None;
    }
    Some((uid.to_string(), PodName { namespace: ns.to_string(), name: pod.to_string() }))
}

/// Reads the directory: uid → name. Missing directory = no pods (not a Kubernetes node).
pub fn scan(dir: &Path) -> HashMap<String, PodName> {
    std::fs::read_dir(dir).map(|rd| rd.filter_map(Result::ok).filter_map(|e| parse_dir(&e.file_name().to_string_lossy())).collect()).unwrap_or_default()
}

/// Cached uid → name map, re-read when an unknown uid shows up (at most every 10 s).
pub struct PodNames {
    dir: std::path::PathBuf,
    map: HashMap<String, PodName>,
    scanned: Option<std::time::Instant>,
}

impl PodNames {
    pub fn new(dir: std::path::PathBuf) -> Self {
        Self { dir, map: HashMap::new(), scanned: None }
    }

    pub fn get(&mut self, uid: &str) -> Option<&PodName> {
        let stale = self.scanned.is_none_or(|t| t.elapsed() > std::time::Duration::from_secs(10));
        if !self.map.contains_key(uid) && stale {
            self.map = scan(&self.dir);
            self.scanned = Some(std::time::Instant::now());
        }
        self.map.get(uid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kubelet_log_dirs() {
        let (uid, p) = parse_dir("kube-system_coredns-7db6d8ff4d-x2x9k_0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b").unwrap();
        assert_eq!(uid, "0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b");
        assert_eq!(p.namespace, "kube-system");
        assert_eq!(p.name, "coredns-7db6d8ff4d-x2x9k");
        assert!(parse_dir("garbage").is_none());
        assert!(parse_dir("a__b").is_none());
    }
}
