//! Ordered classification and clearance labels, compared by rank.

use crate::error::PolicyError;

/// The ordered labels of data classifications and clearances, lowest first.
///
/// The default is `public` < `internal` < `confidential` < `secret` < `top_secret`. Labels are
/// accepted case-insensitively and shown to CEL in lowercase; they compare by rank, never as
/// strings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Labels {
    names: Vec<String>,
}

impl Default for Labels {
    fn default() -> Self {
        Self {
            names: ["public", "internal", "confidential", "secret", "top_secret"].map(String::from).into(),
        }
    }
}

impl Labels {
    /// Labels in the given order, lowest first.
    ///
    /// # Errors
    ///
    /// Fails when there is no label, a label is empty or not made of letters, digits, `_` and
    /// `-`, or two labels are equal ignoring case.
    pub fn new<I, S>(names: I) -> Result<Self, PolicyError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut out: Vec<String> = Vec::new();
        for name in names {
            let name = name.as_ref().to_ascii_lowercase();
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                return Err(PolicyError::Configuration(format!("invalid label `{name}`")));
            }
            if out.contains(&name) {
                return Err(PolicyError::Configuration(format!("duplicate label `{name}`")));
            }
            out.push(name);
        }
        if out.is_empty() {
            return Err(PolicyError::Configuration("no labels".to_owned()));
        }
        Ok(Self { names: out })
    }

    /// The rank of `label` (0 for the lowest), ignoring case; `None` for an unknown label.
    pub fn rank(&self, label: &str) -> Option<usize> {
        self.names.iter().position(|name| name.eq_ignore_ascii_case(label))
    }

    /// The labels, lowest first, in lowercase.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Whether a holder of `clearance` may see data classified `classification`.
    ///
    /// An empty classification asks for nothing; an empty clearance is below every label.
    ///
    /// # Errors
    ///
    /// Names the label that is not known.
    pub fn dominates(&self, clearance: &str, classification: &str) -> Result<bool, String> {
        if classification.is_empty() {
            return Ok(true);
        }
        let required =
            self.rank(classification).ok_or_else(|| format!("unknown classification `{classification}`"))?;
        if clearance.is_empty() {
            return Ok(false);
        }
        let held = self.rank(clearance).ok_or_else(|| format!("unknown clearance `{clearance}`"))?;
        Ok(held >= required)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_compare_by_order_not_by_text() {
        let labels = Labels::default();
        assert_eq!(labels.dominates("secret", "confidential"), Ok(true));
        assert_eq!(labels.dominates("Internal", "SECRET"), Ok(false));
        assert_eq!(labels.dominates("top_secret", "top_secret"), Ok(true));
        // As strings, "public" > "internal"; by rank it is lower.
        assert_eq!(labels.dominates("public", "internal"), Ok(false));
        assert_eq!(labels.dominates("", "public"), Ok(false));
        assert_eq!(labels.dominates("", ""), Ok(true));
        assert!(labels.dominates("cosmic", "public").is_err());
        assert!(labels.dominates("secret", "cosmic").is_err());
    }

    #[test]
    fn custom_labels_are_checked() {
        let labels = Labels::new(["Low", "high"]).unwrap();
        assert_eq!(labels.names(), ["low", "high"]);
        assert_eq!(labels.rank("HIGH"), Some(1));
        assert!(Labels::new(["a", "A"]).is_err());
        assert!(Labels::new(Vec::<String>::new()).is_err());
        assert!(Labels::new(["a b"]).is_err());
    }
}
