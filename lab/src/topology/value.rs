//! A small tree of values with spans, built from TOML or YAML, and typed readers over it that
//! record every problem instead of stopping at the first.

use std::str::FromStr;

use super::diag::{Sink, Span, Spanned};

/// A parsed value and where it was written.
#[derive(Clone, Debug)]
pub(crate) struct Value {
    pub span: Span,
    pub kind: Kind,
}

#[derive(Clone, Debug)]
pub(crate) enum Kind {
    /// A string (TOML string, quoted YAML scalar).
    Str(String),
    /// A plain YAML scalar: a string, number or boolean depending on who reads it.
    Plain(String),
    Int(i64),
    Float,
    Bool(bool),
    Datetime,
    Array(Vec<Value>),
    Table(Vec<(Spanned<String>, Value)>),
}

impl Value {
    fn type_name(&self) -> &'static str {
        match &self.kind {
            Kind::Str(_) | Kind::Plain(_) => "a string",
            Kind::Int(_) => "an integer",
            Kind::Float => "a float",
            Kind::Bool(_) => "a boolean",
            Kind::Datetime => "a date",
            Kind::Array(_) => "an array",
            Kind::Table(_) => "a table",
        }
    }

    fn is_null(&self) -> bool {
        matches!(&self.kind, Kind::Plain(s) if s.is_empty() || s == "~" || s == "null")
    }
}

/// Parses TOML; syntax errors go to `sink`.
pub(crate) fn from_toml(text: &str, sink: &mut Sink) -> Option<Value> {
    let (table, errors) = toml::de::DeTable::parse_recoverable(text);
    if !errors.is_empty() {
        for error in errors {
            let span = error
                .span()
                .map_or(Span::default(), |r| Span::new(r.start, r.end));
            sink.error("topology::syntax", span, error.message().trim().to_owned());
        }
        return None;
    }
    let span = table.span();
    Some(Value {
        span: Span::new(span.start, span.end),
        kind: toml_table(table.get_ref()),
    })
}

fn toml_table(table: &toml::de::DeTable<'_>) -> Kind {
    let mut entries: Vec<_> = table
        .iter()
        .map(|(k, v)| {
            let span = k.span();
            (
                Spanned::new(k.get_ref().to_string(), Span::new(span.start, span.end)),
                toml_value(v),
            )
        })
        .collect();
    entries.sort_by_key(|(k, _)| k.span.start);
    Kind::Table(entries)
}

fn toml_value(value: &toml::Spanned<toml::de::DeValue<'_>>) -> Value {
    use toml::de::DeValue;
    let span = value.span();
    let kind = match value.get_ref() {
        DeValue::String(s) => Kind::Str(s.to_string()),
        DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) => Kind::Int(n),
            Err(_) => Kind::Float,
        },
        DeValue::Float(_) => Kind::Float,
        DeValue::Boolean(b) => Kind::Bool(*b),
        DeValue::Datetime(_) => Kind::Datetime,
        DeValue::Array(items) => Kind::Array(items.iter().map(toml_value).collect()),
        DeValue::Table(t) => toml_table(t),
    };
    Value {
        span: Span::new(span.start, span.end),
        kind,
    }
}

/// Parses YAML; syntax errors go to `sink`.
pub(crate) fn from_yaml(text: &str, sink: &mut Sink) -> Option<Value> {
    use marked_yaml::LoadError;
    let options = marked_yaml::LoaderOptions::default()
        .error_on_duplicate_keys(true)
        .prevent_coercion(true);
    let offsets = Offsets::new(text);
    match marked_yaml::parse_yaml_with_options(0, text, options) {
        Ok(node) => Some(yaml_value(&node, &offsets, text)),
        Err(error) => {
            let (marker, message) = match &error {
                LoadError::TopLevelMustBeMapping(m) => (*m, "the file must be a mapping".into()),
                LoadError::TopLevelMustBeSequence(m) => (*m, "the file must be a sequence".into()),
                LoadError::UnexpectedAnchor(m) => (*m, "YAML anchors are not supported".into()),
                LoadError::MappingKeyMustBeScalar(m) => (*m, "keys must be scalars".into()),
                LoadError::UnexpectedTag(m) => (*m, "YAML tags are not supported".into()),
                LoadError::ScanError(m, e) => (*m, e.info().to_owned()),
                LoadError::DuplicateKey(dup) => {
                    let first = scalar_span(&dup.prev_key, &offsets, text);
                    let again = scalar_span(&dup.key, &offsets, text);
                    sink.error(
                        "topology::duplicate_key",
                        again,
                        format!("`{}` is defined twice", dup.key.as_str()),
                    )
                    .label(again, "defined again here")
                    .label(first, "first defined here");
                    return None;
                }
            };
            let at = offsets.byte(marker.character());
            sink.error("topology::syntax", Span::new(at, at), message);
            None
        }
    }
}

