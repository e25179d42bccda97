use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use totem::TotemConfig;

use super::*;

const EXAMPLE: &str = include_str!("../../../../conf/openais.conf.example");

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn parse(text: &str) -> (Config, Vec<ConfigWarning>) {
    match parse_str(text, "test.conf") {
        Ok(parsed) => parsed,
        Err(e) => panic!("expected to parse, got: {e}\n{text}"),
    }
}

fn parse_err(text: &str) -> ConfigError {
    match parse_str(text, "test.conf") {
        Ok((config, _)) => panic!("expected an error, got {config:?}\n{text}"),
        Err(e) => e,
    }
}

/// A valid one-node udpu configuration with `extra` added to `totem { }`.
fn with_totem(extra: &str) -> String {
    lines(&[
        "totem {",
        " version: 2",
        " transport: udpu",
        extra,
        " interface {",
        "  bindnetaddr: 10.0.0.1",
        "  member {",
        "   memberaddr: 10.0.0.1",
        "  }",
        " }",
        "}",
    ])
}

/// A valid one-node udpu configuration followed by `rest`.
fn with(rest: &str) -> String {
    format!("{}{rest}", with_totem(""))
}

/// A valid udp configuration with `iface` added to its interface, from line 6.
fn udp(iface: &str) -> String {
    lines(&[
        "totem {",
        " version: 2",
        " interface {",
        "  bindnetaddr: 10.0.0.1",
        "  mcastaddr: 239.0.0.1",
        iface,
        " }",
        "}",
    ])
}

/// A udpu configuration, without members, with `iface` added to its interface, from
/// line 6.
fn udpu(iface: &str) -> String {
    lines(&[
        "totem {",
        " version: 2",
        " transport: udpu",
        " interface {",
        "  bindnetaddr: 10.0.0.1",
        iface,
        " }",
        "}",
    ])
}

/// `lines` joined, each ending with a newline; line N is `lines[N - 1]`.
fn lines(lines: &[&str]) -> String {
    lines.iter().map(|l| format!("{l}\n")).collect()
}

// ---------------------------------------------------------------- shipped configurations

#[test]
fn default_config_parses_without_warnings() {
    let (config, warnings) = parse_str(DEFAULT_CONFIG, "default").expect("parses");
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(config, Config::embedded_default().with_file("default"));
    assert_eq!(config.totem.transport, Transport::Udpu);
    assert!(!config.totem.secauth);
    assert_eq!(config.totem.keyfile, None);
    let ring0 = &config.totem.interfaces[0];
    assert_eq!(ring0.bindnetaddr, ip("127.0.0.1"));
    assert_eq!(ring0.members, vec![ip("127.0.0.1")]);
    assert_eq!(ring0.mcastport, 5405);
    assert!(config.logging.to_stderr);
    assert!(!config.logging.to_file);
    assert_eq!(config.aisexec.runtime_dir, None);
    assert_eq!(config.node_count(), 1);
    assert_eq!(config.local_nodeid(ip("127.0.0.1")), Ok(0x7f00_0001));
    assert!(config.resolve_totem().is_ok());
}

#[test]
fn example_parses_without_warnings() {
    let (config, warnings) = parse_str(EXAMPLE, "openais.conf.example").expect("parses");
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(config.totem.transport, Transport::Udpu);
    assert_eq!(
        config.totem.interfaces[0].members,
        vec![ip("127.0.0.1"), ip("127.0.0.2"), ip("127.0.0.3")]
    );
    assert_eq!(config.node_count(), 3);
    // The explicit timers are the defaults.
    assert_eq!(config.totem.timers, TotemConfig::default());
    let params = config.resolve_totem().expect("resolves");
    assert_eq!(params.token_us, 3_650_000);
    assert_eq!(params.consensus_us, 4_380_000);
    assert_eq!(config.services["amf"].value("mode"), Some("disabled"));
    let services: Vec<&str> = config.services.keys().map(String::as_str).collect();
    assert_eq!(services, ["amf", "clm", "cpg"]);
    assert_eq!(config.logging.subsys.len(), 1);
}

/// The example with its commented-out settings uncommented: every line whose text after
/// the `#` is `key: value`, `name {` or `}` (lower-case key or name). Some prose
/// comments read as settings too (`# udp: send to ...`); they only add keys.
fn example_uncommented() -> String {
    let setting = |t: &str| {
        let word = |w: &str| {
            !w.is_empty()
                && w.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        };
        t == "}"
            || t.strip_suffix(" {").is_some_and(word)
            || t.split_once(": ")
                .is_some_and(|(k, v)| word(k) && !v.is_empty())
    };
    EXAMPLE
        .lines()
        .map(|l| match l.trim_start().strip_prefix('#').map(str::trim) {
            Some(t) if setting(t) => format!("{t}\n"),
            _ => format!("{l}\n"),
        })
        .collect()
}

/// Every key and section of a tree, as dotted paths.
fn paths(section: &Section, prefix: &str, keys: &mut Vec<String>, sections: &mut Vec<String>) {
    for item in &section.items {
        let join = |name: &str| {
            if prefix.is_empty() {
                name.to_owned()
            } else {
                format!("{prefix}.{name}")
            }
        };
        match item {
            Item::Pair(p) => keys.push(join(&p.key)),
            Item::Section(s) => {
                let path = join(&s.name);
                paths(s, &path, keys, sections);
                sections.push(path);
            }
        }
    }
}

/// The example documents every key and section the parser accepts, each in its own
/// section, set or commented out; the lists come from the parser itself, so a key added
/// there and not here fails this test. Sections of services this executive does not
/// offer are only named.
#[test]
fn example_documents_every_key_in_its_section() {
    let text = example_uncommented();
    let doc = syntax::parse(&text, "openais.conf.example (uncommented)")
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    let (mut keys, mut sections) = (Vec::new(), Vec::new());
    paths(&doc.root, "", &mut keys, &mut sections);
    let known = model::known_keys();
    assert!(known.len() >= 50, "{known:?}");
    for key in known {
        assert!(
            keys.contains(&key),
            "{key} is not documented in the example"
        );
    }
    for section in model::known_sections() {
        match ais_services::section::spec(&section) {
            Some(spec) if spec.ignored() => {
                assert!(
                    EXAMPLE.contains(&section),
                    "{section} is not named in the example"
                )
            }
            _ => assert!(
                sections.contains(&section),
                "section {section} is not documented in the example"
            ),
        }
    }
}

