//! The openais.conf brace format, as a tree of sections and `key: value` pairs with the
//! line each was written on; what the keys mean is for [`Config`](super::Config) to say.
//!
//! The grammar, line by line:
//!
//! - `#` starts a comment that runs to the end of the line (except inside a quoted value);
//!   blank lines are ignored.
//! - `name {` opens a section; the `{` may also come alone on a later line. `}` closes
//!   the innermost open section. Several of these may share a line (`} }`).
//! - `key: value` sets a key; the value is the rest of the line, trimmed. A value may be
//!   wrapped in one pair of double quotes, which are removed and keep a `#` or a trailing
//!   `}` literal. An unquoted value's trailing `}`s close sections, so that
//!   `member { memberaddr: 10.0.0.1 }` may be written on one line.
//! - Names and keys are ASCII letters, digits, `_`, `-` and `.`.
//!
//! Lines longer than [`MAX_LINE_BYTES`] and sections nested deeper than [`MAX_DEPTH`]
//! are refused, so that no input makes the parser use unbounded time or memory per line.

use super::{ConfigError, MAX_DEPTH, MAX_LINE_BYTES};

/// A section as written: `name { ... }`, its contents in file order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Section {
    /// The name before the `{`.
    pub name: String,
    /// Line of the name.
    pub line: u32,
    /// Pairs and nested sections in the order they appear.
    pub items: Vec<Item>,
}

/// One entry of a [`Section`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    Pair(Pair),
    Section(Section),
}

/// `key: value`, the value with its quotes (if any) removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pair {
    pub key: String,
    pub value: String,
    pub line: u32,
}

impl Section {
    /// The value of `key`; when the key is set more than once, the last one, as the
    /// typed sections do.
    pub fn value(&self, key: &str) -> Option<&str> {
        self.pairs()
            .filter(|p| p.key == key)
            .last()
            .map(|p| p.value.as_str())
    }

    /// The `key: value` pairs directly in this section, in file order.
    pub fn pairs(&self) -> impl Iterator<Item = &Pair> {
        self.items.iter().filter_map(|item| match item {
            Item::Pair(p) => Some(p),
            Item::Section(_) => None,
        })
    }

    /// The sections directly nested in this one, in file order.
    pub fn sections(&self) -> impl Iterator<Item = &Section> {
        self.items.iter().filter_map(|item| match item {
            Item::Section(s) => Some(s),
            Item::Pair(_) => None,
        })
    }

    /// The first nested section called `name`.
    pub fn section(&self, name: &str) -> Option<&Section> {
        self.sections().find(|s| s.name == name)
    }
}

/// A parsed file: the top-level items as the items of an unnamed root section (line 0),
/// and the number of the file's last line, for errors about something missing.
pub(super) struct Document {
    pub root: Section,
    pub last_line: u32,
}

/// Parses `text` into a tree, or fails on the first syntax error.
pub(super) fn parse(text: &str, file: &str) -> Result<Document, ConfigError> {
    let mut parser = Parser {
        file,
        stack: vec![Section::default()],
        pending: None,
    };
    let mut last_line = 0;
    for (index, raw) in text.split('\n').enumerate() {
        let line = u32::try_from(index + 1).unwrap_or(u32::MAX);
        last_line = line;
        parser.line(line, raw)?;
    }
    parser.finish(last_line.max(1))
}

struct Parser<'f> {
    file: &'f str,
    /// Open sections, the root at the bottom.
    stack: Vec<Section>,
    /// A section name that ended its line and waits for its `{`.
    pending: Option<(String, u32)>,
}

