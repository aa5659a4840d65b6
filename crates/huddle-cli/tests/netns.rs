//! `huddle serve` on a wildcard listen, reached from other network namespaces: the server must
//! advertise addresses that clients on other machines reach, answer each check from the address
//! it was sent to, and work for a client behind a NAT.
//!
//! Each test builds its own namespaces (named after the process and the test) joined by veth
//! pairs, with addresses in 10.200.0.0/16 that exist only there: nothing is added to the host's
//! namespace and no traffic leaves the namespaces. They are deleted at the end, on failure too.
//! The tests need root, `ip` (iproute2) and `nft` (nftables), and fail, not skip, without them
//! (scripts/test.sh installs the packages; CI runs as root).
//!
//! ```text
//!   cli ── 10.200.1.2 ─── 10.200.1.1 + 10.200.9.1 ── srv ── 10.200.2.1 ─── 10.200.2.2 ── rtr
//!   (default route to srv)  (two addresses on one link)                   (masquerade) │
//!                                                                  nat ── 10.200.3.2 ──┘ 10.200.3.1
//! ```
//!
//! (one test each: the second address, the NAT; a third listens on `[::]` and serves an IPv4
//! and an IPv6 client on one dual-stack socket.)

mod common;

use common::{Serve, call_args, loud, padded_speech, pesq, tempdir, tone_db, wav_samples, write_config};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const HTTP_PORT: u16 = 7880;
const UDP_PORT: u16 = 7882;