/// The multicast alternative in the example parses once uncommented.
#[test]
fn example_multicast_alternative_parses() {
    let start = EXAMPLE
        .find("#    transport: udp")
        .expect("alternative present");
    let block: String = EXAMPLE[start..]
        .lines()
        .take_while(|l| l.starts_with("#    "))
        .map(|l| format!("{}\n", &l[1..]))
        .collect();
    let (config, warnings) = parse(&format!("totem {{\n version: 2\n{block}}}\n"));
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(config.totem.transport, Transport::Udp);
    assert_eq!(
        config.totem.interfaces[0].mcastaddr,
        Some(ip("239.255.1.1"))
    );
    assert_eq!(config.node_count(), 1);
}

// ---------------------------------------------------------------- every key

#[test]
fn every_totem_key_reaches_its_field() {
    let text = "
totem {
    version: 2
    nodeid: 42
    secauth: on
    keyfile: /etc/ais/other.key
    transport: udp
    cluster_name: test cluster
    token: 1000
    token_coefficient: 100
    token_retransmit: 200
    hold: 150
    join: 60
    consensus: 1500
    merge: 300
    downcheck: 900
    fail_recv_const: 2000
    seqno_unchanged_const: 31
    window_size: 60
    max_messages: 20
    miss_count_const: 6
    token_retransmits_before_loss_const: 5
    netmtu: 9000
    accelerated_window: 3
    linger_us: 400
    send_queue_max_msgs: 1000
    send_queue_max_bytes: 2000000
    interface {
        ringnumber: 0
        bindnetaddr: 192.168.1.0
        mcastaddr: 239.192.0.1
        mcastport: 6000
        ttl: 4
    }
}
";
    let (config, warnings) = parse(text);
    assert!(warnings.is_empty(), "{warnings:?}");
    let t = &config.totem;
    assert_eq!(t.version, 2);
    assert_eq!(t.nodeid, Some(42));
    assert!(t.secauth);
    assert_eq!(t.keyfile, Some(PathBuf::from("/etc/ais/other.key")));
    assert_eq!(t.transport, Transport::Udp);
    assert_eq!(t.cluster_name.as_deref(), Some("test cluster"));
    assert_eq!(
        t.timers,
        TotemConfig {
            token_ms: 1000,
            token_coefficient_ms: 100,
            token_retransmit_ms: Some(200),
            hold_ms: Some(150),
            join_ms: 60,
            consensus_ms: Some(1500),
            merge_ms: 300,
            downcheck_ms: 900,
            fail_recv_const: 2000,
            seqno_unchanged_const: 31,
            window_size: 60,
            max_messages: 20,
            miss_count_const: 6,
            token_retransmits_before_loss_const: 5,
            netmtu: 9000,
            accelerated_window: 3,
            linger_us: 400,
            send_queue_max_msgs: 1000,
            send_queue_max_bytes: 2_000_000,
        }
    );
    assert_eq!(
        t.interfaces,
        vec![Interface {
            ringnumber: 0,
            bindnetaddr: ip("192.168.1.0"),
            mcastaddr: Some(ip("239.192.0.1")),
            mcastport: 6000,
            ttl: 4,
            members: vec![],
        }]
    );
    assert_eq!(config.local_nodeid(ip("192.168.1.7")), Ok(42));
    // Every key's line is recorded.
    assert_eq!(config.origin.line_of("totem.send_queue_max_bytes"), 27);
    assert_eq!(config.origin.line_of("totem.interface.ttl"), 33);
    assert_eq!(config.origin.file, "test.conf");
}

#[test]
fn logging_aisexec_uidgid_and_services() {
    let text = with(
        "
logging {
    to_stderr: off
    to_file: on
    logfile: /var/log/ais.log
    debug: on
    timestamp: yes
    logger_subsys {
        subsys: CLM
        debug: on
    }
    logger_subsys {
        subsys: ipc
    }
}
aisexec {
    user: ais
    group: haclient
    runtime_dir: /run/ais-test
}
uidgid {
    uid: alice
}
uidgid {
    gid: staff
    uid: bob
}
amf {
    mode: disabled
}
clm {
}
",
    );
    let (config, warnings) = parse(&text);
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        config.logging,
        Logging {
            to_stderr: false,
            to_file: true,
            logfile: Some(PathBuf::from("/var/log/ais.log")),
            debug: true,
            timestamp: true,
            subsys: vec![
                LoggerSubsys {
                    subsys: "CLM".into(),
                    debug: true
                },
                LoggerSubsys {
                    subsys: "ipc".into(),
                    debug: false
                },
            ],
        }
    );
    assert_eq!(
        config.aisexec,
        AisexecSection {
            user: Some("ais".into()),
            group: Some("haclient".into()),
            runtime_dir: Some(PathBuf::from("/run/ais-test")),
        }
    );
    assert_eq!(
        config.uidgid,
        vec![
            UidGid {
                uid: Some("alice".into()),
                gid: None
            },
            UidGid {
                uid: Some("bob".into()),
                gid: Some("staff".into())
            },
        ]
    );
    let amf = &config.services["amf"];
    assert_eq!(amf.value("mode"), Some("disabled"));
    assert_eq!((amf.line, amf.line_of("mode")), (39, Some(40)));
    assert!(config.services["clm"].values.is_empty());
    assert_eq!(config.services.len(), 2);
}

/// Service sections: the keys their service declares, checked; unknown keys and nested
/// sections warned about with their lines; sections of services this executive does not
/// offer warned about once and left out; a section written twice merged.
#[test]
fn service_sections_are_checked_and_reach_the_services() {
    let text = with(&lines(&[
        "cpg {",                   // 12
        " max_groups: 10",         // 13
        " limits { groups: 1 }",   // 14
        "}",                       // 15
        "clm { }",                 // 16
        "ckpt {",                  // 17
        " checkpoints: 10",        // 18
        "}",                       // 19
        "amf {",                   // 20
        " mode: disabled",         // 21
        " policy: spread",         // 22
        "}",                       // 23
        "amf { mode: disabled }",  // 24
        "event {",                 // 25
        " delivery_queue_size: 1", // 26
        "}",                       // 27
    ]));
    let (config, warnings) = parse(&text);
    let got: Vec<(u32, &str)> = warnings.iter().map(|w| (w.line, w.key.as_str())).collect();
    assert_eq!(
        got,
        vec![
            (13, "cpg.max_groups"),
            (14, "cpg.limits"),
            (17, "ckpt"),
            (22, "amf.policy"),
            (21, "amf.mode"),
            (25, "event"),
        ]
    );
    let shown: Vec<String> = warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(
        shown[0],
        "test.conf:13: cpg.max_groups: unknown key, ignored"
    );
    assert_eq!(
        shown[1],
        "test.conf:14: cpg.limits: unknown section, ignored"
    );
    assert_eq!(
        shown[2],
        "test.conf:17: ckpt: this executive offers no ckpt service: section ignored"
    );
    assert_eq!(
        shown[4],
        "test.conf:21: amf.mode: set again on line 24, which wins"
    );
    // Offered services' sections, and amf's known key, reach the services.
    let names: Vec<&str> = config.services.keys().map(String::as_str).collect();
    assert_eq!(names, ["amf", "clm", "cpg"]);
    assert!(config.services["cpg"].values.is_empty());
    assert_eq!(config.services["cpg"].line, 12);
    let amf = &config.services["amf"];
    assert_eq!(amf.line, 20);
    assert_eq!(amf.value("mode"), Some("disabled"));
    assert_eq!(amf.line_of("mode"), Some(24));
    assert_eq!(config.origin.line_of("amf.mode"), 24);
    assert_eq!(config.origin.line_of("ckpt"), 17);
}