impl Parser<'_> {
    fn line(&mut self, line: u32, raw: &str) -> Result<(), ConfigError> {
        if raw.len() > MAX_LINE_BYTES {
            return Err(self.error(
                line,
                self.path(None),
                format!(
                    "line is {} bytes long; at most {MAX_LINE_BYTES} are allowed",
                    raw.len()
                ),
            ));
        }
        let mut rest = raw;
        loop {
            rest = rest.trim_start();
            if rest.is_empty() || rest.starts_with('#') {
                return Ok(());
            }
            if let Some((name, at)) = &self.pending {
                if !rest.starts_with('{') {
                    return Err(self.error(
                        *at,
                        self.path(Some(name)),
                        format!(
                            "expected `{{` after the section name `{name}`, or `:` and a \
                             value after a key"
                        ),
                    ));
                }
            }
            if let Some(after) = rest.strip_prefix('{') {
                let Some((name, at)) = self.pending.take() else {
                    return Err(self.error(
                        line,
                        self.path(None),
                        "`{` without a section name before it",
                    ));
                };
                self.open(name, at)?;
                rest = after;
                continue;
            }
            if let Some(after) = rest.strip_prefix('}') {
                self.close(line)?;
                rest = after;
                continue;
            }
            let end = rest.find(|c| !is_name_char(c)).unwrap_or(rest.len());
            if end == 0 {
                let c = rest.chars().next().unwrap_or(' ');
                return Err(self.error(
                    line,
                    self.path(None),
                    format!("unexpected character {c:?}: expected a key, a section name or `}}`"),
                ));
            }
            let name = &rest[..end];
            let after = rest[end..].trim_start();
            if let Some(value) = after.strip_prefix(':') {
                return self.pair(line, name, value);
            }
            if let Some(after) = after.strip_prefix('{') {
                self.open(name.to_owned(), line)?;
                rest = after;
                continue;
            }
            if after.is_empty() || after.starts_with('#') {
                self.pending = Some((name.to_owned(), line));
                return Ok(());
            }
            return Err(self.error(
                line,
                self.path(Some(name)),
                "expected `:` and a value after a key, or `{` after a section name",
            ));
        }
    }

    /// `key:` has been read; `text` is the rest of the line.
    fn pair(&mut self, line: u32, key: &str, text: &str) -> Result<(), ConfigError> {
        let text = text.trim_start();
        let (value, closes) = if let Some(quoted) = text.strip_prefix('"') {
            let Some(end) = quoted.find('"') else {
                return Err(self.error(
                    line,
                    self.path(Some(key)),
                    "quoted value has no closing `\"`",
                ));
            };
            let tail = quoted[end + 1..].trim_start();
            let tail = tail.split_once('#').map_or(tail, |(before, _)| before);
            if !tail.chars().all(|c| c == '}' || c.is_whitespace()) {
                return Err(self.error(
                    line,
                    self.path(Some(key)),
                    "unexpected text after the closing `\"` of a quoted value",
                ));
            }
            (&quoted[..end], tail.matches('}').count())
        } else {
            let mut value = text.split_once('#').map_or(text, |(before, _)| before);
            value = value.trim_end();
            let mut closes = 0;
            while let Some(before) = value.strip_suffix('}') {
                value = before.trim_end();
                closes += 1;
            }
            if value.is_empty() {
                return Err(self.error(line, self.path(Some(key)), "missing value after `:`"));
            }
            (value, closes)
        };
        self.current().items.push(Item::Pair(Pair {
            key: key.to_owned(),
            value: value.to_owned(),
            line,
        }));
        for _ in 0..closes {
            self.close(line)?;
        }
        Ok(())
    }

    fn open(&mut self, name: String, line: u32) -> Result<(), ConfigError> {
        // The root does not count: a top-level section is at depth 1.
        if self.stack.len() > MAX_DEPTH {
            return Err(self.error(
                line,
                self.path(Some(&name)),
                format!("sections are nested deeper than {MAX_DEPTH} levels"),
            ));
        }
        self.stack.push(Section {
            name,
            line,
            items: Vec::new(),
        });
        Ok(())
    }

    fn close(&mut self, line: u32) -> Result<(), ConfigError> {
        if self.stack.len() < 2 {
            return Err(self.error(line, String::new(), "`}` without an open section"));
        }
        if let Some(done) = self.stack.pop() {
            self.current().items.push(Item::Section(done));
        }
        Ok(())
    }

    fn finish(mut self, last_line: u32) -> Result<Document, ConfigError> {
        if let Some((name, at)) = &self.pending {
            return Err(self.error(
                *at,
                self.path(Some(name)),
                format!("the file ends where `{{` should follow the section name `{name}`"),
            ));
        }
        if self.stack.len() > 1 {
            let (name, at) = self
                .stack
                .last()
                .map(|s| (s.name.clone(), s.line))
                .unwrap_or_default();
            let path = self.path(None);
            return Err(self.error(
                at,
                path,
                format!(
                    "section `{name}` is never closed: a `}}` is missing, here or in a \
                     section nested in it"
                ),
            ));
        }
        let root = self.stack.pop().unwrap_or_default();
        Ok(Document { root, last_line })
    }

    fn current(&mut self) -> &mut Section {
        if self.stack.is_empty() {
            self.stack.push(Section::default());
        }
        let last = self.stack.len() - 1;
        &mut self.stack[last]
    }

    /// Dotted path of the open sections, then `leaf` if given: `totem.interface.mcastport`.
    fn path(&self, leaf: Option<&str>) -> String {
        let names = self.stack.iter().skip(1).map(|s| s.name.as_str());
        names.chain(leaf).collect::<Vec<_>>().join(".")
    }

    fn error(&self, line: u32, key: String, message: impl Into<String>) -> ConfigError {
        ConfigError::new(self.file, line, key, message)
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')
}
