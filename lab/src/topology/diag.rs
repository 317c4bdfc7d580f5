//! Diagnostics: errors and warnings that point into the topology file.

use std::fmt;
use std::sync::Arc;

use miette::{GraphicalReportHandler, GraphicalTheme, LabeledSpan, NamedSource, SourceCode};

/// A byte range in the topology file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Span {
    /// First byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
}

impl Span {
    /// The span `start..end`.
    pub fn new(start: usize, end: usize) -> Self {
        Self { start, end }
    }
}

/// A value together with where it was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spanned<T> {
    /// The value.
    pub value: T,
    /// Where it was written.
    pub span: Span,
}

impl<T> Spanned<T> {
    /// Wraps `value` written at `span`.
    pub fn new(value: T, span: Span) -> Self {
        Self { value, span }
    }
}

/// How bad a diagnostic is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// The file is rejected.
    Error,
    /// The file is accepted, but something in it is ignored or changed.
    Warning,
}

/// One problem found in a topology file, collected before the file is attached.
#[derive(Clone, Debug)]
pub(crate) struct Issue {
    severity: Severity,
    code: &'static str,
    message: String,
    labels: Vec<(Span, String)>,
    help: Option<String>,
}

impl Issue {
    /// Adds a further underlined span.
    pub(crate) fn label(&mut self, span: Span, text: impl Into<String>) -> &mut Self {
        self.labels.push((span, text.into()));
        self
    }

    /// Sets the hint printed below the snippet.
    pub(crate) fn help(&mut self, help: impl Into<String>) -> &mut Self {
        self.help = Some(help.into());
        self
    }
}

/// Collects issues while a file is read and checked.
#[derive(Debug, Default)]
pub(crate) struct Sink {
    issues: Vec<Issue>,
}

impl Sink {
    fn push(
        &mut self,
        severity: Severity,
        code: &'static str,
        span: Span,
        message: String,
    ) -> &mut Issue {
        self.issues.push(Issue {
            severity,
            code,
            message,
            labels: vec![(span, String::new())],
            help: None,
        });
        let last = self.issues.len() - 1;
        &mut self.issues[last]
    }

    /// Records an error at `span`.
    pub(crate) fn error(
        &mut self,
        code: &'static str,
        span: Span,
        message: impl Into<String>,
    ) -> &mut Issue {
        self.push(Severity::Error, code, span, message.into())
    }

    /// Records a warning at `span`.
    pub(crate) fn warning(
        &mut self,
        code: &'static str,
        span: Span,
        message: impl Into<String>,
    ) -> &mut Issue {
        self.push(Severity::Warning, code, span, message.into())
    }

    /// Whether any error (not warning) was recorded.
    pub(crate) fn has_errors(&self) -> bool {
        self.issues.iter().any(|i| i.severity == Severity::Error)
    }

    /// Attaches the file the spans point into; diagnostics come out in file order.
    pub(crate) fn finish(mut self, name: &str, text: &str) -> Diagnostics {
        self.issues
            .sort_by_key(|issue| issue.labels.first().map_or(0, |(span, _)| span.start));
        let source = Arc::new(NamedSource::new(name, text.to_owned()));
        let items = self
            .issues
            .into_iter()
            .map(|issue| Diagnostic {
                severity: issue.severity,
                code: issue.code,
                message: issue.message,
                labels: issue
                    .labels
                    .into_iter()
                    .map(|(span, label)| (clamp(span, text), label))
                    .collect(),
                help: issue.help,
                source: Arc::clone(&source),
            })
            .collect();
        Diagnostics { items }
    }
}

/// Keeps `span` inside `text` and on character boundaries.
fn clamp(span: Span, text: &str) -> Span {
    let start = floor_char_boundary(text, span.start);
    Span::new(start, floor_char_boundary(text, span.end.max(start)))
}

/// One error or warning with its file, renderable by miette.
#[derive(Clone, Debug)]
pub struct Diagnostic {
    severity: Severity,
    code: &'static str,
    message: String,
    labels: Vec<(Span, String)>,
    help: Option<String>,
    source: Arc<NamedSource<String>>,
}

impl Diagnostic {
    /// Error or warning.
    pub fn severity(&self) -> Severity {
        self.severity
    }

    /// Stable identifier of the problem class, e.g. `topology::unknown_node`.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// The one-line message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The primary span: where the problem is.
    pub fn span(&self) -> Span {
        self.labels
            .first()
            .map(|(span, _)| *span)
            .unwrap_or_default()
    }

    /// `file:line:col` (1-based) of the primary span.
    pub fn location(&self) -> String {
        let text = self.source.inner();
        let start = self.span().start;
        let before = &text[..floor_char_boundary(text, start)];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        format!("{}:{line}:{col}", self.source.name())
    }
}

fn floor_char_boundary(text: &str, mut index: usize) -> usize {
    index = index.min(text.len());
    while !text.is_char_boundary(index) {
        index -= 1;
    }
    index
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Diagnostic {}

impl miette::Diagnostic for Diagnostic {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(self.code))
    }

    fn severity(&self) -> Option<miette::Severity> {
        Some(match self.severity {
            Severity::Error => miette::Severity::Error,
            Severity::Warning => miette::Severity::Warning,
        })
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display + 'a>)
    }

    fn source_code(&self) -> Option<&dyn SourceCode> {
        Some(&*self.source)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        Some(Box::new(self.labels.iter().map(|(span, text)| {
            let text = (!text.is_empty()).then(|| text.clone());
            LabeledSpan::new(text, span.start, span.end - span.start)
        })))
    }
}

/// All errors and warnings found in one file, in file order.
#[derive(Clone, Debug, Default)]
pub struct Diagnostics {
    items: Vec<Diagnostic>,
}

impl Diagnostics {
    /// Every diagnostic.
    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.items.iter()
    }

    /// Appends the diagnostics of another file.
    pub(crate) fn extend(&mut self, other: Diagnostics) {
        self.items.extend(other.items);
    }

    /// The number of errors (warnings not counted).
    pub fn error_count(&self) -> usize {
        self.items
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count()
    }

    /// Renders every diagnostic with `handler`, one after the other.
    pub fn render(&self, handler: &GraphicalReportHandler) -> String {
        let mut out = String::new();
        for (i, item) in self.items.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            // Writing into a String cannot fail.
            let _ = handler.render_report(&mut out, item);
        }
        out
    }

    /// Renders without colours or Unicode, 100 columns wide: stable for tests and logs.
    pub fn render_plain(&self) -> String {
        self.render(&GraphicalReportHandler::new_themed(GraphicalTheme::none()).with_width(100))
    }
}