#[test]
fn service_section_values_are_checked() {
    for (text, line, key, message) in [
        (
            with("amf {\n mode: enabled\n}\n"),
            13,
            "amf.mode",
            "AMF is not offered by this executive yet",
        ),
        (
            with("amf { mode: disabled }\namf {\n\n mode: on\n}\n"),
            15,
            "amf.mode",
            "\"on\" is not a mode: enabled or disabled",
        ),
    ] {
        let e = parse_err(&text);
        assert_eq!(
            (e.file.as_str(), e.line, e.key.as_str()),
            ("test.conf", line, key),
            "{e}"
        );
        assert!(e.message.starts_with(message), "{e}");
    }
}

#[test]
fn corosync_to_logfile_spelling_is_accepted() {
    let (config, warnings) = parse(&with("logging {\n to_logfile: yes\n logfile: /tmp/x\n}\n"));
    assert!(warnings.is_empty(), "{warnings:?}");
    assert!(config.logging.to_file);
}

#[test]
fn members_in_order() {
    let mut text = String::from(
        "totem {\n version: 2\n transport: udpu\n interface {\n  bindnetaddr: 10.0.0.0\n",
    );
    for i in 1..=5 {
        text.push_str(&format!("  member {{\n   memberaddr: 10.0.0.{i}\n  }}\n"));
    }
    text.push_str(" }\n}\n");
    let (config, _) = parse(&text);
    let members: Vec<IpAddr> = (1..=5).map(|i| ip(&format!("10.0.0.{i}"))).collect();
    assert_eq!(config.totem.interfaces[0].members, members);
    assert_eq!(config.node_count(), 5);
    // token grows with the ring: 3000 + 3 × 650.
    assert_eq!(config.resolve_totem().map(|p| p.token_us), Ok(4_950_000));
}

// ---------------------------------------------------------------- defaults

#[test]
fn defaults() {
    let (config, warnings) = parse(&udp(""));
    assert!(warnings.is_empty());
    let t = &config.totem;
    assert_eq!(t.nodeid, None);
    assert!(!t.secauth);
    assert_eq!(t.keyfile, None);
    assert_eq!(t.transport, Transport::Udp);
    assert_eq!(t.cluster_name, None);
    assert_eq!(t.timers, TotemConfig::default());
    let i = &t.interfaces[0];
    assert_eq!(i.ringnumber, 0);
    assert_eq!(i.mcastport, DEFAULT_MCASTPORT);
    assert_eq!(i.ttl, 1);
    assert!(i.members.is_empty());
    assert_eq!(config.logging, Logging::default());
    assert!(config.logging.to_stderr);
    assert!(!config.logging.to_file && !config.logging.debug && !config.logging.timestamp);
    assert_eq!(config.aisexec, AisexecSection::default());
    assert!(config.uidgid.is_empty());
    assert!(config.services.is_empty());
}

#[test]
fn keyfile_defaults_only_with_secauth() {
    let (config, _) = parse(&with_totem(" secauth: on"));
    assert_eq!(config.totem.keyfile, Some(PathBuf::from(DEFAULT_KEYFILE)));
    let (config, _) = parse(&with_totem(" secauth: off\n keyfile: /k"));
    assert_eq!(config.totem.keyfile, Some(PathBuf::from("/k")));
}

// ---------------------------------------------------------------- values and syntax

#[test]
fn booleans() {
    for (text, expected) in [
        ("on", true),
        ("off", false),
        ("yes", true),
        ("no", false),
        ("1", true),
        ("0", false),
        ("true", true),
        ("false", false),
        ("ON", true),
        ("No", false),
        ("\"yes\"", true),
    ] {
        let (config, _) = parse(&with_totem(&format!(" secauth: {text}")));
        assert_eq!(config.totem.secauth, expected, "{text}");
    }
    for bad in ["2", "enabled", "o n", "\"\""] {
        let e = parse_err(&with_totem(&format!(" secauth: {bad}")));
        assert_eq!((e.line, e.key.as_str()), (4, "totem.secauth"), "{bad}: {e}");
        assert!(e.message.contains("not a boolean"), "{e}");
    }
}

#[test]
fn quoted_values_comments_and_layout() {
    let text = r#"
# leading comment
totem { # a comment after a brace
    version: "2"   # trailing comment
    cluster_name: "a # b }"
    transport:udpu
    interface
    {
        bindnetaddr: 10.0.0.1
        member { memberaddr: 10.0.0.1 }
        member { memberaddr: "10.0.0.2" } # comment
    }
}

logging {
	timestamp:   on
	logfile: "/var/log/with space.log"
} # done
"#;
    let (config, warnings) = parse(&text.replace('\n', "\r\n"));
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(config.totem.cluster_name.as_deref(), Some("a # b }"));
    assert_eq!(config.totem.transport, Transport::Udpu);
    assert_eq!(
        config.totem.interfaces[0].members,
        vec![ip("10.0.0.1"), ip("10.0.0.2")]
    );
    assert!(config.logging.timestamp);
    assert_eq!(
        config.logging.logfile,
        Some(PathBuf::from("/var/log/with space.log"))
    );
    assert_eq!(config.origin.line_of("totem.interface"), 7);
    assert_eq!(config.origin.line_of("totem.cluster_name"), 5);
}

#[test]
fn closing_braces_may_share_a_line() {
    let text =
        "totem { version: 2\n interface { bindnetaddr: 10.0.0.1\n mcastaddr: 239.0.0.1 } }\n";
    let (config, _) = parse(text);
    assert_eq!(config.totem.interfaces[0].mcastaddr, Some(ip("239.0.0.1")));
}

