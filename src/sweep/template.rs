//! `{{name}}` substitution for the sbatch templates in `slurm/templates/`. A dozen keys,
//! no loops or conditionals (optional `#SBATCH` lines are rendered by the caller as one
//! block), so our own 30 lines instead of a template crate; unknown or unclosed
//! placeholders are errors, so a typo in a template never reaches a cluster.
use std::collections::BTreeMap;

use crate::error::{Error, Result};

pub fn render(template: &str, origin: &str, vars: &BTreeMap<&str, String>) -> Result<String> {
    let mut out = String::with_capacity(template.len() + 256);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end =
            after.find("}}").ok_or_else(|| Error::usage(origin.to_string(), "a `{{` without its `}}`".to_string()))?;
        let key = after[..end].trim();
        let value = vars
            .get(key)
            .ok_or_else(|| Error::usage(origin.to_string(), format!("unknown placeholder `{{{{{key}}}}}`")))?;
        out.push_str(value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitutes_and_refuses_unknown_keys() {
        let vars = BTreeMap::from([("a", "1".to_string()), ("bee", "two".to_string())]);
        assert_eq!(render("x={{a}} y={{ bee }} ${HOME}", "t", &vars).unwrap(), "x=1 y=two ${HOME}");
        assert!(render("{{c}}", "t", &vars).unwrap_err().to_string().contains("`{{c}}`"));
        assert!(render("{{a", "t", &vars).is_err());
    }
}
