//! Unit tests of the config: good files parse; each kind of problem is
//! located at its line and named by its key.

use std::net::IpAddr;

use super::*;
use crate::model::{VipFlag, VipId};

const GOOD: &str = r#"
interfaces = ["eth0"]
xdp_mode = "generic"
pin_dir = "/sys/fs/bpf/test"

[encap]
source_v4 = "10.255.0.0/16"
source_v6 = "fc00:ffff::/96"
mtu = 9000

[limits]
ring_size = 65537
max_vips = 64
max_backends = 1000

[[vip]]
address = "10.0.0.10"
port = 80
protocol = "tcp"
flags = ["hash-no-src-port"]

[[vip.backend]]
address = "10.1.0.1"
weight = 2

[[vip.backend]]
address = "10.1.0.2"

[[vip]]
address = "fc00::10"
port = 0
protocol = "udp"
"#;

#[test]
fn good_config_parses() {
    let c = Config::parse(GOOD).unwrap();
    assert_eq!(c.interfaces, ["eth0"]);
    assert_eq!(c.xdp_mode, XdpMode::Generic);
    assert_eq!(c.encap.mtu, 9000);
    assert_eq!(c.limits.max_reals, 1001);
    let id: VipId = "tcp:10.0.0.10:80".parse().unwrap();
    let spec = &c.vips[&id];
    assert_eq!(spec.flags, [VipFlag::HashNoSrcPort]);
    assert_eq!(spec.backends.len(), 2);
    assert_eq!(spec.backends[&"10.1.0.1".parse::<IpAddr>().unwrap()].weight, 2);
    assert_eq!(spec.backends[&"10.1.0.2".parse::<IpAddr>().unwrap()].weight, 1);
    assert!(c.vips.contains_key(&"udp:[fc00::10]:0".parse().unwrap()));
}

fn problems(text: &str) -> Vec<Problem> {
    Config::parse(text).unwrap_err().problems().to_vec()
}

fn one(text: &str) -> Problem {
    let p = problems(text);
    assert_eq!(p.len(), 1, "{p:?}");
    p[0].clone()
}

#[test]
fn unknown_key_names_line_and_key() {
    let p = one("interfaces = [\"eth0\"]\nbogus = 1\n");
    assert_eq!(p.line, 2);
    assert!(p.message.contains("bogus"), "{p}");
    let p =
        one("interfaces = [\"eth0\"]\n[[vip]]\naddress = \"10.0.0.1\"\nport = 80\nprotocol = \"tcp\"\nwieght = 3\n");
    assert_eq!(p.line, 6, "{p}");
    assert!(p.message.contains("wieght"), "{p}");
}

#[test]
fn bad_addresses_are_located() {
    let text = GOOD.replace("address = \"10.1.0.2\"", "address = \"10.1.0.300\"");
    let p = one(&text);
    assert_eq!(p.key, "vip[0].backend[1].address");
    assert_eq!(p.line, text.lines().position(|l| l.contains("10.1.0.300")).unwrap() + 1);
    assert!(p.message.contains("10.1.0.300"));
}

#[test]
fn duplicates_are_errors() {
    let dup_vip = format!("{GOOD}\n[[vip]]\naddress = \"10.0.0.10\"\nport = 80\nprotocol = \"tcp\"\n");
    let p = one(&dup_vip);
    assert!(p.message.contains("defined twice"), "{p}");
    assert_eq!(p.line, dup_vip.lines().count() - 2);
    let dup_backend = GOOD.replace("address = \"10.1.0.2\"", "address = \"10.1.0.1\"");
    assert!(one(&dup_backend).message.contains("listed twice"));
}

#[test]
fn ranges_and_limits() {
    assert!(one(&GOOD.replace("weight = 2", "weight = 10001")).message.contains("out of range"));
    assert!(one(&GOOD.replace("port = 80", "port = 70000")).key.ends_with(".port"));
    assert!(one(&GOOD.replace("ring_size = 65537", "ring_size = 65536")).message.contains("prime"));
    assert!(one(&GOOD.replace("mtu = 9000", "mtu = 100")).key == "encap.mtu");
    assert!(one(&GOOD.replace("max_vips = 64", "max_vips = 1")).message.contains("exceed"));
    assert!(one(&GOOD.replace("max_backends = 1000", "max_backends = 1")).message.contains("exceed"));
    assert!(one(&GOOD.replace("\"udp\"", "\"sctp\"")).message.contains("sctp"));
    assert!(one(&GOOD.replace("\"10.255.0.0/16\"", "\"10.255.0.0/33\"")).key == "encap.source_v4");
    assert!(one(&GOOD.replace("\"hash-no-src-port\"", "\"sticky\"")).message.contains("sticky"));
}