#[test]
fn ipv6_with_nodeid() {
    let (config, _) = parse(&lines(&[
        "totem {",
        " version: 2",
        " nodeid: 7",
        " interface {",
        "  bindnetaddr: fd00::1",
        "  mcastaddr: ff15::1",
        " }",
        "}",
    ]));
    assert_eq!(config.totem.interfaces[0].mcastaddr, Some(ip("ff15::1")));
    assert_eq!(config.local_nodeid(ip("fd00::1")), Ok(7));
}

#[test]
fn local_nodeid_from_ipv4_or_refused() {
    let config = Config::embedded_default();
    assert_eq!(
        config.local_nodeid(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3))),
        Ok(0x0a01_0203)
    );
    let e = config
        .local_nodeid(IpAddr::V6(Ipv6Addr::LOCALHOST))
        .expect_err("IPv6 needs a nodeid");
    assert_eq!(e.key, "totem.nodeid");
    assert_eq!(e.line, 2, "the totem section's line");
    assert!(e.message.contains("IPv6"), "{e}");
    let e = config
        .local_nodeid(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
        .expect_err("0.0.0.0 gives node id 0");
    assert_eq!(e.key, "totem.nodeid");
}

// ---------------------------------------------------------------- warnings

#[test]
fn unknown_keys_and_sections_are_warnings_with_lines() {
    let text = "\
compatibility: whitetank
totem {
    version: 2
    vsftype: none
    transport: udpu
    interface {
        bindnetaddr: 10.0.0.1
        broadcast: no
        member {
            memberaddr: 10.0.0.1
            color: blue
        }
    }
    future { x: 1 }
}
logging {
    to_syslog: yes
    logger_subsys {
        subsys: CLM
        tags: enter
    }
}
aisexec { pidfile: /run/x }
uidgid { uid: a
  shell: sh }
";
    let (_, warnings) = parse(text);
    let got: Vec<(u32, &str)> = warnings.iter().map(|w| (w.line, w.key.as_str())).collect();
    assert_eq!(
        got,
        vec![
            (1, "compatibility"),
            (4, "totem.vsftype"),
            (14, "totem.future"),
            (8, "totem.interface.broadcast"),
            (11, "totem.interface.member.color"),
            (17, "logging.to_syslog"),
            (20, "logging.logger_subsys.tags"),
            (23, "aisexec.pidfile"),
            (25, "uidgid.shell"),
        ]
    );
    assert!(warnings.iter().all(|w| w.file == "test.conf"));
    assert_eq!(
        warnings[1].to_string(),
        "test.conf:4: totem.vsftype: unknown key, ignored"
    );
}

/// `logger_subsys` names one of the executive's log targets, in any case; another name
/// (openais's AMF, a typo) is warned about on the `subsys` line and left out.
#[test]
fn unknown_logger_subsys_is_a_warning_with_its_line() {
    let text = with(&lines(&[
        "logging {",
        " logger_subsys {",
        "  subsys: TOTEM",
        "  debug: on",
        " }",
        " logger_subsys {",
        "  debug: on",
        "  subsys: AMF",
        " }",
        " logger_subsys { subsys: Cpg }",
        "}",
    ]));
    let (config, warnings) = parse(&text);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    let w = &warnings[0];
    assert_eq!(
        (w.line, w.key.as_str()),
        (19, "logging.logger_subsys.subsys")
    );
    let shown = w.to_string();
    assert!(
        shown.starts_with("test.conf:19: logging.logger_subsys.subsys: no subsystem AMF"),
        "{shown}"
    );
    assert!(shown.contains("totem"), "{shown}");
    assert_eq!(
        config.logging.subsys,
        vec![
            LoggerSubsys {
                subsys: "TOTEM".into(),
                debug: true
            },
            LoggerSubsys {
                subsys: "Cpg".into(),
                debug: false
            },
        ]
    );
    // Every subsystem the logger knows is accepted without a warning.
    for name in crate::logging::SUBSYSTEMS {
        let upper = name.to_ascii_uppercase();
        let (_, warnings) = parse(&with(&format!(
            "logging {{\n logger_subsys {{ subsys: {upper} }}\n}}\n"
        )));
        assert!(warnings.is_empty(), "{name}: {warnings:?}");
    }
}

#[test]
fn a_key_set_twice_warns_and_the_last_wins() {
    let (config, warnings) = parse(&with_totem(" token: 1000\n token: 2000"));
    assert_eq!(config.totem.timers.token_ms, 2000);
    assert_eq!(warnings.len(), 1);
    assert_eq!(
        (warnings[0].line, warnings[0].key.as_str()),
        (4, "totem.token")
    );
    assert!(warnings[0].message.contains("line 5"), "{}", warnings[0]);
    assert_eq!(config.origin.line_of("totem.token"), 5);
}

#[test]
fn members_with_udp_are_warned_about() {
    let (config, warnings) = parse(&udp("  member { memberaddr: 10.0.0.1 }"));
    assert_eq!(config.node_count(), 1);
    assert_eq!(warnings.len(), 1);
    assert_eq!(warnings[0].key, "totem.interface.member");
}

// ---------------------------------------------------------------- errors

