//! The binary's `--flavor azure` and `--flavor openstack`, over plain HTTP on loopback:
//! the same user-data file served as each cloud serves it, and a flavor it does not know
//! refused.

use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};

/// Starts the binary with `args`; its address once it listens.
fn start(args: &[&str]) -> (Child, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_imds-emulator"))
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap()
        .parse()
        .unwrap();
    (child, addr)
}

/// One GET with `headers`; the status and the body.
fn get(addr: SocketAddr, target: &str, headers: &[&str]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    let mut request = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for header in headers {
        request.push_str(&format!("{header}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer[9..12].parse().unwrap();
    let body = answer.split_once("\r\n\r\n").unwrap().1.to_string();
    (status, body)
}

#[test]
fn the_binary_serves_azure_and_openstack() {
    let dir = std::env::temp_dir().join(format!("imds-emulator-flavors-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("user-data");
    std::fs::write(&file, "{\"a\":1}").unwrap();
    let file = file.to_str().unwrap();

    let (mut azure, addr) = start(&["--flavor", "azure", "--user-data-file", file]);
    let user_data = "/metadata/instance/compute/userData?api-version=2021-02-01&format=text";
    let without = get(addr, user_data, &[]);
    let with = get(addr, user_data, &["Metadata: true"]);
    azure.kill().unwrap();
    azure.wait().unwrap();
    assert_eq!(without.0, 400);
    assert_eq!(with, (200, "eyJhIjoxfQ==".to_string()));

    let (mut openstack, addr) = start(&["--flavor", "openstack", "--user-data-file", file]);
    let data = get(addr, "/openstack/latest/user_data", &[]);
    let meta = get(addr, "/openstack/latest/meta_data.json", &[]);
    openstack.kill().unwrap();
    openstack.wait().unwrap();
    assert_eq!(data, (200, "{\"a\":1}".to_string()));
    assert_eq!(meta.0, 200);
    assert!(meta.1.contains("\"uuid\""), "{}", meta.1);

    let out = Command::new(env!("CARGO_BIN_EXE_imds-emulator"))
        .args(["--listen", "127.0.0.1:0", "--flavor", "oracle"])
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--flavor \"oracle\": expected aws, gcp, azure or openstack"),
        "{stderr}"
    );
}