#[test]
fn ipv4_backend_of_ipv6_vip_is_refused() {
    let text = format!("{GOOD}\n[[vip.backend]]\naddress = \"10.1.0.9\"\n");
    assert!(one(&text).message.contains("IPv6 cannot be carried inside IPv4"));
}

#[test]
fn several_problems_are_reported_together() {
    let text = GOOD.replace("\"10.1.0.2\"", "\"nope\"").replace("mtu = 9000", "mtu = 1");
    assert_eq!(problems(&text).len(), 2);
}

#[test]
fn interfaces_are_required() {
    assert!(problems("[[vip]]\naddress = \"10.0.0.1\"\nport = 1\nprotocol = \"tcp\"\n")[0]
        .message
        .contains("interfaces"));
    assert!(one("interfaces = []\n").message.contains("at least one"));
}

#[test]
fn macs() {
    assert_eq!(parse_mac("02:00:00:aa:bb:0c").unwrap(), [2, 0, 0, 0xaa, 0xbb, 0x0c]);
    assert!(parse_mac("02:00:00:aa:bb").is_err());
    assert!(parse_mac("+2:00:00:00:00:01").unwrap_err().contains("+2:00:00:00:00:01"));
    assert_eq!(format_mac(&[2, 0, 0, 0xaa, 0xbb, 0x0c]).to_string(), "02:00:00:aa:bb:0c");
}

fn at(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).unwrap_or_else(|| panic!("no line with {needle}")) + 1
}

#[test]
fn an_empty_file_names_the_missing_key_at_line_1() {
    for text in ["", "\n\n", "# only a comment\n"] {
        let p = one(text);
        assert_eq!((p.line, p.column, p.key.as_str()), (1, 1, "interfaces"), "{p}");
        assert!(p.message.contains("missing field"), "{p}");
    }
    let err = Config::parse("").unwrap_err().to_string();
    assert_eq!(err, "<config>: line 1, column 1: interfaces: missing field `interfaces`");
}

#[test]
fn a_missing_key_points_at_its_table() {
    let text = format!("{GOOD}\n[[vip]]\naddress = \"10.0.0.11\"\nprotocol = \"tcp\"\n");
    let p = one(&text);
    assert_eq!(p.key, "vip[2].port", "{p}");
    assert_eq!(p.line, text.lines().count() - 2, "{p}");
    let text = GOOD.replace("address = \"10.1.0.2\"", "weight = 3");
    let p = one(&text);
    assert_eq!(p.key, "vip[0].backend[1].address", "{p}");
    let p = one(&GOOD.replace("max_backends = 1000", "max_backendz = 1000"));
    assert_eq!(p.key, "limits.max_backendz", "{p}");
    assert_eq!(p.line, at(GOOD, "max_backends"), "{p}");
}

#[test]
fn too_many_vips_points_at_the_first_one_beyond_the_limit() {
    let text = GOOD.replace("max_vips = 64", "max_vips = 1");
    let p = one(&text);
    assert_eq!(p.key, "vip[1]", "{p}");
    assert_eq!(p.message, "2 VIPs exceed limits.max_vips = 1");
    assert_eq!(p.line, at(&text, "fc00::10") - 1, "the second [[vip]] header: {p}");
    let p = one(&GOOD.replace("max_backends = 1000", "max_backends = 1"));
    assert_eq!((p.key.as_str(), p.line), ("vip[0].backend[1].address", at(GOOD, "10.1.0.2")), "{p}");
}

#[test]
fn limits_that_overflow_are_refused_not_panicking() {
    for (from, to, key) in [
        ("max_vips = 64", "max_vips = 4294967295", "limits.max_vips"),
        ("max_vips = 64", "max_vips = 0", "limits.max_vips"),
        ("max_vips = 64", "max_vips = 2000000", "limits.max_vips"),
        ("ring_size = 65537", "ring_size = 4294967291", "limits.ring_size"),
        ("max_backends = 1000", "max_backends = 4294967295", "limits.max_backends"),
        ("max_backends = 1000", "max_backends = 65536", "limits.max_backends"),
        ("max_backends = 1000", "max_backends = 0", "limits.max_backends"),
        ("max_backends = 1000", "max_backends = 1000\nconn_table_size = 0", "limits.conn_table_size"),
    ] {
        let text = GOOD.replace(from, to);
        let p = problems(&text);
        assert!(p.iter().any(|p| p.key == key), "{to}: {p:?}");
        let line = at(&text, to.lines().last().unwrap());
        assert!(p.iter().any(|p| p.line == line), "{to}: {p:?}");
    }
}