/// Each error: the text, then the line and key it must name and a part of its message.
#[test]
fn each_error_names_file_line_and_key() {
    let members_385 = {
        let mut t = String::from(
            "totem {\n version: 2\n transport: udpu\n interface {\n bindnetaddr: 10.0.0.1\n",
        );
        for i in 0..=MAX_MEMBERS {
            t.push_str(&format!(
                " member {{ memberaddr: 10.0.{}.{} }}\n",
                i / 250,
                i % 250 + 1
            ));
        }
        t.push_str(" }\n}\n");
        t
    };
    let deep = {
        let mut t = with("amf {\n");
        for _ in 0..MAX_DEPTH {
            t.push_str("a {\n");
        }
        t
    };
    let long_line = with(&format!("amf {{\n x: {}\n}}\n", "y".repeat(MAX_LINE_BYTES)));
    let cases: Vec<(String, u32, &str, &str)> = vec![
        // syntax
        (with_totem("} }"), 4, "", "without an open section"),
        ("totem {\n version: 2\n".into(), 1, "totem", "never closed"),
        (
            "totem {\n version: 2\n interface {\n bindnetaddr: 10.0.0.1\n}\n".into(),
            1,
            "totem",
            "never closed",
        ),
        (with_totem(" token:"), 4, "totem.token", "missing value"),
        (
            with_totem(" token:   # comment"),
            4,
            "totem.token",
            "missing value",
        ),
        (with_totem(" token: }"), 4, "totem.token", "missing value"),
        (with_totem(" token 3000"), 4, "totem.token", "expected `:`"),
        (
            with_totem(" cluster_name: \"x"),
            4,
            "totem.cluster_name",
            "closing",
        ),
        (
            with_totem(" cluster_name: \"x\" y"),
            4,
            "totem.cluster_name",
            "after the closing",
        ),
        (with_totem(" @"), 4, "totem", "unexpected character"),
        (with_totem(" {"), 4, "totem", "without a section name"),
        (
            with_totem(" future\n x: 1"),
            4,
            "totem.future",
            "expected `{`",
        ),
        (with("amf"), 12, "amf", "the file ends"),
        (deep, 20, "amf.a.a.a.a.a.a.a.a", "deeper than 8"),
        (long_line, 13, "amf", "at most 4096"),
        // top level
        (with("totme {\n}\n"), 12, "totme", "unknown section"),
        (with("token: 3000\n"), 12, "token", "outside any section"),
        ("logging {\n}\n".into(), 3, "totem", "missing section"),
        (
            with("totem {\n version: 2\n}\n"),
            12,
            "totem",
            "written twice (first on line 1)",
        ),
        (
            with("logging {\n}\nlogging {\n}\n"),
            14,
            "logging",
            "written twice",
        ),
        // totem
        (
            "totem {\n version: 1\n}\n".into(),
            2,
            "totem.version",
            "version 1 is not supported",
        ),
        (
            "totem {\n version: x\n}\n".into(),
            2,
            "totem.version",
            "not a whole number",
        ),
        ("totem {\n}\n".into(), 1, "totem.version", "missing"),
        (with_totem(" nodeid: 0"), 4, "totem.nodeid", "must not be 0"),
        (
            with_totem(" nodeid: -1"),
            4,
            "totem.nodeid",
            "not a whole number",
        ),
        (
            with_totem(" nodeid: 4294967296"),
            4,
            "totem.nodeid",
            "out of range",
        ),
        (
            with_totem(" transport: iba"),
            4,
            "totem.transport",
            "not supported",
        ),
        (
            with_totem(" keyfile: \"\""),
            4,
            "totem.keyfile",
            "must not be empty",
        ),
        (
            with_totem(" token: 3s"),
            4,
            "totem.token",
            "not a whole number",
        ),
        (
            with_totem(" consensus: 1000"),
            4,
            "totem.consensus",
            "1.2 × token",
        ),
        (
            with_totem(" window_size: 0"),
            4,
            "totem.window_size",
            "must be between 1",
        ),
        (
            "totem {\n version: 2\n}\n".into(),
            1,
            "totem.interface",
            "missing",
        ),
        // interface
        (
            "totem {\n version: 2\n interface {\n bindnetaddr: 10.0.0.1\n }\n}\n".into(),
            3,
            "totem.interface.mcastaddr",
            "transport udp",
        ),
        (
            "totem {\n version: 2\n transport: udpu\n interface {\n bindnetaddr: 10.0.0.1\n }\n}\n"
                .into(),
            4,
            "totem.interface.member",
            "transport udpu",
        ),
        (
            lines(&[
                "totem {",
                " version: 2",
                " interface {",
                " ringnumber: 1",
                "  bindnetaddr: 10.0.0.1",
                " }",
                "}",
            ]),
            4,
            "totem.interface.ringnumber",
            "only ring 0",
        ),
        (
            lines(&[
                "totem {",
                " version: 2",
                " interface {",
                "  mcastaddr: 239.0.0.1",
                " }",
                "}",
            ]),
            3,
            "totem.interface.bindnetaddr",
            "missing",
        ),
        (
            lines(&[
                "totem {",
                " version: 2",
                " interface {",
                "  bindnetaddr: host.example",
                " }",
                "}",
            ]),
            4,
            "totem.interface.bindnetaddr",
            "not an IP address",
        ),
        (
            lines(&[
                "totem {",
                " version: 2",
                " interface {",
                "  bindnetaddr: 10.0.0.1",
                "  mcastaddr: 10.0.0.2",
                " }",
                "}",
            ]),
            5,
            "totem.interface.mcastaddr",
            "not a multicast address",
        ),
        (
            lines(&[
                "totem {",
                " version: 2",
                " interface {",
                "  bindnetaddr: 10.0.0.1",
                "  mcastaddr: ff15::1",
                " }",
                "}",
            ]),
            5,
            "totem.interface.mcastaddr",
            "is IPv6 but bindnetaddr 10.0.0.1 is IPv4",
        ),
        (
            udp("  mcastport: 99999"),
            6,
            "totem.interface.mcastport",
            "out of range",
        ),
        (
            udp("  mcastport: 0"),
            6,
            "totem.interface.mcastport",
            "out of range",
        ),
        (udp("  ttl: 256"), 6, "totem.interface.ttl", "out of range"),
        (
            udp(" }\n interface {\n  bindnetaddr: 10.0.0.1\n  mcastaddr: 239.0.0.1"),
            7,
            "totem.interface",
            "second interface section (the first is on line 3)",
        ),
        (
            udpu("  member {\n  }"),
            6,
            "totem.interface.member.memberaddr",
            "missing",
        ),
        (
            udpu("  member { memberaddr: 10.0.0.1 }\n  member { memberaddr: 10.0.0.1 }"),
            7,
            "totem.interface.member.memberaddr",
            "already a member (line 6)",
        ),
        (
            udpu("  member { memberaddr: fd00::1 }"),
            6,
            "totem.interface.member.memberaddr",
            "IPv6",
        ),
        (
            lines(&[
                "totem {",
                " version: 2",
                " transport: udpu",
                " interface {",
                "  bindnetaddr: fd00::1",
                "  member { memberaddr: fd00::1 }",
                " }",
                "}",
            ]),
            1,
            "totem.nodeid",
            "IPv6",
        ),
        (
            members_385,
            390,
            "totem.interface.member",
            "more than 384 members",
        ),
        // logging, aisexec, uidgid
        (
            with("logging {\n to_file: on\n}\n"),
            12,
            "logging.logfile",
            "required when to_file",
        ),
        (
            with("logging {\n debug: maybe\n}\n"),
            13,
            "logging.debug",
            "not a boolean",
        ),
        (
            with("logging {\n logger_subsys {\n debug: on\n }\n}\n"),
            13,
            "logging.logger_subsys.subsys",
            "missing",
        ),
        (
            with("logging {\n logger_subsys { subsys: CLM  debug: on }\n}\n"),
            13,
            "logging.logger_subsys.subsys",
            "one `key: value` per line",
        ),
        (
            with("logging {\n logger_subsys { subsys: CLM }\n logger_subsys { subsys: CLM }\n}\n"),
            14,
            "logging.logger_subsys.subsys",
            "already configured on line 13",
        ),
        (
            with("aisexec {\n user: \"\"\n}\n"),
            13,
            "aisexec.user",
            "must not be empty",
        ),
        (
            with("aisexec {\n runtime_dir: \"a\tb\"\n}\n"),
            13,
            "aisexec.runtime_dir",
            "control",
        ),
        (
            with("uidgid {\n}\n"),
            12,
            "uidgid",
            "neither a uid nor a gid",
        ),
    ];
    for (text, line, key, message) in &cases {
        let e = parse_err(text);
        assert_eq!(
            (e.file.as_str(), e.line, e.key.as_str()),
            ("test.conf", *line, *key),
            "{e}\n--- for ---\n{text}"
        );
        assert!(e.message.contains(message), "{e}\n--- for ---\n{text}");
    }
}

