//! The `*` / `**` matcher shared by permissions and policy scopes.
//!
//! A name is a sequence of segments separated by `/`, `.` or `:`. In a pattern, `*` stands for
//! exactly one whole, non-empty segment and `**` for any number of segments (zero included);
//! every other segment and every separator must match exactly. So `tools/sql.*` matches
//! `tools/sql.read` but neither `tools/sqlx` nor `tools/sql.read.all`.

use crate::error::PolicyError;

const SEPARATORS: [char; 3] = ['/', '.', ':'];
const MAX_SEGMENTS: usize = 64;
const MAX_DOUBLE_STARS: usize = 4;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Star,
    DoubleStar,
}

/// A compiled resource or action pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Pattern {
    /// Each segment with the separator before it (`None` for the first).
    segments: Vec<(Option<char>, Segment)>,
    /// Whether a segment is `**` (otherwise a name matches segment by segment).
    any_depth: bool,
}

/// A name split into segments once, to be matched against many patterns. Names of up to
/// [`INLINE_SEGMENTS`] segments are split without allocating.
#[derive(Debug)]
pub(crate) struct Name<'a> {
    inline: [(Option<char>, &'a str); INLINE_SEGMENTS],
    len: usize,
    spilled: Vec<(Option<char>, &'a str)>,
}

const INLINE_SEGMENTS: usize = 8;

impl<'a> Name<'a> {
    pub(crate) fn new(name: &'a str) -> Self {
        let mut out = Self { inline: [(None, ""); INLINE_SEGMENTS], len: 0, spilled: Vec::new() };
        let mut separator = None;
        let mut start = 0;
        // The separators are ASCII, so each byte that is one is a whole character.
        for (at, byte) in name.bytes().enumerate() {
            if SEPARATORS.contains(&char::from(byte)) {
                out.push((separator, name.get(start..at).unwrap_or_default()));
                separator = Some(char::from(byte));
                start = at + 1;
            }
        }
        out.push((separator, name.get(start..).unwrap_or_default()));
        out
    }

    fn push(&mut self, segment: (Option<char>, &'a str)) {
        if let Some(slot) = self.inline.get_mut(self.len) {
            *slot = segment;
        } else {
            if self.spilled.is_empty() {
                self.spilled.extend_from_slice(&self.inline);
            }
            self.spilled.push(segment);
        }
        self.len += 1;
    }

    fn segments(&self) -> &[(Option<char>, &'a str)] {
        if self.spilled.is_empty() { self.inline.get(..self.len).unwrap_or_default() } else { &self.spilled }
    }
}

impl Pattern {
    /// Parses a pattern.
    pub(crate) fn parse(source: &str) -> Result<Self, PolicyError> {
        let invalid = |why: &str| PolicyError::Configuration(format!("invalid pattern `{source}`: {why}"));
        if source.is_empty() {
            return Err(invalid("empty"));
        }
        let name = Name::new(source);
        if name.segments().len() > MAX_SEGMENTS {
            return Err(invalid("too many segments"));
        }
        let mut segments = Vec::with_capacity(name.segments().len());
        let mut double_stars = 0;
        for &(separator, text) in name.segments() {
            let segment = match text {
                "" => return Err(invalid("empty segment")),
                "*" => Segment::Star,
                "**" => {
                    double_stars += 1;
                    Segment::DoubleStar
                }
                literal if literal.contains('*') => {
                    return Err(invalid("`*` must stand for a whole segment"));
                }
                literal => Segment::Literal(literal.to_owned()),
            };
            segments.push((separator, segment));
        }
        if double_stars > MAX_DOUBLE_STARS {
            return Err(invalid("too many `**`"));
        }
        Ok(Self { segments, any_depth: double_stars > 0 })
    }

    /// Whether the pattern matches `name`.
    pub(crate) fn matches(&self, name: &Name<'_>) -> bool {
        let name = name.segments();
        if self.any_depth {
            return match_segments(&self.segments, name, false);
        }
        // Without `**`, as `match_segments` does it: one segment for one, separators alike.
        self.segments.len() == name.len()
            && self.segments.iter().zip(name).all(|((separator, segment), (name_separator, text))| {
                separator == name_separator
                    && match segment {
                        Segment::Star => !text.is_empty(),
                        Segment::Literal(literal) => literal == text,
                        Segment::DoubleStar => true,
                    }
            })
    }
}

fn match_segments(
    pattern: &[(Option<char>, Segment)],
    name: &[(Option<char>, &str)],
    after_any: bool,
) -> bool {
    let Some(((separator, segment), pattern_rest)) = pattern.split_first() else {
        return name.is_empty();
    };
    if *segment == Segment::DoubleStar {
        return (0..=name.len())
            .any(|skip| name.get(skip..).is_some_and(|rest| match_segments(pattern_rest, rest, true)));
    }
    let Some(((name_separator, text), name_rest)) = name.split_first() else {
        return false;
    };
    // After `**` the separators it absorbed need not line up.
    if !after_any && separator != name_separator {
        return false;
    }
    let segment_matches = match segment {
        Segment::Star => !text.is_empty(),
        Segment::Literal(literal) => literal == text,
        Segment::DoubleStar => true,
    };
    segment_matches && match_segments(pattern_rest, name_rest, false)
}

/// A permission: a resource pattern and an action pattern, written `resource:action` (the
/// action is after the last `:`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Permission {
    text: String,
    resource: Pattern,
    action: Pattern,
}

impl Permission {
    pub(crate) fn parse(text: &str) -> Result<Self, PolicyError> {
        let Some((resource, action)) = text.rsplit_once(':') else {
            return Err(PolicyError::Configuration(format!(
                "invalid permission `{text}`: expected `resource:action`"
            )));
        };
        Ok(Self {
            text: text.to_owned(),
            resource: Pattern::parse(resource)?,
            action: Pattern::parse(action)?,
        })
    }

    pub(crate) fn matches(&self, resource: &Name<'_>, action: &Name<'_>) -> bool {
        self.resource.matches(resource) && self.action.matches(action)
    }

    /// Whether this permission grants the literal `resource:action` `required`.
    #[cfg(test)]
    fn covers(&self, required: &str) -> bool {
        match required.rsplit_once(':') {
            Some((resource, action)) => self.matches(&Name::new(resource), &Name::new(action)),
            None => false,
        }
    }

    /// The permission as written.
    pub(crate) fn as_str(&self) -> &str {
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, name: &str) -> bool {
        Pattern::parse(pattern).unwrap().matches(&Name::new(name))
    }

    #[test]
    fn wildcard_boundaries() {
        let table = [
            ("tools/sql.*", "tools/sql.read", true),
            ("tools/sql.*", "tools/sqlx", false),
            ("tools/sql.*", "tools/sql.read.all", false),
            ("tools/sql.*", "tools/sql", false),
            ("tools/sql.*", "tools/sql.", false),
            ("tools/sql.*", "tools/sql/read", false),
            ("tools/**", "tools/sql.read.all", true),
            ("tools/**", "tools", true),
            ("tools/**", "toolsx/a", false),
            ("**", "anything/at.all:x", true),
            ("*", "a", true),
            ("*", "a.b", false),
            ("tool:payments.*", "tool:payments.refund", true),
            ("tool:*", "tool:payments.refund", false),
            ("tool:**", "tool:payments.refund", true),
            ("a/**/z", "a/b/c/z", true),
            ("a/**/z", "a/z", true),
            ("a/**/z", "a/b/c/y", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
            ("a.b.c.d.e.f.g.h.i.*", "a.b.c.d.e.f.g.h.i.j", true),
            ("a.b.c.d.e.f.g.h.i.*", "a.b.c.d.e.f.g.h.i", false),
            ("a.**.j", "a.b.c.d.e.f.g.h.i.j", true),
        ];
        for (pattern, name, expected) in table {
            assert_eq!(m(pattern, name), expected, "{pattern} vs {name}");
        }
    }

    /// Splitting and matching agree with the plain definitions: `str::find` of the separators
    /// and the recursive matcher, on generated names and patterns.
    #[test]
    fn fast_splitting_and_matching_agree_with_the_definitions() {
        fn reference_split(name: &str) -> Vec<(Option<char>, &str)> {
            let mut out = Vec::new();
            let mut separator = None;
            let mut rest = name;
            loop {
                match rest.find(SEPARATORS) {
                    Some(at) => {
                        let (segment, tail) = rest.split_at(at);
                        out.push((separator, segment));
                        let mut chars = tail.chars();
                        separator = chars.next();
                        rest = chars.as_str();
                    }
                    None => {
                        out.push((separator, rest));
                        return out;
                    }
                }
            }
        }
        let parts = ["a", "b", "sql", "*", "**", "é", "", "x1"];
        let separators = ["/", ".", ":"];
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            usize::try_from(seed % n as u64).unwrap()
        };
        let text = |next: &mut dyn FnMut(usize) -> usize| {
            let mut out = String::from(parts[next(parts.len())]);
            for _ in 0..next(12) {
                out.push_str(separators[next(separators.len())]);
                out.push_str(parts[next(parts.len())]);
            }
            out
        };
        let mut compared = 0;
        for _ in 0..20_000 {
            let name_text = text(&mut next);
            let name = Name::new(&name_text);
            assert_eq!(name.segments(), reference_split(&name_text).as_slice(), "{name_text}");
            let pattern_text = text(&mut next);
            if let Ok(pattern) = Pattern::parse(&pattern_text) {
                let expected = match_segments(&pattern.segments, name.segments(), false);
                assert_eq!(pattern.matches(&name), expected, "{pattern_text} vs {name_text}");
                compared += 1;
            }
        }
        assert!(compared > 2_000, "{compared}");
    }

    #[test]
    fn malformed_patterns_are_refused() {
        for bad in ["", "sql*", "a/*x", "a//b", "a/***"] {
            assert!(Pattern::parse(bad).is_err(), "{bad}");
        }
        assert!(Permission::parse("no-action").is_err());
    }

    #[test]
    fn permissions_split_at_the_last_colon() {
        let all = Permission::parse("**:*").unwrap();
        assert!(all.covers("tool:payments.refund:invoke"));
        let refund = Permission::parse("tool:payments.*:invoke").unwrap();
        assert!(refund.covers("tool:payments.refund:invoke"));
        assert!(!refund.covers("tool:payments.refund:delete"));
        assert!(!refund.covers("tool:payments.refund.all:invoke"));
        assert_eq!(refund.as_str(), "tool:payments.*:invoke");
    }
}