#[test]
fn paths_and_api_settings_start_would_refuse() {
    let cases = [
        ("pin_dir = \"/sys/fs/bpf/test\"", "pin_dir = \"xdp-lb\"", "pin_dir", "relative"),
        ("pin_dir = \"/sys/fs/bpf/test\"", "pin_dir = \"\"", "pin_dir", "empty"),
        ("pin_dir = \"/sys/fs/bpf/test\"", "state_file = \"\"", "state_file", "empty"),
        ("pin_dir = \"/sys/fs/bpf/test\"", "state_file = \"/var/lib/xdp-lb/\"", "state_file", "no file"),
        ("[limits]", "[api]\nlisten = \"0.0.0.0:9780\"\n[limits]", "api.listen", "token_file"),
        ("[limits]", "[api]\nlisten = \"[::]:9780\"\n[limits]", "api.listen", "token_file"),
        ("[limits]", "[api]\nmax_body_bytes = 0\n[limits]", "api.max_body_bytes", "0"),
        ("[limits]", "[api]\ntoken_file = \"token\"\n[limits]", "api.token_file", "relative"),
    ];
    for (from, to, key, says) in cases {
        let text = GOOD.replace(from, to);
        let p = one(&text);
        assert_eq!(p.key, key, "{to}: {p}");
        assert!(p.message.contains(says), "{to}: {p}");
        assert_eq!(p.line, at(&text, to.lines().find(|l| l.contains(" = ")).unwrap()), "{to}: {p}");
    }
    // A non-loopback address is fine with a token.
    let text =
        GOOD.replace("[limits]", "[api]\nlisten = \"0.0.0.0:9780\"\ntoken_file = \"/etc/xdp-lb/token\"\n[limits]");
    assert!(Config::parse(&text).is_ok());
}

#[test]
fn addresses_that_are_never_right_are_located() {
    for (vip, backend, key) in [
        ("0.0.0.0", "10.1.0.1", "vip[0].address"),
        ("::", "fc00:1::1", "vip[0].address"),
        ("224.0.0.1", "10.1.0.1", "vip[0].address"),
        ("10.0.0.10", "0.0.0.0", "vip[0].backend[0].address"),
        ("10.0.0.10", "255.255.255.255", "vip[0].backend[0].address"),
        ("10.0.0.10", "224.0.0.1", "vip[0].backend[0].address"),
        ("10.0.0.10", "ff02::1", "vip[0].backend[0].address"),
        ("10.0.0.10", "10.0.0.10", "vip[0].backend[0].address"),
        ("10.0.0.10", "::ffff:10.1.0.2", "vip[0].backend[1].address"),
    ] {
        let text = format!(
            "interfaces = [\"eth0\"]\n[[vip]]\naddress = \"{vip}\"\nport = 80\nprotocol = \"tcp\"\n\
             [[vip.backend]]\naddress = \"{backend}\"\n[[vip.backend]]\naddress = \"10.1.0.2\"\n"
        );
        let p = one(&text);
        assert_eq!(p.key, key, "{vip} / {backend}: {p}");
    }
}