#[test]
fn error_display_is_file_line_key_message() {
    let text = udp("  mcastport: 99999");
    let e = parse_str(&text, "/etc/ais/openais.conf").expect_err("bad port");
    assert_eq!(
        e.to_string(),
        "/etc/ais/openais.conf:6: totem.interface.mcastport: 99999 is out of range: it must be \
         from 1 to 65535"
    );
    let e = parse_err("}\n");
    assert_eq!(e.to_string(), "test.conf:1: `}` without an open section");
}

#[test]
fn consensus_error_names_its_line() {
    let e = parse_err(&lines(&[
        "totem {",
        " version: 2",
        " token: 5000",
        "",
        " consensus: 5000",
        " interface {",
        "  bindnetaddr: 10.0.0.1",
        "  mcastaddr: 239.0.0.1",
        " }",
        "}",
    ]));
    assert_eq!((e.line, e.key.as_str()), (5, "totem.consensus"));
    assert_eq!(
        e.message, "5000 must be at least 1.2 × token (6000 ms)",
        "{e}"
    );
}

#[test]
fn derived_value_error_names_the_totem_line() {
    // token_retransmit is derived from token: 10 / 5.2 < 2 ms.
    let e = parse_err(&lines(&[
        "",
        "",
        "totem {",
        " version: 2",
        " token: 10",
        " join: 5",
        " token_retransmits_before_loss_const: 5",
        " interface {",
        "  bindnetaddr: 10.0.0.1",
        "  mcastaddr: 239.0.0.1",
        " }",
        "}",
    ]));
    assert_eq!((e.line, e.key.as_str()), (3, "totem.token_retransmit"));
    assert!(
        e.message
            .starts_with("1.923 (derived) must be at least 2 ms"),
        "{e}"
    );
}

#[test]
fn resolve_totem_maps_errors_after_parsing() {
    let (mut config, _) = parse(&with_totem(" hold: 100"));
    assert!(config.resolve_totem().is_ok());
    config.totem.timers.hold_ms = Some(5000);
    let e = config.resolve_totem().expect_err("hold above retransmit");
    assert_eq!((e.line, e.key.as_str()), (4, "totem.hold"));
    config.totem.interfaces[0].members.clear();
    let e = config.resolve_totem().expect_err("no members");
    assert_eq!((e.line, e.key.as_str()), (7, "totem.interface.member"));
    assert!(!e.message.starts_with("node_count"), "{e}");
}

#[test]
fn error_at_falls_back_to_the_enclosing_section() {
    let config = Config::embedded_default();
    let e = config.error_at("totem.interface.bindnetaddr", "matches no local address");
    assert_eq!(e.line, 8);
    let e = config.error_at("totem.interface.nothing", "x");
    assert_eq!(e.line, 6);
    assert_eq!(config.error_at("elsewhere", "x").line, 0);
}

#[test]
fn oversized_file_is_refused() {
    let text = format!("{}#{}\n", with(""), "x".repeat(MAX_FILE_BYTES));
    let e = parse_err(&text);
    assert_eq!((e.line, e.key.as_str()), (0, ""));
    assert!(e.message.contains("larger than"), "{e}");
}

// ---------------------------------------------------------------- files

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("aisexec-config-test-{}-{name}", std::process::id()))
}

#[test]
fn load_reads_a_file_and_names_it() {
    let path = temp_path("good.conf");
    std::fs::write(&path, with("logging {\n colour: red\n}\n")).expect("write");
    let result = load(&path);
    let _ = std::fs::remove_file(&path);
    let (config, warnings) = result.expect("loads");
    assert_eq!(config.origin.file, path.display().to_string());
    assert_eq!(warnings[0].file, path.display().to_string());
    assert_eq!(warnings[0].line, 13);
}

#[test]
fn load_errors_for_missing_non_utf8_and_huge_files() {
    let missing = temp_path("missing.conf");
    let e = load(&missing).expect_err("missing");
    assert_eq!((e.line, e.key.as_str()), (0, ""));
    assert_eq!(e.file, missing.display().to_string());
    assert!(e.message.contains("No such file"), "{e}");

    let path = temp_path("latin1.conf");
    std::fs::write(&path, b"totem {\n version: 2\n cluster_name: caf\xe9\n}\n").expect("write");
    let result = load(&path);
    let _ = std::fs::remove_file(&path);
    let e = result.expect_err("not UTF-8");
    assert_eq!((e.line, e.key.as_str()), (3, ""));
    assert!(e.message.contains("UTF-8"), "{e}");

    let path = temp_path("huge.conf");
    std::fs::write(&path, vec![b'#'; MAX_FILE_BYTES + 10]).expect("write");
    let result = load(&path);
    let _ = std::fs::remove_file(&path);
    assert!(result
        .expect_err("too large")
        .message
        .contains("larger than"));

    let e = load(&std::env::temp_dir()).expect_err("a directory");
    assert_eq!(e.line, 0);
}

// ---------------------------------------------------------------- robustness

