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

#[cfg(test)]
mod tests {
    #[test]
    fn names_are_filled_longest_first_and_a_leftover_panics() {
        assert_eq!(super::toml("a = $port2\nb = $port", &[("port", &1), ("port2", &2)]), "a = 2\nb = 1");
        assert!(std::panic::catch_unwind(|| super::toml("a = $nope", &[])).is_err());
    }
}
