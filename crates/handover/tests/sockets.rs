//! Named sockets in one process: names are the key, addresses may repeat.

use std::io::ErrorKind;

use handover::{Error, Handover};

fn handover() -> Handover {
    Handover::builder().no_signals().build().unwrap()
}

#[test]
fn tcp_and_udp_on_one_address_are_two_names() {
    let handover = handover();
    let web = handover.tcp_listener("web", "127.0.0.1:0").unwrap();
    let addr = web.local_addr().unwrap();
    let dns = handover.udp_socket("dns", addr).unwrap();
    assert_eq!(dns.local_addr().unwrap(), addr);
}

#[test]
fn a_name_is_claimed_once() {
    let handover = handover();
    handover.tcp_listener("web", "127.0.0.1:0").unwrap();
    let error = handover.tcp_listener("web", "127.0.0.1:0").unwrap_err();
    assert!(
        matches!(error, Error::DuplicateName(ref name) if name == "web"),
        "{error}"
    );
}

#[test]
fn names_follow_the_listen_fdnames_rules() {
    let handover = handover();
    for bad in ["", "a:b", "with space", &"x".repeat(256)] {
        let error = handover.tcp_listener(bad, "127.0.0.1:0").unwrap_err();
        assert!(matches!(error, Error::InvalidName(_)), "{bad:?}: {error}");
    }
}

#[test]
fn a_taken_port_is_a_clear_error() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let error = handover()
        .tcp_listener("web", holder.local_addr().unwrap())
        .unwrap_err();
    assert!(
        matches!(&error, Error::Bind { source, .. } if source.kind() == ErrorKind::AddrInUse),
        "{error}"
    );
    assert!(
        error
            .to_string()
            .starts_with("cannot bind \"web\" to 127.0.0.1:"),
        "{error}"
    );
}

#[test]
fn ipv6_and_ipv4_wildcards_are_separate_sockets() {
    let handover = handover();
    let v6 = match handover.tcp_listener("web6", "[::1]:0") {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("skipped: no IPv6 loopback here ({error})");
            return;
        }
    };
    let port = v6.local_addr().unwrap().port();
    // IPv6 sockets are IPv6-only, so IPv4 on the same port is a second name.
    handover.tcp_listener("web4", ("127.0.0.1", port)).unwrap();
}

#[test]
fn unix_listener_replaces_a_stale_file_but_not_a_live_server() {
    let dir = std::env::temp_dir().join(format!("handover-sockets-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("app.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap()); // leaves a stale file
    let handover = handover();
    let live = handover.unix_listener("control", &path).unwrap();
    let error = Handover::builder()
        .no_signals()
        .build()
        .unwrap()
        .unix_listener("control", &path)
        .unwrap_err();
    assert!(
        error.to_string().contains("in use by a live process"),
        "{error}"
    );
    drop(live);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sockets_are_claimed_before_ready() {
    let handover = handover();
    handover.ready().unwrap();
    let error = handover.tcp_listener("late", "127.0.0.1:0").unwrap_err();
    assert!(matches!(error, Error::ClaimAfterReady(_)), "{error}");
}