/// A small deterministic generator, so that the mangled inputs are the same every run.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Mangled versions of the example and of garbage never panic; whatever they give is an
/// error with a line inside the text, or a configuration.
#[test]
fn mangled_input_never_panics() {
    let pieces = [
        "{",
        "}",
        ":",
        "#",
        "\"",
        "\n",
        " ",
        "\t",
        "\r",
        "\0",
        "é",
        "💥",
        "totem",
        "member {",
        "memberaddr: 10.0.0.9",
        "mcastport: 99999",
        "token: 1",
        "} }",
        "::",
        "x: }",
        "interface {",
        "nodeid: 0",
        "\u{feff}",
        "ff15::1",
    ];
    let mut rng = Lcg(0x5eed);
    let base: Vec<char> = EXAMPLE.chars().collect();
    let mut inputs: Vec<String> = Vec::new();
    // Every truncation of the example, at line granularity and at a few byte positions.
    let lines: Vec<&str> = EXAMPLE.lines().collect();
    for n in 0..=lines.len() {
        inputs.push(lines[..n].join("\n"));
    }
    for _ in 0..200 {
        let cut = rng.below(base.len());
        inputs.push(base[..cut].iter().collect());
    }
    // Random edits: delete a span, insert a piece, duplicate a line.
    for _ in 0..600 {
        let mut text = base.clone();
        for _ in 0..1 + rng.below(4) {
            match rng.below(3) {
                0 => {
                    let at = rng.below(text.len());
                    let len = rng.below(40).min(text.len() - at);
                    text.drain(at..at + len);
                }
                1 => {
                    let at = rng.below(text.len() + 1);
                    let piece = pieces[rng.below(pieces.len())];
                    for (i, c) in piece.chars().enumerate() {
                        text.insert(at + i, c);
                    }
                }
                _ => {
                    let s: String = text.iter().collect();
                    let ls: Vec<&str> = s.lines().collect();
                    let line = ls[rng.below(ls.len())];
                    let at = rng.below(text.len() + 1);
                    for (i, c) in format!("\n{line}\n").chars().enumerate() {
                        text.insert(at + i, c);
                    }
                }
            }
        }
        inputs.push(text.into_iter().collect());
    }
    // Pure garbage.
    for _ in 0..300 {
        let len = rng.below(200);
        let text: String = (0..len).map(|_| pieces[rng.below(pieces.len())]).collect();
        inputs.push(text);
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        inputs.push(String::from_utf8_lossy(&bytes).into_owned());
    }

    let mut parsed = 0;
    for text in &inputs {
        match parse_str(text, "mangled.conf") {
            Ok((config, warnings)) => {
                parsed += 1;
                let lines = text.split('\n').count() as u32;
                assert!(warnings.iter().all(|w| w.line <= lines));
                let _ = config.local_nodeid(ip("127.0.0.1"));
                let _ = config.resolve_totem();
            }
            Err(e) => {
                let lines = text.split('\n').count() as u32;
                assert!(e.line <= lines.max(1), "{e} for {text:?}");
                assert!(!e.message.is_empty());
                let _ = e.to_string();
            }
        }
    }
    // The mangling is not so heavy that nothing survives it.
    assert!(parsed > 10, "only {parsed} of {} parsed", inputs.len());
}

#[test]
fn pathological_but_bounded_inputs() {
    // Many sections and pairs stay fast and fine.
    let mut text = with("");
    for i in 0..2000 {
        text.push_str(&format!("cpg {{ k{i}: v }}\n"));
    }
    let (config, warnings) = parse(&text);
    assert!(config.services["cpg"].values.is_empty());
    assert_eq!(warnings.len(), 2000);
    // Only braces.
    assert!(parse_str(&"{".repeat(4000), "x").is_err());
    assert!(parse_str(&"}".repeat(4000), "x").is_err());
    assert!(parse_str(&"a {".repeat(1000), "x").is_err());
    assert!(parse_str("", "x").is_err());
}

impl Config {
    /// The same configuration as if read from `file`.
    fn with_file(mut self, file: &str) -> Config {
        self.origin.file = file.to_owned();
        self
    }
}

// ----- nodelist and quorum -----

/// A three-node udpu configuration (10.0.0.1-3) followed by `rest`, from line 22.
fn three(rest: &str) -> String {
    let mut t = lines(&[
        "totem {",
        " version: 2",
        " transport: udpu",
        " interface {",
        "  bindnetaddr: 10.0.0.1",
        "  member {",
        "   memberaddr: 10.0.0.1",
        "  }",
        "  member {",
        "   memberaddr: 10.0.0.2",
        "  }",
        "  member {",
        "   memberaddr: 10.0.0.3",
        "  }",
        " }",
        "}",
        "",
        "",
        "",
        "",
        "",
    ]);
    t.push_str(rest);
    t
}

const NODELIST: &str = "nodelist {
 node {
  nodeid: 1
  name: alpha
  ring0_addr: 10.0.0.1
 }
 node {
  nodeid: 2
  name: beta
  ring0_addr: 10.0.0.2
  quorum_votes: 2
 }
 node {
  ring0_addr: 10.0.0.3
 }
}
";

#[test]
fn nodelist_reaches_its_fields_in_order() {
    let (config, warnings) = parse(&three(NODELIST));
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        config.nodelist,
        vec![
            NodeEntry {
                nodeid: 1,
                name: Some("alpha".into()),
                ring0_addr: Some(ip("10.0.0.1")),
                quorum_votes: 1,
            },
            NodeEntry {
                nodeid: 2,
                name: Some("beta".into()),
                ring0_addr: Some(ip("10.0.0.2")),
                quorum_votes: 2,
            },
            // The id derives from the IPv4 address, like totem.nodeid's.
            NodeEntry {
                nodeid: 0x0a00_0003,
                name: None,
                ring0_addr: Some(ip("10.0.0.3")),
                quorum_votes: 1,
            },
        ]
    );
    assert_eq!(
        config.node_names(),
        [(1, "alpha".to_owned()), (2, "beta".to_owned())]
            .into_iter()
            .collect()
    );
    // This node finds its id through its ring0_addr.
    assert_eq!(config.local_nodeid(ip("10.0.0.1")), Ok(1));
    assert_eq!(config.local_nodeid(ip("10.0.0.9")), Ok(0x0a00_0009));
}

#[test]
fn expected_votes_come_from_quorum_then_nodelist_then_udpu_members() {
    // The nodelist's sum: 1 + 2 + 1.
    let (config, _) = parse(&three(NODELIST));
    assert_eq!(config.expected_votes(), Some(4));
    let p = config.quorum_policy();
    assert_eq!(p.votes_of(totem::NodeId(2)), 2);
    assert_eq!(p.votes_of(totem::NodeId(99)), 1);
    assert!(!p.two_node);
    // quorum.expected_votes wins.
    let (config, _) = parse(&three(&format!(
        "{NODELIST}quorum {{\n expected_votes: 5\n votes: 3\n}}\n"
    )));
    assert_eq!(config.expected_votes(), Some(5));
    assert_eq!(config.quorum.votes, 3);
    assert_eq!(config.quorum_policy().votes_of(totem::NodeId(99)), 3);
    // No nodelist: the udpu members, each with quorum.votes.
    let (config, _) = parse(&three("quorum {\n votes: 2\n}\n"));
    assert!(config.nodelist.is_empty());
    assert_eq!(config.expected_votes(), Some(6));
    // Multicast without either: unknown, quorum not enforced.
    let (config, _) = parse(&udp(""));
    assert_eq!(config.expected_votes(), None);
    assert_eq!(config.quorum_policy().expected_votes, None);
    assert_eq!(config.quorum, QuorumSection::default());
}

