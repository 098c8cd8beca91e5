//! The text form of a label requirement, in Kubernetes label-selector
//! syntax (`real=true`, `zone in (a, b)`, `gpu`, `!spot`), for messages
//! users read (waiting reasons). Owns only this spelling, never matching.

use crate::v1::LabelOperator;

/// `key op values` as a selector term.
pub fn text(key: &str, op: LabelOperator, values: &[String]) -> String {
    let list = || values.join(", ");
    match (op, values) {
        (LabelOperator::In, [one]) => format!("{key}={one}"),
        (LabelOperator::In, _) => format!("{key} in ({})", list()),
        (LabelOperator::NotIn, [one]) => format!("{key}!={one}"),
        (LabelOperator::NotIn, _) => format!("{key} notin ({})", list()),
        (LabelOperator::Exists, _) => key.to_string(),
        (LabelOperator::DoesNotExist, _) => format!("!{key}"),
        (LabelOperator::Unspecified, _) => format!("{key} ? ({})", list()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requirements_read_in_label_selector_syntax() {
        let t = |op, values: &[&str]| {
            let values: Vec<String> = values.iter().map(|v| v.to_string()).collect();
            text("k", op, &values)
        };
        assert_eq!(t(LabelOperator::In, &["a"]), "k=a");
        assert_eq!(t(LabelOperator::In, &["a", "b"]), "k in (a, b)");
        assert_eq!(t(LabelOperator::NotIn, &["a"]), "k!=a");
        assert_eq!(t(LabelOperator::NotIn, &["a", "b"]), "k notin (a, b)");
        assert_eq!(t(LabelOperator::Exists, &[]), "k");
        assert_eq!(t(LabelOperator::DoesNotExist, &[]), "!k");
    }
}
