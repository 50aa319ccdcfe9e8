//! Policy files as the tests write them: TOML literals, with `$name` filled in.

/// `template` with each `$name` of `vars` replaced by its value (longest names first, so
/// `$port` never eats `$port2`). A `$` left over is a typo in the test: it panics.
pub fn toml(template: &str, vars: &[(&str, &dyn std::fmt::Display)]) -> String {
    let mut vars: Vec<_> = vars.iter().collect();
    vars.sort_by_key(|(name, _)| std::cmp::Reverse(name.len()));
    let mut out = template.to_string();
    for (name, value) in vars {
        out = out.replace(&format!("${name}"), &value.to_string());
    }
    assert!(!out.contains('$'), "a `$name` left unfilled in:\n{out}");
    out
}

/// A policy that destroys the stalled sockets on local port `port` and nothing else: how a test
/// scopes an acting agent to its own server while other tests run beside it.
pub fn destroy_on_port(port: impl std::fmt::Display) -> String {
    toml(
        r#"
[[selector]]
name = "this-test"
match = { local_port = $port }
actions = [{ action = "destroy" }]
"#,
        &[("port", &port)],
    )
}

/// Writes `body` as `policy.toml` in `dir`; returns its path.
pub fn policy_file(dir: &crate::Scratch, body: &str) -> String {
    let p = dir.0.join("policy.toml");
    std::fs::write(&p, body).unwrap_or_else(|e| panic!("writing {}: {e}", p.display()));
    p.display().to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_are_filled_longest_first_and_a_leftover_panics() {
        assert_eq!(super::toml("a = $port2\nb = $port", &[("port", &1), ("port2", &2)]), "a = 2\nb = 1");
        assert!(std::panic::catch_unwind(|| super::toml("a = $nope", &[])).is_err());
    }
}