#[test]
fn two_node_needs_exactly_two_expected_votes() {
    let two = "nodelist {\n node {\n  nodeid: 1\n }\n node {\n  nodeid: 2\n }\n}\n";
    let (config, warnings) = parse(&with(&format!("{two}quorum {{\n two_node: on\n}}\n")));
    assert!(config.quorum.two_node);
    assert_eq!(config.expected_votes(), Some(2));
    // The one member 10.0.0.1 has no entry: warned about.
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].key, "nodelist.node.ring0_addr");
    let (config, _) = parse(&udp("").replace(
        "}\n}\n",
        "}\n}\nquorum {\n two_node: yes\n expected_votes: 2\n}\n",
    ));
    assert!(config.quorum_policy().two_node);

    let e = parse_err(&three(&format!("{NODELIST}quorum {{\n two_node: on\n}}\n")));
    assert_eq!((e.line, e.key.as_str()), (39, "quorum.two_node"));
    assert!(
        e.message.contains("exactly 2") && e.message.contains("4"),
        "{e}"
    );
    let e = parse_err(&udp("").replace("}\n}\n", "}\n}\nquorum {\n two_node: on\n}\n"));
    assert_eq!((e.line, e.key.as_str()), (10, "quorum.two_node"));
    assert!(e.message.contains("expected_votes: 2"), "{e}");
}

#[test]
fn expected_votes_below_the_nodelist_is_a_warning() {
    let (config, warnings) = parse(&three(&format!(
        "{NODELIST}quorum {{\n expected_votes: 2\n}}\n"
    )));
    assert_eq!(config.expected_votes(), Some(2));
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(
        (warnings[0].line, warnings[0].key.as_str()),
        (39, "quorum.expected_votes")
    );
}

#[test]
fn nodelist_and_quorum_errors_name_file_line_and_key() {
    let node = |body: &str| three(&format!("nodelist {{\n node {{\n{body}\n }}\n}}\n"));
    let cases: Vec<(String, u32, &str, &str)> = vec![
        (node("  nodeid: 0"), 24, "nodelist.node.nodeid", "must not be 0"),
        (node("  nodeid: x"), 24, "nodelist.node.nodeid", "not a whole number"),
        (node("  name: alpha"), 23, "nodelist.node.nodeid", "missing"),
        (node("  ring0_addr: fd00::1"), 23, "nodelist.node.nodeid", "missing"),
        (node("  ring0_addr: host"), 24, "nodelist.node.ring0_addr", "not an IP address"),
        (node("  nodeid: 1\n  quorum_votes: 0"), 25, "nodelist.node.quorum_votes", "at least 1"),
        (node("  nodeid: 1\n  quorum_votes: 65536"), 25, "nodelist.node.quorum_votes", "out of range"),
        (node("  nodeid: 1\n  name: two words"), 25, "nodelist.node.name", "single word"),
        (
            three("nodelist {\n node {\n  nodeid: 1\n }\n node {\n  nodeid: 1\n }\n}\n"),
            27,
            "nodelist.node.nodeid",
            "already the node on line 23",
        ),
        (
            three("nodelist {\n node {\n  nodeid: 167772161\n }\n node {\n  ring0_addr: 10.0.0.1\n }\n}\n"),
            26,
            "nodelist.node.nodeid",
            "derived from ring0_addr 10.0.0.1",
        ),
        (
            three("nodelist {\n node {\n  nodeid: 1\n  name: a\n }\n node {\n  nodeid: 2\n  name: a\n }\n}\n"),
            29,
            "nodelist.node.name",
            "already the name",
        ),
        (
            three("nodelist {\n node {\n  nodeid: 1\n  ring0_addr: 10.0.0.1\n }\n node {\n  nodeid: 2\n  ring0_addr: 10.0.0.1\n }\n}\n"),
            29,
            "nodelist.node.ring0_addr",
            "already the address",
        ),
        (three("nodelist {\n}\n"), 22, "nodelist.node", "missing"),
        (
            three("nodelist {\n node {\n  nodeid: 1\n }\n}\nnodelist {\n node {\n  nodeid: 2\n }\n}\n"),
            27,
            "nodelist",
            "written twice",
        ),
        (three("quorum {\n expected_votes: 0\n}\n"), 23, "quorum.expected_votes", "at least 1"),
        (three("quorum {\n votes: 0\n}\n"), 23, "quorum.votes", "at least 1"),
        (three("quorum {\n two_node: maybe\n}\n"), 23, "quorum.two_node", "not a boolean"),
        (three("quorum {\n}\nquorum {\n}\n"), 24, "quorum", "written twice"),
    ];
    for (text, line, key, message) in cases {
        let e = parse_err(&text);
        assert_eq!(
            (e.file.as_str(), e.line, e.key.as_str()),
            ("test.conf", line, key),
            "{e}\n{text}"
        );
        assert!(e.message.contains(message), "{e} (wanted {message:?})");
    }
}

#[test]
fn unknown_nodelist_and_quorum_keys_are_warnings() {
    let (_, warnings) = parse(&three(
        "nodelist {\n ring1_addr: x\n node {\n  nodeid: 1\n  ring1_addr: 10.1.0.1\n }\n}\nquorum {\n provider: corosync_votequorum\n}\n",
    ));
    let keys: Vec<(&str, u32)> = warnings.iter().map(|w| (w.key.as_str(), w.line)).collect();
    assert!(keys.contains(&("nodelist.ring1_addr", 23)), "{keys:?}");
    assert!(keys.contains(&("nodelist.node.ring1_addr", 26)), "{keys:?}");
    assert!(keys.contains(&("quorum.provider", 30)), "{keys:?}");
}

#[test]
fn example_documents_nodelist_and_quorum() {
    let (config, warnings) = parse_str(EXAMPLE, "openais.conf.example").expect("parses");
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(config.nodelist.len(), 3);
    assert_eq!(config.nodelist[0].name.as_deref(), Some("node1"));
    assert_eq!(config.local_nodeid(ip("127.0.0.1")), Ok(1));
    assert_eq!(config.expected_votes(), Some(3));
    for key in [
        "nodeid",
        "name",
        "ring0_addr",
        "quorum_votes",
        "expected_votes",
        "two_node",
        "votes",
    ] {
        assert!(
            EXAMPLE.contains(&format!("{key}:")),
            "{key} is not documented"
        );
    }
}
