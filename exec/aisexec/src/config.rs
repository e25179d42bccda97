//! The daemon's configuration: the openais.conf brace format
//! (`totem { interface { ... } } logging { ... } aisexec { ... } amf { ... }`) read into
//! typed sections ([`Config`]).
//!
//! Reading happens in two steps: [`syntax`] turns text into a tree of sections and
//! `key: value` pairs with their line numbers; the model builds the typed sections from
//! the tree, checking every value, and finally asks Totem whether it can run with the
//! timers given ([`Config::resolve_totem`]). A problem stops reading and is reported as
//! a [`ConfigError`] naming the file, the line and the dotted key
//! (`openais.conf:14: totem.interface.mcastport: 99999 is out of range ...`). Keys and
//! sections this version does not know, inside sections it does know, are skipped with
//! a [`ConfigWarning`] instead, so that a configuration written for corosync or a later
//! version still runs. Service sections (`cpg { }`, `amf { }`, ...) are read the same
//! way, with the keys and checks their service declares
//! ([`ais_services::section::SECTIONS`]), and handed to the services; a section of a
//! service this executive does not offer is a warning.
//!
//! Input is bounded: at most [`MAX_FILE_BYTES`] bytes, lines of at most
//! [`MAX_LINE_BYTES`], sections nested at most [`MAX_DEPTH`] deep and at most
//! [`MAX_MEMBERS`] members. No input makes the parser panic.

mod model;
pub mod syntax;
mod value;

#[cfg(test)]
mod tests;

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::Path;

pub use model::{
    AisexecSection, Config, Interface, LoggerSubsys, Logging, NodeEntry, Origin, QuorumSection,
    TotemSection, Transport, UidGid, MAX_VOTES,
};
pub use syntax::{Item, Pair, Section};

/// Largest configuration file accepted, in bytes.
pub const MAX_FILE_BYTES: usize = 1 << 20;
/// Longest line accepted, in bytes.
pub const MAX_LINE_BYTES: usize = 4096;
/// Deepest nesting of sections accepted (`totem { interface { member { } } }` is 3).
pub const MAX_DEPTH: usize = 8;
/// Most `member { }` sections an interface may list: the most members a ring holds.
pub const MAX_MEMBERS: usize = totem::wire::MAX_MEMBERS;

/// The shared key used when `secauth` is on and no `keyfile` is given.
pub const DEFAULT_KEYFILE: &str = "/etc/ais/authkey";
/// The UDP port when `mcastport` is not given.
pub const DEFAULT_MCASTPORT: u16 = 5405;

/// The configuration the daemon runs with when given none: a one-node cluster on the
/// loopback address, unicast, no authentication, logging to standard error. No
/// `runtime_dir`: the daemon picks a directory for the user that runs it.
pub const DEFAULT_CONFIG: &str = "\
# aisexec's built-in configuration: a one-node cluster on the loopback address.
totem {
    version: 2
    secauth: off
    transport: udpu
    interface {
        ringnumber: 0
        bindnetaddr: 127.0.0.1
        mcastport: 5405
        member {
            memberaddr: 127.0.0.1
        }
    }
}

logging {
    to_stderr: yes
    to_file: no
    timestamp: on
}
";

/// A problem that stops the configuration from being used.
///
/// Displays as `{file}:{line}: {key}: {message}`; the `{key}: ` part is left out when
/// the problem is not about one key (the file cannot be read, a stray `}`). Line 0 means
/// no particular line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: u32,
    /// Dotted path of the key or section: `totem.interface.mcastport`.
    pub key: String,
    pub message: String,
}

/// Something read but ignored: an unknown key or section inside a known section, or a
/// key set twice. Displays like [`ConfigError`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigWarning {
    pub file: String,
    pub line: u32,
    pub key: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(
        file: impl Into<String>,
        line: u32,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        ConfigError {
            file: file.into(),
            line,
            key: key.into(),
            message: message.into(),
        }
    }
}

impl ConfigWarning {
    pub fn new(
        file: impl Into<String>,
        line: u32,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        ConfigWarning {
            file: file.into(),
            line,
            key: key.into(),
            message: message.into(),
        }
    }
}

fn display(
    f: &mut fmt::Formatter<'_>,
    file: &str,
    line: u32,
    key: &str,
    message: &str,
) -> fmt::Result {
    write!(f, "{file}:{line}: ")?;
    if !key.is_empty() {
        write!(f, "{key}: ")?;
    }
    f.write_str(message)
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        display(f, &self.file, self.line, &self.key, &self.message)
    }
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        display(f, &self.file, self.line, &self.key, &self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Reads a configuration from `text`; `file` names it in errors and warnings.
pub fn parse_str(text: &str, file: &str) -> Result<(Config, Vec<ConfigWarning>), ConfigError> {
    if text.len() > MAX_FILE_BYTES {
        return Err(too_large(file));
    }
    let doc = syntax::parse(text, file)?;
    model::build(&doc.root, file, doc.last_line)
}

/// Reads the configuration file at `path`. A file that cannot be read, is larger than
/// [`MAX_FILE_BYTES`] or is not UTF-8 is an error like any other, with line 0 (or the
/// line of the first bad byte) and no key.
pub fn load(path: &Path) -> Result<(Config, Vec<ConfigWarning>), ConfigError> {
    let file = path.display().to_string();
    let io_error = |e: std::io::Error| ConfigError::new(&file, 0, "", format!("cannot read: {e}"));
    let mut bytes = Vec::new();
    File::open(path)
        .map_err(io_error)?
        // One byte more than allowed, to tell a full-size file from a larger one without
        // reading all of, say, /dev/zero.
        .take(MAX_FILE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io_error)?;
    if bytes.len() > MAX_FILE_BYTES {
        return Err(too_large(&file));
    }
    let text = std::str::from_utf8(&bytes).map_err(|e| {
        let good = bytes.get(..e.valid_up_to()).unwrap_or_default();
        let line = good.iter().filter(|b| **b == b'\n').count() + 1;
        ConfigError::new(
            &file,
            u32::try_from(line).unwrap_or(u32::MAX),
            "",
            "not valid UTF-8 text",
        )
    })?;
    log::debug!(target: "config", "read {} bytes from {file}", bytes.len());
    parse_str(text, &file)
}

fn too_large(file: &str) -> ConfigError {
    ConfigError::new(
        file,
        0,
        "",
        format!("the file is larger than {MAX_FILE_BYTES} bytes (1 MiB), the most accepted"),
    )
}

impl Config {
    /// The configuration of [`DEFAULT_CONFIG`].
    pub fn embedded_default() -> Config {
        match parse_str(DEFAULT_CONFIG, "<built-in configuration>") {
            Ok((config, _)) => config,
            // A unit test parses DEFAULT_CONFIG, so this is a bug in this file.
            Err(e) => panic!("the built-in configuration does not parse: {e}"),
        }
    }
}