#[test]
fn load_checks_the_host_and_names_the_file() {
    let dir = std::env::temp_dir().join(format!("lb-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("lb.toml");
    // Not on bpffs.
    let text = GOOD.replace("/sys/fs/bpf/test", &dir.join("pins").display().to_string());
    std::fs::write(&file, &text).unwrap();
    let err = Config::load(&file).unwrap_err();
    assert_eq!(err.problems()[0].key, "pin_dir", "{err}");
    assert!(err.to_string().starts_with(&format!("{}: line 4, column 11: pin_dir: ", file.display())), "{err}");
    assert!(err.to_string().contains("bpffs"), "{err}");
    // A token file that is missing, then empty.
    let token = dir.join("token");
    let text = GOOD.replace("[limits]", &format!("[api]\ntoken_file = \"{}\"\n[limits]", token.display()));
    std::fs::write(&file, &text).unwrap();
    if check_pin_dir(Path::new("/sys/fs/bpf/test")).is_ok() {
        let err = Config::load(&file).unwrap_err();
        assert_eq!(err.problems()[0].key, "api.token_file", "{err}");
        std::fs::write(&token, "\n").unwrap();
        assert!(Config::load(&file).unwrap_err().to_string().contains("is empty"));
        std::fs::write(&token, "secret\n").unwrap();
        assert_eq!(Config::load(&file).unwrap().api.token_file.as_deref(), Some(token.as_path()));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bgp_table() {
    let c = Config::parse(GOOD).unwrap();
    assert_eq!(c.bgp, Bgp::default(), "absent: disabled, defaults");
    let text = format!(
        "{GOOD}\n[bgp]\nenabled = true\nbird_socket = \"/run/b.ctl\"\ninclude_file = \"/run/v.conf\"\n\
         min_healthy = 2\ncommunities = [\"65000:100\", \"65000:1:2\"]\n"
    );
    let b = Config::parse(&text).unwrap().bgp;
    assert!(b.enabled);
    assert_eq!(
        (b.bird_socket.to_str(), b.include_file.to_str(), b.min_healthy),
        (Some("/run/b.ctl"), Some("/run/v.conf"), 2)
    );
    assert_eq!(b.communities.iter().map(|c| c.to_string()).collect::<Vec<_>>(), ["65000:100", "65000:1:2"]);
    let p = one(&text.replace("\"65000:1:2\"", "\"65000:70000\""));
    assert_eq!((p.key.as_str(), p.line), ("bgp.communities[1]", text.lines().count()));
    assert!(one(&text.replace("\"65000:1:2\"", "\"65000:100\"")).message.contains("twice"));
    assert_eq!(one(&text.replace("/run/v.conf", "v.conf")).key, "bgp.include_file");
    assert_eq!(one(&text.replace("/run/b.ctl", "")).key, "bgp.bird_socket");
    assert!(one(&text.replace("min_healthy = 2", "min_healty = 2")).message.contains("min_healty"));
}

#[test]
fn second_chance_defaults_on_for_ten_minutes_and_its_window_is_located() {
    let c = Config::parse("interfaces = [\"eth0\"]\n").unwrap();
    assert_eq!(c.second_chance.window(), Some(std::time::Duration::from_secs(600)));
    let c = Config::parse("interfaces = [\"eth0\"]\n[second_chance]\nenabled = false\nwindow = \"90s\"\n").unwrap();
    assert_eq!((c.second_chance.window(), c.second_chance.window), (None, std::time::Duration::from_secs(90)));
    let p = one("interfaces = [\"eth0\"]\n[second_chance]\nwindow = \"ten minutes\"\n");
    assert_eq!((p.line, p.column, p.key.as_str()), (3, 10, "second_chance.window"), "{p}");
    assert!(p.message.contains("is not a duration"), "{p}");
    let p = one("interfaces = [\"eth0\"]\n[second_chance]\nwindow = \"0s\"\n");
    assert_eq!((p.line, p.key.as_str()), (3, "second_chance.window"), "{p}");
    assert!(p.message.contains("outside 1s..=24h"), "{p}");
    let p = one("interfaces = [\"eth0\"]\n[second_chance]\nwindwo = \"1m\"\n");
    assert_eq!(p.line, 3, "{p}");
}

#[test]
fn syn_flood_threshold_defaults_to_katrans_and_is_located() {
    let c = Config::parse("interfaces = [\"eth0\"]\n").unwrap();
    assert_eq!(c.syn_flood.threshold, lb_common::DEFAULT_SYN_FLOOD_THRESHOLD);
    let c = Config::parse("interfaces = [\"eth0\"]\n[syn_flood]\nthreshold = 0\n").unwrap();
    assert_eq!(c.syn_flood.threshold, 0, "0 turns the mode off");
    let c = Config::parse("interfaces = [\"eth0\"]\n[syn_flood]\nthreshold = 5000\n").unwrap();
    assert_eq!(c.syn_flood.threshold, 5000);
    for bad in ["-1", "100000001", "4294967296"] {
        let p = one(&format!("interfaces = [\"eth0\"]\n[syn_flood]\nthreshold = {bad}\n"));
        assert_eq!((p.line, p.column, p.key.as_str()), (3, 13, "syn_flood.threshold"), "{p}");
        assert!(p.message.contains("outside 0..=100000000"), "{p}");
    }
    let p = one("interfaces = [\"eth0\"]\n[syn_flood]\nthreshold = \"lots\"\n");
    assert_eq!(p.line, 3, "{p}");
    let p = one("interfaces = [\"eth0\"]\n[syn_flood]\nthreshhold = 10\n");
    assert!((p.line, p.message.contains("threshhold")) == (3, true), "{p}");
}

#[test]
fn syn_flood_threshold_reaches_the_forwarding_config() {
    let text = "interfaces = [\"eth0\"]\n[gateway]\nmac = \"02:00:00:00:00:01\"\ninterface_mac = \"02:00:00:00:00:02\"\n[syn_flood]\nthreshold = 4321\n";
    let c = Config::parse(text).unwrap();
    assert_eq!(crate::controller::forwarding(&c).unwrap().syn_flood_threshold, 4321);
}