/// Runs `cmd args`, panicking with its output when it fails.
fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd} (install iproute2 and nftables): {e}"));
    assert!(
        out.status.success(),
        "{cmd} {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Fails loudly (never skips) when the test cannot build namespaces here.
fn require_root_ip_and_nft() {
    let uid = run("id", &["-u"]);
    assert_eq!(
        uid.trim(),
        "0",
        "the network namespace tests need root (they create namespaces and veth pairs)"
    );
    run("ip", &["-V"]);
    run("nft", &["--version"]);
}

/// Namespaces made by one test, deleted on drop (their veth ends go with them).
struct Netns {
    names: Vec<String>,
}

impl Netns {
    /// The namespaces `<prefix>-<role>` for each role, fresh (a leftover of an earlier run
    /// with the same name is deleted first), each with `lo` up.
    fn new(tag: &str, roles: &[&str]) -> Netns {
        let mut ns = Netns { names: Vec::new() };
        for role in roles {
            let name = format!("hdl{}{tag}-{role}", std::process::id());
            let _ = Command::new("ip")
                .args(["netns", "del", &name])
                .stderr(Stdio::null())
                .status();
            run("ip", &["netns", "add", &name]);
            ns.names.push(name.clone());
            run("ip", &["-n", &name, "link", "set", "lo", "up"]);
        }
        ns
    }

    fn name(&self, role: &str) -> &str {
        self.names
            .iter()
            .find(|n| n.ends_with(&format!("-{role}")))
            .expect("a namespace of that role")
    }

    /// `ip -n NS args`.
    fn ip(&self, role: &str, args: &[&str]) {
        let mut all = vec!["-n", self.name(role)];
        all.extend_from_slice(args);
        run("ip", &all);
    }

    /// Runs a command inside the namespace and returns its output.
    fn exec(&self, role: &str, cmd: &[&str]) -> String {
        let mut all = vec!["netns", "exec", self.name(role)];
        all.extend_from_slice(cmd);
        run("ip", &all)
    }

    /// A veth pair from `a` (interface `a_if`, `a_addr`) to `b` (`b_if`, `b_addr`), made inside
    /// `a` with its peer moved straight to `b`: it never exists in the host's namespace.
    fn link(&self, a: &str, a_if: &str, a_addr: &str, b: &str, b_if: &str, b_addr: &str) {
        let b_name = self.name(b).to_string();
        self.ip(
            a,
            &[
                "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &b_name,
            ],
        );
        self.ip(a, &["addr", "add", a_addr, "dev", a_if]);
        self.ip(b, &["addr", "add", b_addr, "dev", b_if]);
        self.ip(a, &["link", "set", a_if, "up"]);
        self.ip(b, &["link", "set", b_if, "up"]);
    }

    /// Loads an nftables ruleset (`nft -f`) in the namespace.
    fn nft(&self, role: &str, ruleset: &str, dir: &Path) {
        let file = dir.join(format!("{role}.nft"));
        std::fs::write(&file, ruleset).unwrap();
        self.exec(role, &["nft", "-f", file.to_str().unwrap()]);
    }

    /// `program args` in the namespace, its stdout piped, its stderr into the file `stderr`.
    fn command(&self, role: &str, program: &Path, args: &[&str], stderr: &Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.name(role)])
            .arg(program)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(stderr).expect("a log file"));
        cmd
    }

    /// A process in the namespace, killed on drop.
    fn spawn(&self, role: &str, program: &Path, args: &[&str], stderr: &Path) -> Proc {
        let child = self
            .command(role, program, args, stderr)
            .spawn()
            .expect("start a process in a namespace");
        Proc { child }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// A child process (`ip netns exec` execs the program: the pid is the program's), killed on drop.
struct Proc {
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn huddle() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_huddle"))
}

/// Starts `huddle serve --listen <wildcard>:7880` (`0.0.0.0` or `[::]`; with an app from a config
/// file: dev mode is refused on a non-loopback listener) in the `srv` namespace; returns it once
/// it listens.
fn serve(ns: &Netns, dir: &Path, wildcard: &str) -> Serve {
    let config = write_config(dir.join("huddle.toml"), "");
    let listen = format!("{wildcard}:{HTTP_PORT}");
    let udp = UDP_PORT.to_string();
    let log = dir.join("server.log");
    let args = [
        "serve",
        "--listen",
        &listen,
        "--udp-port",
        &udp,
        "--config",
        config.to_str().unwrap(),
    ];
    Serve::try_start(&mut ns.command("srv", &huddle(), &args, &log)).unwrap_or_else(|banner| {
        panic!(
            "the server did not start: {banner:?}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    })
}

/// `huddle call` in namespace `role` against the server at `server_ip`: publishing a 500 Hz tone
/// as `stream`, or playing it into `record`.
fn call(ns: &Netns, role: &str, server_ip: &str, user: &str, what: &[&str], secs: &str, log: &Path) -> Proc {
    let url = format!("ws://{server_ip}:{HTTP_PORT}");
    let mut args = call_args(&url).to_vec();
    args.extend(["--room", "netns", "--user", user, "--duration", secs]);
    args.extend_from_slice(what);
    ns.spawn(role, &huddle(), &args, log)
}

/// Waits for a call to end; panics with its log when it failed.
fn finish(mut p: Proc, log: &Path) -> String {
    let status = p.child.wait().unwrap();
    let mut stdout = String::new();
    if let Some(mut out) = p.child.stdout.take() {
        std::io::Read::read_to_string(&mut out, &mut stdout).unwrap();
    }
    assert!(
        status.success(),
        "a call failed: {status}\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    stdout
}

/// Asserts that `wav` holds more than a second of the 500 Hz tone; returns the seconds of tone.
fn assert_tone(wav: &Path) -> f64 {
    let samples = wav_samples(wav);
    let loud = loud(&samples);
    assert!(
        loud.len() > 48_000,
        "less than a second of tone recorded ({} samples of {})",
        loud.len(),
        samples.len()
    );
    let db = tone_db(&loud, 500.0);
    assert!(db > -3.0, "the recording is not the 500 Hz tone ({db:.1} dB)");
    loud.len() as f64 / 48_000.0
}

/// A 500 Hz tone published by `alice` from namespace `publisher.0` (to the server at
/// `publisher.1`) and played by `bob` from `player.0` (at `player.1`), the player started first;
/// asserts that the player heard more than a second of it and returns the seconds.
fn tone_call(ns: &Netns, dir: &Path, publisher: (&str, &str), player: (&str, &str)) -> f64 {
    let wav = dir.join("heard.wav");
    let (play_log, pub_log) = (dir.join("player.log"), dir.join("publisher.log"));
    let wav_s = wav.to_str().unwrap();
    let play = call(
        ns,
        player.0,
        player.1,
        "bob",
        &["--play", "tone", "--record", wav_s],
        "3.5",
        &play_log,
    );
    std::thread::sleep(Duration::from_millis(300));
    let publish = call(
        ns,
        publisher.0,
        publisher.1,
        "alice",
        &["--publish", "tone", "--source", "tone:500"],
        "2.5",
        &pub_log,
    );
    finish(publish, &pub_log);
    let events = finish(play, &play_log);
    assert!(events.contains("player_recv_audio_first_frame"), "{events}");
    assert_tone(&wav)
}

/// The packet count of the nft rule with `comment` in namespace `role`.
fn nft_packets(ns: &Netns, role: &str, comment: &str) -> u64 {
    let rules = ns.exec(role, &["nft", "list", "ruleset"]);
    let line = rules
        .lines()
        .find(|l| l.contains(comment))
        .unwrap_or_else(|| panic!("no rule {comment:?} in\n{rules}"));
    let n = line
        .split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .unwrap_or_else(|| panic!("no counter in {line:?}"));
    n.parse().unwrap()
}

/// The `media plane listening` line of the server's log (waiting up to 5 s for it).
fn candidates_logged(log: &Path) -> String {
    let mut text = String::new();
    for _ in 0..100 {
        text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains("media plane listening")) {
            return line.to_string();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("no media plane line in\n{text}");
}

#[test]
fn a_client_on_another_network_reaches_the_second_address_of_a_wildcard_server() {
    require_root_ip_and_nft();
    let ns = Netns::new("a", &["srv", "cli"]);
    // Two addresses on the server's link; the client has a route to both.
    ns.link("srv", "s0", "10.200.1.1/24", "cli", "c0", "10.200.1.2/24");
    ns.ip("srv", &["addr", "add", "10.200.9.1/24", "dev", "s0"]);
    ns.ip("cli", &["route", "add", "10.200.9.0/24", "via", "10.200.1.1"]);
    // The client's media to and from the first address is lost (signaling is not): ICE must
    // use the second, whose answers the kernel would send from the first (the primary address
    // of the link) unless the server sets the source. Browsers drop an answer from another
    // address than the check went to (RFC 8445, 7.2.5.2.1), as a stateful firewall or NAT
    // would; the SDK's ICE agent does not check, so the client's namespace drops them here.
    let dir = tempdir("netns-a");
    let nft = format!(
        "table inet hdl {{\n  chain out {{\n    type filter hook output priority 0; policy accept;\n    \
         ip daddr 10.200.1.1 udp dport {UDP_PORT} counter drop comment \"first\"\n  }}\n  \
         chain in {{\n    type filter hook input priority 0; policy accept;\n    \
         ip saddr 10.200.1.1 udp sport {UDP_PORT} counter drop comment \"from-first\"\n  }}\n}}\n"
    );
    ns.nft("cli", &nft, &dir);
    let _server = serve(&ns, &dir, "0.0.0.0");
    let logged = candidates_logged(&dir.join("server.log"));
    assert!(
        logged.contains("10.200.1.1:7882") && logged.contains("10.200.9.1:7882"),
        "{logged}"
    );
    assert!(!logged.contains("127.0.0.1"), "loopback advertised: {logged}");

    let secs = tone_call(&ns, &dir, ("cli", "10.200.1.1"), ("cli", "10.200.1.1"));
    assert!(
        nft_packets(&ns, "cli", "\"first\"") > 0,
        "the clients never tried the first address"
    );
    assert_eq!(
        nft_packets(&ns, "cli", "\"from-first\""),
        0,
        "the server answered from the first address"
    );
    eprintln!("{secs:.2} s of tone through the second address; {logged}");
}

#[test]
fn a_client_behind_nat_reaches_a_wildcard_server() {
    require_root_ip_and_nft();
    let ns = Netns::new("b", &["srv", "cli", "rtr", "nat"]);
    ns.link("srv", "s0", "10.200.1.1/24", "cli", "c0", "10.200.1.2/24");
    ns.link("srv", "s1", "10.200.2.1/24", "rtr", "r0", "10.200.2.2/24");
    ns.link("rtr", "r1", "10.200.3.1/24", "nat", "n0", "10.200.3.2/24");
    ns.ip("nat", &["route", "add", "default", "via", "10.200.3.1"]);
    // The router forwards and masquerades what leaves towards the server; the server has no
    // route back to 10.200.3.0/24, so only NATed traffic can work.
    ns.exec("rtr", &["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"]);
    let dir = tempdir("netns-b");
    let nft = "table ip hdl {\n  chain post {\n    type nat hook postrouting priority 100; policy accept;\n    \
               oifname \"r0\" counter masquerade comment \"nat\"\n  }\n}\n";
    ns.nft("rtr", nft, &dir);
    let _server = serve(&ns, &dir, "0.0.0.0");
    let logged = candidates_logged(&dir.join("server.log"));
    assert!(
        logged.contains("10.200.1.1:7882") && logged.contains("10.200.2.1:7882"),
        "{logged}"
    );

    // The publisher is on the server's own network, the player behind the NAT.
    let secs = tone_call(&ns, &dir, ("cli", "10.200.1.1"), ("nat", "10.200.2.1"));
    assert!(
        nft_packets(&ns, "rtr", "\"nat\"") > 0,
        "nothing went through the NAT"
    );
    eprintln!("{secs:.2} s of tone behind NAT; {logged}");
}

#[test]
fn a_dual_stack_server_serves_ipv4_and_ipv6_clients_on_one_socket() {
    require_root_ip_and_nft();
    let ns = Netns::new("c", &["srv", "cli"]);
    ns.link("srv", "s0", "10.200.1.1/24", "cli", "c0", "10.200.1.2/24");
    // No duplicate address detection: the addresses are usable at once.
    ns.ip("srv", &["addr", "add", "fd00:200::1/64", "dev", "s0", "nodad"]);
    ns.ip("cli", &["addr", "add", "fd00:200::2/64", "dev", "c0", "nodad"]);
    let dir = tempdir("netns-c");
    let _server = serve(&ns, &dir, "[::]");
    let logged = candidates_logged(&dir.join("server.log"));
    assert!(
        logged.contains("10.200.1.1:7882") && logged.contains("[fd00:200::1]:7882"),
        "{logged}"
    );
    assert!(!logged.contains("fe80"), "link-local advertised: {logged}");
    assert!(!logged.contains("::ffff:"), "a v4-mapped candidate: {logged}");

    // The publisher over IPv4 (a v4-mapped peer on the server's IPv6 socket), the player over
    // IPv6.
    let secs = tone_call(&ns, &dir, ("cli", "10.200.1.1"), ("cli", "[fd00:200::1]"));
    eprintln!("{secs:.2} s of tone from an IPv4 publisher to an IPv6 player; {logged}");
}

/// The `t_ms` of the first event line of `events` that contains every one of `needles`.
fn event_ms(events: &str, needles: &[&str]) -> Option<u64> {
    let line = events.lines().find(|l| needles.iter().all(|n| l.contains(n)))?;
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    v["t_ms"].as_u64()
}

#[test]
fn clients_whose_network_blocks_udp_call_over_ice_tcp_at_the_quality_of_udp() {
    require_root_ip_and_nft();
    let ns = Netns::new("t", &["srv", "cli", "open"]);
    ns.link("srv", "s0", "10.200.1.1/24", "cli", "c0", "10.200.1.2/24");
    ns.link("srv", "s1", "10.200.4.1/24", "open", "o0", "10.200.4.2/24");
    // The client's network lets no UDP out at all; TCP goes through (signaling and ICE-TCP).
    // The other client's network is open: the same call over UDP, side by side.
    let dir = tempdir("netns-t");
    let nft = "table inet hdl {\n  chain out {\n    type filter hook output priority 0; policy accept;\n    \
               oif \"lo\" accept\n    meta l4proto udp counter drop comment \"udp\"\n    \
               tcp dport 7881 counter accept comment \"ice-tcp\"\n  }\n}\n";
    ns.nft("cli", nft, &dir);
    let _server = serve(&ns, &dir, "0.0.0.0");
    let speech = dir.join("speech.wav");
    padded_speech(&speech);
    let speech = speech.to_str().unwrap();

    let mut players = Vec::new();
    for (role, ip) in [("cli", "10.200.1.1"), ("open", "10.200.4.1")] {
        let wav = dir.join(format!("heard-{role}.wav"));
        let log = dir.join(format!("player-{role}.log"));
        let stream = format!("speech-{role}");
        let p = call(
            &ns,
            role,
            ip,
            &format!("bob-{role}"),
            &["--play", &stream, "--record", wav.to_str().unwrap()],
            "8",
            &log,
        );
        players.push((role, p, log, wav));
    }
    std::thread::sleep(Duration::from_millis(300));
    let mut publishers = Vec::new();
    for (role, ip) in [("cli", "10.200.1.1"), ("open", "10.200.4.1")] {
        let log = dir.join(format!("publisher-{role}.log"));
        let stream = format!("speech-{role}");
        let p = call(
            &ns,
            role,
            ip,
            &format!("alice-{role}"),
            &["--publish", &stream, "--source", speech],
            "7",
            &log,
        );
        publishers.push((role, p, log));
    }
    let mut joins = Vec::new();
    for (role, p, log) in publishers {
        let events = finish(p, &log);
        let requested = event_ms(&events, &["publisher_state_update", "PublishRequesting"]);
        let publishing = event_ms(&events, &["publisher_state_update", "Publishing"]);
        joins.push(format!(
            "{role}: PublishRequesting {requested:?} ms, Publishing {publishing:?} ms"
        ));
    }
    let mut scores = Vec::new();
    for (role, p, log, wav) in players {
        let events = finish(p, &log);
        assert!(
            events.contains("player_recv_audio_first_frame"),
            "{role}: {events}"
        );
        scores.push((role, pesq(&wav)));
    }
    assert!(
        nft_packets(&ns, "cli", "\"udp\"") > 0,
        "the blocked clients never tried UDP"
    );
    assert!(
        nft_packets(&ns, "cli", "\"ice-tcp\"") > 0,
        "nothing went over ICE-TCP"
    );
    eprintln!("ICE-TCP (cli) and UDP (open): PESQ {scores:?}; {joins:?}");
    let (tcp, udp) = (scores[0].1, scores[1].1);
    assert!(tcp >= 3.0, "speech over ICE-TCP scored PESQ {tcp:.2}");
    assert!(tcp >= udp - 0.3, "ICE-TCP {tcp:.2} well below UDP {udp:.2}");
}
