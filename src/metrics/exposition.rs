//! The Prometheus text exposition format (version 0.0.4), written directly.
//!
//! Why not the `prometheus-client` crate: its text encoder writes
//! OpenMetrics 1.0 (a `# EOF` line, counters typed under their name
//! without `_total`), which Prometheus' own text parser reads as untyped
//! series; and its model is long-lived registered metric handles (atomics
//! behind `Arc`, label families behind a lock) that would have to mirror
//! state the core and the workers' pages already hold, with series removed
//! by hand as jobs come and go. Every figure here is read from that state
//! at the scrape, so a small writer with the format's escaping rules does
//! the whole job, on the one thread, without a second copy of the state.

use std::fmt::Write;

/// A family's type, as `# TYPE` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// A sample value: integers are written exactly, floats as Go parses them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    Int(u64),
    Float(f64),
}

impl From<u64> for Value {
    fn from(v: u64) -> Value {
        Value::Int(v)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Value {
        Value::Float(v)
    }
}

/// The text of one exposition. Families must be written whole, one after
/// the other: `family` starts one, `sample` adds to it.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    pub fn new() -> Exposition {
        Exposition::default()
    }

    /// `# HELP` and `# TYPE` of a family (a counter's name ends in `_total`,
    /// as Prometheus' text format has it).
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        debug_assert!(valid_name(name), "{name}");
        debug_assert!(kind != Kind::Counter || name.ends_with("_total"), "{name}");
        self.out.push_str("# HELP ");
        self.out.push_str(name);
        self.out.push(' ');
        escape_into(&mut self.out, help, false);
        self.out.push_str("\n# TYPE ");
        self.out.push_str(name);
        self.out.push(' ');
        self.out.push_str(kind.as_str());
        self.out.push('\n');
    }

    /// One sample; label values may hold any text.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Into<Value>) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (label, text)) in labels.iter().enumerate() {
                debug_assert!(valid_name(label), "{label}");
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(label);
                self.out.push_str("=\"");
                escape_into(&mut self.out, text, true);
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
        match value.into() {
            Value::Int(v) => {
                let _ = write!(self.out, "{v}");
            }
            Value::Float(v) if v.is_nan() => self.out.push_str("NaN"),
            Value::Float(v) if v.is_infinite() => self.out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" }),
            Value::Float(v) => {
                let _ = write!(self.out, "{v}");
            }
        }
        self.out.push('\n');
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// The content type of this format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Label values escape `\`, `"` and newlines; help texts `\` and newlines.
fn escape_into(out: &mut String, text: &str, quote: bool) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_samples_and_escaping() {
        let mut e = Exposition::new();
        e.family("lrpm_job_restarts_total", Kind::Counter, "Restarts.\nA \\ second line.");
        e.sample("lrpm_job_restarts_total", &[("job", "7"), ("name", "a \"quoted\"\\ name\nwith a newline")], 3u64);
        e.family("lrpm_uptime_seconds", Kind::Gauge, "Up.");
        e.sample("lrpm_uptime_seconds", &[], 1.5);
        e.sample("lrpm_uptime_seconds", &[], f64::NAN);
        e.sample("lrpm_uptime_seconds", &[], f64::INFINITY);
        assert_eq!(
            e.finish(),
            "# HELP lrpm_job_restarts_total Restarts.\\nA \\\\ second line.\n\
             # TYPE lrpm_job_restarts_total counter\n\
             lrpm_job_restarts_total{job=\"7\",name=\"a \\\"quoted\\\"\\\\ name\\nwith a newline\"} 3\n\
             # HELP lrpm_uptime_seconds Up.\n\
             # TYPE lrpm_uptime_seconds gauge\n\
             lrpm_uptime_seconds 1.5\n\
             lrpm_uptime_seconds NaN\n\
             lrpm_uptime_seconds +Inf\n"
        );
    }

    #[test]
    fn names() {
        assert!(valid_name("lrpm_job_state") && valid_name("a:b_1"));
        assert!(!valid_name("") && !valid_name("1abc") && !valid_name("a-b"));
    }
}
