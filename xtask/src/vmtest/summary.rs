//! Results: one kernel's summary, and the README's supported-kernels table.
use std::{collections::BTreeMap, path::Path, time::Duration};

use anyhow::{Context as _, bail};
use serde_json::Value;

use super::*;

pub(super) struct Summary {
    pub(super) kernel: Kernel,
    pub(super) release: String,
    pub(super) lockdown: String,
    pub(super) picked: Option<String>,
    /// Per configuration (`kind/send-hook`): (passed, failed).
    pub(super) configurations: BTreeMap<String, (usize, usize)>,
    pub(super) destroy: String,
    pub(super) took: Duration,
    pub(super) error: Option<String>,
}

impl Summary {
    pub(super) fn read(kernel: Kernel, out: &Path, took: Duration) -> anyhow::Result<Summary> {
        let checks: Value = std::fs::read(out.join("check.json")).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or(Value::Null);
        let detail =
            |name: &str| checks.as_array().into_iter().flatten().find(|c| c["name"] == name).and_then(|c| c["detail"].as_str()).unwrap_or("?").to_string();
        let mut proven = BTreeMap::new();
        let results = std::fs::read_to_string(out.join("results.jsonl")).unwrap_or_default();
        for v in results.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()) {
            let e: &mut (usize, usize) = proven.entry(v["configuration"].as_str().unwrap_or("?").to_string()).or_default();
            if v["outcome"] == "ok" {
                e.0 += 1;
            } else {
                e.1 += 1;
            }
        }
        let error = std::fs::read_to_string(out.join("error.txt")).ok().or_else(|| proven.is_empty().then(|| "no test ran (see console.log)".to_string()));
        let lockdown = std::fs::read_to_string(out.join("lockdown.txt")).unwrap_or_else(|_| "?".into());
        Ok(Summary {
            kernel,
            release: detail("kernel"),
            lockdown,
            picked: configurations(&checks).1,
            configurations: proven,
            destroy: detail("socket destroy"),
            took,
            error,
        })
    }

    pub(super) fn passed(&self) -> bool {
        self.error.is_none() && self.configurations.values().all(|(_, f)| *f == 0)
    }

    pub(super) fn line(&self) -> String {
        let proven: Vec<String> = self.configurations.iter().map(|(c, (p, f))| format!("{c} {p} passed {f} failed")).collect();
        format!(
            "xtask vmtest: {} ({}, lockdown {}) in {:.0} s: {}; the agent picks {}{}",
            self.kernel.name(),
            self.release,
            self.lockdown,
            self.took.as_secs_f64(),
            proven.join(", "),
            self.picked.as_deref().unwrap_or("nothing"),
            self.error.as_deref().map(|e| format!("; ERROR: {e}")).unwrap_or_default()
        )
    }
}

/// The README's "supported kernels" table.
pub(super) fn table(summaries: &[Summary]) -> String {
    let mut t =
        String::from("| Kernel | Lockdown | The agent picks (no flags) | Configurations proven (tests passed) | Socket destroy |\n|---|---|---|---|---|\n");
    for s in summaries {
        let proven: Vec<String> =
            s.configurations.iter().map(|(c, (p, f))| if *f == 0 { format!("`{c}` ({p})") } else { format!("`{c}` ({p}, **{f} failed**)") }).collect();
        let proven = if s.error.is_some() && proven.is_empty() { "did not run".to_string() } else { proven.join(", ") };
        t += &format!("| {} | {} | `{}` | {} | {} |\n", s.release, s.lockdown, s.picked.as_deref().unwrap_or("none"), proven, s.destroy);
    }
    t
}

pub(super) const TABLE_BEGIN: &str = "<!-- kernels: produced by `cargo xtask vmtest --kernel all` -->\n";
pub(super) const TABLE_END: &str = "<!-- /kernels -->";

/// Puts `table` between the README's kernel-table markers.
pub(super) fn update_readme(readme: &Path, table: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(readme).context("reading README.md")?;
    let (Some(b), Some(e)) = (text.find(TABLE_BEGIN), text.find(TABLE_END)) else {
        bail!("README.md has no kernel-table markers ({} … {TABLE_END})", TABLE_BEGIN.trim_end());
    };
    let new = format!("{}{table}{}", &text[..b + TABLE_BEGIN.len()], &text[e..]);
    std::fs::write(readme, new).context("writing README.md")
}
