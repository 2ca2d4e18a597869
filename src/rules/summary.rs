//! Summary templates that are only text and `{{ name }}` placeholders, rendered without
//! minijinja.
//!
//! An open incident's summary is rendered again for every match folded into it (its count
//! is in nearly every shipped summary), and under a brute force that is a large share of
//! the in-order counting stage: minijinja's render, plus a context map of owned strings
//! and JSON values built per match, cost ~10 k instructions where the text itself is a few
//! dozen bytes. Every shipped summary is text and plain placeholders, so such templates are
//! recognised once when the rules load and rendered by substitution. Anything else
//! (filters, blocks, comments, whitespace control, literals, the `key` map, template names
//! minijinja would auto-escape) stays on minijinja, and the test below checks that both
//! renderers write the same text for the templates this one accepts.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The context a summary that is not plain is rendered with by minijinja: the captures,
/// then the incident's count, rule id and severity (which win over captures of the same
/// name). The incident book adds `key`, the one name a plain summary never takes.
pub fn minijinja_context<'a>(
    captures: impl IntoIterator<Item = (&'a str, &'a str)>,
    count: u64,
    rule: &str,
    severity: &str,
) -> BTreeMap<String, serde_json::Value> {
    let mut ctx: BTreeMap<String, serde_json::Value> = captures
        .into_iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
        .collect();
    ctx.insert("count".into(), count.into());
    ctx.insert("rule".into(), rule.into());
    ctx.insert("severity".into(), severity.into());
    ctx
}

/// A summary template of text and placeholders, as minijinja renders it with the default
/// environment (lenient undefined: a name with no value renders as nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlainSummary {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Name(String),
}

/// What a plain summary may name: the incident's scalars ([`super::SUMMARY_VARIABLES`]
/// minus `key`, a map minijinja prints in its own way) and the captures.
pub trait SummaryValues {
    /// The incident's count.
    fn count(&self) -> u64;
    /// The rule id.
    fn rule(&self) -> &str;
    /// The severity's name.
    fn severity(&self) -> &str;
    /// The value of capture `name`, if the match captured it.
    fn capture(&self, name: &str) -> Option<&str>;
}

impl PlainSummary {
    /// The template's plain form, or `None` when it uses anything beyond text and
    /// `{{ name }}` (or minijinja would treat it differently: a name it auto-escapes for,
    /// i.e. one with an extension, a trailing newline it would drop).
    pub fn parse(template_name: &str, template: &str) -> Option<Self> {
        if template_name.contains('.')
            || template.ends_with('\n')
            || template.contains("{%")
            || template.contains("{#")
        {
            return None;
        }
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find("{{") {
            let (text, after) = rest.split_at(open);
            let close = after.find("}}")?;
            let name = after[2..close].trim_matches(' ');
            if !is_plain_name(name) {
                return None;
            }
            if !text.is_empty() {
                parts.push(Part::Text(text.to_string()));
            }
            parts.push(Part::Name(name.to_string()));
            rest = &after[close + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Some(PlainSummary { parts })
    }

    /// Writes the summary into `out` (cleared first, its buffer kept). The incident's own
    /// names win over captures of the same name, as in the minijinja context.
    pub fn render_into(&self, out: &mut String, values: &dyn SummaryValues) {
        out.clear();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Name(name) => match name.as_str() {
                    "count" => {
                        let _ = write!(out, "{}", values.count());
                    }
                    "rule" => out.push_str(values.rule()),
                    "severity" => out.push_str(values.severity()),
                    other => out.push_str(values.capture(other).unwrap_or_default()),
                },
            }
        }
    }
}