/// Maps YAML character offsets to byte offsets.
struct Offsets(Vec<usize>);

impl Offsets {
    fn new(text: &str) -> Self {
        let mut bytes: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
        bytes.push(text.len());
        Self(bytes)
    }

    fn byte(&self, character: usize) -> usize {
        self.0
            .get(character)
            .or(self.0.last())
            .copied()
            .unwrap_or(0)
    }
}

fn marker_span(span: &marked_yaml::Span, offsets: &Offsets) -> Span {
    let start = span.start().map_or(0, |m| offsets.byte(m.character()));
    let end = span.end().map_or(start, |m| offsets.byte(m.character()));
    Span::new(start, end.max(start))
}

/// A scalar's span: marked-yaml records only its start, so find its end in the text.
fn scalar_span(node: &marked_yaml::types::MarkedScalarNode, offsets: &Offsets, text: &str) -> Span {
    let start = marker_span(node.span(), offsets).start;
    let rest = text.get(start..).unwrap_or("");
    let len = match rest.chars().next() {
        Some(quote @ ('"' | '\'')) => rest[1..].find(quote).map_or(rest.len(), |end| end + 2),
        _ => {
            let line = rest.lines().next().unwrap_or("");
            let end = line
                .find(" #")
                .into_iter()
                .chain(line.find([',', ']', '}']))
                .chain(line.find(": "))
                .min()
                .unwrap_or(line.len());
            let end = if line.ends_with(':') && end == line.len() {
                end - 1
            } else {
                end
            };
            line[..end].trim_end().len()
        }
    };
    Span::new(start, start + len)
}

fn yaml_value(node: &marked_yaml::Node, offsets: &Offsets, text: &str) -> Value {
    use marked_yaml::Node;
    match node {
        Node::Scalar(s) => Value {
            span: scalar_span(s, offsets, text),
            kind: if s.may_coerce() {
                Kind::Plain(s.as_str().to_owned())
            } else {
                Kind::Str(s.as_str().to_owned())
            },
        },
        Node::Sequence(seq) => Value {
            span: marker_span(seq.span(), offsets),
            kind: Kind::Array(seq.iter().map(|n| yaml_value(n, offsets, text)).collect()),
        },
        Node::Mapping(map) => Value {
            span: marker_span(map.span(), offsets),
            kind: Kind::Table(
                map.iter()
                    .map(|(k, v)| {
                        let key =
                            Spanned::new(k.as_str().to_owned(), scalar_span(k, offsets, text));
                        (key, yaml_value(v, offsets, text))
                    })
                    .collect(),
            ),
        },
    }
}

fn type_error(sink: &mut Sink, value: &Value, what: &str, expected: &str) {
    sink.error(
        "topology::type",
        value.span,
        format!("{what} must be {expected}, not {}", value.type_name()),
    );
}

/// The fields of a table, read one by one; fields never read are reported by [`Fields::finish`].
pub(crate) struct Fields<'a> {
    entries: &'a [(Spanned<String>, Value)],
    read: Vec<bool>,
    pub span: Span,
}

impl<'a> Fields<'a> {
    /// Reads `value` as a table (a YAML null counts as an empty one).
    pub(crate) fn of(value: &'a Value, what: &str, sink: &mut Sink) -> Option<Self> {
        match &value.kind {
            Kind::Table(entries) => Some(Self {
                entries,
                read: vec![false; entries.len()],
                span: value.span,
            }),
            _ if value.is_null() => Some(Self {
                entries: &[],
                read: Vec::new(),
                span: value.span,
            }),
            _ => {
                type_error(sink, value, what, "a table");
                None
            }
        }
    }

