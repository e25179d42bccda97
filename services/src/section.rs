//! The services' configuration sections (`cpg { }`, `clm { }`, `amf { }`, ...): which
//! keys each may hold and how each value is checked ([`SECTIONS`]), and the sections as
//! the daemon accepted them ([`ServiceSection`]), handed to the services in
//! [`ServicesConfig`](crate::ServicesConfig).
//!
//! The daemon reads the file: it warns about any key or nested section a section's
//! [`SectionSpec`] does not list, refuses a value its check refuses (naming the file,
//! line and key), and warns about a section of a service this executive does not offer
//! ([`SectionSpec::service`] `None`, no keys), ignoring it. A service reads its own
//! section's checked values with [`ServicesConfig::section`](crate::ServicesConfig::section).
//!
//! No service of this executive has a key today: openais and corosync gave CPG and CLM
//! none, and a key nobody knows would only be something to misspell. The one
//! service key openais configurations carry is `amf { mode: enabled|disabled }`; AMF is
//! not offered yet, so `disabled` (what runs) is accepted and `enabled` refused rather
//! than silently running without it.

use std::collections::BTreeMap;

/// One key a section may hold.
#[derive(Clone, Copy, Debug)]
pub struct SectionKey {
    /// The key as written.
    pub key: &'static str,
    /// Checks a value: `Err` says what is wrong with it (the daemon adds file, line and
    /// key).
    pub check: fn(&str) -> Result<(), String>,
    /// The default, for documentation and messages.
    pub default: &'static str,
}

/// One top-level section name the daemon accepts for a service.
#[derive(Clone, Copy, Debug)]
pub struct SectionSpec {
    /// The section's name: `cpg`, `amf`, ...
    pub name: &'static str,
    /// The [`ais_exec::Service::NAME`] of the service that reads it, or `None` when
    /// this executive does not offer that service.
    pub service: Option<&'static str>,
    /// The keys it may hold (nested sections: none).
    pub keys: &'static [SectionKey],
}

impl SectionSpec {
    /// The section belongs to a service this executive does not offer and has no key it
    /// could check: it is ignored as a whole, with one warning.
    pub fn ignored(&self) -> bool {
        self.service.is_none() && self.keys.is_empty()
    }

    pub fn key(&self, key: &str) -> Option<&'static SectionKey> {
        self.keys.iter().find(|k| k.key == key)
    }
}

/// Every service section name the daemon accepts, in alphabetical order: openais's
/// services, offered here or not.
pub const SECTIONS: &[SectionSpec] = &[
    SectionSpec {
        name: "amf",
        service: None,
        keys: &[SectionKey {
            key: "mode",
            check: check_amf_mode,
            default: "disabled",
        }],
    },
    not_offered("ckpt"),
    SectionSpec {
        name: "clm",
        service: Some(<crate::Clm as ais_exec::Service>::NAME),
        keys: &[],
    },
    SectionSpec {
        name: "cpg",
        service: Some(<crate::Cpg as ais_exec::Service>::NAME),
        keys: &[],
    },
    not_offered("event"),
    not_offered("evs"),
    not_offered("evt"),
    not_offered("lck"),
    not_offered("msg"),
    not_offered("tmr"),
];

const fn not_offered(name: &'static str) -> SectionSpec {
    SectionSpec {
        name,
        service: None,
        keys: &[],
    }
}

/// The spec of the service section called `name`, if there is one.
pub fn spec(name: &str) -> Option<&'static SectionSpec> {
    SECTIONS.iter().find(|s| s.name == name)
}

/// `amf { mode }`: openais's switch for AMF. AMF is not part of this executive, so only
/// `disabled` describes what runs.
fn check_amf_mode(value: &str) -> Result<(), String> {
    match value {
        "disabled" => Ok(()),
        "enabled" => Err(
            "AMF is not offered by this executive yet: write `mode: disabled`, or leave the \
             amf section out"
                .to_owned(),
        ),
        other => Err(format!("{other:?} is not a mode: enabled or disabled")),
    }
}

/// A service's section as the daemon accepted it: each key its [`SectionSpec`] lists
/// that the file sets (the last setting when set twice), with its checked value and
/// line. Keys the spec does not list are not here (the daemon warned about them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceSection {
    /// The line of the section's name (of the first, when written more than once).
    pub line: u32,
    /// Value and line by key.
    pub values: BTreeMap<String, (String, u32)>,
}

impl ServiceSection {
    /// The value of `key`, if the section sets it.
    pub fn value(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(|(v, _)| v.as_str())
    }

    /// The line `key` was set on, for a service's own messages about it.
    pub fn line_of(&self, key: &str) -> Option<u32> {
        self.values.get(key).map(|(_, line)| *line)
    }
}

/// Every accepted service section by name (only names of [`SECTIONS`]).
pub type ServiceSections = BTreeMap<String, ServiceSection>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_are_sorted_unique_and_name_real_services() {
        let names: Vec<&str> = SECTIONS.iter().map(|s| s.name).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(names, sorted);
        assert_eq!(spec("cpg").and_then(|s| s.service), Some("cpg"));
        assert_eq!(spec("clm").and_then(|s| s.service), Some("clm"));
        assert!(spec("ckpt").is_some_and(|s| s.ignored()));
        assert!(spec("amf").is_some_and(|s| !s.ignored() && s.service.is_none()));
        assert!(spec("totem").is_none());
        for s in SECTIONS {
            for k in s.keys {
                assert_eq!((k.check)(k.default), Ok(()), "{}.{}", s.name, k.key);
            }
        }
    }

    #[test]
    fn amf_mode() {
        let mode = spec("amf").and_then(|s| s.key("mode")).expect("amf.mode");
        assert_eq!((mode.check)("disabled"), Ok(()));
        let enabled = (mode.check)("enabled").unwrap_err();
        assert!(enabled.contains("not offered"), "{enabled}");
        let other = (mode.check)("on").unwrap_err();
        assert!(other.contains("enabled or disabled"), "{other}");
    }

    #[test]
    fn values_and_lines() {
        let mut s = ServiceSection {
            line: 3,
            ..ServiceSection::default()
        };
        s.values.insert("mode".into(), ("disabled".into(), 4));
        assert_eq!(s.value("mode"), Some("disabled"));
        assert_eq!(s.line_of("mode"), Some(4));
        assert_eq!(s.value("other"), None);
    }
}
