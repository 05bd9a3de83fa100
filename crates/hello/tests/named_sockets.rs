//! Names, not addresses, are the key: a new version gets the very socket of each
//! name it asks for, may move a name to another address, and sockets it does not
//! ask for are closed.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use support::*;

fn get(addr: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn address_of(line: &str) -> SocketAddr {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("http://"))
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn names_survive_upgrades_and_unclaimed_sockets_close() {
    let mut server = Server::start_with_args(
        "names",
        &[
            "--listen",
            "web=127.0.0.1:0",
            "--listen",
            "admin=127.0.0.1:0",
        ],
    );
    let web = server.addr;
    let admin = address_of(&server.stdout.recv_timeout(Duration::from_secs(10)).unwrap());
    let web_inode = listener_inode(web.port());
    assert!(get(admin).unwrap().contains("200 OK"));

    // Version 2 serves "web" (same address) and a new "api", and drops "admin".
    let real = server.scratch.path("hello.real");
    copy_executable(env!("CARGO_BIN_EXE_hello").as_ref(), &real);
    let api_port = free_port();
    server.install_script(&format!(
        "exec {} --listen web=127.0.0.1:0 --listen api=127.0.0.1:{api_port} --pid-file {}",
        real.display(),
        server.pid_file.display()
    ));
    let mark = server.log_text().len();
    let (old, new) = server.upgrade();
    server.wait_exit(old, Duration::from_secs(10));
    assert_eq!(
        listener_inode(web.port()),
        web_inode,
        "web is the very same socket"
    );
    assert!(fds_of(new)
        .iter()
        .any(|(fd, target)| *fd == 3 && *target == web_inode));
    assert!(get(web).unwrap().contains(&format!("x-pid: {new}")));
    let api: SocketAddr = format!("127.0.0.1:{api_port}").parse().unwrap();
    assert!(get(api).unwrap().contains(&format!("x-pid: {new}")));
    let closed = server.wait_log("not claimed", mark, Duration::from_secs(5));
    assert!(closed.contains("name=\"admin\""), "{closed}");
    let refused = get(admin).unwrap_err();
    assert_eq!(
        refused.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "admin is closed"
    );

    // Version 3 moves "web" to another port: bound anew, the old port closes.
    // The running process's executable is now hello.real (the script exec'd it),
    // so that is the path the next upgrade starts.
    let v3 = server.scratch.path("hello.v3");
    copy_executable(env!("CARGO_BIN_EXE_hello").as_ref(), &v3);
    let new_web_port = free_port();
    install_script_at(
        &real,
        &format!(
            "exec {} --listen web=127.0.0.1:{new_web_port} --pid-file {}",
            v3.display(),
            server.pid_file.display()
        ),
    );
    let mark = server.log_text().len();
    let (old, newest) = server.upgrade();
    server.wait_exit(old, Duration::from_secs(10));
    let moved = server.wait_log(
        "socket address changed; binding anew",
        mark,
        Duration::from_secs(5),
    );
    assert!(moved.contains("name=\"web\""), "{moved}");
    let new_web: SocketAddr = format!("127.0.0.1:{new_web_port}").parse().unwrap();
    assert!(get(new_web).unwrap().contains(&format!("x-pid: {newest}")));
    assert_eq!(
        get(web).unwrap_err().kind(),
        std::io::ErrorKind::ConnectionRefused
    );
    assert_eq!(
        get(api).unwrap_err().kind(),
        std::io::ErrorKind::ConnectionRefused
    );
}