    /// The value of field `name`, marking it read.
    pub(crate) fn get(&mut self, name: &str) -> Option<&'a Value> {
        let index = self.entries.iter().position(|(k, _)| k.value == name)?;
        self.read[index] = true;
        Some(&self.entries[index].1)
    }

    /// Every entry not read yet, marking them read: for tables keyed by names.
    pub(crate) fn rest(&mut self) -> impl Iterator<Item = &'a (Spanned<String>, Value)> + use<'a> {
        let entries = self.entries;
        let unread: Vec<usize> = (0..entries.len()).filter(|i| !self.read[*i]).collect();
        for i in &unread {
            self.read[*i] = true;
        }
        unread.into_iter().map(move |i| &entries[i])
    }

    /// The key of field `name`, if present.
    pub(crate) fn key_span(&self, name: &str) -> Option<Span> {
        self.entries
            .iter()
            .find(|(k, _)| k.value == name)
            .map(|(k, _)| k.span)
    }

    /// Reports fields never read: a warning for those in `unsupported` (recognised but not
    /// supported yet), an error for the rest, listing the `known` fields.
    pub(crate) fn finish(self, sink: &mut Sink, what: &str, known: &[&str], unsupported: &[&str]) {
        for (i, (key, _)) in self.entries.iter().enumerate() {
            if self.read[i] {
                continue;
            }
            if unsupported.contains(&key.value.as_str()) {
                sink.warning(
                    "topology::unsupported_field",
                    key.span,
                    format!(
                        "`{}` in {what} is not supported yet and is ignored",
                        key.value
                    ),
                );
            } else {
                sink.error(
                    "topology::unknown_field",
                    key.span,
                    format!("unknown field `{}` in {what}", key.value),
                )
                .help(format!("expected one of: {}", known.join(", ")));
            }
        }
    }
}

/// Reads a string.
pub(crate) fn string(value: &Value, what: &str, sink: &mut Sink) -> Option<Spanned<String>> {
    match &value.kind {
        Kind::Str(s) | Kind::Plain(s) => Some(Spanned::new(s.clone(), value.span)),
        _ => {
            type_error(sink, value, what, "a string");
            None
        }
    }
}

/// Reads a non-negative integer that fits `T`.
pub(crate) fn integer<T: TryFrom<i64>>(
    value: &Value,
    what: &str,
    sink: &mut Sink,
) -> Option<Spanned<T>> {
    let number = match &value.kind {
        Kind::Int(n) => Some(*n),
        Kind::Plain(s) => s.parse::<i64>().ok(),
        _ => None,
    };
    let Some(number) = number else {
        type_error(sink, value, what, "an integer");
        return None;
    };
    match T::try_from(number) {
        Ok(n) => Some(Spanned::new(n, value.span)),
        Err(_) => {
            sink.error(
                "topology::range",
                value.span,
                format!("{what} `{number}` is out of range"),
            );
            None
        }
    }
}

/// Reads a boolean.
pub(crate) fn boolean(value: &Value, what: &str, sink: &mut Sink) -> Option<bool> {
    match &value.kind {
        Kind::Bool(b) => Some(*b),
        Kind::Plain(s) if s == "true" => Some(true),
        Kind::Plain(s) if s == "false" => Some(false),
        _ => {
            type_error(sink, value, what, "a boolean");
            None
        }
    }
}

/// Reads an array (a YAML null counts as an empty one).
pub(crate) fn array<'a>(value: &'a Value, what: &str, sink: &mut Sink) -> Option<&'a [Value]> {
    match &value.kind {
        Kind::Array(items) => Some(items),
        _ if value.is_null() => Some(&[]),
        _ => {
            type_error(sink, value, what, "an array");
            None
        }
    }
}

/// Reads an array of strings, skipping (and reporting) items that are not strings.
pub(crate) fn strings(value: &Value, what: &str, sink: &mut Sink) -> Vec<Spanned<String>> {
    array(value, what, sink)
        .unwrap_or_default()
        .iter()
        .filter_map(|item| string(item, what, sink))
        .collect()
}

/// Reads a command: a list of strings (taken as they are) or one string (split at
/// whitespace).
pub(crate) fn command(value: &Value, what: &str, sink: &mut Sink) -> Option<Spanned<Vec<String>>> {
    match &value.kind {
        Kind::Str(s) | Kind::Plain(s) => Some(Spanned::new(
            s.split_whitespace().map(str::to_owned).collect(),
            value.span,
        )),
        Kind::Array(_) => Some(Spanned::new(
            strings(value, what, sink)
                .into_iter()
                .map(|s| s.value)
                .collect(),
            value.span,
        )),
        _ => {
            type_error(sink, value, what, "a string or an array of strings");
            None
        }
    }
}

/// Reads a string and parses it with `FromStr`, reporting a parse error with `help`.
pub(crate) fn parsed<T: FromStr<Err = String>>(
    value: &Value,
    what: &str,
    code: &'static str,
    help: &str,
    sink: &mut Sink,
) -> Option<Spanned<T>> {
    let text = string(value, what, sink)?;
    match text.value.parse::<T>() {
        Ok(parsed) => Some(Spanned::new(parsed, text.span)),
        Err(message) => {
            let issue = sink.error(code, text.span, format!("bad {what}: {message}"));
            if !help.is_empty() {
                issue.help(help.to_owned());
            }
            None
        }
    }
}