/// A name a placeholder may hold here: an identifier that is not one of minijinja's
/// literals or the `key` map.
fn is_plain_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !matches!(
            name,
            "key" | "true" | "false" | "none" | "True" | "False" | "None"
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Values {
        count: u64,
        rule: String,
        severity: String,
        captures: BTreeMap<String, String>,
    }

    impl SummaryValues for Values {
        fn count(&self) -> u64 {
            self.count
        }
        fn rule(&self) -> &str {
            &self.rule
        }
        fn severity(&self) -> &str {
            &self.severity
        }
        fn capture(&self, name: &str) -> Option<&str> {
            self.captures.get(name).map(String::as_str)
        }
    }

    /// What minijinja renders for `template` with the context the incident book builds.
    fn minijinja(name: &str, template: &str, values: &Values) -> String {
        let mut env = minijinja::Environment::new();
        env.add_template_owned(name.to_string(), template.to_string())
            .unwrap();
        env.get_template(name)
            .unwrap()
            .render(context_of(values))
            .unwrap()
    }

    fn plain(name: &str, template: &str, values: &Values) -> Option<String> {
        let summary = PlainSummary::parse(name, template)?;
        let mut out = "left over".to_string();
        summary.render_into(&mut out, values);
        Some(out)
    }

    /// Every shipped summary is plain, and renders as minijinja renders it.
    #[test]
    fn the_shipped_summaries_are_plain_and_render_as_minijinja_does() {
        let rules = crate::rules::RuleSet::load(
            &[std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("rules")],
            &Default::default(),
        )
        .unwrap();
        let mut summaries = 0;
        for rule in &rules.rules {
            let Some(template) = &rule.def.summary else {
                continue;
            };
            summaries += 1;
            let mut values = Values {
                count: 12,
                rule: rule.id().to_string(),
                severity: "high".into(),
                captures: BTreeMap::new(),
            };
            for name in rule
                .patterns
                .iter()
                .flat_map(|p| p.capture_names().flatten())
            {
                values
                    .captures
                    .insert(name.into(), format!("<{name} & 'x'>"));
            }
            assert_eq!(
                plain(rule.id(), template, &values).as_deref(),
                Some(minijinja(rule.id(), template, &values).as_str()),
                "{}: {template}",
                rule.id()
            );
        }
        assert!(summaries > 20, "{summaries} summaries");
    }

    /// Random templates of text, braces and placeholders: whatever the plain form accepts
    /// renders exactly as minijinja renders it (including names with no value, captures
    /// named like the incident's own names, and values holding template syntax).
    #[test]
    fn what_the_plain_form_accepts_renders_as_minijinja_does() {
        let mut rng = fastrand::Rng::with_seed(22);
        let pieces = [
            "a",
            " ",
            "{{ count }}",
            "{{count}}",
            "{{  ip  }}",
            "{{ user }}",
            "{{ rule }}",
            "{{ severity }}",
            "{{ missing }}",
            "}",
            "{",
            "}}",
            "{{",
            "{%",
            "{#",
            "é",
            "\n",
            "\t",
            "{{ key }}",
            "{{ none }}",
            "{{ ip|upper }}",
            "{{- ip }}",
            "%",
            "#",
            "{{ 1 }}",
        ];
        let mut accepted = 0;
        for _ in 0..3000 {
            let template: String = (0..rng.usize(0..8))
                .map(|_| pieces[rng.usize(0..pieces.len())])
                .collect();
            let name = if rng.u8(0..10) == 0 { "r.html" } else { "r" };
            let mut env = minijinja::Environment::new();
            if env
                .add_template_owned(name.to_string(), template.clone())
                .is_err()
            {
                // Refused at load: never rendered by either.
                continue;
            }
            let mut captures = BTreeMap::new();
            for capture in ["ip", "user", "count", "rule"] {
                if rng.bool() {
                    let value = ["10.0.0.1", "", "{{ count }}", "<b>&", "root"][rng.usize(0..5)];
                    captures.insert(capture.to_string(), value.to_string());
                }
            }
            let values = Values {
                count: rng.u64(0..100_000),
                rule: "ssh".into(),
                severity: "low".into(),
                captures,
            };
            let Ok(expected) = env.get_template(name).unwrap().render(context_of(&values)) else {
                assert!(
                    PlainSummary::parse(name, &template).is_none(),
                    "{template:?}"
                );
                continue;
            };
            if let Some(rendered) = plain(name, &template, &values) {
                accepted += 1;
                assert_eq!(rendered, expected, "{template:?}");
            }
        }
        assert!(accepted > 300, "only {accepted} templates were plain");
    }

    /// The context the incident book builds, without `key`.
    fn context_of(values: &Values) -> BTreeMap<String, serde_json::Value> {
        minijinja_context(
            values
                .captures
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
            values.count,
            &values.rule,
            &values.severity,
        )
    }

    #[test]
    fn templates_beyond_text_and_names_stay_on_minijinja() {
        for template in [
            "{{ ip|upper }}",
            "{% if ip %}x{% endif %}",
            "{# note #}{{ ip }}",
            "{{- ip }}",
            "{{ key }}",
            "{{ none }}",
            "{{ 1 }}",
            "{{ ip }}\n",
        ] {
            assert_eq!(PlainSummary::parse("r", template), None, "{template:?}");
        }
        assert_eq!(PlainSummary::parse("r.html", "{{ ip }}"), None);
        assert!(PlainSummary::parse("r", "{{ count }} from {{ip}}").is_some());
        // A stray `}}` is text to minijinja too (the random test above renders both).
        assert!(PlainSummary::parse("r", "a }} b {{ ip }}").is_some());
    }
}
