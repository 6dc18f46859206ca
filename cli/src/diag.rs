//! Errors as the person running `stead` sees them: what is wrong, in which file and
//! field (with the line shown when there is one), and what to do.

use std::path::Path;

use miette::{Diagnostic, NamedSource, SourceSpan};

/// One problem, shown by miette.
#[derive(Debug, thiserror::Error, Diagnostic)]
#[error("{message}")]
pub struct Problem {
    pub message: String,
    #[help]
    pub help: Option<String>,
    #[source_code]
    pub src: Option<NamedSource<String>>,
    #[label("{label}")]
    pub at: Option<SourceSpan>,
    pub label: String,
    #[related]
    pub related: Vec<Problem>,
    /// A failed tool's own output, printed as is before the diagnostic (compiler messages
    /// keep their layout).
    pub output: Option<String>,
}

impl Problem {
    pub fn new(message: impl Into<String>) -> Problem {
        Problem { message: message.into(), help: None, src: None, at: None, label: String::new(), related: Vec::new(), output: None }
    }

    pub fn help(mut self, help: impl Into<String>) -> Problem {
        self.help = Some(help.into());
        self
    }

    /// Shows `span` of the file at `path` (whose text is `text`), labelled.
    pub fn at(mut self, path: &Path, text: &str, span: Option<std::ops::Range<usize>>, label: impl Into<String>) -> Problem {
        if let Some(span) = span {
            self.src = Some(NamedSource::new(path.display().to_string(), text.to_owned()));
            self.at = Some(span.into());
            self.label = label.into();
        }
        self
    }

    /// Prints the tool output, if any, then the diagnostic, to stderr.
    pub fn report(self) {
        if let Some(out) = &self.output {
            eprintln!("{out}\n");
        }
        eprintln!("{:?}", miette::Report::new(self));
    }

    pub fn related(mut self, related: Vec<Problem>) -> Problem {
        self.related = related;
        self
    }
}

/// A failed build step's tool output, shortened to its end (where errors are).
pub fn tail(log: &str, lines: usize) -> String {
    let all: Vec<&str> = log.lines().collect();
    let start = all.len().saturating_sub(lines);
    let mut out = String::new();
    if start > 0 {
        out.push_str(&format!("… ({start} lines above)\n"));
    }
    out.push_str(&all[start..].join("\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_end() {
        assert_eq!(tail("a\nb\nc", 2), "… (1 lines above)\nb\nc");
        assert_eq!(tail("a", 5), "a");
    }

    #[test]
    fn a_problem_renders_its_file_line_and_help() {
        let text = "name = \"x\"\ncolour = 1\n";
        let p = Problem::new("unknown field `colour`").at(Path::new("Stead.toml"), text, Some(11..21), "here").help("remove it");
        let mut out = String::new();
        miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor()).render_report(&mut out, &p).unwrap();
        assert!(out.contains("Stead.toml:2:1"), "{out}");
        assert!(out.contains("colour = 1") && out.contains("here") && out.contains("remove it"), "{out}");
    }
}
